"""``consent.check`` over a real nats-server: answers from memory inline, misses of a remote
store in bounded tasks, errors as reasoned replies, and the asker's trace continued into the
audit event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import actor_pb2, audit_event_pb2
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger.consent.bus_api import CHECK_SUBJECT, AuditingSink, ConsentBusApi, stamp
from medledger.consent.index import ConsentIndex, SqliteDatabase
from medledger.consent.policy import DecisionEngine
from medledger.consent.service import ConsentService, DecisionRecord
from medledger.core.audit_events import AUDIT_STREAM, ensure_audit_stream
from medledger.core.nats_bus import NatsBus, RemoteError

pytestmark = pytest.mark.integration

OUTSIDER = "organisations/org-b/principals/dr-b"


class Sink:
    """Keeps the events, stamped on the decision path as AuditingSink stamps them."""

    def __init__(self) -> None:
        self.events: list[audit_event_pb2.AuditEvent] = []

    def decided(self, decision: DecisionRecord) -> None:
        self.record(decision.event())

    def record(self, event: audit_event_pb2.AuditEvent) -> None:
        stamp(event)
        self.events.append(event)

    async def announce_break_glass(self, session: pb.BreakGlassSession) -> None:
        return None


class RemoteSqlite(SqliteDatabase):
    """A store the service must treat as across the network (as it treats PostgreSQL)."""

    remote = True


def _question(patient: str = "p-1", principal: str = OUTSIDER) -> pb.CheckAccessRequest:
    return pb.CheckAccessRequest(
        actor=actor_pb2.Actor(
            principal=principal,
            organisation="organisations/org-b",
            roles=["physician"],
            kind=actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
        ),
        patient_pseudonym=patient,
        data_class=acc.DataClass(category=acc.RECORD_CATEGORY_LABORATORY),
        action=acc.ACCESS_ACTION_READ,
        purpose=acc.PURPOSE_OF_USE_TREAT,
    )


def _terms(patient: str) -> ct.ConsentTerms:
    return ct.ConsentTerms(
        patient_pseudonym=patient,
        grantor="organisations/org-a/principals/consent",
        grantor_capacity=ct.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF,
        grantor_evidence=ct.GrantorEvidence(
            kind=ct.EVIDENCE_KIND_SIGNED_FORM, document_sha256=bytes(32), captured_at_unix_ms=1
        ),
        grantee=ct.Party(organisation="organisations/org-b"),
        provision=ct.Provision(
            type=ct.PROVISION_TYPE_PERMIT,
            actions=[acc.ACCESS_ACTION_READ],
            purposes=[acc.PURPOSE_OF_USE_TREAT],
        ),
        scope=ct.CONSENT_SCOPE_PATIENT_PRIVACY,
    )


async def _serve(
    nats_bus: NatsBus, index: ConsentIndex
) -> tuple[ConsentService, Sink, ConsentBusApi]:
    sink = Sink()
    service = ConsentService(index, DecisionEngine(), sink)
    api = ConsentBusApi(service, nats_bus, max_concurrency=2)
    await api.start()
    return service, sink, api


@pytest.fixture
async def local(nats_bus: NatsBus, tmp_path: Path) -> AsyncIterator[tuple[Sink, ConsentIndex]]:
    index = ConsentIndex(SqliteDatabase(str(tmp_path / "local.sqlite3")))
    index.bulk_load([("consents/share", 1, _terms("p-1"), "00" * 32)], {"p-1": ["org-a"]})
    index.load_views()
    _, sink, api = await _serve(nats_bus, index)
    yield sink, index
    await api.stop()
    index.close()


async def test_questions_are_answered_and_audited(
    nats_bus: NatsBus, local: tuple[Sink, ConsentIndex]
) -> None:
    sink, index = local
    permitted = await nats_bus.request(CHECK_SUBJECT, _question(), pb.CheckAccessResponse)
    assert (permitted.decision, permitted.consent.consent) == (
        acc.DECISION_PERMIT,
        "consents/share",
    )
    denied = await nats_bus.request(CHECK_SUBJECT, _question("p-2"), pb.CheckAccessResponse)
    assert denied.policy_rule == "base.other_organisation_requires_consent"
    assert [e.decision for e in sink.events] == [acc.DECISION_PERMIT, acc.DECISION_DENY]
    assert all(e.HasField("time") for e in sink.events)
    assert index.view_stats().misses == 0


async def test_bad_questions_get_reasoned_error_replies(
    nats_bus: NatsBus, local: tuple[Sink, ConsentIndex]
) -> None:
    with pytest.raises(RemoteError) as info:
        await nats_bus.request(CHECK_SUBJECT, _question(principal="nobody"), pb.Consent)
    assert info.value.reason == "ACTOR_REQUIRED"
    reply = await nats_bus.client.request(CHECK_SUBJECT, b"\xff\xff not protobuf", timeout=5)
    assert (reply.headers or {}).get("Medledger-Error-Reason") == "BAD_PAYLOAD"


async def test_a_traced_question_continues_the_trace_into_its_audit_event(
    nats_bus: NatsBus, tmp_path: Path
) -> None:
    await ensure_audit_stream(nats_bus)
    js = nats_bus.client.jetstream()
    first = (await js.stream_info(AUDIT_STREAM)).state.last_seq + 1
    index = ConsentIndex(SqliteDatabase(str(tmp_path / "traced.sqlite3")))
    index.load_views()
    sink = AuditingSink(nats_bus, "org-a")
    sink.start()
    api = ConsentBusApi(ConsentService(index, DecisionEngine(), sink), nats_bus)
    await api.start()
    asker = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    try:
        with trace.use_span(NonRecordingSpan(asker)):
            await nats_bus.request(CHECK_SUBJECT, _question(), pb.CheckAccessResponse)
        await nats_bus.request(CHECK_SUBJECT, _question(), pb.CheckAccessResponse)
        await sink.drain()
        events = [
            audit_event_pb2.AuditEvent.FromString((await js.get_msg(AUDIT_STREAM, seq)).data or b"")
            for seq in (first, first + 1)
        ]
    finally:
        await api.stop()
        index.close()
    # The traced question's event carries the asker's trace; the untraced one does not
    # (whether it gets a fresh trace depends on the process's tracer provider).
    assert events[0].trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert events[1].trace_id != events[0].trace_id
    assert all(e.event_id and e.organisation == "organisations/org-a" for e in events)
    assert events[0].event_id != events[1].event_id


async def test_misses_of_a_remote_store_are_answered_from_bounded_tasks(
    nats_bus: NatsBus, tmp_path: Path
) -> None:
    index = ConsentIndex(RemoteSqlite(str(tmp_path / "remote.sqlite3")), cache_size=1)
    index.bulk_load(
        [(f"consents/c{n}", 1, _terms(f"p-{n}"), f"{n:064x}") for n in range(6)],
        {f"p-{n}": ["org-a"] for n in range(6)},
    )
    service, sink, api = await _serve(nats_bus, index)
    try:
        for n in range(6):
            assert not service.answerable_from_memory(_question(f"p-{n}"))
            reply = await nats_bus.request(
                CHECK_SUBJECT, _question(f"p-{n}"), pb.CheckAccessResponse
            )
            assert reply.consent.consent == f"consents/c{n}"
        stats = index.view_stats()
        assert (stats.misses, stats.evictions) == (6, 5)
        assert len(sink.events) == 6
    finally:
        await api.stop()
        index.close()
