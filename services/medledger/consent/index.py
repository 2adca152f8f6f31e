"""The decision index: the consent state built from final blocks, rebuildable by replay.

Each final block is applied in one store transaction, in order, deterministically: consent
grants and revocations (checked against who may grant), and the identity and record facts
needed to know who is who (patient principals, custodian services, record classes) read
from the same blocks' identity_change and record_registration payloads. A change that may
not be made is not applied; its refusal is recorded with a reason. SQLite by default,
PostgreSQL behind the same interface.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from medledger._gen.common.v1 import (
    actor_pb2,
    consent_change_pb2,
    consent_terms_pb2,
    identity_change_pb2,
)
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.consent.errors import ConsentInvalid
from medledger.consent.policy import CompiledConsent, ConsentCompiler, PatientView
from medledger.consent.terms import check_consent_name, check_revocation, check_terms
from medledger.consent.views import PatientViews, ViewStats
from medledger.core.database import SqliteLocation, parse_database_url
from medledger.crypto import KeyFormatError, SigningContext, VerifyKey, sha256

CUSTODIAN_ROLE = "consent_custodian"
"""Role of a SERVICE principal that records consents on patients' behalf (the consent service)."""
REGISTRAR_ROLE = "registrar"

STATE_ACTIVE = 2
STATE_REVOKED = 3
KEY_ACTIVE, KEY_GRACE, KEY_ENDED = 1, 2, 3

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS consents (
        name TEXT NOT NULL, version BIGINT NOT NULL, patient TEXT NOT NULL,
        state INTEGER NOT NULL, terms BLOB NOT NULL, tx_id TEXT NOT NULL,
        height BIGINT NOT NULL, create_ms BIGINT NOT NULL, revoke_ms BIGINT NOT NULL DEFAULT 0,
        revoke_reason INTEGER NOT NULL DEFAULT 0, revoke_tx TEXT NOT NULL DEFAULT '',
        revoke_height BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (name, version))""",
    "CREATE INDEX IF NOT EXISTS consents_by_patient ON consents (patient, state)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        tx_id TEXT PRIMARY KEY, height BIGINT NOT NULL, kind TEXT NOT NULL,
        consent TEXT NOT NULL, version BIGINT NOT NULL, applied INTEGER NOT NULL,
        reason TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS organisations (name TEXT PRIMARY KEY)""",
    """CREATE TABLE IF NOT EXISTS principals (
        name TEXT PRIMARY KEY, kind INTEGER NOT NULL, roles TEXT NOT NULL,
        patient TEXT NOT NULL, active INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS principals_by_patient ON principals (patient)",
    """CREATE TABLE IF NOT EXISTS principal_keys (
        public_key BLOB PRIMARY KEY, key_id TEXT NOT NULL, principal TEXT NOT NULL,
        state INTEGER NOT NULL, not_before BIGINT NOT NULL, not_after BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS custodians (
        patient TEXT NOT NULL, organisation TEXT NOT NULL, PRIMARY KEY (patient, organisation))""",
    """CREATE TABLE IF NOT EXISTS records (
        name TEXT PRIMARY KEY, patient TEXT NOT NULL, custodian TEXT NOT NULL,
        category INTEGER NOT NULL, labels TEXT NOT NULL, created_ms BIGINT NOT NULL,
        erased INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS index_meta (
        key TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS break_glass_sessions (
        name TEXT PRIMARY KEY, session BLOB NOT NULL, principal TEXT NOT NULL,
        patient TEXT NOT NULL, expire_ms BIGINT NOT NULL, request_id TEXT NOT NULL)""",
)
_DERIVED_TABLES = (
    "consents",
    "outcomes",
    "organisations",
    "principals",
    "principal_keys",
    "custodians",
    "records",
    "index_meta",
)


class Refusal(Exception):  # noqa: N818 -- a refused change, not a failure of the code
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StoredConsent:
    name: str
    version: int
    patient: str
    state: int
    terms: consent_terms_pb2.ConsentTerms
    tx_id: str
    height: int
    create_ms: int
    revoke_ms: int
    revoke_reason: int
    revoke_height: int


@dataclass(frozen=True, slots=True)
class Outcome:
    tx_id: str
    height: int
    kind: str
    consent: str
    version: int
    applied: bool
    reason: str


@dataclass(frozen=True, slots=True)
class PrincipalFacts:
    name: str
    kind: int
    roles: frozenset[str]
    patient: str
    active: bool


@dataclass(frozen=True, slots=True)
class RecordFacts:
    name: str
    patient: str
    custodian: str
    category: int
    labels: frozenset[int]
    created_ms: int
    erased: bool


# --- the store: one interface, SQLite or PostgreSQL ----------------------------------------


class Database(Protocol):
    """The SQL the index needs; ``?`` placeholders in every statement."""

    remote: bool
    """Whether calls wait on the network (run them off the event loop)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of a large result without holding them all in memory."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @contextmanager
    def transaction(self) -> Iterator[None]: ...

    def close(self) -> None: ...


class SqliteDatabase:
    remote = False

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.RLock()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            while rows := cursor.fetchmany(10_000):
                yield from rows

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


class PostgresDatabase:
    remote = True

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._conn = psycopg.connect(dsn, autocommit=True)
        self._lock = threading.RLock()
        self._depth = 0

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s").replace("BLOB", "BYTEA")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cursor = self._conn.execute(self._sql(sql), params)
            rows: list[tuple[Any, ...]] = cursor.fetchall() if cursor.description else []
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with self._lock, self._conn.cursor() as cursor:
            for row in cursor.stream(self._sql(sql), params):
                yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock, self._conn.cursor() as cursor:
            cursor.executemany(self._sql(sql), list(rows))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock, self._conn.transaction():
            yield

    def close(self) -> None:
        self._conn.close()


def open_database(dsn: str) -> Database:
    """``sqlite:///path`` (or ``sqlite:///:memory:``) or a PostgreSQL URL / conninfo string."""
    location = parse_database_url(dsn)
    if isinstance(location, SqliteLocation):
        return SqliteDatabase(location.path)
    return PostgresDatabase(location.conninfo)


# --- the index ----------------------------------------------------------------------------


class ConsentIndex:
    """Applies final blocks and answers the decision engine's and the API's reads."""

    def __init__(
        self,
        db: Database,
        validators: ledger_pb.ValidatorSet | None = None,
        *,
        cache_size: int | None = None,
    ) -> None:
        """``cache_size`` bounds the compiled patient views held in memory (an LRU whose
        misses read the store); None holds every patient once ``load_views`` has run."""
        self._db = db
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._validator_keys: dict[str, bytes] = {}
        if validators is not None:
            self.set_validators(validators)
        self._views = PatientViews(cache_size)
        self._compiler = ConsentCompiler()
        self._custodian_sets: dict[frozenset[str], frozenset[str]] = {}
        self._height = self._meta("next_height", 0) - 1

    def set_validators(self, validators: ledger_pb.ValidatorSet) -> None:
        self._validator_keys = {v.organisation: bytes(v.public_key) for v in validators.validators}

    def close(self) -> None:
        self._db.close()

    @property
    def remote(self) -> bool:
        """Whether the store waits on the network: callers on an event loop use a thread."""
        return self._db.remote

    @property
    def height(self) -> int:
        """Height of the last block applied; -1 before the genesis block."""
        return self._height

    @property
    def next_height(self) -> int:
        return self._height + 1

    def reset(self) -> None:
        """Forget everything derived from blocks, to rebuild by replay from height 0."""
        with self._db.transaction():
            for table in _DERIVED_TABLES:
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 -- fixed table names
        self._views.clear()
        self._height = -1

    # --- applying blocks ---

    def apply_block(self, block: ledger_pb.Block) -> list[Outcome]:
        """Apply one final block (the next in order); returns the consent outcomes in it."""
        height = block.header.height
        if height <= self._height:
            return []
        if height != self._height + 1:
            raise ValueError(f"block {height} applied out of order (next is {self._height + 1})")
        block_ms = block.header.timestamp_unix_ms
        outcomes: list[Outcome] = []
        touched: set[str] = set()
        with self._db.transaction():
            for envelope in block.transactions:
                body = tx_pb.TransactionBody()
                try:
                    body.ParseFromString(envelope.body)
                except DecodeError:
                    continue
                payload = body.WhichOneof("payload")
                if payload == "consent_change":
                    outcome = self._apply_consent(envelope, body, height, block_ms, touched)
                    self._db.execute(
                        "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (tx_id) DO NOTHING",
                        (
                            outcome.tx_id,
                            outcome.height,
                            outcome.kind,
                            outcome.consent,
                            outcome.version,
                            int(outcome.applied),
                            outcome.reason,
                        ),
                    )
                    outcomes.append(outcome)
                elif payload == "identity_change":
                    self._apply_identity(envelope, body, block_ms, touched)
                elif payload == "record_registration":
                    self._apply_record(envelope, body, block_ms, touched)
                elif payload == "record_erasure":
                    self._apply_erasure(envelope, body, block_ms)
            self._set_meta("next_height", height + 1)
            self._set_meta("block_ms", block_ms)
        # Views first, then the height: a decision never claims a height whose changes it
        # has not seen.
        for patient in touched:
            if self._views.complete or self._views.holds(patient):
                self._views.put(patient, self._read_view(patient))
            else:
                self._views.discard(patient)
        self._height = height
        return outcomes

    def _apply_consent(
        self,
        envelope: tx_pb.Transaction,
        body: tx_pb.TransactionBody,
        height: int,
        block_ms: int,
        touched: set[str],
    ) -> Outcome:
        tx_id = sha256(envelope.body).hex()
        change = body.consent_change
        kind = change.WhichOneof("change") or ""
        consent = change.grant.consent if kind == "grant" else change.revocation.consent
        version = change.grant.version if kind == "grant" else change.revocation.version
        try:
            if self.outcome(tx_id) is not None:
                raise Refusal("TX_REPLAYED")
            if not _signature_valid(envelope):
                raise Refusal("TX_BAD_SIGNATURE")
            signer = self._signer(envelope, body, block_ms)
            if kind == "grant":
                self._grant(change.grant, body.signer, signer, tx_id, height, block_ms, touched)
            elif kind == "revocation":
                self._revoke(
                    change.revocation, body.signer, signer, tx_id, height, block_ms, touched
                )
            else:
                raise Refusal("BAD_CONSENT_CHANGE")
        except Refusal as refusal:
            return Outcome(tx_id, height, kind, consent, version, False, refusal.reason)
        return Outcome(tx_id, height, kind, consent, version, True, "")

    def _signer(
        self, envelope: tx_pb.Transaction, body: tx_pb.TransactionBody, block_ms: int
    ) -> PrincipalFacts:
        signer = self.principal(body.signer)
        if signer is None:
            raise Refusal("SIGNER_UNKNOWN")
        if not signer.active:
            raise Refusal("SIGNER_REVOKED")
        rows = self._db.execute(
            "SELECT principal, key_id, state, not_before, not_after FROM principal_keys "
            "WHERE public_key = ?",
            (bytes(envelope.signer_public_key),),
        )
        if not rows or rows[0][0] != signer.name or rows[0][1] != envelope.signer_key_id:
            raise Refusal("SIGNER_KEY_NOT_REGISTERED")
        _, _, state, not_before, not_after = rows[0]
        if state == KEY_ENDED or (not_before and block_ms < not_before):
            raise Refusal("SIGNER_KEY_NOT_VALID")
        if not_after and block_ms > not_after:
            raise Refusal("SIGNER_KEY_NOT_VALID")
        return signer

    def _may_act_for(
        self, signer: PrincipalFacts, patient: str, capacity: int, grantor: str
    ) -> None:
        """Who may grant or revoke for ``patient``: the patient themself, or an agent of one
        of the patient's custodian organisations recording the decision with evidence."""
        if signer.kind == actor_pb2.PRINCIPAL_KIND_PATIENT:
            if signer.patient != patient:
                raise Refusal("SIGNER_NOT_THE_PATIENT")
            if capacity != consent_terms_pb2.GRANTOR_CAPACITY_PATIENT or grantor != signer.name:
                raise Refusal("GRANTOR_NOT_SIGNER")
            return
        agent = signer.kind == actor_pb2.PRINCIPAL_KIND_ADMINISTRATOR or (
            signer.kind == actor_pb2.PRINCIPAL_KIND_SERVICE and CUSTODIAN_ROLE in signer.roles
        )
        if not agent:
            raise Refusal("SIGNER_MAY_NOT_GRANT")
        if _organisation_of(signer.name) not in self.custodians(patient):
            raise Refusal("SIGNER_NOT_CUSTODIAN")
        if capacity == consent_terms_pb2.GRANTOR_CAPACITY_PATIENT:
            raise Refusal("PATIENT_CAPACITY_NEEDS_PATIENT_SIGNATURE")
        if capacity == consent_terms_pb2.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF and (
            grantor != signer.name
        ):
            raise Refusal("GRANTOR_NOT_SIGNER")

    def _grant(
        self,
        grant: consent_change_pb2.ConsentGrant,
        signer_name: str,
        signer: PrincipalFacts,
        tx_id: str,
        height: int,
        block_ms: int,
        touched: set[str],
    ) -> None:
        try:
            check_terms(grant.terms)
            check_consent_name(grant.consent)
        except ConsentInvalid as exc:
            raise Refusal(exc.reason) from None
        terms = grant.terms
        self._may_act_for(signer, terms.patient_pseudonym, terms.grantor_capacity, terms.grantor)
        current = self.consent(grant.consent)
        if grant.version == 1:
            if current is not None:
                raise Refusal("CONSENT_EXISTS")
        else:
            if current is None:
                raise Refusal("CONSENT_NOT_FOUND")
            if current.version != grant.version - 1:
                raise Refusal("STALE_CONSENT_VERSION")
            if current.state != STATE_ACTIVE:
                raise Refusal("CONSENT_NOT_ACTIVE")
            if current.patient != terms.patient_pseudonym:
                raise Refusal("PATIENT_MISMATCH")
            self._end(
                current,
                consent_change_pb2.CONSENT_REVOCATION_REASON_SUPERSEDED,
                tx_id,
                height,
                block_ms,
            )
        self._db.execute(
            "INSERT INTO consents (name, version, patient, state, terms, tx_id, height, create_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                grant.consent,
                grant.version,
                terms.patient_pseudonym,
                STATE_ACTIVE,
                terms.SerializeToString(deterministic=True),
                tx_id,
                height,
                block_ms,
            ),
        )
        touched.add(terms.patient_pseudonym)
        del signer_name

    def _revoke(
        self,
        revocation: consent_change_pb2.ConsentRevocation,
        signer_name: str,
        signer: PrincipalFacts,
        tx_id: str,
        height: int,
        block_ms: int,
        touched: set[str],
    ) -> None:
        try:
            check_revocation(revocation)
        except ConsentInvalid as exc:
            raise Refusal(exc.reason) from None
        current = self.consent(revocation.consent)
        if current is None:
            raise Refusal("CONSENT_NOT_FOUND")
        if current.version != revocation.version:
            raise Refusal("STALE_CONSENT_VERSION")
        if current.state != STATE_ACTIVE:
            raise Refusal("CONSENT_NOT_ACTIVE")
        capacity = (
            consent_terms_pb2.GRANTOR_CAPACITY_PATIENT
            if signer.kind == actor_pb2.PRINCIPAL_KIND_PATIENT
            else consent_terms_pb2.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF
        )
        evidence_is_signature = (
            revocation.evidence.kind == consent_terms_pb2.EVIDENCE_KIND_PATIENT_SIGNATURE
        )
        if evidence_is_signature != (signer.kind == actor_pb2.PRINCIPAL_KIND_PATIENT):
            raise Refusal("EVIDENCE_MISMATCH")
        self._may_act_for(signer, current.patient, capacity, signer_name)
        self._end(current, revocation.reason, tx_id, height, block_ms)
        touched.add(current.patient)

    def _end(
        self, current: StoredConsent, reason: int, tx_id: str, height: int, block_ms: int
    ) -> None:
        self._db.execute(
            "UPDATE consents SET state = ?, revoke_ms = ?, revoke_reason = ?, revoke_tx = ?, "
            "revoke_height = ? WHERE name = ? AND version = ?",
            (STATE_REVOKED, block_ms, reason, tx_id, height, current.name, current.version),
        )

    # --- identity and record facts (mirroring the registry's rules) ---

    def _registry_signer_ok(
        self, envelope: tx_pb.Transaction, body: tx_pb.TransactionBody, org: str, block_ms: int
    ) -> bool:
        if not self._exists("organisations", org):
            return False
        if bytes(envelope.signer_public_key) == self._validator_keys.get(org):
            return True
        if _organisation_of(body.signer) != org:
            return False
        try:
            signer = self._signer(envelope, body, block_ms)
        except Refusal:
            return False
        return signer.kind == actor_pb2.PRINCIPAL_KIND_ADMINISTRATOR or (
            signer.kind == actor_pb2.PRINCIPAL_KIND_SERVICE and REGISTRAR_ROLE in signer.roles
        )

    def _apply_identity(
        self,
        envelope: tx_pb.Transaction,
        body: tx_pb.TransactionBody,
        block_ms: int,
        touched: set[str],
    ) -> None:
        if not _signature_valid(envelope):
            return
        change = body.identity_change
        kind = change.WhichOneof("change")
        if kind == "register_organisation":
            org = change.register_organisation.organisation
            if bytes(envelope.signer_public_key) == self._validator_keys.get(org):
                self._db.execute(
                    "INSERT INTO organisations VALUES (?) ON CONFLICT (name) DO NOTHING", (org,)
                )
            return
        if kind == "register_principal":
            new = change.register_principal
            org = _organisation_of(new.principal)
            if not self._registry_signer_ok(envelope, body, org, block_ms):
                return
            if self.principal(new.principal) is not None or not new.keys:
                return
            if any(self._key_owner(k.public_key) is not None for k in new.keys):
                return
            patient = new.patient_pseudonym if new.kind == actor_pb2.PRINCIPAL_KIND_PATIENT else ""
            self._db.execute(
                "INSERT INTO principals VALUES (?, ?, ?, ?, 1)",
                (new.principal, int(new.kind), ",".join(sorted(set(new.roles))), patient),
            )
            for key in new.keys:
                self._add_key(key, new.principal)
            if patient:
                self._add_custodian(patient, org)
                touched.add(patient)
        elif kind == "rotate_key":
            rotate = change.rotate_key
            if not self._registry_signer_ok(
                envelope, body, _organisation_of(rotate.principal), block_ms
            ):
                return
            if self._key_owner(rotate.new_key.public_key) is not None:
                return
            state = KEY_GRACE if rotate.grace_period_ms else KEY_ENDED
            self._db.execute(
                "UPDATE principal_keys SET state = ?, not_after = ? "
                "WHERE principal = ? AND key_id = ? AND state = ?",
                (
                    state,
                    block_ms + rotate.grace_period_ms,
                    rotate.principal,
                    rotate.old_key_id,
                    KEY_ACTIVE,
                ),
            )
            self._add_key(rotate.new_key, rotate.principal)
        elif kind == "revoke_key":
            revoke = change.revoke_key
            if self._registry_signer_ok(
                envelope, body, _organisation_of(revoke.principal), block_ms
            ):
                self._db.execute(
                    "UPDATE principal_keys SET state = ? WHERE principal = ? AND key_id = ?",
                    (KEY_ENDED, revoke.principal, revoke.key_id),
                )
        elif kind == "revoke_principal":
            gone = change.revoke_principal
            if self._registry_signer_ok(envelope, body, _organisation_of(gone.principal), block_ms):
                self._db.execute(
                    "UPDATE principals SET active = 0 WHERE name = ?", (gone.principal,)
                )
                self._db.execute(
                    "UPDATE principal_keys SET state = ? WHERE principal = ?",
                    (KEY_ENDED, gone.principal),
                )

    def _apply_record(
        self,
        envelope: tx_pb.Transaction,
        body: tx_pb.TransactionBody,
        block_ms: int,
        touched: set[str],
    ) -> None:
        record = body.record_registration
        if not _signature_valid(envelope) or _organisation_of(body.signer) != record.custodian:
            return
        try:
            self._signer(envelope, body, block_ms)
        except Refusal:
            return
        if self._exists("records", record.record):
            return
        labels = ",".join(str(int(v)) for v in sorted(set(record.data_class.sensitivity_labels)))
        self._db.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, 0)",
            (
                record.record,
                record.patient_pseudonym,
                record.custodian,
                int(record.data_class.category),
                labels,
                block_ms,
            ),
        )
        self._add_custodian(record.patient_pseudonym, record.custodian)
        touched.add(record.patient_pseudonym)

    def _apply_erasure(
        self, envelope: tx_pb.Transaction, body: tx_pb.TransactionBody, block_ms: int
    ) -> None:
        facts = self.record(body.record_erasure.record)
        if facts is None or _organisation_of(body.signer) != facts.custodian:
            return
        if not _signature_valid(envelope):
            return
        try:
            self._signer(envelope, body, block_ms)
        except Refusal:
            return
        self._db.execute("UPDATE records SET erased = 1 WHERE name = ?", (facts.name,))

    def _add_key(self, key: identity_change_pb2.PublicKey, owner: str) -> None:
        self._db.execute(
            "INSERT INTO principal_keys VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (public_key) DO NOTHING",
            (
                bytes(key.public_key),
                key.key_id,
                owner,
                KEY_ACTIVE,
                key.not_before_unix_ms,
                key.not_after_unix_ms,
            ),
        )

    def _add_custodian(self, patient: str, organisation: str) -> None:
        self._db.execute(
            "INSERT INTO custodians VALUES (?, ?) ON CONFLICT (patient, organisation) DO NOTHING",
            (patient, organisation),
        )

    def _key_owner(self, public_key: bytes) -> str | None:
        rows = self._db.execute(
            "SELECT principal FROM principal_keys WHERE public_key = ?", (bytes(public_key),)
        )
        return str(rows[0][0]) if rows else None

    def _exists(self, table: str, name: str) -> bool:
        return bool(self._db.execute(f"SELECT 1 FROM {table} WHERE name = ?", (name,)))  # noqa: S608

    def _meta(self, key: str, default: int) -> int:
        rows = self._db.execute("SELECT value FROM index_meta WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else default

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO index_meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
            (key, value, value),
        )

    # --- reads ---

    def patient_view(self, patient: str) -> PatientView:
        """The patient's active consents, compiled, and custodians: from memory, or read
        from the store on a miss (and then held)."""
        view = self._views.lookup(patient)
        if view is not None:
            return view
        epoch = self._views.epoch
        view = self._read_view(patient)
        self._views.put_if_unchanged(patient, view, epoch)
        return view

    def view_in_memory(self, patient: str) -> bool:
        """Whether the patient's view can be had without the store."""
        return self._views.in_memory(patient)

    def view_stats(self) -> ViewStats:
        return self._views.stats()

    def load_views(self) -> ViewStats:
        """Compile every patient's active consents into memory, so no decision waits on the
        store (at start and after a bulk load). With a bounded cache, the most recently
        read patients are kept."""
        self._views.clear()
        # Read and compiled before any is held: the store and the views are never locked
        # together, whatever thread applies blocks meanwhile.
        self._views.fill(list(self._compiled_views()))
        self._views.mark_complete()
        return self._views.stats()

    def _compiled_views(self) -> Iterator[tuple[str, PatientView]]:
        custodians: dict[str, set[str]] = {}
        for patient, organisation in self._db.iterate(
            "SELECT patient, organisation FROM custodians"
        ):
            custodians.setdefault(patient, set()).add(organisation)
        compile_terms = self._compiler.compile
        parse = consent_terms_pb2.ConsentTerms.FromString
        current = ""
        consents: list[CompiledConsent] = []
        rows = self._db.iterate(
            "SELECT patient, name, version, terms FROM consents WHERE state = ? ORDER BY patient",
            (STATE_ACTIVE,),
        )
        for patient, name, version, terms in rows:
            if patient != current:
                if consents:
                    yield current, self._view(consents, custodians.pop(current, set()))
                current, consents = patient, []
            consents.append(compile_terms(name, int(version), parse(terms)))
        if consents:
            yield current, self._view(consents, custodians.pop(current, set()))
        for patient, organisations in custodians.items():
            yield patient, self._view([], organisations)

    def _view(self, consents: list[CompiledConsent], custodians: set[str]) -> PatientView:
        return PatientView(consents, self._shared(frozenset(custodians)))

    def _shared(self, custodians: frozenset[str]) -> frozenset[str]:
        # Patients share a handful of custodian sets; one object each keeps memory flat.
        return self._custodian_sets.setdefault(custodians, custodians)

    def _read_view(self, patient: str) -> PatientView:
        rows = self._db.execute(
            "SELECT name, version, terms FROM consents WHERE patient = ? AND state = ?",
            (patient, STATE_ACTIVE),
        )
        consents = [
            self._compiler.compile(
                name, int(version), consent_terms_pb2.ConsentTerms.FromString(bytes(terms))
            )
            for name, version, terms in rows
        ]
        return PatientView(consents, self._shared(self.custodians(patient)))

    def custodians(self, patient: str) -> frozenset[str]:
        rows = self._db.execute("SELECT organisation FROM custodians WHERE patient = ?", (patient,))
        return frozenset(str(r[0]) for r in rows)

    def principal(self, name: str) -> PrincipalFacts | None:
        rows = self._db.execute(
            "SELECT kind, roles, patient, active FROM principals WHERE name = ?", (name,)
        )
        if not rows:
            return None
        kind, roles, patient, active = rows[0]
        return PrincipalFacts(
            name, int(kind), frozenset(r for r in str(roles).split(",") if r), patient, bool(active)
        )

    def record(self, name: str) -> RecordFacts | None:
        rows = self._db.execute(
            "SELECT patient, custodian, category, labels, created_ms, erased FROM records "
            "WHERE name = ?",
            (name,),
        )
        if not rows:
            return None
        patient, custodian, category, labels, created_ms, erased = rows[0]
        return RecordFacts(
            name,
            patient,
            custodian,
            int(category),
            frozenset(int(v) for v in str(labels).split(",") if v),
            int(created_ms),
            bool(erased),
        )

    def consent(self, name: str, version: int = 0) -> StoredConsent | None:
        """The latest version of a consent, or the given one."""
        columns = (
            "name, version, patient, state, terms, tx_id, height, create_ms, revoke_ms, "
            "revoke_reason, revoke_height"
        )
        if version:
            rows = self._db.execute(
                f"SELECT {columns} FROM consents WHERE name = ? AND version = ?",  # noqa: S608
                (name, version),
            )
        else:
            rows = self._db.execute(
                f"SELECT {columns} FROM consents WHERE name = ? "  # noqa: S608
                "ORDER BY version DESC LIMIT 1",
                (name,),
            )
        return _stored(rows[0]) if rows else None

    def list_consents(
        self,
        *,
        patient: str = "",
        states: Sequence[int] = (STATE_ACTIVE,),
        after: str = "",
        limit: int = 50,
    ) -> list[StoredConsent]:
        """Latest version of each consent, ordered by name, after ``after``."""
        columns = (
            "c.name, c.version, c.patient, c.state, c.terms, c.tx_id, c.height, c.create_ms, "
            "c.revoke_ms, c.revoke_reason, c.revoke_height"
        )
        sql = (
            f"SELECT {columns} FROM consents c WHERE c.version = "  # noqa: S608
            "(SELECT MAX(version) FROM consents d WHERE d.name = c.name) AND c.name > ?"
        )
        params: list[Any] = [after]
        if patient:
            sql += " AND c.patient = ?"
            params.append(patient)
        if states:
            sql += f" AND c.state IN ({','.join('?' for _ in states)})"
            params.extend(states)
        sql += " ORDER BY c.name LIMIT ?"
        params.append(limit)
        return [_stored(r) for r in self._db.execute(sql, params)]

    def outcome(self, tx_id: str) -> Outcome | None:
        rows = self._db.execute(
            "SELECT tx_id, height, kind, consent, version, applied, reason FROM outcomes "
            "WHERE tx_id = ?",
            (tx_id,),
        )
        if not rows:
            return None
        t, h, k, c, v, a, r = rows[0]
        return Outcome(t, int(h), k, c, int(v), bool(a), r)

    def refusals(self) -> list[Outcome]:
        rows = self._db.execute(
            "SELECT tx_id, height, kind, consent, version, applied, reason FROM outcomes "
            "WHERE applied = 0 ORDER BY height, tx_id"
        )
        return [Outcome(t, int(h), k, c, int(v), bool(a), r) for t, h, k, c, v, a, r in rows]

    def fingerprint(self) -> bytes:
        """A digest of the whole derived state, to check that a replay rebuilds it exactly."""
        parts: list[bytes] = []
        for table in _DERIVED_TABLES:
            order = "1" if table in ("organisations", "index_meta") else "1, 2"
            for row in self._db.execute(f"SELECT * FROM {table} ORDER BY {order}"):  # noqa: S608
                parts.append(repr(row).encode())
        return sha256(*parts)

    # --- local, non-replicated state: break-glass sessions ---

    def put_break_glass(
        self,
        name: str,
        session: bytes,
        principal: str,
        patient: str,
        expire_ms: int,
        request_id: str,
    ) -> None:
        self._db.execute(
            "INSERT INTO break_glass_sessions VALUES (?, ?, ?, ?, ?, ?)",
            (name, session, principal, patient, expire_ms, request_id),
        )

    def break_glass(self, name: str) -> tuple[bytes, str, str, int] | None:
        rows = self._db.execute(
            "SELECT session, principal, patient, expire_ms FROM break_glass_sessions "
            "WHERE name = ?",
            (name,),
        )
        if not rows:
            return None
        session, principal, patient, expire_ms = rows[0]
        return bytes(session), principal, patient, int(expire_ms)

    def break_glass_by_request(self, principal: str, request_id: str) -> bytes | None:
        rows = self._db.execute(
            "SELECT session FROM break_glass_sessions WHERE principal = ? AND request_id = ?",
            (principal, request_id),
        )
        return bytes(rows[0][0]) if rows else None

    # --- bulk loading (benchmarks, restoring a snapshot) ---

    def bulk_load(
        self,
        consents: Iterable[tuple[str, int, consent_terms_pb2.ConsentTerms, str]],
        custodians: Mapping[str, Iterable[str]] = {},
        *,
        height: int = 0,
        batch: int = 20_000,
    ) -> int:
        """Insert already-validated active consents (name, version, terms, tx id) quickly."""
        count = 0
        sql = (
            "INSERT INTO consents (name, version, patient, state, terms, tx_id, height, create_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
        )
        rows: list[tuple[Any, ...]] = []
        for name, version, terms, tx_id in consents:
            rows.append(
                (
                    name,
                    version,
                    terms.patient_pseudonym,
                    STATE_ACTIVE,
                    terms.SerializeToString(deterministic=True),
                    tx_id,
                    height,
                )
            )
            if len(rows) >= batch:
                with self._db.transaction():
                    self._db.executemany(sql, rows)
                count += len(rows)
                rows = []
        with self._db.transaction():
            if rows:
                self._db.executemany(sql, rows)
            self._db.executemany(
                "INSERT INTO custodians VALUES (?, ?) ON CONFLICT (patient, organisation) "
                "DO NOTHING",
                [(p, o) for p, orgs in custodians.items() for o in orgs],
            )
        self._views.clear()
        return count + len(rows)


def _stored(row: tuple[Any, ...]) -> StoredConsent:
    name, version, patient, state, terms, tx_id, height, create_ms, revoke_ms, reason, rh = row
    return StoredConsent(
        name,
        int(version),
        patient,
        int(state),
        consent_terms_pb2.ConsentTerms.FromString(bytes(terms)),
        tx_id,
        int(height),
        int(create_ms),
        int(revoke_ms),
        int(reason),
        int(rh),
    )


def _organisation_of(principal: str) -> str:
    parts = principal.split("/")
    if len(parts) >= 2 and parts[0] == "organisations":
        return f"organisations/{parts[1]}"
    return ""


def _signature_valid(envelope: tx_pb.Transaction) -> bool:
    try:
        key = VerifyKey(envelope.signer_public_key)
    except KeyFormatError:
        return False
    return key.key_id == envelope.signer_key_id and key.is_valid(
        SigningContext.TRANSACTION, envelope.body, envelope.signature
    )
