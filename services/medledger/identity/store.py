"""The identity view's persistence: organisations, principals, keys and change outcomes built
from final blocks, plus login challenges and idempotency keys. SQLite (one file, WAL) by
default, PostgreSQL for production; the view can be dropped and rebuilt by replay."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger.core.database import DatabaseUrlError, SqliteLocation, parse_database_url
from medledger.identity.registry import TOKEN_ISSUER_ROLE, ChangeOutcome, RegistryWriter

T = TypeVar("T")

_VIEW_TABLES = ("organisations", "principals", "principal_roles", "public_keys", "outcomes")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS view_state (id INTEGER PRIMARY KEY, height BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS organisations (name TEXT PRIMARY KEY, data {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY, organisation TEXT NOT NULL, kind INTEGER NOT NULL,
    state INTEGER NOT NULL, data {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS principals_by_org ON principals (organisation, name);
CREATE TABLE IF NOT EXISTS principal_roles (
    principal TEXT NOT NULL, role TEXT NOT NULL, PRIMARY KEY (principal, role));
CREATE INDEX IF NOT EXISTS roles_by_role ON principal_roles (role, principal);
CREATE TABLE IF NOT EXISTS public_keys (
    public_key {blob} PRIMARY KEY, key_id TEXT NOT NULL, owner TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (
    tx_id TEXT PRIMARY KEY, height BIGINT NOT NULL, change TEXT NOT NULL,
    resource TEXT NOT NULL, organisation TEXT NOT NULL, signer TEXT NOT NULL,
    applied INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, tx_id TEXT NOT NULL,
    resource TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS challenges (
    challenge_id TEXT PRIMARY KEY, principal TEXT NOT NULL, key_id TEXT NOT NULL,
    challenge {blob} NOT NULL, expire_ms BIGINT NOT NULL, used INTEGER NOT NULL);
"""


class StoreError(Exception):
    """The database URL is unusable."""

    reason = "BAD_DATABASE_URL"


@dataclass(frozen=True)
class Challenge:
    """A login challenge as issued; consumed at most once."""

    challenge_id: str
    principal: str
    key_id: str
    challenge: bytes
    expire_ms: int


@dataclass(frozen=True)
class RequestRecord:
    """What an idempotent mutation did the first time (AIP-155)."""

    request_id: str
    fingerprint: str
    tx_id: str
    resource: str


class _Connection:
    """One database connection of either dialect, used under a lock from worker threads."""

    def __init__(self, dsn: str) -> None:
        try:
            location = parse_database_url(dsn)
        except DatabaseUrlError as exc:
            raise StoreError(str(exc)) from exc
        self.lock = threading.RLock()
        self.dialect = "sqlite" if isinstance(location, SqliteLocation) else "postgresql"
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        if isinstance(location, SqliteLocation):
            path = location.path
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._sqlite = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=NORMAL")
        else:
            self._pg = psycopg.connect(location.conninfo)
            self._pg.autocommit = True
        self._depth = 0

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            if self._sqlite is not None:
                cursor = self._sqlite.execute(statement, tuple(params))
                return cursor.fetchall()
            assert self._pg is not None
            with self._pg.cursor() as pg_cursor:
                pg_cursor.execute(statement.replace("?", "%s"), tuple(params))
                return pg_cursor.fetchall() if pg_cursor.description else []

    def script(self, text: str) -> None:
        for statement in text.split(";"):
            if statement.strip():
                self.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.lock:
            self._depth += 1
            try:
                if self._depth > 1:
                    yield
                elif self._sqlite is not None:
                    self._sqlite.execute("BEGIN IMMEDIATE")
                    try:
                        yield
                    except BaseException:
                        self._sqlite.execute("ROLLBACK")
                        raise
                    self._sqlite.execute("COMMIT")
                else:
                    assert self._pg is not None
                    with self._pg.transaction():
                        yield
            finally:
                self._depth -= 1

    def close(self) -> None:
        with self.lock:
            if self._sqlite is not None:
                self._sqlite.close()
            if self._pg is not None:
                self._pg.close()


