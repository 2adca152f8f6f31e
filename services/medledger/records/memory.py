"""In-memory consent, ledger and audit stand-ins for the records service: for unit tests of the
domain logic and for the benchmark's service process, never for a deployed service."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from medledger.records.service import (
    AccessDecision,
    AccessRequest,
    LedgerTransaction,
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
            return AccessDecision(False, "NO_CONSENT", "", policy_rule="base.deny_by_default")
        return AccessDecision(True, "CONSENT_PERMIT", "consents/test-grant", 1)


@dataclass
class MemoryLedger:
    """Transactions kept in dicts; a submitted transaction is final at once, unless `hold`.

    With `hold` set, submissions are remembered but nothing becomes final until
    `release()`, which is how tests observe the PENDING state and the outbox.
    """

    registrations: dict[str, RecordRegistration] = field(default_factory=dict)
    erasures: dict[str, str] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    hold: bool = False
    fail_submissions: bool = False
    _payloads: dict[str, tuple[str, object]] = field(default_factory=dict)
    _final: dict[str, int] = field(default_factory=dict)

    def registration_transaction(self, registration: RecordRegistration) -> LedgerTransaction:
        signed = json.dumps(
            ["registration", registration.record_id, registration.ciphertext_sha256.hex()]
        ).encode()
        tx_id = hashlib.sha256(signed).hexdigest()
        self._payloads[tx_id] = ("registration", registration)
        return LedgerTransaction(tx_id, signed)

    def erasure_transaction(self, record_id: str, reason: str) -> LedgerTransaction:
        signed = json.dumps(["erasure", record_id, reason]).encode()
        tx_id = hashlib.sha256(signed).hexdigest()
        self._payloads[tx_id] = ("erasure", (record_id, reason))
        return LedgerTransaction(tx_id, signed)

    async def submit(self, tx: LedgerTransaction) -> None:
        if self.fail_submissions:
            raise ConnectionError("ledger unavailable")
        self.submitted.append(tx.tx_id)
        if not self.hold:
            self._finalise(tx.tx_id)

    def release(self) -> None:
        self.hold = False
        for tx_id in self.submitted:
            self._finalise(tx_id)

    def _finalise(self, tx_id: str) -> None:
        if tx_id in self._final:
            return
        kind, payload = self._payloads[tx_id]
        if kind == "registration":
            assert isinstance(payload, RecordRegistration)
            self.registrations[payload.record_id] = payload
        else:
            assert isinstance(payload, tuple)
            self.erasures[str(payload[0])] = str(payload[1])
        self._final[tx_id] = len(self._final) + 1

    async def final_height(self, tx_id: str) -> int | None:
        return self._final.get(tx_id)

    async def registration(self, tx_id: str) -> RegistrationStatus | None:
        height = self._final.get(tx_id)
        found = self._payloads.get(tx_id)
        if height is None or found is None or found[0] != "registration":
            return None
        registration = found[1]
        assert isinstance(registration, RecordRegistration)
        return RegistrationStatus(
            registration.record_id, registration.ciphertext_sha256, tx_id, height
        )


@dataclass
class MemoryAudit:
    events: list[RecordAuditEvent] = field(default_factory=list)

    async def publish(self, event: RecordAuditEvent) -> None:
        self.events.append(event)
