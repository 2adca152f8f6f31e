"""The audit store in PostgreSQL, for production: appends by COPY, one writer enforced by lock.

Two connections: one for the ingest writer and checkpoints, one for readers, so a long report
scan never holds up appends.
"""

# SQL text is assembled only from constant column lists and placeholders; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg

from medledger.audit.errors import LogWriterConflict
from medledger.audit.merkle_log import NodeId, completing_leaf, node_from_row
from medledger.audit.model import AnchorState, CheckpointRow, EntryRow, EventFilter
from medledger.audit.store import (
    CHECKPOINT_COLUMNS,
    ENTRY_COLUMNS,
    INDEXES,
    POSITION_TABLE,
    checkpoint_from_values,
    checkpoint_values,
    entry_from_values,
    entry_values,
    where_clause,
)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS audit_entries (
        leaf_index BIGINT PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        event_time_ms BIGINT NOT NULL,
        append_time_ms BIGINT NOT NULL,
        patient_pseudonym TEXT NOT NULL,
        principal TEXT NOT NULL,
        actor_organisation TEXT NOT NULL,
        action INTEGER NOT NULL,
        decision INTEGER NOT NULL,
        purpose INTEGER NOT NULL,
        record TEXT NOT NULL,
        break_glass BOOLEAN NOT NULL,
        leaf_hash BYTEA NOT NULL,
        completed BYTEA NOT NULL,
        leaf_data BYTEA NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS audit_checkpoints (
        tree_size BIGINT PRIMARY KEY,
        log_id TEXT NOT NULL,
        root_hash BYTEA NOT NULL,
        time_ms BIGINT NOT NULL,
        signer TEXT NOT NULL,
        signer_key_id TEXT NOT NULL,
        signer_public_key BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        accumulator BYTEA NOT NULL,
        anchor_tx BYTEA NOT NULL,
        anchor_tx_id TEXT NOT NULL,
        anchor_state INTEGER NOT NULL,
        anchor_height BIGINT NOT NULL,
        anchor_receipt BYTEA NOT NULL
    )
    """,
    POSITION_TABLE,
    *INDEXES,
)

_FINAL = 2  # medledger.common.v1.COMMIT_STATE_FINAL
# pg_advisory_xact_lock key for "the audit log's writer" (ASCII "mlaudit" as a bigint).
_WRITER_LOCK = int.from_bytes(b"mlaudit", "big")
_ENTRY_SELECT = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM audit_entries"
_CHECKPOINT_SELECT = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM audit_checkpoints"
_SIZE_SQL = "SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM audit_entries"


class PostgresAuditStore:
    """AuditStore over PostgreSQL (psycopg 3, async)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._writer: psycopg.AsyncConnection[Any] | None = None
        self._reader: psycopg.AsyncConnection[Any] | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    async def open(self) -> None:
        self._writer = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        self._reader = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        async with self._writer.transaction():
            await self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITER_LOCK,))
            for statement in _SCHEMA:
                await self._writer.execute(statement)

    async def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = None

    def _w(self) -> psycopg.AsyncConnection[Any]:
        if self._writer is None:
            raise RuntimeError("the audit store is not open")
        return self._writer

    def _r(self) -> psycopg.AsyncConnection[Any]:
        if self._reader is None:
            raise RuntimeError("the audit store is not open")
        return self._reader

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._read_lock:
            cursor = await self._r().execute(sql, params)
            return await cursor.fetchall()

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        async with self._write_lock:
            await self._w().execute(sql, params)

    async def tree_size(self) -> int:
        rows = await self._fetch(_SIZE_SQL)
        return int(rows[0][0])

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        rows = await self._fetch(
            "SELECT event_id FROM audit_entries WHERE event_id = ANY(%s)", (list(event_ids),)
        )
        return {str(row[0]) for row in rows}

    async def append(self, rows: Sequence[EntryRow], stream_position: int = 0) -> None:
        if not rows and not stream_position:
            return
        conn = self._w()
        async with self._write_lock, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITER_LOCK,))
            cursor = await conn.execute(_SIZE_SQL)
            size = await cursor.fetchone()
            if rows and (size is None or int(size[0]) != rows[0].leaf_index):
                raise LogWriterConflict(
                    "LOG_WRITER_CONFLICT", "the log grew under this writer; reload it"
                )
            if stream_position:
                await conn.execute(
                    "INSERT INTO audit_ingest_position (id, stream_sequence) VALUES (1, %s) "
                    "ON CONFLICT (id) DO UPDATE SET stream_sequence = "
                    "GREATEST(audit_ingest_position.stream_sequence, excluded.stream_sequence)",
                    (stream_position,),
                )
            async with conn.cursor().copy(
                f"COPY audit_entries ({', '.join(ENTRY_COLUMNS)}) FROM STDIN"
            ) as copy:
                for row in rows:
                    await copy.write_row(entry_values(row))

    async def stream_position(self) -> int:
        rows = await self._fetch("SELECT stream_sequence FROM audit_ingest_position")
        return int(rows[0][0]) if rows else 0

    async def nodes(self, wanted: set[NodeId]) -> dict[NodeId, bytes]:
        by_leaf: dict[int, list[NodeId]] = {}
        for node in wanted:
            by_leaf.setdefault(completing_leaf(node), []).append(node)
        if not by_leaf:
            return {}
        found: dict[NodeId, bytes] = {}
        rows = await self._fetch(
            "SELECT leaf_index, leaf_hash, completed FROM audit_entries WHERE leaf_index = ANY(%s)",
            (list(by_leaf),),
        )
        for leaf, value, completed in rows:
            for node in by_leaf[int(leaf)]:
                found[node] = node_from_row(node, bytes(value), bytes(completed))
        return found

    async def entry_at(self, leaf_index: int) -> EntryRow | None:
        rows = await self._fetch(f"{_ENTRY_SELECT} WHERE leaf_index = %s", (leaf_index,))
        return entry_from_values(rows[0]) if rows else None

    async def entry_by_event_id(self, event_id: str) -> EntryRow | None:
        rows = await self._fetch(f"{_ENTRY_SELECT} WHERE event_id = %s", (event_id,))
        return entry_from_values(rows[0]) if rows else None

    async def query(
        self, where: EventFilter, after_index: int, limit: int, below_index: int | None = None
    ) -> list[EntryRow]:
        conditions, params = where_clause(where, after_index, below_index, "%s")
        rows = await self._fetch(
            f"{_ENTRY_SELECT} WHERE {conditions} ORDER BY leaf_index LIMIT %s", [*params, limit]
        )
        return [entry_from_values(row) for row in rows]

    async def add_checkpoint(self, checkpoint: CheckpointRow) -> None:
        marks = ",".join(["%s"] * len(CHECKPOINT_COLUMNS))
        await self._write(
            f"INSERT INTO audit_checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) VALUES ({marks})",
            checkpoint_values(checkpoint),
        )

    async def set_anchor(
        self, tree_size: int, anchor: AnchorState, anchor_tx: bytes | None = None
    ) -> None:
        if anchor_tx is not None:
            await self._set_anchor_tx(tree_size, anchor_tx)
        await self._write(
            "UPDATE audit_checkpoints SET anchor_tx_id = %s, anchor_state = %s, "
            "anchor_height = %s, anchor_receipt = %s WHERE tree_size = %s",
            (anchor.tx_id, anchor.state, anchor.height, anchor.receipt, tree_size),
        )

    async def _set_anchor_tx(self, tree_size: int, anchor_tx: bytes) -> None:
        await self._write(
            "UPDATE audit_checkpoints SET anchor_tx = %s WHERE tree_size = %s",
            (anchor_tx, tree_size),
        )

    async def checkpoint(self, tree_size: int) -> CheckpointRow | None:
        rows = await self._fetch(f"{_CHECKPOINT_SELECT} WHERE tree_size = %s", (tree_size,))
        return checkpoint_from_values(rows[0]) if rows else None

    async def latest_checkpoint(self, anchored_only: bool = False) -> CheckpointRow | None:
        where = f"WHERE anchor_state = {_FINAL}" if anchored_only else ""
        rows = await self._fetch(f"{_CHECKPOINT_SELECT} {where} ORDER BY tree_size DESC LIMIT 1")
        return checkpoint_from_values(rows[0]) if rows else None

    async def list_checkpoints(
        self,
        below_size: int | None,
        limit: int,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[CheckpointRow]:
        conditions = ["TRUE"]
        params: list[Any] = []
        if below_size is not None:
            conditions.append("tree_size < %s")
            params.append(below_size)
        if start_ms is not None:
            conditions.append("time_ms >= %s")
            params.append(start_ms)
        if end_ms is not None:
            conditions.append("time_ms < %s")
            params.append(end_ms)
        rows = await self._fetch(
            f"{_CHECKPOINT_SELECT} WHERE {' AND '.join(conditions)} "
            "ORDER BY tree_size DESC LIMIT %s",
            [*params, limit],
        )
        return [checkpoint_from_values(row) for row in rows]

    async def unanchored_checkpoints(self) -> list[CheckpointRow]:
        rows = await self._fetch(
            f"{_CHECKPOINT_SELECT} WHERE anchor_state <> %s ORDER BY tree_size", (_FINAL,)
        )
        return [checkpoint_from_values(row) for row in rows]