class _Writer(RegistryWriter):
    """The RegistryWriter of one block, inside the store's transaction."""

    def __init__(self, store: IdentityStore) -> None:
        self._store = store
        self.changed: list[str] = []

    def organisation(self, name: str) -> pb.Organisation | None:
        return self._store.organisation(name)

    def principal(self, name: str) -> pb.Principal | None:
        return self._store.principal(name)

    def key_owner(self, public_key: bytes) -> str | None:
        rows = self._store.db.execute(
            "SELECT owner FROM public_keys WHERE public_key = ?", (public_key,)
        )
        return str(rows[0][0]) if rows else None

    def put_organisation(self, organisation: pb.Organisation) -> None:
        self._store.db.execute("DELETE FROM organisations WHERE name = ?", (organisation.name,))
        self._store.db.execute(
            "INSERT INTO organisations (name, data) VALUES (?, ?)",
            (organisation.name, organisation.SerializeToString()),
        )
        self.changed.append(organisation.name)

    def put_principal(self, principal: pb.Principal) -> None:
        db = self._store.db
        organisation = "/".join(principal.name.split("/")[:2])
        db.execute("DELETE FROM principals WHERE name = ?", (principal.name,))
        db.execute("DELETE FROM principal_roles WHERE principal = ?", (principal.name,))
        db.execute(
            "INSERT INTO principals (name, organisation, kind, state, data) VALUES (?, ?, ?, ?, ?)",
            (
                principal.name,
                organisation,
                principal.kind,
                principal.state,
                principal.SerializeToString(),
            ),
        )
        for role in sorted(set(principal.roles)):
            db.execute(
                "INSERT INTO principal_roles (principal, role) VALUES (?, ?)",
                (principal.name, role),
            )
        self.changed.append(principal.name)

    def claim_key(self, public_key: bytes, key_id: str, owner: str) -> None:
        self._store.db.execute(
            "INSERT INTO public_keys (public_key, key_id, owner) VALUES (?, ?, ?)",
            (public_key, key_id, owner),
        )

    def record_outcome(self, outcome: ChangeOutcome) -> None:
        self._store.db.execute("DELETE FROM outcomes WHERE tx_id = ?", (outcome.tx_id,))
        self._store.db.execute(
            "INSERT INTO outcomes (tx_id, height, change, resource, organisation, signer, "
            "applied, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                outcome.tx_id,
                outcome.height,
                outcome.change,
                outcome.resource,
                outcome.organisation,
                outcome.signer,
                int(outcome.applied),
                outcome.reason,
            ),
        )


