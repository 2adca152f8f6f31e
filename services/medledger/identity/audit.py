"""Audit events of the identity service: token issuance (granted or refused) and registry
changes of this organisation, published to the AUDIT JetStream stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from medledger._gen.common.v1 import access_pb2, actor_pb2, audit_event_pb2
from medledger.core.audit_events import AuditPublisher, current_trace_id
from medledger.core.logging import get_logger
from medledger.core.nats_bus import BusError, NatsBus

SERVICE = "identity"
# Stable ids for registry-change events, so replaying the chain re-emits the same event ids
# and the audit log (which rejects duplicate ids) records each change once.
_CHANGE_EVENT_NAMESPACE = uuid.UUID("6f0b8a8e-6a57-4c84-9f58-3d1f0d3a3c11")

_log = get_logger("medledger.identity.audit")


class AuditSink(Protocol):
    async def emit(self, event: audit_event_pb2.AuditEvent) -> None: ...


class JetStreamAuditSink:
    """Publishes through core.audit_events (message id = event id: a retry is stored once)."""

    def __init__(self, bus: NatsBus, organisation_id: str) -> None:
        self._publisher = AuditPublisher(bus, organisation_id, SERVICE)

    async def emit(self, event: audit_event_pb2.AuditEvent) -> None:
        await self._publisher.publish(event)


class LoggingAuditSink:
    """Keeps the events in memory; for tests and for running without a bus."""

    def __init__(self) -> None:
        self.events: list[audit_event_pb2.AuditEvent] = []

    async def emit(self, event: audit_event_pb2.AuditEvent) -> None:
        self.events.append(event)


async def emit_safely(sink: AuditSink, event: audit_event_pb2.AuditEvent) -> bool:
    """Emit, logging (without content) instead of failing; False when the event was not stored."""
    try:
        await sink.emit(event)
    except BusError as exc:
        _log.error("audit event not published", event_id=event.event_id, reason=exc.reason)
        return False
    return True


def actor(
    principal: str, roles: Iterable[str] = (), kind: int = 0, token_id: str = ""
) -> actor_pb2.Actor:
    return actor_pb2.Actor(
        principal=principal,
        organisation="/".join(principal.split("/")[:2]),
        roles=sorted(roles),
        token_id=token_id,
        kind=kind,  # type: ignore[arg-type]
    )


def event(
    *,
    who: actor_pb2.Actor,
    action: int,
    resource: str,
    decision: int,
    reason: str,
    organisation: str,
    now_ms: int,
    event_id: str | None = None,
) -> audit_event_pb2.AuditEvent:
    time = Timestamp()
    time.FromMilliseconds(now_ms)
    return audit_event_pb2.AuditEvent(
        event_id=event_id or str(uuid.uuid4()),
        time=time,
        actor=who,
        action=action,  # type: ignore[arg-type]
        resource=resource,
        purpose=access_pb2.PURPOSE_OF_USE_HSYSADMIN,
        decision=decision,  # type: ignore[arg-type]
        decision_reason=reason,
        policy_rule="identity.registry" if action != access_pb2.ACCESS_ACTION_AUTHENTICATE else "",
        service=SERVICE,
        organisation=organisation,
        trace_id=current_trace_id(),
    )


def change_event_id(tx_id: str) -> str:
    return str(uuid.uuid5(_CHANGE_EVENT_NAMESPACE, tx_id))
