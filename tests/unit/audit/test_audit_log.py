"""The audit log over a real SQLite file: exactly-once appends, checkpoints that prove
consistency, proofs that verify with the reference verifier, paged and filtered queries."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from medledger._gen.common.v1 import access_pb2, audit_event_pb2
from medledger.audit.checkpoints import checkpoint_signature_valid
from medledger.audit.errors import BadPageToken, InconsistentLog, LogWriterConflict
from medledger.audit.model import EventFilter
from medledger.audit.service import AuditLog, LogIdentity
from medledger.audit.sqlite_store import SqliteAuditStore
from medledger.crypto import SigningKey
from medledger.merkle import leaf_hash, root_hash, verify_consistency, verify_inclusion

MakeEvent = Callable[..., audit_event_pb2.AuditEvent]


def blobs(events: list[audit_event_pb2.AuditEvent]) -> list[bytes]:
    return [e.SerializeToString() for e in events]


async def test_each_event_id_is_appended_once_across_and_within_batches(
    audit_log: AuditLog, event: MakeEvent
) -> None:
    first = [event() for _ in range(5)]
    result = await audit_log.append(blobs(first))
    assert (result.appended, result.duplicates, result.tree_size) == (5, 0, 5)
    again = await audit_log.append(blobs([first[1], first[1], first[3], event()]))
    assert (again.appended, again.duplicates, again.tree_size) == (1, 3, 6)
    rejected = await audit_log.append([b"\xff\xff not protobuf", b""])
    assert rejected.rejected == 2 and rejected.tree_size == 6


async def test_log_head_is_the_rfc9162_root_of_the_stored_bytes(
    audit_log: AuditLog, event: MakeEvent
) -> None:
    data = blobs([event() for _ in range(13)])
    await audit_log.append(data[:6])
    await audit_log.append(data[6:])
    checkpoint = await audit_log.checkpoint()
    assert checkpoint is not None
    assert checkpoint.tree_size == 13
    assert checkpoint.root_hash == root_hash(data)
    assert checkpoint_signature_valid(
        checkpoint.signer_public_key,
        checkpoint.signature,
        "org-a/audit",
        13,
        checkpoint.root_hash,
        checkpoint.time_ms,
    )
    for index in (0, 5, 12):
        proof = await audit_log.inclusion_hashes(index, 13)
        verify_inclusion(leaf_hash(data[index]), index, 13, proof, checkpoint.root_hash)


async def test_checkpoints_only_when_something_is_new_and_each_extends_the_last(
    audit_log: AuditLog, event: MakeEvent
) -> None:
    assert await audit_log.checkpoint() is None
    await audit_log.append(blobs([event() for _ in range(3)]))
    first = await audit_log.checkpoint()
    assert first is not None
    assert await audit_log.checkpoint() is None
    await audit_log.append(blobs([event() for _ in range(9)]))
    second = await audit_log.checkpoint()
    assert second is not None and second.tree_size == 12
    proof = await audit_log.consistency_hashes(3, 12)
    verify_consistency(3, 12, proof, first.root_hash, second.root_hash)


async def test_a_tampered_store_is_refused_rather_than_signed(
    tmp_path: Path, event: MakeEvent
) -> None:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(
        SqliteAuditStore(path),
        LogIdentity("org-a/audit", "organisations/org-a/principals/audit", SigningKey.generate()),
    )
    await log.open()
    await log.append(blobs([event() for _ in range(4)]))
    assert await log.checkpoint() is not None
    await log.append(blobs([event() for _ in range(3)]))
    await log.close()
    # Someone rewrites history: the node stored for leaves 0-3 no longer matches the checkpoint.
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_entries SET completed = ? WHERE leaf_index = 3", (bytes(64),))
    reopened = AuditLog(
        SqliteAuditStore(path),
        LogIdentity("org-a/audit", "organisations/org-a/principals/audit", SigningKey.generate()),
    )
    await reopened.open()
    try:
        with pytest.raises(InconsistentLog):
            await reopened.checkpoint()
    finally:
        await reopened.close()


async def test_a_second_writer_cannot_interleave_leaves(tmp_path: Path, event: MakeEvent) -> None:
    path = tmp_path / "audit.sqlite3"
    key = SigningKey.generate()
    one = AuditLog(SqliteAuditStore(path), LogIdentity("l", "s", key))
    two = AuditLog(SqliteAuditStore(path), LogIdentity("l", "s", key))
    await one.open()
    await two.open()
    try:
        await one.append(blobs([event()]))
        with pytest.raises(LogWriterConflict):
            await two.append(blobs([event()]))
        # After the conflict the second writer has reloaded and appends after the first.
        result = await two.append(blobs([event()]))
        assert result.tree_size == 2
    finally:
        await one.close()
        await two.close()


async def test_queries_filter_and_page_without_gaps_or_repeats(
    audit_log: AuditLog, event: MakeEvent
) -> None:
    events = []
    for i in range(25):
        events.append(
            event(
                patient="patients/p-1" if i % 2 == 0 else "patients/p-2",
                decision=access_pb2.DECISION_DENY if i % 5 == 0 else access_pb2.DECISION_PERMIT,
                time_ms=1_700_000_000_000 + i,
            )
        )
    await audit_log.append(blobs(events))
    where = EventFilter(patient_pseudonym="patients/p-1")
    seen: list[int] = []
    token = ""
    while True:
        rows, token = await audit_log.query(where, 4, token)
        seen.extend(r.leaf_index for r in rows)
        if not token:
            break
    assert seen == list(range(0, 25, 2))
    denied, _ = await audit_log.query(
        EventFilter(decision=access_pb2.DECISION_DENY, start_ms=1_700_000_000_005), 100, ""
    )
    assert [r.leaf_index for r in denied] == [5, 10, 15, 20]
    _, token = await audit_log.query(where, 2, "")
    with pytest.raises(BadPageToken):
        await audit_log.query(EventFilter(patient_pseudonym="patients/p-2"), 2, token)


async def test_reopening_resumes_the_same_tree(tmp_path: Path, event: MakeEvent) -> None:
    path = tmp_path / "audit.sqlite3"
    identity = LogIdentity("l", "s", SigningKey.generate())
    data = blobs([event() for _ in range(11)])
    log = AuditLog(SqliteAuditStore(path), identity)
    await log.open()
    await log.append(data[:7])
    await log.close()
    log = AuditLog(SqliteAuditStore(path), identity)
    await log.open()
    await log.append(data[7:])
    checkpoint = await log.checkpoint()
    await log.close()
    assert checkpoint is not None and checkpoint.root_hash == root_hash(data)
