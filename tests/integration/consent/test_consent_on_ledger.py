"""The consent service against four real validators over a real nats-server: patient-signed
grants take effect when final, revocations deny within the latency target, bad grants are
refused with reasons, decisions are answered over gRPC and NATS and audited on JetStream."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import (
    actor_pb2,
    audit_event_pb2,
    consent_change_pb2,
    identity_change_pb2,
)
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger._gen.consent.v1 import consent_service_pb2_grpc as pb_grpc
from medledger.consent.api import consent_grpc_service
from medledger.consent.bus_api import AuditingSink, ConsentBusApi, break_glass_subject
from medledger.consent.errors import ConsentForbidden, ConsentReplayed
from medledger.consent.index import CUSTODIAN_ROLE, ConsentIndex, open_database
from medledger.consent.policy import DecisionEngine
from medledger.consent.service import ConsentService, CustodianSigner
from medledger.core.audit_events import AUDIT_STREAM, ensure_audit_stream
from medledger.core.auth import CallerIdentity, StaticTokens
from medledger.core.errors import rpc_error_details
from medledger.core.grpc_server import GrpcServer
from medledger.core.nats_bus import NatsBus
from medledger.core.settings import CommonSettings
from medledger.crypto import SigningKey
from medledger.ledgerclient import LedgerClient, sign_transaction
from medledger.testing.ledger import LocalLedger

pytestmark = pytest.mark.integration

PATIENT = "p-1"
PATIENT_PRINCIPAL = "organisations/org-a/principals/patient-1"
CUSTODIAN = "organisations/org-a/principals/consent"
DOCTOR_B = "organisations/org-b/principals/dr-b"
DOCTOR_A = "organisations/org-a/principals/dr-a"


@dataclass
class Stack:
    ledger: LocalLedger
    client: LedgerClient
    service: ConsentService
    bus: NatsBus
    patient_key: SigningKey
    doctor_b_key: SigningKey
    sink: AuditingSink
    nonce: int = 1

    def next_nonce(self) -> int:
        self.nonce += 1
        return self.nonce

    def tx(self, signer: str, key: SigningKey, **payload: object) -> bytes:
        body = tx_pb.TransactionBody(
            chain_id=self.client.chain_id,
            nonce=self.next_nonce(),
            created_at_unix_ms=int(time.time() * 1000),
            signer=signer,
            **payload,  # type: ignore[arg-type]
        )
        return sign_transaction(body, key)


def _key(key: SigningKey) -> identity_change_pb2.PublicKey:
    return identity_change_pb2.PublicKey(
        key_id=key.public_key.key_id,
        algorithm=identity_change_pb2.KEY_ALGORITHM_ED25519,
        public_key=key.public_key.raw,
    )


def _principal(
    name: str, kind: int, key: SigningKey, roles: tuple[str, ...] = (), patient: str = ""
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


def _organisation(name: str, key: SigningKey) -> identity_change_pb2.IdentityChange:
    return identity_change_pb2.IdentityChange(
        register_organisation=identity_change_pb2.RegisterOrganisation(
            organisation=name, display_name=f"Hospital {name[-1].upper()}", keys=[_key(key)]
        )
    )


@pytest.fixture
async def stack(
    ledger_network: LocalLedger, nats_bus: NatsBus, tmp_path: Path
) -> AsyncIterator[Stack]:
    client = ledger_network.client(nats_bus)
    index = ConsentIndex(open_database(f"sqlite:///{tmp_path / 'consent.sqlite3'}"))
    index.set_validators(await client.validator_set())
    await ensure_audit_stream(nats_bus)
    sink = AuditingSink(nats_bus, "org-a")
    sink.start()
    custodian_key = SigningKey.generate()
    service = ConsentService(
        index,
        DecisionEngine(),
        sink,
        ledger=client,
        custodian=CustodianSigner(CUSTODIAN, custodian_key),
    )
    stack = Stack(
        ledger_network,
        client,
        service,
        nats_bus,
        SigningKey.generate(),
        SigningKey.generate(),
        sink,
    )
    follower = asyncio.create_task(service.follow(client.blocks))
    key_a, key_b = ledger_network.validator_key(0), ledger_network.validator_key(1)
    setup = [
        stack.tx(
            "organisations/org-a",
            key_a,
            identity_change=_organisation("organisations/org-a", key_a),
        ),
        stack.tx(
            "organisations/org-b",
            key_b,
            identity_change=_organisation("organisations/org-b", key_b),
        ),
    ]
    for tx in setup:
        await client.submit_and_wait(tx, 20)
    principals = [
        stack.tx(
            "organisations/org-a",
            key_a,
            identity_change=_principal(
                PATIENT_PRINCIPAL,
                actor_pb2.PRINCIPAL_KIND_PATIENT,
                stack.patient_key,
                patient=PATIENT,
            ),
        ),
        stack.tx(
            "organisations/org-a",
            key_a,
            identity_change=_principal(
                CUSTODIAN, actor_pb2.PRINCIPAL_KIND_SERVICE, custodian_key, (CUSTODIAN_ROLE,)
            ),
        ),
        stack.tx(
            "organisations/org-b",
            key_b,
            identity_change=_principal(
                DOCTOR_B, actor_pb2.PRINCIPAL_KIND_PRACTITIONER, stack.doctor_b_key, ("physician",)
            ),
        ),
    ]
    receipts = await asyncio.gather(*(client.submit_and_wait(t, 20) for t in principals))
    top = max(r.height for r in receipts)
    while service.index.height < top:  # noqa: ASYNC110 -- the index has no height event
        await asyncio.sleep(0.05)
    yield stack
    follower.cancel()
    await asyncio.wait([follower], timeout=3)
    await asyncio.wait_for(sink.drain(2), 5)
    index.close()


def _terms(grantor: str = PATIENT_PRINCIPAL) -> ct.ConsentTerms:
    by_patient = grantor == PATIENT_PRINCIPAL
    return ct.ConsentTerms(
        patient_pseudonym=PATIENT,
        grantor=grantor,
        grantor_capacity=ct.GRANTOR_CAPACITY_PATIENT
        if by_patient
        else ct.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF,
        grantor_evidence=ct.GrantorEvidence(
            kind=ct.EVIDENCE_KIND_PATIENT_SIGNATURE
            if by_patient
            else ct.EVIDENCE_KIND_VERBAL_WITNESSED,
            witness="" if by_patient else DOCTOR_A,
            captured_at_unix_ms=int(time.time() * 1000),
        ),
        grantee=ct.Party(organisation="organisations/org-b"),
        provision=ct.Provision(
            type=ct.PROVISION_TYPE_PERMIT,
            actions=[acc.ACCESS_ACTION_READ],
            purposes=[acc.PURPOSE_OF_USE_TREAT],
        ),
        scope=ct.CONSENT_SCOPE_PATIENT_PRIVACY,
    )


def _question(justification: str = "") -> pb.CheckAccessRequest:
    return pb.CheckAccessRequest(
        actor=actor_pb2.Actor(
            principal=DOCTOR_B,
            organisation="organisations/org-b",
            roles=["physician"],
            kind=actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
        ),
        patient_pseudonym=PATIENT,
        data_class=acc.DataClass(category=acc.RECORD_CATEGORY_LABORATORY),
        action=acc.ACCESS_ACTION_READ,
        purpose=acc.PURPOSE_OF_USE_ETREAT if justification else acc.PURPOSE_OF_USE_TREAT,
        break_glass_justification=justification,
    )


async def _grant(stack: Stack, consent_id: str) -> tuple[str, int]:
    name = f"consents/{consent_id}"
    terms = _terms()
    change = consent_change_pb2.ConsentChange(
        grant=consent_change_pb2.ConsentGrant(consent=name, version=1, terms=terms)
    )
    signed = tx_pb.Transaction.FromString(
        stack.tx(PATIENT_PRINCIPAL, stack.patient_key, consent_change=change)
    )
    consent = await stack.service.create_consent(consent_id, terms, signed)
    assert consent.state == pb.CONSENT_STATE_PENDING
    outcome = await stack.service.wait_outcome(consent.ledger_commit.tx_id, 20)
    assert outcome.applied, outcome.reason
    return name, 1


async def _revoke_and_time(stack: Stack, name: str, version: int) -> float:
    revocation = consent_change_pb2.ConsentRevocation(
        consent=name,
        version=version,
        reason=consent_change_pb2.CONSENT_REVOCATION_REASON_WITHDRAWN,
        evidence=ct.GrantorEvidence(
            kind=ct.EVIDENCE_KIND_PATIENT_SIGNATURE, captured_at_unix_ms=int(time.time() * 1000)
        ),
    )
    signed = tx_pb.Transaction.FromString(
        stack.tx(
            PATIENT_PRINCIPAL,
            stack.patient_key,
            consent_change=consent_change_pb2.ConsentChange(revocation=revocation),
        )
    )
    started = time.perf_counter()
    await stack.service.revoke_consent(
        name, version, revocation.reason, revocation.evidence, signed
    )
    # Polls the decision itself: what is measured is when checks start to deny.
    while stack.service.check_access(_question()).decision != acc.DECISION_DENY:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def test_grant_permits_and_revocation_denies_within_two_seconds(stack: Stack) -> None:
    assert stack.service.check_access(_question()).reason == "OTHER_ORGANISATION_REQUIRES_CONSENT"
    latencies = []
    for round_ in range(5):
        name, version = await _grant(stack, f"share-with-b-{round_}")
        answer = stack.service.check_access(_question())
        assert answer.decision == acc.DECISION_PERMIT
        assert (answer.consent.consent, answer.consent.version) == (name, version)
        assert answer.ledger_height == stack.service.index.height
        latencies.append(await _revoke_and_time(stack, name, version))
        assert (await stack.service.get_consent(name)).state == pb.CONSENT_STATE_REVOKED
    latencies.sort()
    print(
        f"revoke-submitted -> checks-deny latency: max {latencies[-1] * 1000:.0f} ms, "
        f"median {latencies[len(latencies) // 2] * 1000:.0f} ms"
    )
    assert latencies[-1] < 2.0


async def test_bad_grants_are_refused_and_change_nothing(stack: Stack) -> None:
    # A practitioner of another hospital may not grant for the patient: refused up front...
    change = consent_change_pb2.ConsentChange(
        grant=consent_change_pb2.ConsentGrant(
            consent="consents/forged", version=1, terms=_terms(DOCTOR_B)
        )
    )
    forged = stack.tx(DOCTOR_B, stack.doctor_b_key, consent_change=change)
    with pytest.raises(ConsentForbidden) as info:
        await stack.service.create_consent(
            "forged", change.grant.terms, tx_pb.Transaction.FromString(forged)
        )
    assert info.value.reason == "SIGNER_MAY_NOT_GRANT"
    # ...and, submitted to the ledger directly, refused by the index with the same reason.
    receipt = await stack.client.submit_and_wait(forged, 20)
    tx_id = hashlib.sha256(receipt.transaction.body).hexdigest()
    outcome = await stack.service.wait_outcome(tx_id, 20)
    assert (outcome.applied, outcome.reason) == (False, "SIGNER_MAY_NOT_GRANT")
    assert stack.service.index.consent("consents/forged") is None
    assert stack.service.check_access(_question()).decision == acc.DECISION_DENY
    # A final transaction offered again is a replay.
    name, _ = await _grant(stack, "once")
    stored = stack.service.index.consent(name)
    assert stored is not None
    with pytest.raises(ConsentReplayed):
        await stack.service.create_consent(
            "once-again",
            _terms(),
            tx_pb.Transaction.FromString(
                (await stack.client.block(stored.height)).transactions[0].SerializeToString()
            ),
        )


async def test_decisions_over_nats_are_audited_and_break_glass_announced(stack: Stack) -> None:
    bus_api = ConsentBusApi(stack.service, stack.bus)
    await bus_api.start()
    announcements: asyncio.Queue[pb.BreakGlassSession] = asyncio.Queue()

    async def on_announcement(session: pb.BreakGlassSession) -> None:
        await announcements.put(session)

    await stack.bus.subscribe(break_glass_subject("org-a"), pb.BreakGlassSession, on_announcement)
    try:
        reply = await stack.bus.request("consent.check", _question(), pb.CheckAccessResponse)
        assert (reply.decision, reply.policy_rule) == (
            acc.DECISION_DENY,
            "base.other_organisation_requires_consent",
        )
        glass = await stack.bus.request(
            "consent.check", _question("crash victim, unresponsive"), pb.CheckAccessResponse
        )
        assert (glass.decision, glass.reason) == (acc.DECISION_PERMIT, "BREAK_GLASS")
        assert pb.OBLIGATION_REVIEW in glass.obligations
        session = await stack.service.break_glass(
            _question().actor,
            pb.BreakGlassSession(
                patient_pseudonym=PATIENT,
                purpose=acc.PURPOSE_OF_USE_BTG,
                justification="mass casualty triage",
            ),
            600,
        )
        announced = await asyncio.wait_for(announcements.get(), 5)
        assert announced.name == session.name and announced.justification == ""
        await stack.sink.drain()
        js = stack.bus.client.jetstream()
        info = await js.stream_info(AUDIT_STREAM)
        events = []
        for seq in range(1, info.state.last_seq + 1):
            raw = await js.get_msg(AUDIT_STREAM, seq)
            events.append(audit_event_pb2.AuditEvent.FromString(raw.data or b""))
        flagged = [e for e in events if e.HasField("break_glass")]
        assert {e.break_glass.justification for e in flagged} == {
            "crash victim, unresponsive",
            "mass casualty triage",
        }
        assert any(e.policy_rule == "base.other_organisation_requires_consent" for e in events)
    finally:
        await bus_api.stop()


async def test_index_rebuilds_identically_by_replay(stack: Stack, tmp_path: Path) -> None:
    await _grant(stack, "kept")
    height = stack.service.index.height
    replica = ConsentIndex(open_database(f"sqlite:///{tmp_path / 'replica.sqlite3'}"))
    replica.set_validators(await stack.client.validator_set())
    async for block in stack.client.blocks(0):
        replica.apply_block(block)
        if block.header.height >= height:
            break
    while stack.service.index.height > replica.height:
        replica.apply_block(await stack.client.block(replica.height + 1))
    assert replica.fingerprint() == stack.service.index.fingerprint()
    replica.close()


async def test_grpc_errors_carry_reasons(stack: Stack) -> None:
    settings = CommonSettings(org_id="org-a", grpc_port=0)
    tokens = {
        "doctor": CallerIdentity(DOCTOR_B, "org-b", frozenset({"physician"}), "PRACTITIONER"),
        "recorder": CallerIdentity(DOCTOR_A, "org-a", frozenset({"consent_recorder"})),
    }
    server = GrpcServer(
        service_name="consent",
        settings=settings,
        services=[consent_grpc_service(stack.service)],
        authenticator=StaticTokens(tokens),
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ConsentServiceStub(channel)

            def auth(token: str) -> tuple[tuple[str, str], ...]:
                return (("authorization", f"Bearer {token}"),)

            answer = await stub.CheckAccess(_question(), metadata=auth("doctor"))
            assert answer.reason == "OTHER_ORGANISATION_REQUIRES_CONSENT"
            bad = _terms(CUSTODIAN)
            bad.period.start_unix_ms, bad.period.end_unix_ms = 2_000, 1_000
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateConsent(
                    pb.CreateConsentRequest(consent=pb.Consent(terms=bad)),
                    metadata=auth("recorder"),
                )
            details = rpc_error_details(info.value)
            assert (details.code, details.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "PERIOD_ENDS_BEFORE_START",
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateConsent(
                    pb.CreateConsentRequest(consent=pb.Consent(terms=_terms(CUSTODIAN))),
                    metadata=auth("doctor"),
                )
            assert rpc_error_details(info.value).reason == "RECORDER_ROLE_REQUIRED"
            name, _ = await _grant(stack, "stale")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.RevokeConsent(
                    pb.RevokeConsentRequest(
                        name=name,
                        version=7,
                        reason=consent_change_pb2.CONSENT_REVOCATION_REASON_WITHDRAWN,
                        evidence=ct.GrantorEvidence(
                            kind=ct.EVIDENCE_KIND_SIGNED_FORM,
                            document_sha256=secrets.token_bytes(32),
                            captured_at_unix_ms=1,
                        ),
                    ),
                    metadata=auth("recorder"),
                )
            details = rpc_error_details(info.value)
            assert (details.code, details.reason) == (
                grpc.StatusCode.ABORTED,
                "STALE_CONSENT_VERSION",
            )
    finally:
        await server.stop(1)
