"""infra/Dockerfile builds the one image the chart runs: slim, non-root, no build tools."""

from __future__ import annotations

import re
import tomllib

from tests.charts.chart_rendering import REPO_ROOT, chart

DOCKERFILE = REPO_ROOT / "infra" / "Dockerfile"

Instruction = tuple[str, str]


def _instructions() -> list[Instruction]:
    """(KEYWORD, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[Instruction] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            found.append((keyword.upper(), arguments.strip()))
    return found


def _stages() -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _base_image() -> str:
    args = dict(
        argument.split("=", 1)
        for keyword, argument in _instructions()
        if keyword == "ARG" and "=" in argument
    )
    return args["PYTHON_IMAGE"]


def test_the_build_is_multi_stage_on_python_311_slim() -> None:
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", _base_image())
    stages = _stages()
    assert len(stages) >= 2
    assert all(stage[0][1].startswith("${PYTHON_IMAGE}") for stage in stages)
    builder, runtime = stages[0], stages[-1]
    assert any("pip wheel" in argument for keyword, argument in builder if keyword == "RUN")
    copies = [argument for keyword, argument in runtime if keyword == "COPY"]
    assert copies == ["--from=builder /opt/medledger /opt/medledger"]


def test_the_runtime_stage_has_no_build_tools_and_no_pip() -> None:
    runtime = _stages()[-1]
    commands = " ".join(argument for keyword, argument in runtime if keyword == "RUN")
    for tool in ("apt-get install", "gcc", "build-essential", "pip install", "make "):
        assert tool not in commands
    builder_commands = " ".join(argument for keyword, argument in _stages()[0] if keyword == "RUN")
    assert "pip uninstall --yes pip setuptools wheel" in builder_commands


def test_the_image_runs_as_the_numeric_non_root_user_the_chart_expects() -> None:
    runtime = _stages()[-1]
    users = [argument for keyword, argument in runtime if keyword == "USER"]
    assert len(users) == 1
    uid, gid = (int(part) for part in users[0].split(":"))
    assert uid >= 10000
    assert chart().values["podSecurityContext"]["runAsUser"] == uid
    assert chart().values["podSecurityContext"]["runAsGroup"] == gid
    assert chart().values["containerSecurityContext"]["runAsUser"] == uid


def test_only_data_and_tmp_are_writable_volumes() -> None:
    volumes = [argument for keyword, argument in _instructions() if keyword == "VOLUME"]
    assert volumes == ['["/data", "/tmp"]']
    env = " ".join(argument for keyword, argument in _instructions() if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "MEDLEDGER_DATA_DIR=/data" in env


def test_the_command_is_the_medledger_console_script_and_ports_match_the_chart() -> None:
    instructions = dict(_instructions())
    assert instructions["ENTRYPOINT"] == '["medledger"]'
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "medledger" in scripts
    exposed = {int(port) for port in instructions["EXPOSE"].split()}
    values = chart().values
    chart_ports = {
        values[c]["service"]["port"] for c in ("identity", "consent", "records", "audit", "ledger")
    }
    assert exposed == chart_ports | {values["config"]["metricsPort"]}


def test_the_build_context_keeps_only_what_pip_needs() -> None:
    rules = [
        line
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    assert {"!pyproject.toml", "!services/"} <= set(rules)
