"""The audit store in one SQLite file (WAL, synchronous=FULL), the default for a single node.

sqlite3 blocks, so every statement runs on one dedicated thread that owns the connection;
the event loop only awaits it.
"""

# SQL text is assembled only from constant column lists and placeholders; values are bound.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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

T = TypeVar("T")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS audit_entries (
        leaf_index INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        event_time_ms INTEGER NOT NULL,
        append_time_ms INTEGER NOT NULL,
        patient_pseudonym TEXT NOT NULL,
        principal TEXT NOT NULL,
        actor_organisation TEXT NOT NULL,
        action INTEGER NOT NULL,
        decision INTEGER NOT NULL,
        purpose INTEGER NOT NULL,
        record TEXT NOT NULL,
        break_glass INTEGER NOT NULL,
        leaf_hash BLOB NOT NULL,
        completed BLOB NOT NULL,
        leaf_data BLOB NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS audit_checkpoints (
        tree_size INTEGER PRIMARY KEY,
        log_id TEXT NOT NULL,
        root_hash BLOB NOT NULL,
        time_ms INTEGER NOT NULL,
        signer TEXT NOT NULL,
        signer_key_id TEXT NOT NULL,
        signer_public_key BLOB NOT NULL,
        signature BLOB NOT NULL,
        accumulator BLOB NOT NULL,
        anchor_tx BLOB NOT NULL,
        anchor_tx_id TEXT NOT NULL,
        anchor_state INTEGER NOT NULL,
        anchor_height INTEGER NOT NULL,
        anchor_receipt BLOB NOT NULL
    )
    """,
    POSITION_TABLE,
    *INDEXES,
)

_FINAL = 2  # medledger.common.v1.COMMIT_STATE_FINAL
_MAX_PARAMS = 500
_ENTRY_SELECT = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM audit_entries"
_CHECKPOINT_SELECT = f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM audit_checkpoints"


class SqliteAuditStore:
    """AuditStore over a SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                raise RuntimeError("the audit store is not open")
            return work(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before append returns, so acking after it is safe.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: index pages stay in memory
            conn.execute("PRAGMA temp_store=MEMORY")
            for statement in _SCHEMA:
                conn.execute(statement)
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        def disconnect() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, disconnect)
        self._executor.shutdown(wait=True)

    async def tree_size(self) -> int:
        return await self._run(_tree_size)

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        def work(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            ids = list(event_ids)
            for start in range(0, len(ids), _MAX_PARAMS):
                chunk = ids[start : start + _MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                cursor = conn.execute(
                    f"SELECT event_id FROM audit_entries WHERE event_id IN ({marks})", chunk
                )
                found.update(row[0] for row in cursor)
            return found

        return await self._run(work)

    async def append(self, rows: Sequence[EntryRow], stream_position: int = 0) -> None:
        if not rows and not stream_position:
            return
        values = [entry_values(row) for row in rows]
        marks = ",".join("?" * len(ENTRY_COLUMNS))

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if rows and _tree_size(conn) != rows[0].leaf_index:
                    raise LogWriterConflict(
                        "LOG_WRITER_CONFLICT", "the log grew under this writer; reload it"
                    )
                if stream_position:
                    conn.execute(
                        "INSERT INTO audit_ingest_position (id, stream_sequence) VALUES (1, ?) "
                        "ON CONFLICT (id) DO UPDATE SET stream_sequence = "
                        "MAX(stream_sequence, excluded.stream_sequence)",
                        (stream_position,),
                    )
                conn.executemany(
                    f"INSERT INTO audit_entries ({', '.join(ENTRY_COLUMNS)}) VALUES ({marks})",
                    values,
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(work)

    async def stream_position(self) -> int:
        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT stream_sequence FROM audit_ingest_position").fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(work)

    async def nodes(self, wanted: set[NodeId]) -> dict[NodeId, bytes]:
        by_leaf: dict[int, list[NodeId]] = {}
        for node in wanted:
            by_leaf.setdefault(completing_leaf(node), []).append(node)

        def work(conn: sqlite3.Connection) -> dict[NodeId, bytes]:
            found: dict[NodeId, bytes] = {}
            leaves = list(by_leaf)
            for start in range(0, len(leaves), _MAX_PARAMS):
                chunk = leaves[start : start + _MAX_PARAMS]
                marks = ",".join("?" * len(chunk))
                cursor = conn.execute(
                    "SELECT leaf_index, leaf_hash, completed FROM audit_entries "
                    f"WHERE leaf_index IN ({marks})",
                    chunk,
                )
                for leaf, value, completed in cursor:
                    for node in by_leaf[leaf]:
                        found[node] = node_from_row(node, bytes(value), bytes(completed))
            return found

        return await self._run(work)

    async def entry_at(self, leaf_index: int) -> EntryRow | None:
        return await self._run(lambda conn: _one_entry(conn, "WHERE leaf_index = ?", (leaf_index,)))

    async def entry_by_event_id(self, event_id: str) -> EntryRow | None:
        return await self._run(lambda conn: _one_entry(conn, "WHERE event_id = ?", (event_id,)))

    async def query(
        self, where: EventFilter, after_index: int, limit: int, below_index: int | None = None
    ) -> list[EntryRow]:
        conditions, params = where_clause(where, after_index, below_index, "?")

        def work(conn: sqlite3.Connection) -> list[EntryRow]:
            cursor = conn.execute(
                f"{_ENTRY_SELECT} WHERE {conditions} ORDER BY leaf_index LIMIT ?",
                [*params, limit],
            )
            return [entry_from_values(row) for row in cursor]

        return await self._run(work)

    async def add_checkpoint(self, checkpoint: CheckpointRow) -> None:
        marks = ",".join("?" * len(CHECKPOINT_COLUMNS))
        values = checkpoint_values(checkpoint)
        await self._run(
            lambda conn: conn.execute(
                f"INSERT INTO audit_checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) VALUES ({marks})",
                values,
            )
        )

    async def set_anchor(
        self, tree_size: int, anchor: AnchorState, anchor_tx: bytes | None = None
    ) -> None:
        if anchor_tx is not None:
            await self._set_anchor_tx(tree_size, anchor_tx)
        await self._run(
            lambda conn: conn.execute(
                "UPDATE audit_checkpoints SET anchor_tx_id = ?, anchor_state = ?, "
                "anchor_height = ?, anchor_receipt = ? WHERE tree_size = ?",
                (anchor.tx_id, anchor.state, anchor.height, anchor.receipt, tree_size),
            )
        )

    async def _set_anchor_tx(self, tree_size: int, anchor_tx: bytes) -> None:
        await self._run(
            lambda conn: conn.execute(
                "UPDATE audit_checkpoints SET anchor_tx = ? WHERE tree_size = ?",
                (anchor_tx, tree_size),
            )
        )

    async def checkpoint(self, tree_size: int) -> CheckpointRow | None:
        return await self._run(
            lambda conn: _one_checkpoint(conn, "WHERE tree_size = ?", (tree_size,))
        )

    async def latest_checkpoint(self, anchored_only: bool = False) -> CheckpointRow | None:
        where = f"WHERE anchor_state = {_FINAL}" if anchored_only else ""
        return await self._run(
            lambda conn: _one_checkpoint(conn, f"{where} ORDER BY tree_size DESC LIMIT 1", ())
        )

    async def list_checkpoints(
        self,
        below_size: int | None,
        limit: int,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[CheckpointRow]:
        conditions = ["1 = 1"]
        params: list[Any] = []
        if below_size is not None:
            conditions.append("tree_size < ?")
            params.append(below_size)
        if start_ms is not None:
            conditions.append("time_ms >= ?")
            params.append(start_ms)
        if end_ms is not None:
            conditions.append("time_ms < ?")
            params.append(end_ms)

        def work(conn: sqlite3.Connection) -> list[CheckpointRow]:
            cursor = conn.execute(
                f"{_CHECKPOINT_SELECT} WHERE {' AND '.join(conditions)} "
                "ORDER BY tree_size DESC LIMIT ?",
                [*params, limit],
            )
            return [checkpoint_from_values(row) for row in cursor]

        return await self._run(work)

    async def unanchored_checkpoints(self) -> list[CheckpointRow]:
        def work(conn: sqlite3.Connection) -> list[CheckpointRow]:
            cursor = conn.execute(
                f"{_CHECKPOINT_SELECT} WHERE anchor_state <> ? ORDER BY tree_size", (_FINAL,)
            )
            return [checkpoint_from_values(row) for row in cursor]

        return await self._run(work)


def _tree_size(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(leaf_index) FROM audit_entries").fetchone()
    return 0 if row is None or row[0] is None else int(row[0]) + 1


def _one_entry(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> EntryRow | None:
    row = conn.execute(f"{_ENTRY_SELECT} {where}", params).fetchone()
    return None if row is None else entry_from_values(row)


def _one_checkpoint(
    conn: sqlite3.Connection, where: str, params: Sequence[Any]
) -> CheckpointRow | None:
    row = conn.execute(f"{_CHECKPOINT_SELECT} {where}", params).fetchone()
    return None if row is None else checkpoint_from_values(row)
