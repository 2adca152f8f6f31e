"""Record metadata in SQLite (the default, one file in WAL mode) or PostgreSQL.

Only non-identifying facts are stored in clear: pseudonym, data class, sizes,
hashes, the wrapped data key and its KEK id, DICOM modality and SOP class.
Crypto-shredding overwrites the wrapped key with NULL (SQLite runs with
secure_delete so the old bytes are zeroed in the file).

The table is also the ledger outbox: a record's signed registration (and later
its erasure) transaction is written in the same row, in the same statement, as
the record itself, and stays "unsettled" until the ledger reports it final. A
record whose registration is not final is PENDING and is not listed or served.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import psycopg

from medledger.core.database import DatabaseUrlError, SqliteLocation, parse_database_url
from medledger.records.errors import (
    InvalidRecordRequest,
    MetadataUnavailable,
    RecordAlreadyExists,
    RecordNotFound,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """What the service knows about a stored record, apart from its content."""

    record_id: str
    patient_pseudonym: str
    data_class: str
    content_type: str
    size_bytes: int
    ciphertext_size: int
    ciphertext_sha256: bytes
    plaintext_commitment: bytes
    blob_key: str
    wrapped_key: bytes | None = field(repr=False)
    kek_id: str | None
    custodian: str
    created_by: str
    created_at: datetime
    sensitivity_labels: tuple[str, ...] = ()
    study_id: str | None = None
    modality: str | None = None
    sop_class_uid: str | None = None
    erased: bool = False
    erased_at: datetime | None = None
    registration_tx: bytes | None = field(default=None, repr=False)
    registration_tx_id: str = ""
    registration_height: int = 0
    erasure_tx_id: str = ""
    erasure_height: int = 0

    @property
    def registered(self) -> bool:
        """Whether the ledger holds the record's registration in a final block."""
        return self.registration_height > 0


class CommitKind(StrEnum):
    REGISTRATION = "registration"
    ERASURE = "erasure"


@dataclass(frozen=True, slots=True)
class UnsettledCommit:
    """A ledger transaction of the outbox that is not yet final."""

    record_id: str
    kind: CommitKind
    tx_id: str
    signed_tx: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RecordFilter:
    patient_pseudonym: str | None = None
    data_class: str | None = None
    study_id: str | None = None
    include_erased: bool = False
    include_pending: bool = False


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[RecordMetadata]
    next_page_token: str


class MetadataStore(Protocol):
    async def insert(self, record: RecordMetadata) -> None: ...

    async def get(self, record_id: str) -> RecordMetadata: ...

    async def list_records(
        self, where: RecordFilter, page_size: int = 0, page_token: str = ""
    ) -> RecordPage: ...

    async def shred(
        self, record_id: str, erased_at: datetime, erasure_tx: bytes, erasure_tx_id: str
    ) -> RecordMetadata:
        """Destroy the wrapped data key, mark the record erased and queue its erasure
        transaction, in one statement (idempotent: a second call changes nothing)."""
        ...

    async def unsettled(self, limit: int) -> list[UnsettledCommit]:
        """Outbox entries whose transaction is not yet final, oldest first."""
        ...

    async def mark_final(self, record_id: str, kind: CommitKind, height: int) -> None:
        """Record that the registration (or erasure) of `record_id` is final at `height`."""
        ...

    async def delete(self, record_id: str) -> None:
        """Remove the row entirely: only for rolling back an upload that never completed."""
        ...

    async def wrapped_keys_not_under(self, kek_id: str, limit: int) -> list[tuple[str, str, bytes]]:
        """(record id, kek id, wrapped key) of live records wrapped under another KEK."""
        ...

    async def replace_wrapped_key(
        self, record_id: str, old_kek_id: str, kek_id: str, wrapped_key: bytes
    ) -> bool:
        """Swap the wrapped key if it is still under `old_kek_id`; False if it changed."""
        ...

    async def close(self) -> None: ...


