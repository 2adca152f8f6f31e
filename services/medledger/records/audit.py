"""The records service's audit events as medledger AuditEvents on the AUDIT JetStream stream.

An access that cannot be audited is not performed: publishing is retried for a short while and
then fails the call with AUDIT_UNAVAILABLE, before any content is released.
"""

from __future__ import annotations

import asyncio
import uuid

from medledger._gen.common.v1 import access_pb2, audit_event_pb2
from medledger.core.audit_events import AuditPublisher
from medledger.core.logging import get_logger
from medledger.core.nats_bus import BusError
from medledger.records.codes import purpose_value
from medledger.records.consent_client import actor
from medledger.records.errors import AuditUnavailable
from medledger.records.service import AuditAction, RecordAuditEvent

SERVICE = "records"
_ACTIONS = {
    AuditAction.UPLOAD: access_pb2.ACCESS_ACTION_CREATE,
    AuditAction.READ: access_pb2.ACCESS_ACTION_READ,
    AuditAction.SEARCH: access_pb2.ACCESS_ACTION_SEARCH,
    AuditAction.DELETE: access_pb2.ACCESS_ACTION_DELETE,
    # Verification reads ciphertext and ledger data, never content; the rule says which it was.
    AuditAction.VERIFY: access_pb2.ACCESS_ACTION_READ,
}

_log = get_logger("medledger.records.audit")


def audit_event(event: RecordAuditEvent) -> audit_event_pb2.AuditEvent:
    """The AuditEvent of a records access (event id, service and organisation filled on publish)."""
    record = f"records/{event.record_id}" if event.record_id else ""
    message = audit_event_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        actor=actor(event.caller),
        action=_ACTIONS[event.action],
        resource=event.resource or record or f"patients/{event.patient_pseudonym}",
        record=record,
        patient_pseudonym=event.patient_pseudonym,
        purpose=purpose_value(event.purpose),  # type: ignore[arg-type]
        decision=access_pb2.DECISION_PERMIT if event.permitted else access_pb2.DECISION_DENY,
        decision_reason=event.reason,
    )
    message.time.FromDatetime(event.occurred_at)
    if event.consent_ref:
        message.consent.consent = event.consent_ref
        message.consent.version = event.consent_version
    elif event.break_glass_session:
        message.break_glass.session = event.break_glass_session
        message.break_glass.justification = event.break_glass_justification
    else:
        message.policy_rule = event.policy_rule or "records.unspecified"
    return message


class JetStreamRecordAudit:
    """AuditPublisher (service.py's protocol) over core.audit_events."""

    def __init__(
        self, publisher: AuditPublisher, *, attempts: int = 4, first_delay: float = 0.1
    ) -> None:
        self._publisher = publisher
        self._attempts = attempts
        self._first_delay = first_delay

    async def publish(self, event: RecordAuditEvent) -> None:
        message = audit_event(event)
        delay = self._first_delay
        for attempt in range(self._attempts):
            try:
                # The event id is the JetStream message id: a retry is stored once.
                await self._publisher.publish(message)
                return
            except BusError as exc:
                _log.warning(
                    "audit publish failed",
                    event_id=message.event_id,
                    attempt=attempt + 1,
                    reason=exc.reason,
                )
                if attempt + 1 < self._attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
        raise AuditUnavailable("the access could not be audited, so it was not performed")
