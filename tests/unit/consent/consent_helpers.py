"""Builders shared by the consent unit tests: access questions, consents and terms."""

from __future__ import annotations

from datetime import UTC, datetime

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import actor_pb2
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger.consent.policy import (
    AccessDecision,
    AccessRequest,
    BreakGlass,
    CompiledConsent,
    DecisionEngine,
    PatientView,
)

PATIENT = "f001"
HOME = "organisations/f001"
OTHER = "organisations/org-b"
DOCTOR = "organisations/f001/principals/dr-1"
NURSE = "organisations/f001/principals/f204"
OUTSIDER = "organisations/org-b/principals/dr-9"
CONSENT_SERVICE = "organisations/f001/principals/consent-svc"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


NOW = ms("2024-06-01T12:00:00")


def ask(
    principal: str = DOCTOR,
    *,
    action: int = acc.ACCESS_ACTION_READ,
    purpose: int = acc.PURPOSE_OF_USE_TREAT,
    category: int = acc.RECORD_CATEGORY_LABORATORY,
    labels: tuple[int, ...] = (),
    record: str = "",
    data_time_ms: int = 0,
    now_ms: int = NOW,
    roles: tuple[str, ...] = ("physician",),
    kind: int = actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
    patient: str = PATIENT,
    actor_patient: str = "",
    justification: str = "",
) -> AccessRequest:
    org = "/".join(principal.split("/")[:2])
    return AccessRequest(
        principal=principal,
        organisation=org,
        patient=patient,
        action=action,
        purpose=purpose,
        now_ms=now_ms,
        roles=frozenset(roles),
        kind=kind,
        category=category,
        labels=frozenset(labels),
        record=record,
        data_time_ms=data_time_ms,
        actor_patient=actor_patient,
        break_glass=BreakGlass("breakGlassSessions/one-off", justification)
        if justification
        else None,
    )


def decide(
    request: AccessRequest,
    *consents: CompiledConsent,
    custodians: frozenset[str] = frozenset({HOME}),
    engine: DecisionEngine | None = None,
) -> AccessDecision:
    return (engine or DecisionEngine()).decide(request, PatientView(consents, custodians))


def terms(
    provision: ct.Provision,
    *,
    grantee: ct.Party | None = None,
    patient: str = PATIENT,
    period: ct.TimePeriod | None = None,
) -> ct.ConsentTerms:
    out = ct.ConsentTerms(
        patient_pseudonym=patient,
        grantor=CONSENT_SERVICE,
        grantor_capacity=ct.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF,
        grantor_evidence=ct.GrantorEvidence(
            kind=ct.EVIDENCE_KIND_SIGNED_FORM,
            record="records/form-1",
            document_sha256=bytes(range(32)),
            captured_at_unix_ms=ms("2024-01-01T00:00:00"),
        ),
        grantee=grantee or ct.Party(organisation=OTHER),
        provision=provision,
        scope=ct.CONSENT_SCOPE_PATIENT_PRIVACY,
    )
    if period is not None:
        out.period.CopyFrom(period)
    return out


def permit(**fields: object) -> ct.Provision:
    return ct.Provision(type=ct.PROVISION_TYPE_PERMIT, **fields)  # type: ignore[arg-type]


def deny(**fields: object) -> ct.Provision:
    return ct.Provision(type=ct.PROVISION_TYPE_DENY, **fields)  # type: ignore[arg-type]


def compiled(name: str, t: ct.ConsentTerms, version: int = 1) -> CompiledConsent:
    return CompiledConsent.of(f"consents/{name}", version, t)
