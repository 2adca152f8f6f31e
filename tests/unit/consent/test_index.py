"""The decision index contract, on SQLite and on PostgreSQL: final blocks apply in order into
the store and the compiled in-memory views, refused changes are recorded with reasons, the
state rebuilds identically by replay, and a remote store is never called on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import (
    actor_pb2,
    audit_event_pb2,
    consent_change_pb2,
    identity_change_pb2,
    validator_pb2,
)
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.consent import index as ix
from medledger.consent.policy import DecisionEngine
from medledger.consent.service import ConsentService, DecisionRecord
from medledger.crypto import SigningKey
from medledger.ledgerclient import sign_transaction

ORG = "organisations/org-a"
OTHER_ORG = "organisations/org-b"
PATIENT = "p-1"
PATIENT_PRINCIPAL = f"{ORG}/principals/patient-1"
CUSTODIAN = f"{ORG}/principals/consent"
DOCTOR_B = f"{OTHER_ORG}/principals/dr-b"
CHAIN = "index-test"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def dsn(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'consent.sqlite3'}"
    return str(request.getfixturevalue("pg_dsn"))


class Chain:
    """Signed transactions and final blocks of a small consortium, built by hand."""

    def __init__(self) -> None:
        self.validator_a = SigningKey.generate()
        self.validator_b = SigningKey.generate()
        self.patient = SigningKey.generate()
        self.custodian = SigningKey.generate()
        self.doctor_b = SigningKey.generate()
        self.height = -1
        self.nonce = 0

    @property
    def validators(self) -> ledger_pb.ValidatorSet:
        return ledger_pb.ValidatorSet(
            validators=[
                validator_pb2.Validator(
                    organisation=ORG, public_key=self.validator_a.public_key.raw
                ),
                validator_pb2.Validator(
                    organisation=OTHER_ORG, public_key=self.validator_b.public_key.raw
                ),
            ]
        )

    def tx(self, signer: str, key: SigningKey, **payload: Any) -> tx_pb.Transaction:
        self.nonce += 1
        body = tx_pb.TransactionBody(
            chain_id=CHAIN,
            nonce=self.nonce,
            created_at_unix_ms=1_700_000_000_000,
            signer=signer,
            **payload,
        )
        return tx_pb.Transaction.FromString(sign_transaction(body, key))

    def block(self, *transactions: tx_pb.Transaction) -> ledger_pb.Block:
        self.height += 1
        return ledger_pb.Block(
            header=ledger_pb.BlockHeader(
                chain_id=CHAIN,
                height=self.height,
                timestamp_unix_ms=1_700_000_000_000 + self.height * 1000,
            ),
            transactions=list(transactions),
        )

    def genesis_blocks(self) -> list[ledger_pb.Block]:
        """Both organisations, the patient, the custodian service and a doctor of org-b."""
        return [
            self.block(
                self.tx(
                    ORG, self.validator_a, identity_change=_organisation(ORG, self.validator_a)
                ),
                self.tx(
                    OTHER_ORG,
                    self.validator_b,
                    identity_change=_organisation(OTHER_ORG, self.validator_b),
                ),
            ),
            self.block(
                self.tx(
                    ORG,
                    self.validator_a,
                    identity_change=_principal(
                        PATIENT_PRINCIPAL,
                        actor_pb2.PRINCIPAL_KIND_PATIENT,
                        self.patient,
                        patient=PATIENT,
                    ),
                ),
                self.tx(
                    ORG,
                    self.validator_a,
                    identity_change=_principal(
                        CUSTODIAN,
                        actor_pb2.PRINCIPAL_KIND_SERVICE,
                        self.custodian,
                        (ix.CUSTODIAN_ROLE,),
                    ),
                ),
                self.tx(
                    OTHER_ORG,
                    self.validator_b,
                    identity_change=_principal(
                        DOCTOR_B,
                        actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
                        self.doctor_b,
                        ("physician",),
                    ),
                ),
            ),
        ]

    def grant(self, name: str, version: int = 1, grantor: str = PATIENT_PRINCIPAL) -> Any:
        key = {PATIENT_PRINCIPAL: self.patient, DOCTOR_B: self.doctor_b}[grantor]
        change = consent_change_pb2.ConsentChange(
            grant=consent_change_pb2.ConsentGrant(
                consent=name, version=version, terms=_terms(grantor)
            )
        )
        return self.tx(grantor, key, consent_change=change)

    def revoke(self, name: str, version: int) -> tx_pb.Transaction:
        change = consent_change_pb2.ConsentChange(
            revocation=consent_change_pb2.ConsentRevocation(
                consent=name,
                version=version,
                reason=consent_change_pb2.CONSENT_REVOCATION_REASON_WITHDRAWN,
                evidence=ct.GrantorEvidence(
                    kind=ct.EVIDENCE_KIND_PATIENT_SIGNATURE, captured_at_unix_ms=1
                ),
            )
        )
        return self.tx(PATIENT_PRINCIPAL, self.patient, consent_change=change)


def _key(key: SigningKey) -> identity_change_pb2.PublicKey:
    return identity_change_pb2.PublicKey(
        key_id=key.public_key.key_id,
        algorithm=identity_change_pb2.KEY_ALGORITHM_ED25519,
        public_key=key.public_key.raw,
    )


def _organisation(name: str, key: SigningKey) -> identity_change_pb2.IdentityChange:
    return identity_change_pb2.IdentityChange(
        register_organisation=identity_change_pb2.RegisterOrganisation(
            organisation=name, display_name="Hospital", keys=[_key(key)]
        )
    )


def _principal(
    name: str, kind: int, key: SigningKey, roles: Sequence[str] = (), patient: str = ""
) -> identity_change_pb2.IdentityChange:
    return identity_change_pb2.IdentityChange(
        register_principal=identity_change_pb2.RegisterPrincipal(
            principal=name,
            kind=kind,  # type: ignore[arg-type]
            roles=roles,
            keys=[_key(key)],
            patient_pseudonym=patient,
        )
    )


def _terms(grantor: str) -> ct.ConsentTerms:
    return ct.ConsentTerms(
        patient_pseudonym=PATIENT,
        grantor=grantor,
        grantor_capacity=ct.GRANTOR_CAPACITY_PATIENT,
        grantor_evidence=ct.GrantorEvidence(
            kind=ct.EVIDENCE_KIND_PATIENT_SIGNATURE, captured_at_unix_ms=1
        ),
        grantee=ct.Party(organisation=OTHER_ORG),
        provision=ct.Provision(
            type=ct.PROVISION_TYPE_PERMIT,
            actions=[acc.ACCESS_ACTION_READ],
            purposes=[acc.PURPOSE_OF_USE_TREAT],
        ),
        scope=ct.CONSENT_SCOPE_PATIENT_PRIVACY,
    )


def _question() -> pb.CheckAccessRequest:
    return pb.CheckAccessRequest(
        actor=actor_pb2.Actor(
            principal=DOCTOR_B,
            organisation=OTHER_ORG,
            roles=["physician"],
            kind=actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
        ),
        patient_pseudonym=PATIENT,
        data_class=acc.DataClass(category=acc.RECORD_CATEGORY_LABORATORY),
        action=acc.ACCESS_ACTION_READ,
        purpose=acc.PURPOSE_OF_USE_TREAT,
    )


class Sink:
    def __init__(self) -> None:
        self.events: list[audit_event_pb2.AuditEvent] = []

    def decided(self, decision: DecisionRecord) -> None:
        self.record(decision.event())

    def record(self, event: audit_event_pb2.AuditEvent) -> None:
        self.events.append(event)

    async def announce_break_glass(self, session: pb.BreakGlassSession) -> None:
        return None


def _decide(index: ix.ConsentIndex) -> pb.CheckAccessResponse:
    return ConsentService(index, DecisionEngine(), Sink()).check_access(_question())


@pytest.fixture
def chain() -> Chain:
    return Chain()


@pytest.fixture
def index(dsn: str, chain: Chain) -> Iterator[ix.ConsentIndex]:
    opened = ix.ConsentIndex(ix.open_database(dsn), chain.validators)
    for block in chain.genesis_blocks():
        opened.apply_block(block)
    opened.load_views()
    yield opened
    opened.close()


def test_identity_facts_come_from_blocks(index: ix.ConsentIndex) -> None:
    patient = index.principal(PATIENT_PRINCIPAL)
    assert patient is not None
    assert (patient.kind, patient.patient, patient.active) == (
        actor_pb2.PRINCIPAL_KIND_PATIENT,
        PATIENT,
        True,
    )
    assert index.principal(CUSTODIAN) is not None
    assert index.custodians(PATIENT) == frozenset({ORG})
    assert index.height == 1 and index.next_height == 2


def test_grant_and_revocation_reach_the_views_as_blocks_apply(
    index: ix.ConsentIndex, chain: Chain
) -> None:
    assert index.view_stats().complete
    assert _decide(index).reason == "OTHER_ORGANISATION_REQUIRES_CONSENT"
    [granted] = index.apply_block(chain.block(chain.grant("consents/share")))
    assert (granted.applied, granted.reason) == (True, "")
    answer = _decide(index)
    assert (answer.decision, answer.consent.consent, answer.ledger_height) == (
        acc.DECISION_PERMIT,
        "consents/share",
        2,
    )
    stored = index.consent("consents/share")
    assert stored is not None and stored.state == ix.STATE_ACTIVE and stored.height == 2
    [revoked] = index.apply_block(chain.block(chain.revoke("consents/share", 1)))
    assert revoked.applied, revoked.reason
    assert _decide(index).decision == acc.DECISION_DENY
    stored = index.consent("consents/share")
    assert stored is not None and stored.state == ix.STATE_REVOKED and stored.revoke_height == 3
    # Every decision above came from memory: the index was complete and stayed so.
    stats = index.view_stats()
    assert stats.complete and stats.misses == 0


def test_a_bounded_cache_reads_misses_from_the_store_and_never_serves_stale_views(
    dsn: str, chain: Chain
) -> None:
    index = ix.ConsentIndex(ix.open_database(dsn), chain.validators, cache_size=1)
    try:
        for block in chain.genesis_blocks():
            index.apply_block(block)
        index.apply_block(chain.block(chain.grant("consents/share")))
        assert _decide(index).decision == acc.DECISION_PERMIT
        assert index.patient_view("someone-else").consents == ()  # evicts p-1
        assert _decide(index).decision == acc.DECISION_PERMIT  # read back from the store
        index.apply_block(chain.block(chain.revoke("consents/share", 1)))
        assert _decide(index).decision == acc.DECISION_DENY
        stats = index.view_stats()
        assert not stats.complete and stats.evictions >= 1 and stats.misses >= 2
    finally:
        index.close()


def test_refused_changes_are_recorded_with_reasons_and_change_nothing(
    index: ix.ConsentIndex, chain: Chain
) -> None:
    forged = chain.grant("consents/forged", grantor=DOCTOR_B)
    good = chain.grant("consents/good")
    stale = chain.grant("consents/good", version=3)
    outcomes = index.apply_block(chain.block(forged, good, stale))
    assert [(o.consent, o.applied, o.reason) for o in outcomes] == [
        ("consents/forged", False, "SIGNER_MAY_NOT_GRANT"),
        ("consents/good", True, ""),
        ("consents/good", False, "STALE_CONSENT_VERSION"),
    ]
    [replayed] = index.apply_block(chain.block(good))
    assert (replayed.applied, replayed.reason) == (False, "TX_REPLAYED")
    assert index.consent("consents/forged") is None
    # Within a block refusals are listed by transaction id.
    assert sorted(o.reason for o in index.refusals()) == [
        "SIGNER_MAY_NOT_GRANT",
        "STALE_CONSENT_VERSION",
    ]
    with pytest.raises(ValueError, match="out of order"):
        index.apply_block(ledger_pb.Block(header=ledger_pb.BlockHeader(height=99)))


def test_versions_listing_and_pages(index: ix.ConsentIndex, chain: Chain) -> None:
    index.apply_block(chain.block(*(chain.grant(f"consents/c{n}") for n in range(5))))
    index.apply_block(chain.block(chain.grant("consents/c0", version=2)))
    index.apply_block(chain.block(chain.revoke("consents/c1", 1)))
    first = index.consent("consents/c0", 1)
    latest = index.consent("consents/c0")
    assert first is not None and first.state == ix.STATE_REVOKED
    assert first.revoke_reason == consent_change_pb2.CONSENT_REVOCATION_REASON_SUPERSEDED
    assert latest is not None and (latest.version, latest.state) == (2, ix.STATE_ACTIVE)
    page = index.list_consents(patient=PATIENT, limit=2)
    assert [c.name for c in page] == ["consents/c0", "consents/c2"]
    rest = index.list_consents(patient=PATIENT, after=page[-1].name, limit=10)
    assert [c.name for c in rest] == ["consents/c3", "consents/c4"]
    revoked = index.list_consents(states=(ix.STATE_REVOKED,))
    assert [(c.name, c.version) for c in revoked] == [("consents/c1", 1)]
    view = index.patient_view(PATIENT)
    assert [(c.name, c.version) for c in view.consents] == [
        ("consents/c0", 2),
        ("consents/c2", 1),
        ("consents/c3", 1),
        ("consents/c4", 1),
    ]


def test_replay_rebuilds_the_same_state(dsn: str, chain: Chain) -> None:
    index = ix.ConsentIndex(ix.open_database(dsn), chain.validators)
    blocks = [*chain.genesis_blocks()]
    blocks.append(chain.block(chain.grant("consents/a"), chain.grant("consents/b")))
    blocks.append(chain.block(chain.revoke("consents/a", 1)))
    try:
        for block in blocks:
            index.apply_block(block)
        before = index.fingerprint()
        index.reset()
        assert index.height == -1 and index.consent("consents/b") is None
        for block in blocks:
            index.apply_block(block)
        assert index.fingerprint() == before
    finally:
        index.close()
    # And the state survives reopening the store.
    reopened = ix.ConsentIndex(ix.open_database(dsn), chain.validators)
    try:
        assert reopened.height == len(blocks) - 1
        assert reopened.fingerprint() == before
        reopened.load_views()
        assert [c.name for c in reopened.patient_view(PATIENT).consents] == ["consents/b"]
    finally:
        reopened.close()


def test_bulk_load_and_break_glass_sessions(index: ix.ConsentIndex) -> None:
    terms = _terms(PATIENT_PRINCIPAL)
    terms.patient_pseudonym = "p-bulk"
    count = index.bulk_load(
        ((f"consents/bulk-{n}", 1, terms, f"{n:064x}") for n in range(25)),
        {"p-bulk": [ORG], "p-bare": [OTHER_ORG]},
        batch=10,
    )
    assert count == 25
    stats = index.load_views()
    assert stats.complete and stats.patients == 3  # p-1, p-bulk and p-bare
    assert len(index.patient_view("p-bulk").consents) == 25
    assert index.patient_view("p-bare").custodians == frozenset({OTHER_ORG})
    index.put_break_glass("breakGlassSessions/s1", b"raw", DOCTOR_B, PATIENT, 5_000, "req-1")
    assert index.break_glass("breakGlassSessions/s1") == (b"raw", DOCTOR_B, PATIENT, 5_000)
    assert index.break_glass_by_request(DOCTOR_B, "req-1") == b"raw"
    assert index.break_glass("breakGlassSessions/none") is None


class ThreadRecordingDatabase:
    """The real database, noting which thread each call came from."""

    def __init__(self, db: ix.Database) -> None:
        self._db = db
        self.remote = True
        self.threads: set[int] = set()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.threads.add(threading.get_ident())
        return self._db.execute(sql, params)

    def iterate(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        self.threads.add(threading.get_ident())
        return self._db.iterate(sql, params)

    def executemany(self, sql: str, rows: Any) -> None:
        self.threads.add(threading.get_ident())
        self._db.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.threads.add(threading.get_ident())
        with self._db.transaction():
            yield

    def close(self) -> None:
        self._db.close()


async def test_a_remote_store_is_never_called_on_the_event_loop(dsn: str, chain: Chain) -> None:
    recording = ThreadRecordingDatabase(ix.open_database(dsn))
    index = ix.ConsentIndex(recording, chain.validators, cache_size=1)
    sink = Sink()
    service = ConsentService(index, DecisionEngine(), sink)
    loop_thread = threading.get_ident()
    recording.threads.clear()
    try:
        for block in [*chain.genesis_blocks(), chain.block(chain.grant("consents/share"))]:
            await service.apply_block(block)
        assert not index.view_in_memory(PATIENT)
        answer = await service.check(_question())  # a miss: the store is read in a thread
        assert answer.decision == acc.DECISION_PERMIT
        assert index.view_in_memory(PATIENT)
        answer = await service.check(_question())  # a hit, from memory
        assert answer.decision == acc.DECISION_PERMIT
        assert index.view_stats().misses == 1
        stored = await service.get_consent("consents/share")
        assert stored.state == pb.CONSENT_STATE_ACTIVE
        outcome = await service.wait_outcome(stored.ledger_commit.tx_id, 1)
        assert outcome.applied
        assert recording.threads and loop_thread not in recording.threads
        assert len(sink.events) == 2
    finally:
        await asyncio.to_thread(index.close)


def test_relative_sqlite_url_stays_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medledger.consent.index import open_database

    monkeypatch.chdir(tmp_path)
    database = open_database("sqlite:///data/consent.sqlite3")
    database.close()
    assert (tmp_path / "data" / "consent.sqlite3").exists()
