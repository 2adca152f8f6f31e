"""The audit store interface, shared SQL, and `open_store` choosing SQLite or PostgreSQL by URL.

One writer appends; `append` checks inside its transaction that the log still ends where the
writer thinks it does, so two writers can never interleave leaves. Appends are durable when
`append` returns (SQLite: WAL with synchronous=FULL; PostgreSQL: a committed transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from medledger.audit.merkle_log import NodeId
from medledger.audit.model import AnchorState, CheckpointRow, EntryRow, EventFilter, IndexedEvent
from medledger.core.database import SqliteLocation, parse_database_url

ENTRY_COLUMNS = (
    "leaf_index",
    "event_id",
    "event_time_ms",
    "append_time_ms",
    "patient_pseudonym",
    "principal",
    "actor_organisation",
    "action",
    "decision",
    "purpose",
    "record",
    "break_glass",
    "leaf_hash",
    "completed",
    "leaf_data",
)

CHECKPOINT_COLUMNS = (
    "tree_size",
    "log_id",
    "root_hash",
    "time_ms",
    "signer",
    "signer_key_id",
    "signer_public_key",
    "signature",
    "accumulator",
    "anchor_tx",
    "anchor_tx_id",
    "anchor_state",
    "anchor_height",
    "anchor_receipt",
)

POSITION_TABLE = (
    "CREATE TABLE IF NOT EXISTS audit_ingest_position "
    "(id INTEGER PRIMARY KEY CHECK (id = 1), stream_sequence BIGINT NOT NULL)"
)

INDEXES = (
    "CREATE INDEX IF NOT EXISTS audit_entries_patient ON audit_entries "
    "(patient_pseudonym, leaf_index)",
    "CREATE INDEX IF NOT EXISTS audit_entries_principal ON audit_entries (principal, leaf_index)",
    "CREATE INDEX IF NOT EXISTS audit_entries_time ON audit_entries (event_time_ms)",
)


class AuditStore(Protocol):
    """Persistence of the log's entries, tree nodes and checkpoints."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def tree_size(self) -> int: ...

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]: ...

    async def append(self, rows: Sequence[EntryRow], stream_position: int = 0) -> None:
        """Store `rows` (consecutive leaf indexes from the current size) durably, together with
        the stream sequence consumed up to (kept only if larger than the stored one)."""
        ...

    async def stream_position(self) -> int:
        """The last stream sequence whose events are durably appended (0: none)."""
        ...

    async def nodes(self, wanted: set[NodeId]) -> dict[NodeId, bytes]: ...

    async def entry_at(self, leaf_index: int) -> EntryRow | None: ...

    async def entry_by_event_id(self, event_id: str) -> EntryRow | None: ...

    async def query(
        self, where: EventFilter, after_index: int, limit: int, below_index: int | None = None
    ) -> list[EntryRow]:
        """Entries matching `where` with after_index < leaf_index < below_index, in order."""
        ...

    async def add_checkpoint(self, checkpoint: CheckpointRow) -> None: ...

    async def set_anchor(
        self, tree_size: int, anchor: AnchorState, anchor_tx: bytes | None = None
    ) -> None:
        """Record the anchor's progress (and a replacement anchoring transaction)."""
        ...

    async def checkpoint(self, tree_size: int) -> CheckpointRow | None: ...

    async def latest_checkpoint(self, anchored_only: bool = False) -> CheckpointRow | None: ...

    async def list_checkpoints(
        self,
        below_size: int | None,
        limit: int,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[CheckpointRow]:
        """Checkpoints newest first, with tree_size < below_size when given."""
        ...

    async def unanchored_checkpoints(self) -> list[CheckpointRow]:
        """Checkpoints whose anchor is not FINAL, oldest first."""
        ...


def open_store(database_url: str) -> AuditStore:
    """The store for `database_url`: sqlite:///path or postgresql://…"""
    location = parse_database_url(database_url)
    if isinstance(location, SqliteLocation):
        from medledger.audit.sqlite_store import SqliteAuditStore

        return SqliteAuditStore(location.path)
    from medledger.audit.postgres_store import PostgresAuditStore

    return PostgresAuditStore(location.conninfo)


def where_clause(
    where: EventFilter,
    after_index: int,
    below_index: int | None,
    placeholder: str,
) -> tuple[str, list[Any]]:
    """SQL conditions and parameters for a filtered, paged scan of audit_entries."""
    conditions = ["leaf_index > " + placeholder]
    params: list[Any] = [after_index]

    def add(column: str, value: Any, op: str = "=") -> None:
        conditions.append(f"{column} {op} {placeholder}")
        params.append(value)

    if below_index is not None:
        add("leaf_index", below_index, "<")
    if where.patient_pseudonym:
        add("patient_pseudonym", where.patient_pseudonym)
    if where.principal:
        add("principal", where.principal)
    if where.organisation:
        add("actor_organisation", where.organisation)
    if where.action:
        add("action", where.action)
    if where.decision:
        add("decision", where.decision)
    if where.purpose:
        add("purpose", where.purpose)
    if where.record:
        add("record", where.record)
    if where.start_ms is not None:
        add("event_time_ms", where.start_ms, ">=")
    if where.end_ms is not None:
        add("event_time_ms", where.end_ms, "<")
    if where.break_glass_only:
        add("break_glass", True)
    return " AND ".join(conditions), params


def entry_values(row: EntryRow) -> tuple[Any, ...]:
    ix = row.indexed
    return (
        row.leaf_index,
        ix.event_id,
        ix.event_time_ms,
        row.append_time_ms,
        ix.patient_pseudonym,
        ix.principal,
        ix.actor_organisation,
        ix.action,
        ix.decision,
        ix.purpose,
        ix.record,
        ix.break_glass,
        row.leaf_hash,
        row.completed,
        row.leaf_data,
    )


def entry_from_values(values: Sequence[Any]) -> EntryRow:
    return EntryRow(
        leaf_index=int(values[0]),
        append_time_ms=int(values[3]),
        leaf_hash=bytes(values[12]),
        completed=bytes(values[13]),
        leaf_data=bytes(values[14]),
        indexed=IndexedEvent(
            event_id=str(values[1]),
            event_time_ms=int(values[2]),
            patient_pseudonym=str(values[4]),
            principal=str(values[5]),
            actor_organisation=str(values[6]),
            action=int(values[7]),
            decision=int(values[8]),
            purpose=int(values[9]),
            record=str(values[10]),
            break_glass=bool(values[11]),
        ),
    )


def checkpoint_values(row: CheckpointRow) -> tuple[Any, ...]:
    return (
        row.tree_size,
        row.log_id,
        row.root_hash,
        row.time_ms,
        row.signer,
        row.signer_key_id,
        row.signer_public_key,
        row.signature,
        row.accumulator,
        row.anchor_tx,
        row.anchor.tx_id,
        row.anchor.state,
        row.anchor.height,
        row.anchor.receipt,
    )


def checkpoint_from_values(values: Sequence[Any]) -> CheckpointRow:
    return CheckpointRow(
        tree_size=int(values[0]),
        log_id=str(values[1]),
        root_hash=bytes(values[2]),
        time_ms=int(values[3]),
        signer=str(values[4]),
        signer_key_id=str(values[5]),
        signer_public_key=bytes(values[6]),
        signature=bytes(values[7]),
        accumulator=bytes(values[8]),
        anchor_tx=bytes(values[9]),
        anchor=AnchorState(
            tx_id=str(values[10]),
            state=int(values[11]),
            height=int(values[12]),
            receipt=bytes(values[13]),
        ),
    )
