"""Asks the consent service over NATS (`consent.check`, CheckAccessRequest → CheckAccessResponse)
before every read. No answer means no access: a failure to ask is UNAVAILABLE, never a permit."""

from __future__ import annotations

import asyncio

from medledger._gen.common.v1 import access_pb2, actor_pb2
from medledger._gen.consent.v1 import consent_service_pb2 as consent_pb
from medledger.core.nats_bus import BusError, MessageBus
from medledger.records.codes import data_class, purpose_value
from medledger.records.errors import ConsentUnavailable
from medledger.records.service import AccessAction, AccessDecision, AccessRequest, Caller

CHECK_SUBJECT = "consent.check"
# Consent learns of a record from its registration block; right after the block is final it
# may not have applied it yet, and answers this. Asking again shortly is then the right thing.
RECORD_NOT_YET_KNOWN = "RECORD_UNKNOWN"
_ACTIONS = {
    AccessAction.READ: access_pb2.ACCESS_ACTION_READ,
    AccessAction.SEARCH: access_pb2.ACCESS_ACTION_SEARCH,
}
_KINDS = {
    v.name.removeprefix("PRINCIPAL_KIND_"): v.number
    for v in actor_pb2.PrincipalKind.DESCRIPTOR.values
}


def actor(caller: Caller) -> actor_pb2.Actor:
    """The Actor protobuf of a caller, as consent questions and audit events carry it."""
    return actor_pb2.Actor(
        principal=caller.principal,
        organisation=caller.organisation,
        roles=sorted(caller.roles),
        token_id=caller.token_id,
        kind=_KINDS.get(caller.kind.upper(), 0),  # type: ignore[arg-type]
    )


def check_request(request: AccessRequest) -> consent_pb.CheckAccessRequest:
    question = consent_pb.CheckAccessRequest(
        actor=actor(request.caller),
        patient_pseudonym=request.patient_pseudonym,
        action=_ACTIONS[request.action],
        purpose=purpose_value(request.purpose),  # type: ignore[arg-type]
        break_glass_justification=request.break_glass_justification,
    )
    if request.record_id:
        # Consent judges the record by its registration on the ledger, not by our word.
        question.record = f"records/{request.record_id}"
    else:
        question.data_class.CopyFrom(data_class(request.data_class, request.sensitivity_labels))
    return question


def decision_of(response: consent_pb.CheckAccessResponse) -> AccessDecision:
    basis = response.WhichOneof("basis")
    return AccessDecision(
        permitted=response.decision == access_pb2.DECISION_PERMIT,
        reason=response.reason or "NO_REASON",
        consent_ref=response.consent.consent if basis == "consent" else "",
        consent_version=response.consent.version if basis == "consent" else 0,
        break_glass_session=response.break_glass.session if basis == "break_glass" else "",
        policy_rule=response.policy_rule if basis == "policy_rule" else "",
    )


class NatsConsentChecker:
    """ConsentChecker over `consent.check` request/reply."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        subject: str = CHECK_SUBJECT,
        timeout_seconds: float = 2.0,
        registration_lag_seconds: float = 3.0,
    ) -> None:
        self._bus = bus
        self._subject = subject
        self._timeout = timeout_seconds
        self._lag = registration_lag_seconds

    async def check(self, request: AccessRequest) -> AccessDecision:
        question = check_request(request)
        deadline = asyncio.get_running_loop().time() + self._lag
        delay = 0.05
        while True:
            decision = decision_of(await self._ask(question))
            if (
                decision.permitted
                or decision.reason != RECORD_NOT_YET_KNOWN
                or not request.record_id
                or asyncio.get_running_loop().time() + delay > deadline
            ):
                return decision
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _ask(self, question: consent_pb.CheckAccessRequest) -> consent_pb.CheckAccessResponse:
        try:
            return await self._bus.request(
                self._subject, question, consent_pb.CheckAccessResponse, timeout=self._timeout
            )
        except BusError as exc:
            raise ConsentUnavailable(
                "CONSENT_UNAVAILABLE", "consent could not be asked", {"bus_reason": exc.reason}
            ) from None
