"""`medledger up` as a user runs it: every process healthy over gRPC, logs streamed with the
process name, a clean stop on Ctrl-C with no process left behind, the data reused by the next
run, a crashed process named with its log, and a clear error when a port is taken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medledger.ledger.store import BlockStore
from medledger.stack.catalog import discover_services
from medledger.stack.health import is_serving
from medledger.stack.supervisor import READY_LINE
from medledger.stack.topology import APP_SERVICES, CHAIN_ID, ORGANISATIONS, Topology
from tests.e2e.stack_helpers import UpCommand, process_alive, running_processes, stack_options

START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def _expected_processes(topology: Topology) -> set[str]:
    return {"nats", *(spec.name for spec in topology.processes())}


def _chain(store_path: Path) -> tuple[int, bytes]:
    """(height, hash of block 1) of a validator's block store."""
    store = BlockStore(store_path)
    try:
        first = store.block(1)
        assert first is not None
        return store.height, first.block_hash
    finally:
        store.close()


def _nats_healthy(monitoring_port: int) -> bool:
    url = f"http://127.0.0.1:{monitoring_port}/healthz?js-enabled-only=true"
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status) == 200


def test_up_serves_every_process_stops_cleanly_and_reuses_its_data(
    tmp_path: Path, up_commands: list[UpCommand]
) -> None:
    options = stack_options(tmp_path / "stack")
    topology = Topology(options, discover_services(APP_SERVICES).available)
    layout = topology.layout

    first = UpCommand(options)
    up_commands.append(first)
    first.start()
    first.wait_for(READY_LINE, START_TIMEOUT)
    first.wait_for("press Ctrl-C to stop", 5)
    assert "created a new consortium" in first.output

    running = running_processes(options)
    assert {entry["name"] for entry in running} == _expected_processes(topology)
    for entry in running:
        if entry["name"] == "nats":
            assert _nats_healthy(options.nats_monitoring_port)
        else:
            assert is_serving(entry["address"], timeout=5), f"{entry['name']} is not SERVING"
        assert entry["address"] in first.output, "the endpoints are printed"
    # Each process's log lines reach the terminal, prefixed by its name.
    first.wait_for("hospital-c/ledger | ", 10)
    if "identity" in topology.app_services:
        assert "medledger identity token --target" in first.output

    first.interrupt()
    assert first.wait(STOP_TIMEOUT) == 0, first.output
    assert "stopped cleanly" in first.output
    assert not [e["name"] for e in running if process_alive(e["pid"])], "orphan processes"
    assert not layout.processes_file.exists()

    genesis = layout.genesis_path.read_bytes()
    validator_a = layout.service_dir(ORGANISATIONS[0], "ledger") / f"ledger-{CHAIN_ID}-0.db"
    height, first_block = _chain(validator_a)
    assert height >= 1

    # The second run finds the same consortium and chain, and is told a validator crashed.
    second = UpCommand(options)
    up_commands.append(second)
    second.start()
    second.wait_for(READY_LINE, START_TIMEOUT)
    second.wait_for("press Ctrl-C to stop", 5)
    assert "reusing the data in" in second.output
    assert "registering" not in second.output, "hospitals are registered only once"
    assert layout.genesis_path.read_bytes() == genesis

    crashed = next(e for e in running_processes(options) if e["name"] == "hospital-d/ledger")
    os.kill(crashed["pid"], signal.SIGKILL)
    line = second.wait_for("hospital-d/ledger exited unexpectedly", 10)
    assert crashed["log"] in line
    survivors = running_processes(options)
    time.sleep(1.0)  # the chain keeps going on three of four validators

    second.interrupt()
    assert second.wait(STOP_TIMEOUT) == 1, "a crash during the run makes the exit code 1"
    assert "failed: hospital-d/ledger" in second.output
    assert not [e["name"] for e in survivors if process_alive(e["pid"])], "orphan processes"

    height_after, first_block_after = _chain(validator_a)
    assert first_block_after == first_block, "the second run continued the same chain"
    # Every validator restarted at once, yet the chain went on finalizing.
    assert height_after > height


@pytest.mark.parametrize("taken", ["nats", "hospital-b/identity"])
def test_up_names_a_taken_port_and_starts_nothing(
    taken: str, tmp_path: Path, up_commands: list[UpCommand]
) -> None:
    options = stack_options(tmp_path / "stack")
    port = (
        options.nats_port
        if taken == "nats"
        else Topology(options).spec("hospital-b", "identity").grpc_port
    )
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        command = UpCommand(options)
        up_commands.append(command)
        command.start()
        assert command.wait(30) == 1
    assert f"port {port} (" in command.output
    assert "already in use" in command.output
    assert "starting" not in command.output
    assert not Topology(options).layout.processes_file.exists()


def test_demo_without_a_running_stack_says_how_to_start_one(tmp_path: Path) -> None:
    options = stack_options(tmp_path / "stack")
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "medledger.cli.main",
            "demo",
            "--data-dir",
            str(options.data_dir),
            "--base-port",
            str(options.base_port),
            "--nats-port",
            str(options.nats_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 1
    assert "medledger up" in finished.stderr
    assert "STACK_NOT_RUNNING" in finished.stderr
