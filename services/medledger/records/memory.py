"""In-memory consent, ledger and audit stand-ins for the records service, used by tests and
benchmarks until the NATS-backed implementations are wired in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from medledger.records.service import (
    AccessDecision,
    AccessRequest,
    RecordAuditEvent,
    RecordRegistration,
    RegistrationStatus,
)


@dataclass
class StaticConsent:
    """Permits everything unless a patient pseudonym is listed as denied."""

    denied_patients: set[str] = field(default_factory=set)
    requests: list[AccessRequest] = field(default_factory=list)

    async def check(self, request: AccessRequest) -> AccessDecision:
        self.requests.append(request)
        if request.patient_pseudonym in self.denied_patients:
            return AccessDecision(False, "NO_CONSENT", "consents/none")
        return AccessDecision(True, "CONSENT_PERMITS", "consents/test-grant")


@dataclass
class MemoryLedger:
    """Registrations kept in a dict; every registration counts as final at height 1."""

    registrations: dict[str, RecordRegistration] = field(default_factory=dict)
    erasures: dict[str, str] = field(default_factory=dict)
    fail_next_register: bool = False

    async def register(self, registration: RecordRegistration) -> None:
        if self.fail_next_register:
            self.fail_next_register = False
            raise ConnectionError("ledger unavailable")
        self.registrations[registration.record_id] = registration

    async def register_erasure(self, record_id: str, reason: str) -> None:
        self.erasures[record_id] = reason

    async def registration(self, record_id: str) -> RegistrationStatus | None:
        registration = self.registrations.get(record_id)
        if registration is None:
            return None
        tx_id = hashlib.sha256(record_id.encode()).hexdigest()
        return RegistrationStatus(registration.ciphertext_sha256, tx_id, 1)


@dataclass
class MemoryAudit:
    events: list[RecordAuditEvent] = field(default_factory=list)

    async def publish(self, event: RecordAuditEvent) -> None:
        self.events.append(event)