_COLUMNS = (
    "record_id, patient_pseudonym, data_class, sensitivity_labels, content_type, size_bytes, "
    "ciphertext_size, ciphertext_sha256, plaintext_commitment, blob_key, wrapped_key, kek_id, "
    "custodian, study_id, modality, sop_class_uid, created_by, created_at_us, erased, "
    "erased_at_us, registration_tx, registration_tx_id, registration_height, erasure_tx_id, "
    "erasure_height"
)
_COLUMN_COUNT = _COLUMNS.count(",") + 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY,
    patient_pseudonym TEXT NOT NULL,
    data_class TEXT NOT NULL,
    sensitivity_labels TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    ciphertext_size BIGINT NOT NULL,
    ciphertext_sha256 {blob} NOT NULL,
    plaintext_commitment {blob} NOT NULL,
    blob_key TEXT NOT NULL,
    wrapped_key {blob},
    kek_id TEXT,
    custodian TEXT NOT NULL,
    study_id TEXT,
    modality TEXT,
    sop_class_uid TEXT,
    created_by TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    erased INTEGER NOT NULL DEFAULT 0,
    erased_at_us BIGINT,
    registration_tx {blob},
    registration_tx_id TEXT NOT NULL DEFAULT '',
    registration_height BIGINT NOT NULL DEFAULT 0,
    erasure_tx {blob},
    erasure_tx_id TEXT NOT NULL DEFAULT '',
    erasure_height BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_by_patient
    ON records (patient_pseudonym, created_at_us DESC, record_id DESC);
