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
from typing import Protocol

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


class Ledger(Protocol):
    """What the service needs of medledger.ledgerclient.LedgerClient."""

    @property
    def chain_id(self) -> str: ...

    async def submit(self, tx: bytes) -> str: ...


class DecisionSink(Protocol):
    """Where decisions go to be audited, and break-glass to be announced."""

    def record(self, event: audit_event_pb2.AuditEvent) -> None: ...

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

    # --- following the chain ---

    async def apply_block(self, block: ledger_pb.Block) -> list[ix.Outcome]:
        outcomes = self.index.apply_block(block)
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
            while (outcome := self.index.outcome(tx_id)) is None:
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
        current = self.index.consent(name)
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
        current = self.index.consent(name)
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
        from medledger.ledgerclient import LedgerClientError, sign_transaction

        if self._ledger is None:
            raise LedgerUnavailable("LEDGER_UNAVAILABLE", "this service has no ledger connection")
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
            if body.chain_id != self._ledger.chain_id:
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
                chain_id=self._ledger.chain_id,
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
        try:
            return await self._ledger.submit(tx)
        except LedgerClientError as exc:
            if exc.reason in ("LEDGER_UNAVAILABLE", "MEMPOOL_FULL"):
                raise LedgerUnavailable(exc.reason, "the ledger did not take the change") from exc
            raise ConsentInvalid(exc.reason, "the ledger refused the transaction") from exc

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

    def get_consent(self, name: str, version: int = 0) -> pb.Consent:
        check_consent_name(name)
        stored = self.index.consent(name, version)
        if stored is None:
            raise ConsentNotFound("CONSENT_NOT_FOUND", "no such consent", {"name": name})
        return self._to_pb(stored)

    def list_consents(
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
        rows = self.index.list_consents(patient=patient, states=states, after=after, limit=size + 1)
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
        actor = question.actor
        if not PRINCIPAL_NAME.match(actor.principal):
            raise ConsentInvalid(
                "ACTOR_REQUIRED", "actor.principal is required", {"field": "actor"}
            )
        if not PSEUDONYM.match(question.patient_pseudonym):
            raise ConsentInvalid(
                "BAD_PATIENT_PSEUDONYM", "patient_pseudonym", {"field": "patient_pseudonym"}
            )
        if question.action not in acc.AccessAction.values() or not question.action:
            raise ConsentInvalid("UNKNOWN_CODE", "action", {"field": "action"})
        if question.purpose not in acc.PurposeOfUse.values() or not question.purpose:
            raise ConsentInvalid("UNKNOWN_CODE", "purpose", {"field": "purpose"})
        if len(question.break_glass_justification) > MAX_JUSTIFICATION:
            raise ConsentInvalid(
                "JUSTIFICATION_TOO_LONG", "justification", {"field": "justification"}
            )
        target = question.WhichOneof("target")
        category: int = acc.RECORD_CATEGORY_UNSPECIFIED
        labels: frozenset[int] = frozenset()
        record, data_ms = "", 0
        if target == "data_class":
            category = question.data_class.category
            labels = frozenset(question.data_class.sensitivity_labels)
            if category not in acc.RecordCategory.values() or not labels <= frozenset(
                acc.SensitivityLabel.values()
            ):
                raise ConsentInvalid("UNKNOWN_CODE", "data_class", {"field": "data_class"})
        elif target == "record":
            if not RECORD_NAME.match(question.record):
                raise ConsentInvalid("BAD_RECORD_NAME", "record", {"field": "record"})
            facts = self.index.record(question.record)
            if facts is None:
                return None, "RECORD_UNKNOWN"
            if facts.patient != question.patient_pseudonym:
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
        if question.break_glass_justification:
            glass = BreakGlass(
                f"breakGlassSessions/{uuid.uuid4()}", question.break_glass_justification
            )
        elif question.break_glass_session:
            glass = self._open_session(
                question.break_glass_session, actor.principal, question.patient_pseudonym, now
            )
        actor_patient = ""
        if actor.kind == actor_pb2.PRINCIPAL_KIND_PATIENT:
            facts_p = self.index.principal(actor.principal)
            actor_patient = facts_p.patient if facts_p is not None else ""
        return (
            AccessRequest(
                principal=actor.principal,
                organisation=actor.organisation,
                patient=question.patient_pseudonym,
                action=question.action,
                purpose=question.purpose,
                now_ms=now,
                roles=frozenset(actor.roles),
                kind=actor.kind,
                category=category,
                labels=labels,
                record=record,
                data_time_ms=data_ms,
                actor_patient=actor_patient,
                break_glass=glass,
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

    def check_access(self, question: pb.CheckAccessRequest) -> pb.CheckAccessResponse:
        """Decide, audit and answer; the hot path (no I/O beyond the index)."""
        request, unreachable = self.request_of(question)
        if request is None:
            decision = AccessDecision(False, unreachable, policy_rule="base.record_unavailable")
        else:
            decision = self.engine.decide(request, self.index.patient_view(request.patient))
        response = pb.CheckAccessResponse(
            decision=acc.DECISION_PERMIT if decision.permit else acc.DECISION_DENY,
            reason=decision.reason,
            obligations=decision.obligations,  # type: ignore[arg-type]
            ledger_height=max(self.index.height, 0),
        )
        event = audit_event_pb2.AuditEvent(
            actor=question.actor,
            action=question.action,
            resource=question.record or f"patients/{question.patient_pseudonym}",
            record=question.record,
            patient_pseudonym=question.patient_pseudonym,
            purpose=question.purpose,
            decision=response.decision,
            decision_reason=decision.reason,
        )
        if decision.consent is not None:
            ref = audit_event_pb2.ConsentReference(
                consent=decision.consent[0], version=decision.consent[1]
            )
            response.consent.CopyFrom(ref)
            event.consent.CopyFrom(ref)
        elif decision.break_glass is not None:
            response.break_glass.session = decision.break_glass.session
            # The justification may hold PHI: it goes to the audit log only, never in replies.
            event.break_glass.CopyFrom(
                audit_event_pb2.BreakGlassReference(
                    session=decision.break_glass.session,
                    justification=decision.break_glass.justification,
                )
            )
        else:
            response.policy_rule = decision.policy_rule
            event.policy_rule = decision.policy_rule
        self._sink.record(event)
        return response

    async def break_glass(
        self,
        caller: actor_pb2.Actor,
        session: pb.BreakGlassSession,
        seconds: int,
        request_id: str = "",
    ) -> pb.BreakGlassSession:
        if request_id:
            earlier = self.index.break_glass_by_request(caller.principal, request_id)
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
        self.index.put_break_glass(
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

    def export_fhir(self, name: str, version: int) -> str:
        consent = self.get_consent(name, version)
        status = {
            pb.CONSENT_STATE_ACTIVE: "active",
            pb.CONSENT_STATE_PENDING: "proposed",
            pb.CONSENT_STATE_REJECTED: "rejected",
        }.get(consent.state, "inactive")
        return export_fhir_consent(name.removeprefix("consents/"), consent.terms, status=status)


Hook = Callable[[], Awaitable[None]]
