"""Publishing audit events: every service sends its AuditEvents to the AUDIT JetStream stream.

An event goes to ``medledger.audit.<org>.events`` with the JetStream message id set to its event
id, so a retried publish is stored once; the audit service of ``<org>`` consumes that subject.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Protocol

from nats.js import api as js_api
from opentelemetry import trace

from medledger._gen.common.v1 import audit_event_pb2

AUDIT_STREAM = "AUDIT"
AUDIT_SUBJECT_PATTERN = "medledger.audit.*.events"
ORGANISATION_PREFIX = "organisations/"
# Deduplication by message id holds for this long after a publish; retries come sooner.
DUPLICATE_WINDOW_SECONDS = 600.0

_ORG_TOKEN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class AuditBus(Protocol):
    """The part of medledger.core.nats_bus.NatsBus the publisher uses."""

    async def js_publish(
        self,
        subject: str,
        message: audit_event_pb2.AuditEvent,
        *,
        msg_id: str | None = None,
        timeout: float = ...,  # noqa: ASYNC109 -- JetStream's publish deadline
    ) -> js_api.PubAck: ...


def audit_subject(organisation: str) -> str:
    """The subject an organisation's events go to; accepts "st-mary" or "organisations/st-mary"."""
    org = organisation.removeprefix(ORGANISATION_PREFIX)
    if not _ORG_TOKEN.match(org) or org.replace(".", "") != org:
        raise ValueError(f"{organisation!r} is not an organisation id usable in a subject")
    return f"medledger.audit.{org}.events"


def current_trace_id() -> str:
    """The W3C trace id of the current span (32 lowercase hex), or '' outside a trace."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


class AuditPublisher:
    """Completes and publishes one service's audit events."""

    def __init__(self, bus: AuditBus, organisation: str, service: str) -> None:
        self._bus = bus
        self._organisation = ORGANISATION_PREFIX + organisation.removeprefix(ORGANISATION_PREFIX)
        self._subject = audit_subject(organisation)
        self._service = service

    @property
    def subject(self) -> str:
        return self._subject

    def complete(self, event: audit_event_pb2.AuditEvent) -> audit_event_pb2.AuditEvent:
        """Fill what the emitter may leave out: id, time, service, organisation, trace id."""
        if not event.event_id:
            event.event_id = str(uuid.uuid4())
        if not event.HasField("time"):
            event.time.FromNanoseconds(time.time_ns())
        if not event.service:
            event.service = self._service
        if not event.organisation:
            event.organisation = self._organisation
        if not event.trace_id:
            event.trace_id = current_trace_id()
        return event

    async def publish(self, event: audit_event_pb2.AuditEvent) -> str:
        """Persist `event` on the AUDIT stream (at most once per event id); returns the id."""
        self.complete(event)
        await self._bus.js_publish(self._subject, event, msg_id=event.event_id)
        return event.event_id


class StreamBus(Protocol):
    async def ensure_stream(
        self,
        name: str,
        subjects: list[str],
        *,
        replicas: int | None = 1,
        duplicate_window: float = 120.0,
    ) -> js_api.StreamInfo: ...


async def ensure_audit_stream(bus: StreamBus, replicas: int | None = None) -> None:
    """Create (or update) the AUDIT stream; idempotent, so every service may call it at start.

    Publishers leave ``replicas`` unset and so keep whatever replication the operator (the
    bootstrap job, the audit service) gave the stream."""
    await bus.ensure_stream(
        AUDIT_STREAM,
        [AUDIT_SUBJECT_PATTERN],
        replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    )