class IdentityStore:
    """The identity view and the service's small operational tables. Thread-safe."""

    def __init__(self, dsn: str) -> None:
        self.db = _Connection(dsn)
        blob = "BLOB" if self.db.dialect == "sqlite" else "BYTEA"
        with self.db.transaction():
            self.db.script(_SCHEMA.format(blob=blob))

    def close(self) -> None:
        self.db.close()

    # --- the view ---

    def height(self) -> int:
        """The last block height applied; -1 before the first."""
        rows = self.db.execute("SELECT height FROM view_state WHERE id = 1")
        return int(rows[0][0]) if rows else -1

    def apply_block(self, height: int, apply: Callable[[RegistryWriter], T]) -> tuple[T, list[str]]:
        """Run ``apply`` and record ``height`` in one transaction; also the names changed."""
        with self.db.transaction():
            if height <= self.height():
                raise ValueError(f"block {height} is already applied")
            writer = _Writer(self)
            result = apply(writer)
            self.db.execute("DELETE FROM view_state WHERE id = 1")
            self.db.execute("INSERT INTO view_state (id, height) VALUES (1, ?)", (height,))
        return result, writer.changed

    def reset_view(self) -> None:
        """Forget the whole view so it is rebuilt by replay from block 0."""
        with self.db.transaction():
            for table in (*_VIEW_TABLES, "view_state"):
                self.db.execute(f"DELETE FROM {table}")  # noqa: S608 -- fixed table names

    def organisation(self, name: str) -> pb.Organisation | None:
        rows = self.db.execute("SELECT data FROM organisations WHERE name = ?", (name,))
        return pb.Organisation.FromString(bytes(rows[0][0])) if rows else None

    def list_organisations(self, after: str, limit: int) -> list[pb.Organisation]:
        rows = self.db.execute(
            "SELECT data FROM organisations WHERE name > ? ORDER BY name LIMIT ?", (after, limit)
        )
        return [pb.Organisation.FromString(bytes(row[0])) for row in rows]

    def principal(self, name: str) -> pb.Principal | None:
        rows = self.db.execute("SELECT data FROM principals WHERE name = ?", (name,))
        return pb.Principal.FromString(bytes(rows[0][0])) if rows else None

    def list_principals(
        self,
        *,
        organisation: str | None,
        role: str,
        kind: int,
        show_revoked: bool,
        after: str,
        limit: int,
    ) -> list[pb.Principal]:
        clauses: list[str] = ["p.name > ?"]
        params: list[object] = [after]
        if organisation is not None:
            clauses.append("p.organisation = ?")
            params.append(organisation)
        if kind:
            clauses.append("p.kind = ?")
            params.append(kind)
        if not show_revoked:
            clauses.append("p.state <> ?")
            params.append(pb.PRINCIPAL_STATE_REVOKED)
        if role:
            clauses.append(
                "EXISTS (SELECT 1 FROM principal_roles r WHERE r.principal = p.name AND r.role = ?)"
            )
            params.append(role)
        rows = self.db.execute(
            f"SELECT p.data FROM principals p WHERE {' AND '.join(clauses)} "  # noqa: S608
            "ORDER BY p.name LIMIT ?",
            (*params, limit),
        )
        return [pb.Principal.FromString(bytes(row[0])) for row in rows]

    def token_issuers(self, organisation: str) -> list[pb.Principal]:
        """Active principals of ``organisation`` whose keys sign its tokens."""
        rows = self.db.execute(
            "SELECT p.data FROM principals p JOIN principal_roles r ON r.principal = p.name "
            "WHERE p.organisation = ? AND r.role = ? AND p.state = ? ORDER BY p.name",
            (organisation, TOKEN_ISSUER_ROLE, pb.PRINCIPAL_STATE_ACTIVE),
        )
        return [pb.Principal.FromString(bytes(row[0])) for row in rows]

    def outcome(self, tx_id: str) -> ChangeOutcome | None:
        rows = self.db.execute(
            "SELECT tx_id, height, change, resource, organisation, signer, applied, reason "
            "FROM outcomes WHERE tx_id = ?",
            (tx_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return ChangeOutcome(
            str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), bool(r[6]), str(r[7])
        )

    # --- idempotency keys ---

    def request(self, request_id: str) -> RequestRecord | None:
        rows = self.db.execute(
            "SELECT request_id, fingerprint, tx_id, resource FROM requests WHERE request_id = ?",
            (request_id,),
        )
        return RequestRecord(*(str(v) for v in rows[0])) if rows else None

    def remember_request(self, record: RequestRecord) -> None:
        with self.db.transaction():
            if self.request(record.request_id) is None:
                self.db.execute(
                    "INSERT INTO requests (request_id, fingerprint, tx_id, resource) "
                    "VALUES (?, ?, ?, ?)",
                    (record.request_id, record.fingerprint, record.tx_id, record.resource),
                )

    # --- login challenges ---

    def put_challenge(self, challenge: Challenge, now_ms: int) -> None:
        with self.db.transaction():
            # Expired challenges are useless; clearing them keeps the table small.
            self.db.execute("DELETE FROM challenges WHERE expire_ms < ?", (now_ms,))
            self.db.execute(
                "INSERT INTO challenges (challenge_id, principal, key_id, challenge, expire_ms, "
                "used) VALUES (?, ?, ?, ?, ?, 0)",
                (
                    challenge.challenge_id,
                    challenge.principal,
                    challenge.key_id,
                    challenge.challenge,
                    challenge.expire_ms,
                ),
            )

    def consume_challenge(self, challenge_id: str) -> Challenge | None:
        """The challenge, marked used; None if unknown or already used (atomic across replicas)."""
        rows = self.db.execute(
            "UPDATE challenges SET used = 1 WHERE challenge_id = ? AND used = 0 "
            "RETURNING challenge_id, principal, key_id, challenge, expire_ms",
            (challenge_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return Challenge(str(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4]))
