"""The medledger command: version, serve dispatch, plugged-in subcommands, error messages."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import pytest

from medledger.cli import main as cli
from medledger.cli.main import CommandError, main
from medledger.core.service import ServiceApp
from medledger.core.settings import CommonSettings

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MEDLEDGER_"):
            monkeypatch.delenv(name)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("medledger ")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_unknown_service_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "billing"]) == 2
    assert "invalid choice: 'billing'" in capsys.readouterr().err


def test_service_without_build_is_not_implemented(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(
        sys.modules, "medledger.audit.main", types.ModuleType("medledger.audit.main")
    )
    assert main(["serve", "audit"]) == 2
    err = capsys.readouterr().err
    assert err == "medledger: error: service 'audit' is not implemented yet\n"


class AuditSettings(CommonSettings):
    service_name = "audit"
    grpc_port: int = 50055


def _fake_service(monkeypatch: pytest.MonkeyPatch, ran: list[ServiceApp]) -> None:
    module = types.ModuleType("medledger.audit.main")

    def build(settings: AuditSettings) -> ServiceApp:
        return ServiceApp(name="audit", settings=settings)

    module.build = build  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medledger.audit.main", module)

    def fake_run(app: ServiceApp) -> int:
        ran.append(app)
        return 0

    monkeypatch.setattr("medledger.core.service.run_service", fake_run)


def test_serve_builds_the_app_with_its_settings_class(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[ServiceApp] = []
    _fake_service(monkeypatch, ran)
    monkeypatch.setenv("MEDLEDGER_ORG_ID", "org-a")
    assert main(["serve", "audit"]) == 0
    (app,) = ran
    assert isinstance(app.settings, AuditSettings)
    assert app.settings.grpc_port == 50055


def test_serve_with_bad_settings_prints_them_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_service(monkeypatch, [])
    monkeypatch.setenv("MEDLEDGER_GRPC_PORT", "99999")
    assert main(["serve", "audit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medledger: error: invalid settings:")
    assert "MEDLEDGER_ORG_ID: is required but not set" in err
    assert "MEDLEDGER_GRPC_PORT" in err
    assert "Traceback" not in err


def test_packages_plug_in_their_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = types.ModuleType("medledger.stack.cli")

    def up(args: argparse.Namespace) -> int:
        print(f"up with {args.orgs} orgs")
        return 0

    def fail(args: argparse.Namespace) -> int:
        raise CommandError("STACK_BROKEN", "the stack is broken")

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("up", help="run everything")
        parser.add_argument("--orgs", type=int, default=4)
        parser.set_defaults(func=up)
        subparsers.add_parser("explode").set_defaults(func=fail)

    plugin.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medledger.stack.cli", plugin)
    assert main(["up", "--orgs", "7"]) == 0
    assert capsys.readouterr().out == "up with 7 orgs\n"
    assert main(["explode"]) == 1
    assert capsys.readouterr().err == "medledger: error: the stack is broken\n"


def test_broken_plugin_does_not_break_other_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = types.ModuleType("medledger.consent.cli")

    def register(subparsers: object) -> None:
        raise RuntimeError("bad plugin")

    plugin.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medledger.consent.cli", plugin)
    assert main(["--version"]) == 0
    assert "commands from medledger.consent.cli unavailable" in capsys.readouterr().err


def test_console_script_runs() -> None:
    script = VENV_BIN / "medledger"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "medledger.cli.main"]
    done = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("medledger ")


def test_settings_class_falls_back_to_build_annotation() -> None:
    module = types.ModuleType("m")

    def build(settings: AuditSettings) -> ServiceApp:
        raise AssertionError

    assert cli._settings_class(module, build) is AuditSettings


class GenesisError(Exception):
    """Stands for another package's own error hierarchy."""

    reason = "BAD_GENESIS"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            GenesisError("cannot read genesis file g.json"),
            "cannot read genesis file g.json (BAD_GENESIS)",
        ),
        (FileNotFoundError(2, "No such file or directory"), "No such file or directory"),
    ],
)
def test_expected_errors_of_other_packages_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    expected: str,
) -> None:
    module = types.ModuleType("medledger.records.cli")

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        def fail(args: argparse.Namespace) -> int:
            raise error

        subparsers.add_parser("records-fail").set_defaults(func=fail)

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medledger.records.cli", module)
    assert main(["records-fail"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert "Traceback" not in err


def test_unexpected_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("medledger.records.cli")

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        def fail(args: argparse.Namespace) -> int:
            raise ZeroDivisionError("bug")

        subparsers.add_parser("records-bug").set_defaults(func=fail)

    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medledger.records.cli", module)
    with pytest.raises(ZeroDivisionError):
        main(["records-bug"])
