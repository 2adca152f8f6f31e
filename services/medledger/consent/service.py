"""The consent service's domain logic: grants and revocations as signed ledger transactions,
the decision index kept current from final blocks, access decisions with their audit events,
break-glass sessions and FHIR interchange. No gRPC or NATS types beyond protobuf messages."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import (
    actor_pb2,
    audit_event_pb2,
    consent_change_pb2,
    consent_terms_pb2,
    ledger_commit_pb2,
)
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.consent import index as ix
from medledger.consent.errors import (
    ConsentConflict,
    ConsentForbidden,
    ConsentInvalid,
    ConsentNotFound,
    ConsentReplayed,
    ConsentStateError,
    LedgerUnavailable,
)
from medledger.consent.fhir import Reading, export_fhir_consent, import_fhir_consent
from medledger.consent.policy import AccessDecision, AccessRequest, BreakGlass, DecisionEngine
from medledger.consent.terms import (
    PRINCIPAL_NAME,
    PSEUDONYM,
    RECORD_NAME,
    check_consent_name,
    check_revocation,
    check_terms,
)
from medledger.core.logging import get_logger
from medledger.crypto import SigningKey, sha256

MAX_JUSTIFICATION = 2000
_log = get_logger("medledger.consent")

Clock = Callable[[], float]
T = TypeVar("T")

# Computed once: the generated enums' values() builds a new list on every call.
_ACTIONS = frozenset(acc.AccessAction.values()) - {acc.ACCESS_ACTION_UNSPECIFIED}
_PURPOSES = frozenset(acc.PurposeOfUse.values()) - {acc.PURPOSE_OF_USE_UNSPECIFIED}
_CATEGORIES = frozenset(acc.RecordCategory.values())
_LABELS = frozenset(acc.SensitivityLabel.values())
_NO_LABELS: frozenset[int] = frozenset()
_NO_ROLES: frozenset[str] = frozenset()


class Ledger(Protocol):
    """What the service needs of medledger.ledgerclient.LedgerClient."""

    @property
    def chain_id(self) -> str: ...

    async def submit(self, tx: bytes) -> str: ...


class DecisionRecord(NamedTuple):
    """An access decision as its audit event will tell it. The event itself is built off the
    decision path (``event()``), after the answer has gone out."""

    question: pb.CheckAccessRequest
    decision: AccessDecision

    def event(self) -> audit_event_pb2.AuditEvent:
        question, decision = self.question, self.decision
        record = question.record
        event = audit_event_pb2.AuditEvent(
            actor=question.actor,
            action=question.action,
            resource=record or f"patients/{question.patient_pseudonym}",
            record=record,
            patient_pseudonym=question.patient_pseudonym,
            purpose=question.purpose,
            decision=acc.DECISION_PERMIT if decision.permit else acc.DECISION_DENY,
            decision_reason=decision.reason,
        )
        if decision.consent is not None:
            event.consent.consent, event.consent.version = decision.consent
        elif decision.break_glass is not None:
            event.break_glass.session = decision.break_glass.session
            event.break_glass.justification = decision.break_glass.justification
        else:
            event.policy_rule = decision.policy_rule
        return event


class DecisionSink(Protocol):
    """Where decisions go to be audited, and break-glass to be announced."""

    def decided(self, decision: DecisionRecord) -> None:
        """An access decision was made (now: the sink notes the time and trace)."""
        ...

    def record(self, event: audit_event_pb2.AuditEvent) -> None:
        """Any other audit event."""
        ...

    async def announce_break_glass(self, session: pb.BreakGlassSession) -> None: ...


@dataclass(frozen=True)
class CustodianSigner:
    """The key this organisation's consent service signs on patients' behalf with."""

    principal: str
    key: SigningKey


class ConsentService:
    def __init__(
        self,
        index: ix.ConsentIndex,
        engine: DecisionEngine,
        sink: DecisionSink,
        *,
        ledger: Ledger | None = None,
        custodian: CustodianSigner | None = None,
        clock: Clock = time.time,
        break_glass_default_seconds: int = 3600,
        break_glass_max_seconds: int = 4 * 3600,
    ) -> None:
        self.index = index
        self.engine = engine
        self._sink = sink
        self._ledger = ledger
        self._custodian = custodian
        self._clock = clock
        self._bg_default = break_glass_default_seconds
        self._bg_max = break_glass_max_seconds
        self._applied = asyncio.Condition()
        self._requests: OrderedDict[str, pb.Consent] = OrderedDict()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _store(self, call: Callable[..., T], *args: Any) -> T:
        """Run an index call that may read or write the store; off the event loop when the
        store is across the network (PostgreSQL), inline for a local SQLite file."""
        if self.index.remote:
            return await asyncio.to_thread(call, *args)
        return call(*args)

    async def load_views(self) -> None:
        """Compile the whole decision index into memory (at start)."""
        stats = await self._store(self.index.load_views)
        _log.info("decision index in memory", patients=stats.patients, complete=stats.complete)

    # --- following the chain ---

    async def apply_block(self, block: ledger_pb.Block) -> list[ix.Outcome]:
        outcomes = await self._store(self.index.apply_block, block)
        for outcome in outcomes:
            if not outcome.applied:
                _log.info(
                    "consent change refused",
                    tx_id=outcome.tx_id,
                    height=outcome.height,
                    reason=outcome.reason,
                )
        async with self._applied:
            self._applied.notify_all()
        return outcomes

    async def follow(self, blocks: Callable[[int], object]) -> None:
        """Apply every final block from where the index stopped, forever."""
        stream = blocks(self.index.next_height)
        async for block in stream:  # type: ignore[attr-defined]
            await self.apply_block(block)

    async def wait_outcome(self, tx_id: str, timeout: float = 10.0) -> ix.Outcome:  # noqa: ASYNC109
        """Wait until the transaction's block has been applied; its outcome."""
        async with asyncio.timeout(timeout), self._applied:
            while (outcome := await self._store(self.index.outcome, tx_id)) is None:
                await self._applied.wait()
            return outcome

    # --- grants and revocations ---

    async def create_consent(
        self,
        consent_id: str,
        terms: consent_terms_pb2.ConsentTerms,
        signed: tx_pb.Transaction | None = None,
        request_id: str = "",
    ) -> pb.Consent:
        if request_id and request_id in self._requests:
            return self._requests[request_id]
        name = f"consents/{consent_id or uuid.uuid4()}"
        check_consent_name(name)
        check_terms(terms)
        current = await self._store(self.index.consent, name)
        version = 1 if current is None else current.version + 1
        if current is not None and current.state != ix.STATE_ACTIVE:
            raise ConsentStateError(
                "CONSENT_NOT_ACTIVE", "only an active consent gets a new version"
            )
        change = consent_change_pb2.ConsentChange(
            grant=consent_change_pb2.ConsentGrant(consent=name, version=version, terms=terms)
        )
        tx_id = await self._submit(change, signed, terms.patient_pseudonym)
        consent = pb.Consent(
            name=name,
            version=version,
            terms=terms,
            state=pb.CONSENT_STATE_PENDING,
            ledger_commit=ledger_commit_pb2.LedgerCommit(
                tx_id=tx_id, state=ledger_commit_pb2.COMMIT_STATE_PENDING
            ),
        )
        self._remember(request_id, consent)
        return consent

    async def revoke_consent(
        self,
        name: str,
        version: int,
        reason: int,
        evidence: consent_terms_pb2.GrantorEvidence,
        signed: tx_pb.Transaction | None = None,
        request_id: str = "",
    ) -> pb.Consent:
        if request_id and request_id in self._requests:
            return self._requests[request_id]
        revocation = consent_change_pb2.ConsentRevocation(
            consent=name,
            version=version,
            reason=reason,  # type: ignore[arg-type]
            evidence=evidence,
        )
        check_revocation(revocation)
        current = await self._store(self.index.consent, name)
        if current is None:
            raise ConsentNotFound("CONSENT_NOT_FOUND", "no such consent", {"name": name})
        if current.version != version:
            raise ConsentConflict(
                "STALE_CONSENT_VERSION",
                "the version is not the current one",
                {"name": name, "current_version": str(current.version)},
            )
        if current.state != ix.STATE_ACTIVE:
            raise ConsentStateError("CONSENT_NOT_ACTIVE", "the consent is not in force")
        change = consent_change_pb2.ConsentChange(revocation=revocation)
        tx_id = await self._submit(change, signed, current.patient)
        consent = self._to_pb(current)
        consent.ledger_commit.CopyFrom(
            ledger_commit_pb2.LedgerCommit(
                tx_id=tx_id, state=ledger_commit_pb2.COMMIT_STATE_PENDING
            )
        )
        self._remember(request_id, consent)
        return consent

    async def _submit(
        self,
        change: consent_change_pb2.ConsentChange,
        signed: tx_pb.Transaction | None,
        patient: str,
    ) -> str:
        from medledger.ledgerclient import LedgerClientError

        if self._ledger is None:
            raise LedgerUnavailable("LEDGER_UNAVAILABLE", "this service has no ledger connection")
        tx = await self._store(self._prepare, self._ledger.chain_id, change, signed, patient)
        try:
            return await self._ledger.submit(tx)
        except LedgerClientError as exc:
            if exc.reason in ("LEDGER_UNAVAILABLE", "MEMPOOL_FULL"):
                raise LedgerUnavailable(exc.reason, "the ledger did not take the change") from exc
            raise ConsentInvalid(exc.reason, "the ledger refused the transaction") from exc

    def _prepare(
        self,
        chain_id: str,
        change: consent_change_pb2.ConsentChange,
        signed: tx_pb.Transaction | None,
        patient: str,
    ) -> bytes:
        """The transaction to submit, checked against the index's rules."""
        from medledger.ledgerclient import sign_transaction

        if signed is not None and signed.body:
            replayed = sha256(signed.body).hex()
            if self.index.outcome(replayed) is not None:
                raise ConsentReplayed(
                    "TX_REPLAYED", "this transaction is already final", {"tx_id": replayed}
                )
            body = tx_pb.TransactionBody()
            try:
                body.ParseFromString(signed.body)
            except Exception as exc:
                raise ConsentInvalid("TX_MALFORMED", "signed_transaction body") from exc
            if body.WhichOneof("payload") != "consent_change" or body.consent_change != change:
                raise ConsentInvalid(
                    "TX_TERMS_MISMATCH", "the signed transaction is not this change"
                )
            if body.chain_id != chain_id:
                raise ConsentInvalid("TX_WRONG_CHAIN", "the transaction is for another chain")
            tx = signed.SerializeToString(deterministic=True)
            signer_name = body.signer
            public_key = bytes(signed.signer_public_key)
        else:
            if self._custodian is None:
                raise ConsentForbidden(
                    "NO_CUSTODIAN_KEY", "this service records no consents on patients' behalf"
                )
            body = tx_pb.TransactionBody(
                chain_id=chain_id,
                nonce=secrets.randbits(63),
                created_at_unix_ms=self.now_ms(),
                signer=self._custodian.principal,
                consent_change=change,
            )
            tx = sign_transaction(body, self._custodian.key)
            signer_name = self._custodian.principal
            public_key = self._custodian.key.public_key.raw
        tx_id = sha256(tx_pb.Transaction.FromString(tx).body).hex()
        if self.index.outcome(tx_id) is not None:
            raise ConsentReplayed(
                "TX_REPLAYED", "this transaction is already final", {"tx_id": tx_id}
            )
        self._check_authority(change, signer_name, public_key, patient)
        return tx

    def _check_authority(
        self,
        change: consent_change_pb2.ConsentChange,
        signer_name: str,
        public_key: bytes,
        patient: str,
    ) -> None:
        """The rule the index applies when the block is final, checked now so a change that
        would be refused is rejected with its reason and nothing is submitted."""
        signer = self.index.principal(signer_name)
        owner = self.index._key_owner(public_key)
        if signer is None or not signer.active or owner != signer_name:
            raise ConsentForbidden(
                "SIGNER_UNKNOWN", "the signer is not an active registered principal with this key"
            )
        if change.WhichOneof("change") == "grant":
            terms = change.grant.terms
            capacity, grantor = terms.grantor_capacity, terms.grantor
        else:
            capacity = (
                consent_terms_pb2.GRANTOR_CAPACITY_PATIENT
                if signer.kind == actor_pb2.PRINCIPAL_KIND_PATIENT
                else consent_terms_pb2.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF
            )
            grantor = signer_name
        try:
            self.index._may_act_for(signer, patient, capacity, grantor)
        except ix.Refusal as refusal:
            raise ConsentForbidden(refusal.reason, "the signer may not make this change") from None

    def _remember(self, request_id: str, consent: pb.Consent) -> None:
        if request_id:
            self._requests[request_id] = consent
            while len(self._requests) > 10_000:
                self._requests.popitem(last=False)

    # --- reads ---

    def _to_pb(self, stored: ix.StoredConsent) -> pb.Consent:
        state = stored.state
        end = stored.terms.period.end_unix_ms
        if state == ix.STATE_ACTIVE and end and self.now_ms() >= end:
            state = pb.CONSENT_STATE_EXPIRED
        consent = pb.Consent(
            name=stored.name,
            version=stored.version,
            terms=stored.terms,
            state=state,  # type: ignore[arg-type]
            ledger_commit=ledger_commit_pb2.LedgerCommit(
                tx_id=stored.tx_id,
                state=ledger_commit_pb2.COMMIT_STATE_FINAL,
                height=stored.height,
            ),
        )
        consent.create_time.FromMilliseconds(stored.create_ms)
        if stored.state == ix.STATE_REVOKED:
            consent.revoke_time.FromMilliseconds(stored.revoke_ms)
            consent.revocation_reason = stored.revoke_reason  # type: ignore[assignment]
        return consent

    async def principal(self, name: str) -> ix.PrincipalFacts | None:
        return await self._store(self.index.principal, name)

    async def get_consent(self, name: str, version: int = 0) -> pb.Consent:
        check_consent_name(name)
        stored = await self._store(self.index.consent, name, version)
        if stored is None:
            raise ConsentNotFound("CONSENT_NOT_FOUND", "no such consent", {"name": name})
        return self._to_pb(stored)

    async def list_consents(
        self, patient: str, state: int, page_size: int, page_token: str
    ) -> pb.ListConsentsResponse:
        size = 50 if page_size <= 0 else min(page_size, 1000)
        states: tuple[int, ...] = (ix.STATE_ACTIVE,) if state in (0, 1) else (state,)
        if state == pb.CONSENT_STATE_EXPIRED:
            states = (ix.STATE_ACTIVE,)
        after = ""
        if page_token:
            after = page_token.removeprefix("after:")
            check_consent_name(after)
        rows = await self._store(
            lambda: self.index.list_consents(
                patient=patient, states=states, after=after, limit=size + 1
            )
        )
        consents = [self._to_pb(r) for r in rows[:size]]
        if state:
            consents = [
                c for c in consents if c.state == state or state == pb.CONSENT_STATE_PENDING
            ]
        token = f"after:{rows[size - 1].name}" if len(rows) > size else ""
        return pb.ListConsentsResponse(consents=consents, next_page_token=token)

    # --- decisions ---

    def request_of(self, question: pb.CheckAccessRequest) -> tuple[AccessRequest | None, str]:
        """The resolved question, or (None, reason) when the data cannot be reached at all."""
        # Each protobuf field read crosses into C: every field is read once, into a local.
        actor = question.actor
        principal = actor.principal
        patient = question.patient_pseudonym
        action = question.action
        purpose = question.purpose
        justification = question.break_glass_justification
        if not PRINCIPAL_NAME.match(principal):
            raise ConsentInvalid(
                "ACTOR_REQUIRED", "actor.principal is required", {"field": "actor"}
            )
        if not PSEUDONYM.match(patient):
            raise ConsentInvalid(
                "BAD_PATIENT_PSEUDONYM", "patient_pseudonym", {"field": "patient_pseudonym"}
            )
        if action not in _ACTIONS:
            raise ConsentInvalid("UNKNOWN_CODE", "action", {"field": "action"})
        if purpose not in _PURPOSES:
            raise ConsentInvalid("UNKNOWN_CODE", "purpose", {"field": "purpose"})
        if len(justification) > MAX_JUSTIFICATION:
            raise ConsentInvalid(
                "JUSTIFICATION_TOO_LONG", "justification", {"field": "justification"}
            )
        target = question.WhichOneof("target")
        labels: frozenset[int] = _NO_LABELS
        record, data_ms = "", 0
        if target == "data_class":
            data_class = question.data_class
            category: int = data_class.category
            if data_class.sensitivity_labels:
                labels = frozenset(data_class.sensitivity_labels)
            if category not in _CATEGORIES or not labels <= _LABELS:
                raise ConsentInvalid("UNKNOWN_CODE", "data_class", {"field": "data_class"})
        elif target == "record":
            if not RECORD_NAME.match(question.record):
                raise ConsentInvalid("BAD_RECORD_NAME", "record", {"field": "record"})
            facts = self.index.record(question.record)
            if facts is None:
                return None, "RECORD_UNKNOWN"
            if facts.patient != patient:
                return None, "RECORD_PATIENT_MISMATCH"
            if facts.erased:
                return None, "RECORD_ERASED"
            record, category, labels, data_ms = (
                facts.name,
                facts.category,
                facts.labels,
                facts.created_ms,
            )
        else:
            raise ConsentInvalid("TARGET_REQUIRED", "data_class or record", {"field": "target"})
        now = self.now_ms()
        glass: BreakGlass | None = None
        if justification:
            glass = BreakGlass(f"breakGlassSessions/{uuid.uuid4()}", justification)
        elif question.break_glass_session:
            glass = self._open_session(question.break_glass_session, principal, patient, now)
        kind = actor.kind
        actor_patient = ""
        if kind == actor_pb2.PRINCIPAL_KIND_PATIENT:
            facts_p = self.index.principal(principal)
            actor_patient = facts_p.patient if facts_p is not None else ""
        roles = actor.roles
        return (
            AccessRequest(
                principal,
                actor.organisation,
                patient,
                action,
                purpose,
                now,
                frozenset(roles) if roles else _NO_ROLES,
                kind,
                category,
                labels,
                record,
                data_ms,
                actor_patient,
                glass,
            ),
            "",
        )

    def _open_session(self, name: str, principal: str, patient: str, now: int) -> BreakGlass | None:
        found = self.index.break_glass(name)
        if found is None:
            return None
        raw, owner, session_patient, expire_ms = found
        if owner != principal or session_patient != patient or now >= expire_ms:
            return None
        return BreakGlass(name, pb.BreakGlassSession.FromString(raw).justification)

    async def check(self, question: pb.CheckAccessRequest) -> pb.CheckAccessResponse:
        """Decide, audit and answer, on an event loop: from memory inline; when the store has
        to be read and is across the network, in a thread."""
        if self.index.remote and not self.answerable_from_memory(question):
            response, decided = await asyncio.to_thread(self.decide, question)
        else:
            response, decided = self.decide(question)
        self._sink.decided(decided)
        return response

    def answerable_from_memory(self, question: pb.CheckAccessRequest) -> bool:
        """Whether deciding needs nothing but the compiled views in memory."""
        return (
            question.WhichOneof("target") == "data_class"
            and not question.break_glass_session
            and question.actor.kind != actor_pb2.PRINCIPAL_KIND_PATIENT
            and self.index.view_in_memory(question.patient_pseudonym)
        )

    def check_access(self, question: pb.CheckAccessRequest) -> pb.CheckAccessResponse:
        """Decide, audit and answer; the hot path. Synchronous: reads the store on a miss."""
        response, decided = self.decide(question)
        self._sink.decided(decided)
        return response

    def decide(
        self, question: pb.CheckAccessRequest
    ) -> tuple[pb.CheckAccessResponse, DecisionRecord]:
        """The answer and what its audit event is made of; records nothing."""
        request, unreachable = self.request_of(question)
        if request is None:
            decision = AccessDecision(False, unreachable, policy_rule="base.record_unavailable")
        else:
            decision = self.engine.decide(request, self.index.patient_view(request.patient))
        verdict = acc.DECISION_PERMIT if decision.permit else acc.DECISION_DENY
        response = pb.CheckAccessResponse(
            decision=verdict,
            reason=decision.reason,
            obligations=decision.obligations,  # type: ignore[arg-type]
            ledger_height=max(self.index.height, 0),
        )
        if decision.consent is not None:
            response.consent.consent, response.consent.version = decision.consent
        elif decision.break_glass is not None:
            # The justification may hold PHI: it goes to the audit log only, never in replies.
            response.break_glass.session = decision.break_glass.session
        else:
            response.policy_rule = decision.policy_rule
        return response, DecisionRecord(question, decision)

    async def break_glass(
        self,
        caller: actor_pb2.Actor,
        session: pb.BreakGlassSession,
        seconds: int,
        request_id: str = "",
    ) -> pb.BreakGlassSession:
        if request_id:
            earlier = await self._store(
                self.index.break_glass_by_request, caller.principal, request_id
            )
            if earlier is not None:
                return pb.BreakGlassSession.FromString(earlier)
        if not PSEUDONYM.match(session.patient_pseudonym):
            raise ConsentInvalid("BAD_PATIENT_PSEUDONYM", "patient_pseudonym")
        if session.purpose not in self.engine.policy.break_glass_purposes:
            raise ConsentInvalid("BREAK_GLASS_PURPOSE", "purpose must be ETREAT or BTG")
        if not session.justification.strip() or len(session.justification) > MAX_JUSTIFICATION:
            raise ConsentInvalid("JUSTIFICATION_REQUIRED", "a written justification is required")
        if caller.kind not in self.engine.policy.break_glass_kinds:
            raise ConsentForbidden("BREAK_GLASS_NOT_ALLOWED", "this kind of principal may not")
        now = self.now_ms()
        length = min(seconds or self._bg_default, self._bg_max)
        opened = pb.BreakGlassSession(
            name=f"breakGlassSessions/{uuid.uuid4()}",
            actor=caller,
            patient_pseudonym=session.patient_pseudonym,
            purpose=session.purpose,
            justification=session.justification,
            obligations=[pb.OBLIGATION_REVIEW, pb.OBLIGATION_NOTIFY_PATIENT],
        )
        opened.start_time.FromMilliseconds(now)
        opened.expire_time.FromMilliseconds(now + length * 1000)
        await self._store(
            self.index.put_break_glass,
            opened.name,
            opened.SerializeToString(),
            caller.principal,
            session.patient_pseudonym,
            now + length * 1000,
            request_id,
        )
        self._sink.record(
            audit_event_pb2.AuditEvent(
                actor=caller,
                action=acc.ACCESS_ACTION_BREAK_GLASS,
                resource=opened.name,
                patient_pseudonym=session.patient_pseudonym,
                purpose=session.purpose,
                decision=acc.DECISION_PERMIT,
                decision_reason="BREAK_GLASS",
                break_glass=audit_event_pb2.BreakGlassReference(
                    session=opened.name, justification=session.justification
                ),
            )
        )
        await self._sink.announce_break_glass(opened)
        return opened

    # --- FHIR ---

    async def import_fhir(
        self, document: str, validate_only: bool, request_id: str = ""
    ) -> pb.Consent:
        grantor = self._custodian.principal if self._custodian else ""
        imported = import_fhir_consent(document, grantor=grantor, reading=Reading())
        if validate_only:
            return pb.Consent(terms=imported.terms, state=pb.CONSENT_STATE_UNSPECIFIED)
        return await self.create_consent("", imported.terms, None, request_id)

    async def export_fhir(self, name: str, version: int) -> str:
        consent = await self.get_consent(name, version)
        status = {
            pb.CONSENT_STATE_ACTIVE: "active",
            pb.CONSENT_STATE_PENDING: "proposed",
            pb.CONSENT_STATE_REJECTED: "rejected",
        }.get(consent.state, "inactive")
        return export_fhir_consent(name.removeprefix("consents/"), consent.terms, status=status)


Hook = Callable[[], Awaitable[None]]
