#!/usr/bin/env python3
"""Developer entry point: `python3 infra/dev.py up|test|check`.

Needs only Python 3.11. Creates (or refreshes) the project virtualenv in
`.venv/` when pyproject.toml changed, then runs the requested command inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".medledger-installed"


def _ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 -- this script may be run by an older python3
        sys.exit(f"medledger needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("installing medledger and its development tools into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True, cwd=ROOT)
    STAMP.write_text(wanted)


def _run(*argv: str) -> int:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONHASHSEED", "0")
    print("$ " + " ".join(argv), flush=True)
    return subprocess.run(list(argv), cwd=ROOT, env=env, check=False).returncode


def check() -> int:
    """Static checks: lint, format, types, import contracts."""
    py = str(BIN / "python")
    for cmd in (
        [py, "-m", "ruff", "check", "services", "tests", "benchmarks", "infra"],
        [py, "-m", "ruff", "format", "--check", "services", "tests", "benchmarks", "infra"],
        [py, "-m", "mypy"],
        [str(BIN / "lint-imports")],
    ):
        code = _run(*cmd)
        if code:
            return code
    return 0


def test(extra: list[str]) -> int:
    """The whole suite: static checks, then pytest."""
    code = check()
    if code:
        return code
    return _run(str(BIN / "python"), "-m", "pytest", *extra)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"up", "test", "check", "shell"}:
        print(__doc__)
        print("commands: up [medledger up options] | test [pytest args] | check")
        return 2
    _ensure_venv()
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "test":
        return test(rest)
    if command == "check":
        return check()
    if command == "up":
        return _run(str(BIN / "medledger"), "up", *rest)
    return _run(os.environ.get("SHELL", "/bin/sh"))


if __name__ == "__main__":
    sys.exit(main())
