"""Who may read the log, and which accesses an accounting of disclosures lists."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from medledger._gen.common.v1 import access_pb2, audit_event_pb2
from medledger.audit import access
from medledger.audit.errors import OutsidePatientScope
from medledger.audit.model import EventFilter
from medledger.audit.reports import accounting
from medledger.audit.reports.content import iso_ms, six_years_before
from medledger.core.auth import CallerIdentity
from medledger.core.errors import PermissionDenied

MakeEvent = Callable[..., audit_event_pb2.AuditEvent]
ORG = "organisations/org-a"


def caller(kind: str, org: str = "org-a", pseudonym: str | None = None) -> CallerIdentity:
    claims = {} if pseudonym is None else {"patient_pseudonym": pseudonym}
    return CallerIdentity(f"organisations/{org}/principals/x", org, kind=kind, claims=claims)


def test_a_patient_query_is_pinned_to_their_own_pseudonym() -> None:
    patient = caller("PATIENT", pseudonym="patients/p-1")
    scoped = access.scope_query(patient, EventFilter(), ORG)
    assert scoped.patient_pseudonym == "patients/p-1"
    with pytest.raises(OutsidePatientScope):
        access.scope_query(patient, EventFilter(patient_pseudonym="patients/p-2"), ORG)
    with pytest.raises(OutsidePatientScope):
        access.scope_query(caller("patient"), EventFilter(), ORG)  # no pseudonym claim


def test_staff_query_only_their_own_organisations_log() -> None:
    for kind in ("AUDITOR", "administrator", "SERVICE"):
        assert access.scope_query(caller(kind), EventFilter(principal="p"), ORG).principal == "p"
        with pytest.raises(PermissionDenied):
            access.scope_query(caller(kind, org="org-b"), EventFilter(), ORG)
    with pytest.raises(PermissionDenied):
        access.scope_query(caller("PRACTITIONER"), EventFilter(), ORG)


def test_only_auditors_export_and_patients_only_their_accounting() -> None:
    assert access.scope_export(caller("AUDITOR"), "patients/p-9", ORG, accounting=True) == (
        "patients/p-9"
    )
    patient = caller("PATIENT", pseudonym="patients/p-1")
    assert access.scope_export(patient, "", ORG, accounting=True) == "patients/p-1"
    with pytest.raises(OutsidePatientScope):
        access.scope_export(patient, "", ORG, accounting=False)
    with pytest.raises(PermissionDenied):
        access.scope_export(caller("SERVICE"), "", ORG, accounting=False)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({}, None),
        ({"decision": access_pb2.DECISION_DENY}, accounting.NOT_PERMITTED),
        ({"action": access_pb2.ACCESS_ACTION_GRANT_CONSENT}, accounting.NOT_A_DISCLOSURE),
        ({"actor_org": "organisations/org-a"}, accounting.USE_WITHIN_ENTITY),
        ({"purpose": access_pb2.PURPOSE_OF_USE_TREAT}, accounting.TREATMENT_PAYMENT_OPERATIONS),
        ({"purpose": access_pb2.PURPOSE_OF_USE_HPAYMT}, accounting.TREATMENT_PAYMENT_OPERATIONS),
        ({"purpose": access_pb2.PURPOSE_OF_USE_PATRQT}, accounting.TO_THE_INDIVIDUAL),
        ({"purpose": access_pb2.PURPOSE_OF_USE_FAMRQT}, accounting.INVOLVED_IN_CARE),
        ({"purpose": access_pb2.PURPOSE_OF_USE_GOV}, accounting.NATIONAL_SECURITY),
        ({"purpose": access_pb2.PURPOSE_OF_USE_PUBHLTH}, None),
        ({"purpose": access_pb2.PURPOSE_OF_USE_HLEGAL}, None),
        # Disclosing to a third party is accountable even by the custodian's own staff.
        (
            {"actor_org": "organisations/org-a", "action": access_pb2.ACCESS_ACTION_DISCLOSE},
            None,
        ),
    ],
)
def test_accounting_lists_disclosures_and_leaves_out_what_164_528_excludes(
    event: MakeEvent, changes: dict[str, object], rule: str | None
) -> None:
    assert accounting.exclusion(event(**changes)) == rule


def test_disclosure_elements_carry_no_free_text(event: MakeEvent) -> None:
    disclosed = event(break_glass=True)
    assert "unconscious" not in accounting.description(disclosed)
    assert accounting.recipient(disclosed) == (
        "organisations/org-b/principals/dr-who (organisations/org-b)"
    )


def test_the_lookback_is_six_calendar_years() -> None:
    end = 1_709_208_000_000  # 2024-02-29T12:00:00Z
    assert iso_ms(six_years_before(end)) == "2018-02-28T12:00:00.000Z"
    end = 1_700_000_000_000  # 2023-11-14T22:13:20Z
    assert iso_ms(six_years_before(end)) == "2017-11-14T22:13:20.000Z"
