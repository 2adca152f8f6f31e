"""Builders of audit events and logs for the audit unit tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from medledger._gen.common.v1 import access_pb2, actor_pb2, audit_event_pb2
from medledger.audit.service import AuditLog, LogIdentity
from medledger.audit.sqlite_store import SqliteAuditStore
from medledger.crypto import SigningKey


def make_event(
    *,
    patient: str = "patients/p-1",
    principal: str = "organisations/org-b/principals/dr-who",
    actor_org: str = "organisations/org-b",
    custodian: str = "organisations/org-a",
    action: int = access_pb2.ACCESS_ACTION_READ,
    purpose: int = access_pb2.PURPOSE_OF_USE_HRESCH,
    decision: int = access_pb2.DECISION_PERMIT,
    time_ms: int = 1_700_000_000_000,
    record: str = "records/r-1",
    event_id: str | None = None,
    break_glass: bool = False,
) -> audit_event_pb2.AuditEvent:
    event = audit_event_pb2.AuditEvent(
        event_id=event_id or str(uuid.uuid4()),
        actor=actor_pb2.Actor(principal=principal, organisation=actor_org, roles=["physician"]),
        action=action,  # type: ignore[arg-type]
        resource=record,
        record=record,
        patient_pseudonym=patient,
        purpose=purpose,  # type: ignore[arg-type]
        decision=decision,  # type: ignore[arg-type]
        decision_reason="CONSENT_PERMIT"
        if decision == access_pb2.DECISION_PERMIT
        else "NO_CONSENT",
        service="records",
        organisation=custodian,
    )
    event.time.FromMilliseconds(time_ms)
    if break_glass:
        event.break_glass.session = "breakGlassSessions/bg-1"
        event.break_glass.justification = "unconscious patient in ED"
    return event


def serialized(events: list[audit_event_pb2.AuditEvent]) -> list[bytes]:
    return [e.SerializeToString() for e in events]


@pytest_asyncio.fixture
async def audit_log(tmp_path: Path) -> AsyncIterator[AuditLog]:
    log = AuditLog(
        SqliteAuditStore(tmp_path / "audit.sqlite3"),
        LogIdentity("org-a/audit", "organisations/org-a/principals/audit", SigningKey.generate()),
    )
    await log.open()
    yield log
    await log.close()


EventFactory = Callable[..., audit_event_pb2.AuditEvent]


@pytest.fixture
def event() -> EventFactory:
    """Builds an AuditEvent; keyword arguments as make_event."""
    return make_event