CREATE INDEX IF NOT EXISTS records_by_study ON records (study_id);
CREATE INDEX IF NOT EXISTS records_by_kek ON records (kek_id);
CREATE INDEX IF NOT EXISTS records_unregistered ON records (registration_height, created_at_us);
CREATE INDEX IF NOT EXISTS records_unerased ON records (erasure_height, erased);
"""


def _to_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1_000_000, UTC)


def _row(record: RecordMetadata) -> tuple[Any, ...]:
    return (
        record.record_id,
        record.patient_pseudonym,
        record.data_class,
        ",".join(record.sensitivity_labels),
        record.content_type,
        record.size_bytes,
        record.ciphertext_size,
        record.ciphertext_sha256,
        record.plaintext_commitment,
        record.blob_key,
        record.wrapped_key,
        record.kek_id,
        record.custodian,
        record.study_id,
        record.modality,
        record.sop_class_uid,
        record.created_by,
        _to_us(record.created_at),
        int(record.erased),
        None if record.erased_at is None else _to_us(record.erased_at),
        record.registration_tx,
        record.registration_tx_id,
        record.registration_height,
        record.erasure_tx_id,
        record.erasure_height,
    )


def _record(row: Sequence[Any]) -> RecordMetadata:
    created_at = _from_us(row[17])
    assert created_at is not None
    return RecordMetadata(
        record_id=row[0],
        patient_pseudonym=row[1],
        data_class=row[2],
        sensitivity_labels=tuple(label for label in row[3].split(",") if label),
        content_type=row[4],
        size_bytes=int(row[5]),
        ciphertext_size=int(row[6]),
        ciphertext_sha256=bytes(row[7]),
        plaintext_commitment=bytes(row[8]),
        blob_key=row[9],
        wrapped_key=None if row[10] is None else bytes(row[10]),
        kek_id=row[11],
        custodian=row[12],
        study_id=row[13],
        modality=row[14],
        sop_class_uid=row[15],
        created_by=row[16],
        created_at=created_at,
        erased=bool(row[18]),
        erased_at=_from_us(row[19]),
        registration_tx=None if row[20] is None else bytes(row[20]),
        registration_tx_id=row[21] or "",
        registration_height=int(row[22] or 0),
        erasure_tx_id=row[23] or "",
        erasure_height=int(row[24] or 0),
    )


def _page_token(record: RecordMetadata) -> str:
    key = struct.pack(">q", _to_us(record.created_at)) + record.record_id.encode()
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _parse_page_token(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        (created_at_us,) = struct.unpack(">q", raw[:8])
        return created_at_us, raw[8:].decode()
    except (ValueError, struct.error, UnicodeDecodeError):
        raise InvalidRecordRequest("bad page token") from None


def _list_query(where: RecordFilter, page_size: int, page_token: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("patient_pseudonym", where.patient_pseudonym),
        ("data_class", where.data_class),
        ("study_id", where.study_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if not where.include_erased:
        clauses.append("erased = 0")
    if not where.include_pending:
        clauses.append("registration_height > 0")
    if page_token:
        created_at_us, record_id = _parse_page_token(page_token)
        clauses.append("(created_at_us < ? OR (created_at_us = ? AND record_id < ?))")
        params += [created_at_us, created_at_us, record_id]
    sql = f"SELECT {_COLUMNS} FROM records"  # noqa: S608 -- fixed column names, values bound
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY created_at_us DESC, record_id DESC LIMIT ?"
    params.append(page_size + 1)
    return sql, params


def _effective_page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidRecordRequest("page size is not negative")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class _SqlMetadataStore:
    """The SQL shared by both databases, written with '?' placeholders."""

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        """Run a statement in its own transaction; returns the affected row count."""
        raise NotImplementedError

    async def _insert(self, record: RecordMetadata) -> None:
        raise NotImplementedError

    async def insert(self, record: RecordMetadata) -> None:
        await self._insert(record)

    async def get(self, record_id: str) -> RecordMetadata:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM records WHERE record_id = ?",  # noqa: S608
            (record_id,),
        )
        if not rows:
            raise RecordNotFound(f"no record {record_id}")
        return _record(rows[0])

    async def list_records(
        self, where: RecordFilter, page_size: int = 0, page_token: str = ""
    ) -> RecordPage:
        size = _effective_page_size(page_size)
        sql, params = _list_query(where, size, page_token)
        records = [_record(row) for row in await self._fetch(sql, params)]
        if len(records) > size:
            return RecordPage(records[:size], _page_token(records[size - 1]))
        return RecordPage(records, "")

    async def shred(
        self, record_id: str, erased_at: datetime, erasure_tx: bytes, erasure_tx_id: str
    ) -> RecordMetadata:
        await self._execute(
            "UPDATE records SET wrapped_key = NULL, kek_id = NULL, erased = 1, "
            "erased_at_us = ?, erasure_tx = ?, erasure_tx_id = ? "
            "WHERE record_id = ? AND erased = 0",
            (_to_us(erased_at), erasure_tx, erasure_tx_id, record_id),
        )
        return await self.get(record_id)

    async def unsettled(self, limit: int) -> list[UnsettledCommit]:
        rows = await self._fetch(
            "SELECT record_id, registration_tx_id, registration_tx FROM records "
            "WHERE registration_height = 0 AND registration_tx IS NOT NULL "
            "ORDER BY created_at_us LIMIT ?",
            (limit,),
        )
        found = [
            UnsettledCommit(row[0], CommitKind.REGISTRATION, row[1], bytes(row[2])) for row in rows
        ]
        rows = await self._fetch(
            "SELECT record_id, erasure_tx_id, erasure_tx FROM records "
            "WHERE erased = 1 AND erasure_height = 0 AND erasure_tx IS NOT NULL "
            "ORDER BY erased_at_us LIMIT ?",
            (limit,),
        )
        found += [
            UnsettledCommit(row[0], CommitKind.ERASURE, row[1], bytes(row[2])) for row in rows
        ]
        return found

    async def mark_final(self, record_id: str, kind: CommitKind, height: int) -> None:
        column = "registration_height" if kind is CommitKind.REGISTRATION else "erasure_height"
        await self._execute(
            f"UPDATE records SET {column} = ? WHERE record_id = ?",  # noqa: S608 -- fixed names
            (height, record_id),
        )

    async def delete(self, record_id: str) -> None:
        await self._execute("DELETE FROM records WHERE record_id = ?", (record_id,))

    async def wrapped_keys_not_under(self, kek_id: str, limit: int) -> list[tuple[str, str, bytes]]:
        rows = await self._fetch(
            "SELECT record_id, kek_id, wrapped_key FROM records WHERE erased = 0 "
            "AND wrapped_key IS NOT NULL AND kek_id <> ? ORDER BY record_id LIMIT ?",
            (kek_id, limit),
        )
        return [(row[0], row[1], bytes(row[2])) for row in rows]

    async def replace_wrapped_key(
        self, record_id: str, old_kek_id: str, kek_id: str, wrapped_key: bytes
    ) -> bool:
        changed = await self._execute(
            "UPDATE records SET kek_id = ?, wrapped_key = ? "
            "WHERE record_id = ? AND kek_id = ? AND erased = 0",
            (kek_id, wrapped_key, record_id, old_kek_id),
        )
        return changed == 1


class SqliteMetadataStore(_SqlMetadataStore):
    """One SQLite file (or ':memory:'), one connection used from a worker thread."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: an upload is acknowledged only once its metadata is on disk.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA.format(blob="BLOB"))
        self._lock = asyncio.Lock()

    async def _run(self, func: Any, *args: Any) -> Any:
        async with self._lock:
            try:
                return await asyncio.to_thread(func, *args)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise MetadataUnavailable(f"metadata store error: {type(exc).__name__}") from None

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self._run(
            lambda: self._db.execute(sql, tuple(params)).fetchall()
        )
        return rows

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        def run() -> int:
            with self._db:
                return self._db.execute(sql, tuple(params)).rowcount

        count: int = await self._run(run)
        if sql.startswith("UPDATE records SET wrapped_key = NULL"):
            # Move the zeroed pages out of the WAL into the main file now.
            await self._run(self._db.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
        return count

    async def _insert(self, record: RecordMetadata) -> None:
        placeholders = ", ".join("?" * _COLUMN_COUNT)
        try:
            await self._execute(
                f"INSERT INTO records ({_COLUMNS}) VALUES ({placeholders})",  # noqa: S608
                _row(record),
            )
        except sqlite3.IntegrityError:
            raise RecordAlreadyExists(f"record {record.record_id} exists") from None

    async def close(self) -> None:
        async with self._lock:
            self._db.close()


class PostgresMetadataStore(_SqlMetadataStore):
    """PostgreSQL through one psycopg async connection (autocommit, one statement at a time)."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._conn = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, dsn: str) -> PostgresMetadataStore:
        try:
            connection = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            raise MetadataUnavailable("cannot connect to PostgreSQL") from None
        store = cls(connection)
        await connection.execute(_SCHEMA.format(blob="BYTEA"))
        return store

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._lock:
            try:
                cursor = await self._conn.execute(sql.replace("?", "%s"), tuple(params))
                return list(await cursor.fetchall())
            except psycopg.Error as exc:
                raise MetadataUnavailable(f"metadata store error: {type(exc).__name__}") from None

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        async with self._lock:
            try:
                cursor = await self._conn.execute(sql.replace("?", "%s"), tuple(params))
            except psycopg.errors.UniqueViolation:
                raise
            except psycopg.Error as exc:
                raise MetadataUnavailable(f"metadata store error: {type(exc).__name__}") from None
            return cursor.rowcount

    async def _insert(self, record: RecordMetadata) -> None:
        placeholders = ", ".join("?" * _COLUMN_COUNT)
        try:
            await self._execute(
                f"INSERT INTO records ({_COLUMNS}) VALUES ({placeholders})",  # noqa: S608
                _row(record),
            )
        except psycopg.errors.UniqueViolation:
            raise RecordAlreadyExists(f"record {record.record_id} exists") from None

    async def close(self) -> None:
        await self._conn.close()


async def open_metadata_store(dsn: str) -> MetadataStore:
    """The store a database URL names: sqlite:///path or PostgreSQL (URL or conninfo)."""
    try:
        location = parse_database_url(dsn)
    except DatabaseUrlError as exc:
        raise InvalidRecordRequest(str(exc)) from exc
    if isinstance(location, SqliteLocation):
        return SqliteMetadataStore(location.path)
    return await PostgresMetadataStore.connect(location.conninfo)
