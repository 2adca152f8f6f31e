"""FHIR export round-trips, and malformed documents are refused with reasons."""

from __future__ import annotations

import json

import pytest

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger.consent.errors import ConsentInvalid, FhirConsentInvalid
from medledger.consent.fhir import export_fhir_consent, import_fhir_consent
from tests.unit.consent.consent_helpers import CONSENT_SERVICE, deny, ms, permit, terms


def rich_terms() -> ct.ConsentTerms:
    inner = deny(
        sensitivity_labels=[acc.SENSITIVITY_LABEL_SUD, acc.SENSITIVITY_LABEL_HIV],
        records=["records/r-1"],
        data_period=ct.TimePeriod(start_unix_ms=ms("2020-01-01T00:00:00")),
    )
    root = permit(
        actions=[acc.ACCESS_ACTION_READ, acc.ACCESS_ACTION_SEARCH],
        categories=[acc.RECORD_CATEGORY_LABORATORY, acc.RECORD_CATEGORY_IMAGING],
        purposes=[acc.PURPOSE_OF_USE_TREAT],
        actors=[
            ct.Party(role=ct.RoleInOrganisation(organisation="organisations/org-b", role="nurse"))
        ],
        period=ct.TimePeriod(start_unix_ms=ms("2024-01-01T00:00:00.123")),
        provisions=[inner],
    )
    return terms(
        root,
        period=ct.TimePeriod(start_unix_ms=1, end_unix_ms=ms("2030-01-01T00:00:00")),
    )


def test_export_then_import_gives_the_same_terms() -> None:
    original = rich_terms()
    document = export_fhir_consent("c-1", original)
    from fhir.resources.R4B.consent import Consent

    Consent.model_validate_json(document)  # the export is valid FHIR R4
    back = import_fhir_consent(document, grantor="organisations/x/principals/ignored")
    assert back.terms == original


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: "{not json", "FHIR_NOT_JSON"),
        (lambda d: json.dumps({**d, "resourceType": "Patient"}), "FHIR_NOT_A_CONSENT"),
        (lambda d: json.dumps({**d, "status": 42}), "FHIR_INVALID"),
        (lambda d: json.dumps({**d, "status": "rejected"}), "FHIR_STATUS_NOT_ACTIVE"),
        (
            lambda d: json.dumps({**d, "patient": {"reference": "Group/1"}}),
            "PATIENT_REFERENCE_REQUIRED",
        ),
        (
            lambda d: json.dumps(
                {
                    **d,
                    "provision": {
                        **d["provision"],
                        "purpose": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                "code": "NOPE",
                            }
                        ],
                    },
                }
            ),
            "UNKNOWN_CODE",
        ),
        (
            lambda d: json.dumps(
                {
                    **d,
                    "provision": {
                        **d["provision"],
                        "period": {"start": "2020-01-02", "end": "2020-01-01"},
                    },
                }
            ),
            "PERIOD_ENDS_BEFORE_START",
        ),
    ],
)
def test_bad_documents_are_refused_with_a_reason(mutate: object, reason: str) -> None:
    document = json.loads(export_fhir_consent("c-1", rich_terms()))
    with pytest.raises(ConsentInvalid) as info:
        import_fhir_consent(mutate(document), grantor=CONSENT_SERVICE)  # type: ignore[operator]
    assert info.value.reason == reason
    assert isinstance(info.value, (FhirConsentInvalid, ConsentInvalid))
