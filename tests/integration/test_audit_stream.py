"""Services that only publish audit events never undo the AUDIT stream's replication."""

from __future__ import annotations

from medledger.core.audit_events import AUDIT_STREAM, ensure_audit_stream
from medledger.core.embedded_nats import EmbeddedNatsCluster
from medledger.core.nats_bus import NatsBus


async def test_publishers_keep_the_operators_replication(nats_cluster: EmbeddedNatsCluster) -> None:
    bus = await NatsBus.connect(nats_cluster.urls, name="audit-stream-test")
    try:
        await ensure_audit_stream(bus, replicas=3)
        await ensure_audit_stream(bus)  # what consent, records and identity do at start
        info = await bus.client.jetstream().stream_info(AUDIT_STREAM)
        assert info.config.num_replicas == 3
        await ensure_audit_stream(bus, replicas=1)  # an explicit change still applies
        info = await bus.client.jetstream().stream_info(AUDIT_STREAM)
        assert info.config.num_replicas == 1
    finally:
        await bus.client.jetstream().delete_stream(AUDIT_STREAM)
        await bus.close()
