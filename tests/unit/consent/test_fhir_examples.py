"""The twelve HL7 FHIR R4 Consent examples: each imports (after the questions it leaves open
are answered as its narrative reads), and decides the accesses its narrative describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import actor_pb2
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger.consent.errors import FhirConsentAmbiguous
from medledger.consent.fhir import FhirImport, Reading, import_fhir_consent
from medledger.consent.policy import CompiledConsent
from medledger.consent.terms import ANY_ORGANISATION
from tests.unit.consent.consent_helpers import (
    CONSENT_SERVICE,
    DOCTOR,
    HOME,
    NURSE,
    OUTSIDER,
    ask,
    compiled,
    decide,
    ms,
)

EXAMPLES = Path(__file__).parent / "fhir_examples"
PERMIT, DENY = ct.PROVISION_TYPE_PERMIT, ct.PROVISION_TYPE_DENY
REFERENCES = {
    "Practitioner/f204": NURSE,
    "Practitioner/13": "organisations/org-b/principals/p-13",
    "Patient/example": "organisations/f001/principals/rep-1",
    "Task/example3": "records/lab-order-3",
}


def load(example: str, reading: Reading | None = None) -> FhirImport:
    document = (EXAMPLES / f"Consent-consent-example-{example}.json").read_text()
    return import_fhir_consent(
        document, grantor=CONSENT_SERVICE, references=REFERENCES, reading=reading
    )


def consent(example: str, reading: Reading | None = None) -> tuple[CompiledConsent, ...]:
    return (compiled(example.lower(), load(example, reading).terms),)


ALL = [
    "Emergency",
    "Out",
    "basic",
    "grantor",
    "notAuthor",
    "notOrg",
    "notThem",
    "notThis",
    "notTime",
    "pkb",
    "signature",
    "smartonfhir",
]

# How a person reads each document's narrative, answering the importer's questions.
READINGS: dict[str, Reading | None] = {
    "Emergency": Reading(root_type=DENY, grantee=ANY_ORGANISATION),
    "Out": Reading(root_type=DENY, grantee=ANY_ORGANISATION),
    "basic": Reading(root_type=PERMIT, grantee=ANY_ORGANISATION),
    "grantor": Reading(root_type=PERMIT),
    "notAuthor": Reading(root_type=DENY, grantee=ANY_ORGANISATION),
    "notOrg": None,
    "notThem": Reading(root_type=DENY),
    "notThis": Reading(root_type=DENY, grantee=ANY_ORGANISATION),
    "notTime": Reading(root_type=DENY, grantee=ANY_ORGANISATION, period_is_data_period=True),
    "pkb": Reading(root_type=PERMIT, nested_type=PERMIT),
    "signature": Reading(root_type=DENY, drop_data_authors=True),
    "smartonfhir": Reading(root_type=DENY, grantee="organisations/org-b/principals/smart-app"),
}


@pytest.mark.parametrize("example", ALL)
def test_every_example_imports_once_its_questions_are_answered(example: str) -> None:
    imported = load(example, READINGS[example])
    assert imported.terms.patient_pseudonym in ("f001", "example", "72", "xcda")
    assert imported.terms.provision.type in (PERMIT, DENY)


@pytest.mark.parametrize(
    ("example", "questions"),
    [
        ("Emergency", {"ROOT_TYPE_MISSING", "GRANTEE_UNDETERMINED"}),
        ("Out", {"ROOT_TYPE_MISSING", "GRANTEE_UNDETERMINED"}),
        ("basic", {"ROOT_TYPE_MISSING", "GRANTEE_UNDETERMINED"}),
        ("grantor", {"ROOT_TYPE_MISSING"}),
        ("notAuthor", {"ROOT_TYPE_MISSING", "GRANTEE_UNDETERMINED"}),
        ("notThem", {"ROOT_TYPE_MISSING"}),
        ("notThis", {"ROOT_TYPE_MISSING", "GRANTEE_UNDETERMINED"}),
        ("notTime", {"ROOT_TYPE_MISSING", "GRANTEE_UNDETERMINED"}),
        ("pkb", {"ROOT_TYPE_MISSING", "PROVISION_TYPE_MISSING"}),
        ("signature", {"ROOT_TYPE_MISSING", "DATA_AUTHOR_UNSUPPORTED"}),
        ("smartonfhir", {"ROOT_TYPE_MISSING", "GRANTEE_UNDETERMINED"}),
    ],
)
def test_ambiguous_examples_are_reported_not_guessed(example: str, questions: set[str]) -> None:
    with pytest.raises(FhirConsentAmbiguous) as info:
        load(example)
    assert info.value.reason == "FHIR_CONSENT_AMBIGUOUS"
    assert {key.split("#")[1] for key in info.value.metadata} == questions


def test_not_org_is_unambiguous_and_withholds_from_the_organisation() -> None:
    consents = consent("notOrg")
    # Good Health's own staff lose the implied consent for treatment...
    denied = decide(ask(DOCTOR), *consents)
    assert (denied.permit, denied.reason) == (False, "CONSENT_DENY")
    assert denied.consent == ("consents/notorg", 1)
    denied = decide(ask(DOCTOR, action=acc.ACCESS_ACTION_UPDATE), *consents)
    assert denied.reason == "CONSENT_DENY"
    # ...while creating new data (not withheld: only access and correct are) stays implied.
    created = decide(ask(DOCTOR, action=acc.ACCESS_ACTION_CREATE), *consents)
    assert (created.permit, created.reason) == (True, "SAME_ORGANISATION_TREATMENT")


def test_out_withholds_all_data_for_treatment() -> None:
    consents = consent("Out", READINGS["Out"])
    assert decide(ask(DOCTOR), *consents).reason == "CONSENT_DENY"
    assert decide(ask(OUTSIDER), *consents).reason == "CONSENT_DENY"
    without = decide(ask(DOCTOR))
    assert without.permit, "the base policy alone would have permitted it"


def test_emergency_withholds_emergency_use_but_break_glass_is_flagged() -> None:
    consents = consent("Emergency", READINGS["Emergency"])
    denied = decide(ask(DOCTOR, purpose=acc.PURPOSE_OF_USE_ETREAT), *consents)
    assert (denied.permit, denied.reason) == (False, "CONSENT_DENY")
    # The document speaks of emergency use only; routine treatment stays implied.
    routine = decide(ask(DOCTOR, purpose=acc.PURPOSE_OF_USE_TREAT), *consents)
    assert routine.permit and routine.policy_rule == "base.custodian_treatment"
    glass = decide(
        ask(DOCTOR, purpose=acc.PURPOSE_OF_USE_BTG, justification="unconscious, allergies?"),
        *consents,
    )
    assert (glass.permit, glass.reason) == (True, "BREAK_GLASS")
    assert glass.break_glass is not None


def test_basic_authorises_access_during_its_period_only() -> None:
    consents = consent("basic", READINGS["basic"])
    during = decide(ask(OUTSIDER, now_ms=ms("2015-06-01T00:00:00")), *consents)
    assert (during.permit, during.reason) == (True, "CONSENT_PERMIT")
    after = decide(ask(OUTSIDER, now_ms=ms("2016-06-01T00:00:00")), *consents)
    assert (after.permit, after.reason) == (False, "OTHER_ORGANISATION_REQUIRES_CONSENT")
    # A general authorisation does not reach psychiatric data.
    sensitive = decide(
        ask(OUTSIDER, now_ms=ms("2015-06-01T00:00:00"), labels=(acc.SENSITIVITY_LABEL_PSY,)),
        *consents,
    )
    assert not sensitive.permit


def test_grantor_gives_the_representative_read_only_access() -> None:
    consents = consent("grantor", READINGS["grantor"])
    rep = "organisations/f001/principals/rep-1"
    kind = actor_pb2.PRINCIPAL_KIND_PATIENT
    read = decide(ask(rep, kind=kind, purpose=acc.PURPOSE_OF_USE_PWATRNY), *consents)
    assert (read.permit, read.reason) == (True, "CONSENT_PERMIT")
    write = decide(
        ask(rep, kind=kind, action=acc.ACCESS_ACTION_UPDATE, purpose=acc.PURPOSE_OF_USE_PWATRNY),
        *consents,
    )
    assert not write.permit
    assert not decide(ask(OUTSIDER), *consents).permit


def test_not_author_restricts_disclosure_to_every_provider() -> None:
    consents = consent("notAuthor", READINGS["notAuthor"])
    assert decide(ask(DOCTOR), *consents).reason == "CONSENT_DENY"
    assert decide(ask(OUTSIDER, action=acc.ACCESS_ACTION_DISCLOSE), *consents).reason == (
        "CONSENT_DENY"
    )


def test_not_them_withholds_from_one_nurse_only() -> None:
    consents = consent("notThem", READINGS["notThem"])
    nurse = decide(ask(NURSE, roles=("nurse",)), *consents)
    assert (nurse.permit, nurse.reason) == (False, "CONSENT_DENY")
    colleague = decide(ask(DOCTOR), *consents)
    assert (colleague.permit, colleague.reason) == (True, "SAME_ORGANISATION_TREATMENT")


def test_not_this_withholds_one_record() -> None:
    consents = consent("notThis", READINGS["notThis"])
    order = decide(ask(DOCTOR, record="records/lab-order-3"), *consents)
    assert (order.permit, order.reason) == (False, "CONSENT_DENY")
    other = decide(ask(DOCTOR, record="records/lab-5"), *consents)
    assert other.permit


def test_not_time_withholds_data_from_the_timeframe() -> None:
    consents = consent("notTime", READINGS["notTime"])
    inside = decide(ask(DOCTOR, data_time_ms=ms("2015-01-15T00:00:00")), *consents)
    assert (inside.permit, inside.reason) == (False, "CONSENT_DENY")
    outside = decide(ask(DOCTOR, data_time_ms=ms("2015-03-01T00:00:00")), *consents)
    assert outside.permit


def test_pkb_shares_sensitive_classes_with_the_organisation() -> None:
    consents = consent("pkb", READINGS["pkb"])
    psy = decide(ask(DOCTOR, labels=(acc.SENSITIVITY_LABEL_PSY,)), *consents)
    assert (psy.permit, psy.reason) == (True, "CONSENT_PERMIT")
    assert decide(ask(DOCTOR, labels=(acc.SENSITIVITY_LABEL_PSY,))).permit is False
    outsider = decide(ask(OUTSIDER, labels=(acc.SENSITIVITY_LABEL_SEX,)), *consents)
    assert not outsider.permit


def test_signature_permits_clinical_documents_to_one_practitioner() -> None:
    consents = consent("signature", READINGS["signature"])
    p13 = "organisations/org-b/principals/p-13"
    during = ms("2016-01-01T00:00:00")
    note = decide(ask(p13, category=acc.RECORD_CATEGORY_CLINICAL_NOTE, now_ms=during), *consents)
    assert (note.permit, note.reason) == (True, "CONSENT_PERMIT")
    lab = decide(ask(p13, category=acc.RECORD_CATEGORY_LABORATORY, now_ms=during), *consents)
    assert (lab.permit, lab.reason) == (False, "CONSENT_DENY")
    later = decide(
        ask(p13, category=acc.RECORD_CATEGORY_CLINICAL_NOTE, now_ms=ms("2017-01-01T00:00:00")),
        *consents,
    )
    assert not later.permit


def test_smart_on_fhir_grants_an_app_medications_for_thirty_minutes() -> None:
    consents = consent("smartonfhir", READINGS["smartonfhir"])
    app = "organisations/org-b/principals/smart-app"
    start = ms("2016-06-23T07:02:33")
    meds = decide(
        ask(app, category=acc.RECORD_CATEGORY_MEDICATION, now_ms=start + 60_000), *consents
    )
    assert (meds.permit, meds.reason) == (True, "CONSENT_PERMIT")
    labs = decide(
        ask(app, category=acc.RECORD_CATEGORY_LABORATORY, now_ms=start + 60_000), *consents
    )
    assert not labs.permit
    late = decide(
        ask(app, category=acc.RECORD_CATEGORY_MEDICATION, now_ms=start + 31 * 60_000), *consents
    )
    assert not late.permit


def test_home_is_the_custodian_in_these_tests() -> None:
    assert HOME == "organisations/f001"
