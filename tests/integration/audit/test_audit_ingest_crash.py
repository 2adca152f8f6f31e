"""Exactly-once ingest: SIGKILL the audit service in the middle of a burst of events, restart
it, and find every event in the log once — none lost, none duplicated — in a valid tree."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from medledger.core.nats_bus import NatsBus
from medledger.merkle import root_hash
from tests.integration.audit.audit_helpers import (
    AuditProcess,
    audit_event,
    publish_burst,
    purge_audit_stream,
)

pytestmark = pytest.mark.integration


async def run_kill_test(audit_process: AuditProcess, nats_url: str, total: int, kills: int) -> None:
    bus = await NatsBus.connect(nats_url, name="audit-crash-test")
    try:
        await purge_audit_stream(bus)
        audit_process.process.start()
        await audit_process.wait_for(audit_process.database.exists, 30, "audit store created")
        # The service creates the stream at start; wait until it has.
        await asyncio.sleep(0.5)
        while True:
            try:
                await bus.client.jetstream().stream_info("AUDIT")
                break
            except Exception:  # not there yet
                await asyncio.sleep(0.1)
        events = [audit_event(i) for i in range(total)]
        publishing = asyncio.create_task(publish_burst(bus, events))
        for kill in range(kills):
            threshold = total * (kill + 1) // (kills + 2)

            def reached(limit: int = threshold) -> bool:
                return audit_process.entry_count() >= limit

            await audit_process.wait_for(reached, 60, f"{threshold} entries")
            audit_process.process.kill()
            killed_at = audit_process.entry_count()
            assert 0 < killed_at < total, "the kill must land in the middle of the burst"
            audit_process.process.start()
        await publishing
        # Redeliveries from outside JetStream's duplicate window: same events, new message ids.
        await publish_burst(bus, events[: total // 10], msg_id_suffix="-late-retry")
        await audit_process.wait_for(
            lambda: audit_process.entry_count() >= total, 90, f"all {total} entries"
        )
        await asyncio.sleep(1.5)  # let any stray duplicate arrive, and a checkpoint be signed
        audit_process.process.stop()
    finally:
        await bus.close()

    with sqlite3.connect(audit_process.database) as conn:
        rows = conn.execute(
            "SELECT leaf_index, event_id, leaf_data FROM audit_entries ORDER BY leaf_index"
        ).fetchall()
        checkpoint = conn.execute(
            "SELECT tree_size, root_hash FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1"
        ).fetchone()
    assert len(rows) == total, "every event is in the log exactly once"
    assert [r[0] for r in rows] == list(range(total)), "leaf indexes are dense"
    assert sorted(r[1] for r in rows) == sorted(e.event_id for e in events)
    assert checkpoint[0] == total
    assert bytes(checkpoint[1]) == root_hash([bytes(r[2]) for r in rows])


async def test_sigkill_twice_during_a_burst_of_100k_events_loses_and_duplicates_nothing(
    audit_process: AuditProcess, nats_url: str
) -> None:
    await run_kill_test(audit_process, nats_url, total=100_000, kills=2)
