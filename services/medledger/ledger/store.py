"""The block store of one validator: final blocks, their certificates, the
transaction index and the consensus safety state, in one SQLite file (WAL,
synchronous=FULL so a commit is on disk before it is acknowledged).

Blocks and certificates are kept as the canonical bytes the node encodes; the
store checks only what it can without decoding them (heights form a gapless
chain, a transaction id is final at most once).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


class StoreError(Exception):
    """A write the block store refuses; nothing was written."""

    reason = "STORE_ERROR"


class HeightGapError(StoreError):
    reason = "HEIGHT_GAP"


class DuplicateTransactionError(StoreError):
    reason = "DUPLICATE_TRANSACTION"


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """One final block as stored."""

    height: int
    block_hash: bytes
    block: bytes
    certificate: bytes | None


@dataclass(frozen=True, slots=True)
class TransactionLocation:
    """Where a final transaction is: block height and index within the block."""

    height: int
    index: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    block BLOB NOT NULL,
    certificate BLOB
);
CREATE TABLE IF NOT EXISTS transactions (
    tx_id BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS safety_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_proposals (
    hash BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    proposal BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""


class BlockStore:
    """SQLite-backed store of final blocks for one validator."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        self._height: int = -1 if row[0] is None else int(row[0])

    def close(self) -> None:
        self._db.close()

    @property
    def is_open(self) -> bool:
        try:
            self._db.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return False
        return True

    # -- reads ---------------------------------------------------------------

    @property
    def height(self) -> int:
        """Height of the newest final block, -1 when the store is empty."""
        return self._height

    def block(self, height: int) -> StoredBlock | None:
        row = self._db.execute(
            "SELECT height, hash, block, certificate FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else StoredBlock(row[0], row[1], row[2], row[3])

    def block_by_hash(self, block_hash: bytes) -> StoredBlock | None:
        row = self._db.execute(
            "SELECT height, hash, block, certificate FROM blocks WHERE hash = ?", (block_hash,)
        ).fetchone()
        return None if row is None else StoredBlock(row[0], row[1], row[2], row[3])

    def blocks(self, start: int, limit: int) -> Iterator[StoredBlock]:
        """Final blocks from `start` upward, at most `limit` of them."""
        rows = self._db.execute(
            "SELECT height, hash, block, certificate FROM blocks"
            " WHERE height >= ? ORDER BY height LIMIT ?",
            (start, limit),
        ).fetchall()
        for row in rows:
            yield StoredBlock(row[0], row[1], row[2], row[3])

    def certificate(self, height: int) -> bytes | None:
        row = self._db.execute(
            "SELECT certificate FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else row[0]

    def transaction(self, tx_id: bytes) -> TransactionLocation | None:
        row = self._db.execute(
            "SELECT height, idx FROM transactions WHERE tx_id = ?", (tx_id,)
        ).fetchone()
        return None if row is None else TransactionLocation(row[0], row[1])

    def contains_transaction(self, tx_id: bytes) -> bool:
        return self.transaction(tx_id) is not None

    def safety_state(self) -> bytes | None:
        row = self._db.execute("SELECT state FROM safety_state WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    # -- writes --------------------------------------------------------------

    def append(
        self,
        height: int,
        block_hash: bytes,
        block: bytes,
        tx_ids: Sequence[bytes],
        certificate: bytes | None = None,
    ) -> None:
        """Append the next final block atomically with its transaction index."""
        self.append_many([(height, block_hash, block, tx_ids, certificate)])

    def append_many(
        self,
        entries: Sequence[tuple[int, bytes, bytes, Sequence[bytes], bytes | None]],
    ) -> None:
        """Append consecutive final blocks in one durable transaction (group commit)."""
        if not entries:
            return
        expected = self._height + 1
        for height, *_ in entries:
            if height != expected:
                raise HeightGapError(f"next final block must be height {expected}, got {height}")
            expected += 1
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for height, block_hash, block, tx_ids, certificate in entries:
                self._db.execute(
                    "INSERT INTO blocks (height, hash, block, certificate) VALUES (?, ?, ?, ?)",
                    (height, block_hash, block, certificate),
                )
                self._db.executemany(
                    "INSERT INTO transactions (tx_id, height, idx) VALUES (?, ?, ?)",
                    [(tx_id, height, index) for index, tx_id in enumerate(tx_ids)],
                )
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._db.execute("ROLLBACK")
            raise DuplicateTransactionError(f"refused to append: {exc}") from exc
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._height = expected - 1

    def set_certificate(self, height: int, certificate: bytes) -> None:
        """Attach the finality certificate of a stored block."""
        cursor = self._db.execute(
            "UPDATE blocks SET certificate = ? WHERE height = ?", (certificate, height)
        )
        if cursor.rowcount != 1:
            raise StoreError(f"no final block at height {height} to certify")

    def save_safety_state(self, state: bytes) -> None:
        """Durably record the consensus safety state (before any vote is sent)."""
        self._db.execute(
            "INSERT INTO safety_state (id, state) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            (state,),
        )

    def save_proposal(self, height: int, block_hash: bytes, proposal: bytes) -> None:
        """Keep a proposal for a block above the final chain, so that a restart can
        rebuild the uncommitted part of the block tree (certified blocks live only there)."""
        self._db.execute(
            "INSERT OR IGNORE INTO pending_proposals (hash, height, proposal) VALUES (?, ?, ?)",
            (block_hash, height, proposal),
        )

    def pending_proposals(self) -> list[bytes]:
        """Stored proposals above the final chain, lowest height first."""
        rows = self._db.execute(
            "SELECT proposal FROM pending_proposals WHERE height > ? ORDER BY height",
            (self._height,),
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def prune_proposals(self) -> None:
        """Forget proposals at or below the newest final height."""
        self._db.execute("DELETE FROM pending_proposals WHERE height <= ?", (self._height,))

    def set_meta(self, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
