"""Both stores honour one contract: durable ordered appends, one writer, the stream position,
node lookups, filtered scans and checkpoint bookkeeping. Run against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from medledger._gen.common.v1 import access_pb2
from medledger.audit import merkle_log
from medledger.audit.errors import LogWriterConflict
from medledger.audit.model import AnchorState, CheckpointRow, EventFilter
from medledger.audit.service import AuditLog, LogIdentity
from medledger.audit.store import AuditStore, open_store
from medledger.crypto import SigningKey
from medledger.merkle import root_hash
from tests.integration.audit.audit_helpers import audit_event

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest_asyncio.fixture
async def store(database_url: str) -> AsyncIterator[AuditStore]:
    opened = open_store(database_url)
    await opened.open()
    yield opened
    await opened.close()


async def test_appends_are_ordered_deduplicated_and_positioned(database_url: str) -> None:
    log = AuditLog(open_store(database_url), LogIdentity("l", "s", SigningKey.generate()))
    await log.open()
    events = [audit_event(i).SerializeToString() for i in range(300)]
    try:
        await log.append(events[:200], stream_position=200)
        result = await log.append(events[150:], stream_position=300)
        assert (result.appended, result.duplicates, result.tree_size) == (100, 50, 300)
        assert await log.stream_position() == 300
        await log.append([], stream_position=120)  # positions never go backwards
        assert await log.stream_position() == 300
        checkpoint = await log.checkpoint()
        assert checkpoint is not None and checkpoint.root_hash == root_hash(events)
        nodes = await log.store.nodes(merkle_log.nodes_for_root(300))
        assert merkle_log.root_at(300, nodes) == root_hash(events)
    finally:
        await log.close()


async def test_a_stale_writer_is_refused(database_url: str) -> None:
    key = SigningKey.generate()
    first = AuditLog(open_store(database_url), LogIdentity("l", "s", key))
    second = AuditLog(open_store(database_url), LogIdentity("l", "s", key))
    await first.open()
    await second.open()
    try:
        await first.append([audit_event(1).SerializeToString()])
        with pytest.raises(LogWriterConflict):
            await second.append([audit_event(2).SerializeToString()])
        assert await first.store.tree_size() == 1
    finally:
        await first.close()
        await second.close()


async def test_filtered_scans_and_lookups(store: AuditStore) -> None:
    log_events = [
        audit_event(i, patient="patients/p-1" if i < 5 else "patients/p-2") for i in range(10)
    ]
    log = AuditLog(store, LogIdentity("l", "s", SigningKey.generate()))
    await log._reload_frontier()  # the store is already open
    await log.append([e.SerializeToString() for e in log_events])
    rows = await store.query(EventFilter(patient_pseudonym="patients/p-2"), -1, 3)
    assert [r.leaf_index for r in rows] == [5, 6, 7]
    rows = await store.query(EventFilter(patient_pseudonym="patients/p-2"), 6, 10, below_index=9)
    assert [r.leaf_index for r in rows] == [7, 8]
    rows = await store.query(EventFilter(action=access_pb2.ACCESS_ACTION_DELETE), -1, 10)
    assert rows == []
    found = await store.entry_by_event_id(log_events[4].event_id)
    assert found is not None and found.leaf_index == 4 and found.event() == log_events[4]
    assert await store.known_event_ids([log_events[0].event_id, "nope"]) == {log_events[0].event_id}


async def test_checkpoint_bookkeeping(store: AuditStore) -> None:
    def row(size: int) -> CheckpointRow:
        return CheckpointRow(
            tree_size=size,
            log_id="l",
            root_hash=bytes(32),
            time_ms=1000 + size,
            signer="s",
            signer_key_id="k",
            signer_public_key=bytes(32),
            signature=bytes(64),
            accumulator=b"",
            anchor_tx=b"tx",
        )

    for size in (3, 7, 12):
        await store.add_checkpoint(row(size))
    assert [c.tree_size for c in await store.unanchored_checkpoints()] == [3, 7, 12]
    await store.set_anchor(7, AnchorState("ab", 2, 5, b"receipt"), b"tx2")
    anchored = await store.latest_checkpoint(anchored_only=True)
    assert anchored is not None and anchored.tree_size == 7
    assert anchored.anchor == AnchorState("ab", 2, 5, b"receipt") and anchored.anchor_tx == b"tx2"
    latest = await store.latest_checkpoint()
    assert latest is not None and latest.tree_size == 12
    page = await store.list_checkpoints(None, 2)
    assert [c.tree_size for c in page] == [12, 7]
    assert [c.tree_size for c in await store.list_checkpoints(7, 2)] == [3]
