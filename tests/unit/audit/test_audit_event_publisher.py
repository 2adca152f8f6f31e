"""The shared audit-event publisher (medledger.core.audit_events): subject per organisation,
message id = event id, and the fields every emitter may leave out filled in."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from medledger._gen.common.v1 import audit_event_pb2
from medledger.core.audit_events import AuditPublisher, audit_subject


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, audit_event_pb2.AuditEvent, str | None]] = []

    async def js_publish(
        self,
        subject: str,
        message: audit_event_pb2.AuditEvent,
        *,
        msg_id: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Any:
        self.published.append((subject, message, msg_id))


def test_subjects_name_the_organisation() -> None:
    assert audit_subject("st-mary") == "medledger.audit.st-mary.events"
    assert audit_subject("organisations/st-mary") == "medledger.audit.st-mary.events"
    for bad in ("", "a.b", "a b", "a*", "a>"):
        with pytest.raises(ValueError, match="subject"):
            audit_subject(bad)


async def test_publish_completes_the_event_and_uses_its_id_as_message_id() -> None:
    bus = RecordingBus()
    publisher = AuditPublisher(bus, "st-mary", "records")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        event_id = await publisher.publish(audit_event_pb2.AuditEvent(resource="records/r-1"))
        expected_trace = f"{span.get_span_context().trace_id:032x}"
    subject, event, msg_id = bus.published[0]
    assert subject == "medledger.audit.st-mary.events"
    assert msg_id == event_id == event.event_id and len(event_id) == 36
    assert event.service == "records" and event.organisation == "organisations/st-mary"
    assert event.trace_id == expected_trace
    assert event.HasField("time")
    # Outside a span there is no trace id; fields the emitter set are kept.
    assert trace.get_current_span().get_span_context().is_valid is False
    await publisher.publish(audit_event_pb2.AuditEvent(event_id="e-1", service="consent"))
    _, second, msg_id = bus.published[1]
    assert (second.event_id, msg_id, second.service, second.trace_id) == (
        "e-1",
        "e-1",
        "consent",
        "",
    )
