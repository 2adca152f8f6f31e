"""The local stack's data directory and port plan, without starting anything: first run
creates a consortium, the next reuses it, --reset starts over, a foreign directory is never
touched, two stacks never share a directory, and no two processes share a port."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.stack.datadir import DataDirLock, prepare_data_dir, wipe_data_dir
from medledger.stack.errors import DataDirError
from medledger.stack.topology import ORGANISATIONS, DataLayout, StackOptions, Topology


def test_first_run_creates_the_consortium_and_the_next_reuses_it(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "stack")
    first = prepare_data_dir(layout)
    assert first.created
    assert [v.organisation for v in first.genesis.validators] == list(ORGANISATIONS)
    assert all(layout.validator_key(org).stat().st_mode & 0o077 == 0 for org in ORGANISATIONS)
    admin_key = layout.key("hospital-a", "admin").read_bytes()

    again = prepare_data_dir(layout)
    assert not again.created
    assert again.genesis == first.genesis
    assert layout.key("hospital-a", "admin").read_bytes() == admin_key

    fresh = prepare_data_dir(layout, reset=True)
    assert fresh.created
    assert fresh.genesis.validators != first.genesis.validators
    assert layout.key("hospital-a", "admin").read_bytes() != admin_key


def test_a_directory_medledger_did_not_make_is_never_used_or_wiped(tmp_path: Path) -> None:
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    layout = DataLayout(foreign)
    with pytest.raises(DataDirError, match="not a medledger data directory"):
        prepare_data_dir(layout)
    with pytest.raises(DataDirError):
        prepare_data_dir(layout, reset=True)
    with pytest.raises(DataDirError):
        wipe_data_dir(layout)
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_two_stacks_cannot_hold_the_same_directory(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path / "stack")
    first, second = DataDirLock(layout), DataDirLock(layout)
    first.acquire()
    try:
        with pytest.raises(DataDirError, match="in use by another"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_every_process_has_its_own_port_and_log(tmp_path: Path) -> None:
    topology = Topology(StackOptions(data_dir=tmp_path))
    ports = [port for port, _ in topology.ports()]
    assert len(ports) == len(set(ports))
    logs = [spec.log_path for spec in topology.processes()]
    assert len(logs) == len(set(logs))
    assert len(topology.validators()) == 4
    # Hospital A sits on the single-service default ports.
    assert topology.spec("hospital-a", "identity").grpc_port == 50051
    assert topology.spec("hospital-a", "audit").grpc_port == 50055


def test_stray_settings_of_the_shell_do_not_reach_the_processes(tmp_path: Path) -> None:
    spec = Topology(StackOptions(data_dir=tmp_path)).spec("hospital-b", "consent")
    env = spec.environment(
        {"PATH": "/bin", "MEDLEDGER_DATABASE_URL": "postgresql://x", "MEDLEDGER_S3_ACCESS_KEY": "k"}
    )
    assert "MEDLEDGER_DATABASE_URL" not in env
    assert env["MEDLEDGER_S3_ACCESS_KEY"] == "k"
    assert env["MEDLEDGER_ORG_ID"] == "hospital-b"
    assert env["PATH"] == "/bin"
