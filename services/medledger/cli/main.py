"""The ``medledger`` command: ``serve <service>`` plus the subcommands each package plugs in.

A package ``medledger.<pkg>`` adds commands by providing ``medledger.<pkg>.cli`` with
``register(subparsers) -> None``; each command it adds sets ``func(args) -> int`` with
``set_defaults``. A service is served when ``medledger.<name>.main`` provides
``build(settings) -> ServiceApp`` and its settings class as ``Settings`` (or as the type
annotation of ``build``'s parameter).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import typing
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

from medledger.core.errors import MedledgerError, SettingsError
from medledger.core.settings import CommonSettings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SERVICES = ("identity", "consent", "records", "ledger", "audit")
PLUGIN_PACKAGES = ("ledger", "identity", "consent", "records", "audit", "stack", "admin")

Command = Callable[[argparse.Namespace], int]


class CommandError(MedledgerError):
    """An expected failure of a command; printed as one line, exit code ``exit_code``."""

    reason = "COMMAND_FAILED"
    exit_code = EXIT_FAILED


class UsageError(CommandError):
    reason = "USAGE"
    exit_code = EXIT_USAGE


def medledger_version() -> str:
    try:
        return version("medledger")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medledger",
        description="Consent, access audit and a shared BFT ledger for hospital consortia.",
    )
    parser.add_argument("--version", action="version", version=f"medledger {medledger_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = subparsers.add_parser(
        "serve",
        help="run one service until SIGTERM/SIGINT",
        description="Run one service; settings come from MEDLEDGER_* variables "
        "(see docs/operations.md).",
    )
    serve.add_argument("service", choices=SERVICES, help="the service to run")
    serve.set_defaults(func=_serve)

    for package in PLUGIN_PACKAGES:
        _register_plugin(f"medledger.{package}.cli", subparsers)
    return parser


def _register_plugin(module_name: str, subparsers: Any) -> None:
    # A broken package must not take the other commands (and `serve`) down with it.
    try:
        plugin = _import_optional(module_name)
        register = getattr(plugin, "register", None)
        if callable(register):
            register(subparsers)
    except Exception as error:
        print(
            f"medledger: warning: commands from {module_name} unavailable: "
            f"{type(error).__name__}: {error}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medledger`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version and usage errors
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args))
    except CommandError as error:
        _print_error(error.message)
        return error.exit_code
    except SettingsError as error:
        _print_error(error.message)
        return EXIT_USAGE
    except MedledgerError as error:
        _print_error(f"{error.message} ({error.reason})")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        # Each package has its own error hierarchy with a machine-readable reason; those,
        # and OS-level failures (missing file, port taken), are expected: one line, no
        # traceback. Anything else is a bug and keeps its traceback.
        reason = getattr(error, "reason", None)
        if isinstance(reason, str) or isinstance(error, OSError):
            suffix = f" ({reason})" if isinstance(reason, str) else ""
            _print_error(f"{error}{suffix}")
            return EXIT_FAILED
        raise


def _print_error(message: str) -> None:
    print(f"medledger: error: {message}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from medledger.core.database import prepare_database
    from medledger.core.service import ServiceApp, run_service

    name: str = args.service
    module = _import_optional(f"medledger.{name}.main")
    build = getattr(module, "build", None) if module is not None else None
    if module is None or not callable(build):
        raise UsageError("NOT_IMPLEMENTED", f"service {name!r} is not implemented yet")
    settings_class = _settings_class(module, build)
    settings = load_settings(settings_class)
    if settings.database_url is not None:
        # A shared PostgreSQL database needs this service's schema before its stores open.
        prepare_database(settings.database_url.get_secret_value(), settings.service_name)
    app = build(settings)
    if not isinstance(app, ServiceApp):
        raise CommandError(
            "BAD_SERVICE_APP", f"medledger.{name}.main.build did not return a ServiceApp"
        )
    return run_service(app)


def _settings_class(module: ModuleType, build: Callable[..., Any]) -> type[CommonSettings]:
    declared = getattr(module, "Settings", None)
    if isinstance(declared, type) and issubclass(declared, CommonSettings):
        return declared
    try:
        hints = typing.get_type_hints(build)
    except Exception:
        hints = {}
    for parameter, hint in hints.items():
        if parameter != "return" and isinstance(hint, type) and issubclass(hint, CommonSettings):
            return hint
    return CommonSettings


def _import_optional(module_name: str) -> ModuleType | None:
    """Import ``module_name``, or None when it (not one of its imports) does not exist."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            return None
        raise


if __name__ == "__main__":
    sys.exit(main())
