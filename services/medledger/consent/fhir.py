"""FHIR R4 Consent in and out: validated with ``fhir.resources``, translated to ConsentTerms.

R4 leaves parts of a Consent open (a root provision without a type, no recipient named,
criteria the model cannot hold such as a data author). The importer never guesses: it
raises FhirConsentAmbiguous listing each open question, and a caller who has read the
document answers them with a ``Reading``. Narrative text and display names are dropped.
Exported documents carry everything needed to import them back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger.consent.errors import FhirConsentAmbiguous, FhirConsentInvalid
from medledger.consent.terms import (
    ANY_ORGANISATION,
    ORGANISATION_NAME,
    PRINCIPAL_NAME,
    PSEUDONYM,
    RECORD_NAME,
    check_terms,
)
from medledger.crypto import sha256

NAME_SYSTEM = "urn:medledger:name"
ROLE_SYSTEM = "urn:medledger:role"
EXTENSION_BASE = "https://medledger.io/fhir/StructureDefinition/"
ACTION_SYSTEM = "https://medledger.io/fhir/CodeSystem/access-action"
CONSENT_ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"
SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PARTICIPATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
LOINC = "http://loinc.org"

_SCOPES = {
    "patient-privacy": ct.CONSENT_SCOPE_PATIENT_PRIVACY,
    "research": ct.CONSENT_SCOPE_RESEARCH,
    "treatment": ct.CONSENT_SCOPE_TREATMENT,
    "adr": ct.CONSENT_SCOPE_ADVANCE_DIRECTIVE,
}
# R4 consentaction codes, widest reading a patient would expect of each.
_FHIR_ACTIONS: Mapping[str, tuple[int, ...]] = {
    "access": (acc.ACCESS_ACTION_READ, acc.ACCESS_ACTION_SEARCH),
    "use": (acc.ACCESS_ACTION_READ, acc.ACCESS_ACTION_SEARCH),
    "correct": (acc.ACCESS_ACTION_UPDATE,),
    "collect": (acc.ACCESS_ACTION_CREATE,),
    "disclose": (acc.ACCESS_ACTION_DISCLOSE,),
}
_CATEGORY_RESOURCE: Mapping[int, str] = {
    acc.RECORD_CATEGORY_DEMOGRAPHICS: "Patient",
    acc.RECORD_CATEGORY_ENCOUNTER: "Encounter",
    acc.RECORD_CATEGORY_CONDITION: "Condition",
    acc.RECORD_CATEGORY_CLINICAL_NOTE: "Composition",
    acc.RECORD_CATEGORY_LABORATORY: "Observation",
    acc.RECORD_CATEGORY_MEDICATION: "MedicationRequest",
    acc.RECORD_CATEGORY_ALLERGY: "AllergyIntolerance",
    acc.RECORD_CATEGORY_IMMUNIZATION: "Immunization",
    acc.RECORD_CATEGORY_PROCEDURE: "Procedure",
    acc.RECORD_CATEGORY_IMAGING: "ImagingStudy",
    acc.RECORD_CATEGORY_GENOMIC: "MolecularSequence",
    acc.RECORD_CATEGORY_CARE_PLAN: "CarePlan",
    acc.RECORD_CATEGORY_BILLING: "Claim",
    acc.RECORD_CATEGORY_DOCUMENT: "DocumentReference",
}
_RESOURCE_CATEGORY: Mapping[str, int] = {
    **{v: k for k, v in _CATEGORY_RESOURCE.items()},
    "MedicationStatement": acc.RECORD_CATEGORY_MEDICATION,
    "MedicationAdministration": acc.RECORD_CATEGORY_MEDICATION,
    "MedicationDispense": acc.RECORD_CATEGORY_MEDICATION,
    "DiagnosticReport": acc.RECORD_CATEGORY_LABORATORY,
    "Specimen": acc.RECORD_CATEGORY_LABORATORY,
    "Binary": acc.RECORD_CATEGORY_DOCUMENT,
    "Media": acc.RECORD_CATEGORY_IMAGING,
    "Claim": acc.RECORD_CATEGORY_BILLING,
    "ExplanationOfBenefit": acc.RECORD_CATEGORY_BILLING,
}
_MIME_CATEGORY: Mapping[str, int] = {
    "application/hl7-cda+xml": acc.RECORD_CATEGORY_CLINICAL_NOTE,
    "application/dicom": acc.RECORD_CATEGORY_IMAGING,
    "application/pdf": acc.RECORD_CATEGORY_DOCUMENT,
}
# LOINC document types the examples use, by the category of record they describe.
_LOINC_CATEGORY: Mapping[str, int] = {
    "34133-9": acc.RECORD_CATEGORY_CLINICAL_NOTE,  # summary of episode note
    "18842-5": acc.RECORD_CATEGORY_CLINICAL_NOTE,  # discharge summary
    "11502-2": acc.RECORD_CATEGORY_LABORATORY,  # laboratory report
    "18748-4": acc.RECORD_CATEGORY_IMAGING,  # diagnostic imaging study
}
_LABELS: Mapping[str, int] = {
    name.removeprefix("SENSITIVITY_LABEL_"): value
    for name, value in acc.SensitivityLabel.items()
    if value != acc.SENSITIVITY_LABEL_UNSPECIFIED
}
# HL7 SPI ("sensitive personal information") is the umbrella of every sensitive category.
_SPI = tuple(sorted(_LABELS.values()))
_PURPOSES: Mapping[str, int] = {
    name.removeprefix("PURPOSE_OF_USE_"): value
    for name, value in acc.PurposeOfUse.items()
    if value != acc.PURPOSE_OF_USE_UNSPECIFIED
}
_ACTION_CODES: Mapping[str, int] = {
    name.removeprefix("ACCESS_ACTION_"): value
    for name, value in acc.AccessAction.items()
    if value != acc.ACCESS_ACTION_UNSPECIFIED
}
RECIPIENT_ROLES = frozenset({"PRCP", "IRCP", "GRANTEE", "DELEGATEE", "RESP", "PROV"})
CUSTODIAN_ROLE = "CST"
AUTHOR_ROLES = frozenset({"AUT", "INF", "ENT"})
_TYPES = {"permit": ct.PROVISION_TYPE_PERMIT, "deny": ct.PROVISION_TYPE_DENY}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


@dataclass(frozen=True)
class Question:
    """One thing the document leaves open: ``code`` says what, ``path`` where."""

    code: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code} at {self.path}: {self.detail}"


@dataclass(frozen=True)
class Reading:
    """A person's answers to the importer's questions, after reading the narrative."""

    root_type: int | None = None
    nested_type: int | None = None
    grantee: str | None = None
    drop_data_authors: bool = False
    period_is_data_period: bool = False


@dataclass(frozen=True)
class FhirImport:
    terms: ct.ConsentTerms
    notes: tuple[str, ...] = ()
    """What was dropped or simplified (never narrowing a deny into a permit)."""


@dataclass
class _Context:
    references: Mapping[str, str]
    reading: Reading
    questions: list[Question] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def import_fhir_consent(
    document: str,
    *,
    grantor: str,
    references: Mapping[str, str] | None = None,
    reading: Reading | None = None,
) -> FhirImport:
    """Translate a FHIR R4 Consent (JSON) into ConsentTerms.

    ``grantor`` records who enters the consent when the document does not say (the
    custodian service, on the patient's behalf, evidenced by this very document).
    ``references`` maps FHIR references ("Practitioner/f204") to medledger resource names.
    Raises FhirConsentInvalid for documents that are not valid or use codes this service
    does not know, FhirConsentAmbiguous when questions remain unanswered.
    """
    raw = _parse(document)
    context = _Context(references or {}, reading or Reading())
    terms = ct.ConsentTerms()
    status = raw.get("status")
    if status not in ("active", "proposed", "draft"):
        raise FhirConsentInvalid("FHIR_STATUS_NOT_ACTIVE", f"a {status} consent grants nothing")
    terms.scope = _scope(raw)  # type: ignore[assignment]
    terms.patient_pseudonym = _patient(raw)
    _grantor(raw, terms, grantor, document)
    root = raw.get("provision")
    if not isinstance(root, dict):
        raise FhirConsentInvalid("FHIR_PROVISION_REQUIRED", "the consent has no provision")
    grantee = _extension(raw, "grantee")
    recipients = [a for a in root.get("actor", []) if _role(a) in RECIPIENT_ROLES]
    if context.reading.grantee is not None:
        terms.grantee.CopyFrom(_party_of_name(context.reading.grantee, "reading.grantee"))
    elif grantee is not None:
        terms.grantee.CopyFrom(_party(grantee.get("valueReference", {}), context, "grantee"))
    elif len(recipients) == 1:
        terms.grantee.CopyFrom(_party(recipients[0].get("reference", {}), context, "provision"))
        root = {**root, "actor": [a for a in root.get("actor", []) if a is not recipients[0]]}
    else:
        context.questions.append(
            Question(
                "GRANTEE_UNDETERMINED",
                "provision.actor",
                f"{len(recipients)} recipient actors at the root; say who the consent is for",
            )
        )
    terms.provision.CopyFrom(_provision(root, context, "provision", is_root=True))
    consent_period = _extension(raw, "period")
    if consent_period is not None:
        terms.period.CopyFrom(_period(consent_period.get("valuePeriod"), "extension.period"))
    if context.questions:
        raise FhirConsentAmbiguous(
            "FHIR_CONSENT_AMBIGUOUS",
            "the document leaves questions open: " + "; ".join(map(str, context.questions)),
            {q.path + "#" + q.code: q.detail for q in context.questions},
        )
    check_terms(terms)
    return FhirImport(terms, tuple(context.notes))


def _parse(document: str) -> dict[str, Any]:
    from fhir.resources.R4B.consent import Consent

    try:
        raw = json.loads(document)
    except (ValueError, RecursionError) as exc:
        raise FhirConsentInvalid("FHIR_NOT_JSON", "the document is not JSON") from exc
    if not isinstance(raw, dict) or raw.get("resourceType") != "Consent":
        raise FhirConsentInvalid("FHIR_NOT_A_CONSENT", "resourceType must be Consent")
    try:
        Consent.model_validate(raw)
    except (ValidationError, ValueError, TypeError) as exc:
        where = ""
        if isinstance(exc, ValidationError) and exc.errors():
            where = ".".join(str(p) for p in exc.errors()[0].get("loc", ()))
        raise FhirConsentInvalid(
            "FHIR_INVALID", f"not a valid FHIR R4 Consent (at {where or 'top level'})"
        ) from None
    return raw


def _codes(concept: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(c.get("system", ""), c.get("code", "")) for c in concept.get("coding", [])]


def _scope(raw: Mapping[str, Any]) -> int:
    for system, code in _codes(raw.get("scope", {})):
        if system == SCOPE_SYSTEM and code in _SCOPES:
            return _SCOPES[code]
    raise FhirConsentInvalid("UNKNOWN_CODE", "scope must be a consentscope code")


def _patient(raw: Mapping[str, Any]) -> str:
    reference = str(raw.get("patient", {}).get("reference", ""))
    kind, _, pseudonym = reference.partition("/")
    if kind != "Patient" or not PSEUDONYM.match(pseudonym):
        raise FhirConsentInvalid(
            "PATIENT_REFERENCE_REQUIRED", "patient must reference Patient/{pseudonym}"
        )
    return pseudonym


def _extension(raw: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    for extension in raw.get("extension", []):
        if extension.get("url") == EXTENSION_BASE + name:
            return dict(extension)
    return None


def _grantor(raw: Mapping[str, Any], terms: ct.ConsentTerms, grantor: str, document: str) -> None:
    recorded = _extension(raw, "grantor")
    if recorded is None:
        terms.grantor = grantor
        terms.grantor_capacity = ct.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF
        evidence = terms.grantor_evidence
        evidence.kind = ct.EVIDENCE_KIND_SIGNED_FORM
        evidence.document_sha256 = sha256(document.encode("utf-8"))
        evidence.captured_at_unix_ms = _instant(raw.get("dateTime"), "dateTime") or 1
        return
    parts = {e.get("url"): e for e in recorded.get("extension", [])}
    try:
        terms.grantor = parts["principal"]["valueString"]
        terms.grantor_capacity = ct.GrantorCapacity.Value(parts["capacity"]["valueCode"])
        evidence = terms.grantor_evidence
        evidence.kind = ct.EvidenceKind.Value(parts["evidence"]["valueCode"])
        evidence.captured_at_unix_ms = int(parts["captured"]["valueString"])
        evidence.record = parts.get("record", {}).get("valueString", "")
        evidence.witness = parts.get("witness", {}).get("valueString", "")
        evidence.document_sha256 = bytes.fromhex(parts.get("sha256", {}).get("valueString", ""))
    except (KeyError, ValueError) as exc:
        raise FhirConsentInvalid("BAD_GRANTOR_EXTENSION", "grantor extension incomplete") from exc


def _instant(value: Any, where: str) -> int:
    """Milliseconds since the epoch of a FHIR date or dateTime (dates are midnight UTC)."""
    if value is None:
        return 0
    text = str(value)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        if len(text) in (4, 7):
            parts = [int(p) for p in text.split("-")] + [1, 1]
            return int(datetime(parts[0], parts[1], parts[2], tzinfo=UTC).timestamp() * 1000)
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FhirConsentInvalid("BAD_DATE", f"{where} is not a FHIR date") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _period(raw: Mapping[str, Any] | None, where: str) -> ct.TimePeriod:
    if not raw:
        return ct.TimePeriod()
    period = ct.TimePeriod(
        start_unix_ms=_instant(raw.get("start"), where + ".start"),
        end_unix_ms=_instant(raw.get("end"), where + ".end"),
    )
    if period.end_unix_ms and period.end_unix_ms <= period.start_unix_ms:
        raise FhirConsentInvalid(
            "PERIOD_ENDS_BEFORE_START", "the period ends before it starts", {"field": where}
        )
    return period


def _role(actor: Mapping[str, Any]) -> str:
    for _, code in _codes(actor.get("role", {})):
        return code
    return ""


def _party_of_name(name: str, where: str) -> ct.Party:
    if PRINCIPAL_NAME.match(name):
        return ct.Party(principal=name)
    if name == ANY_ORGANISATION or ORGANISATION_NAME.match(name):
        return ct.Party(organisation=name)
    org, sep, role = name.partition("#")
    if sep and ORGANISATION_NAME.match(org):
        return ct.Party(role=ct.RoleInOrganisation(organisation=org, role=role))
    raise FhirConsentInvalid("UNRESOLVED_REFERENCE", f"{where} is not a party", {"field": where})


def _resolve(reference: Mapping[str, Any], context: _Context, where: str) -> str:
    identifier = reference.get("identifier") or {}
    if identifier.get("system") in (NAME_SYSTEM, ROLE_SYSTEM):
        return str(identifier.get("value", ""))
    literal = str(reference.get("reference", ""))
    if literal in context.references:
        return context.references[literal]
    kind, _, ident = literal.partition("/")
    if kind == "Organization" and ORGANISATION_NAME.match(f"organisations/{ident}"):
        return f"organisations/{ident}"
    raise FhirConsentInvalid(
        "UNRESOLVED_REFERENCE",
        f"reference {literal or '(none)'} does not resolve to a medledger resource",
        {"field": where},
    )


def _party(reference: Mapping[str, Any], context: _Context, where: str) -> ct.Party:
    return _party_of_name(_resolve(reference, context, where), where)


def _provision(
    raw: Mapping[str, Any], context: _Context, path: str, *, is_root: bool = False
) -> ct.Provision:
    out = ct.Provision()
    kind = raw.get("type")
    if kind in _TYPES:
        out.type = _TYPES[kind]
    else:
        answer = context.reading.root_type if is_root else context.reading.nested_type
        if answer is None:
            context.questions.append(
                Question(
                    "ROOT_TYPE_MISSING" if is_root else "PROVISION_TYPE_MISSING",
                    path,
                    "no provision.type; R4 does not say whether it permits or denies",
                )
            )
        else:
            out.type = answer  # type: ignore[assignment]
    for index, actor in enumerate(raw.get("actor", [])):
        role = _role(actor)
        where = f"{path}.actor[{index}]"
        if role in RECIPIENT_ROLES:
            out.actors.append(_party(actor.get("reference", {}), context, where))
        elif role == CUSTODIAN_ROLE:
            context.notes.append(f"{where}: custodian actor is the data holder, not a recipient")
        elif role in AUTHOR_ROLES:
            if not context.reading.drop_data_authors:
                context.questions.append(
                    Question(
                        "DATA_AUTHOR_UNSUPPORTED",
                        where,
                        "a data-author criterion cannot be enforced; dropping it widens the rule",
                    )
                )
            context.notes.append(f"{where}: data-author criterion dropped")
        else:
            raise FhirConsentInvalid("UNKNOWN_CODE", f"actor role {role!r}", {"field": where})
    for index, action in enumerate(raw.get("action", [])):
        for system, code in _codes(action):
            if system == CONSENT_ACTION_SYSTEM and code in _FHIR_ACTIONS:
                out.actions.extend(a for a in _FHIR_ACTIONS[code] if a not in out.actions)  # type: ignore[misc]
            elif system == ACTION_SYSTEM and code in _ACTION_CODES:
                out.actions.append(_ACTION_CODES[code])  # type: ignore[arg-type]
            else:
                raise FhirConsentInvalid(
                    "UNKNOWN_CODE", f"action {code!r}", {"field": f"{path}.action[{index}]"}
                )
    for index, label in enumerate(raw.get("securityLabel", [])):
        system, code = label.get("system", ""), label.get("code", "")
        if system == CONFIDENTIALITY_SYSTEM and code == "N":
            context.notes.append(f"{path}.securityLabel[{index}]: N (normal) adds no restriction")
        elif system == ACT_CODE_SYSTEM and code == "SPI":
            out.sensitivity_labels.extend(v for v in _SPI if v not in out.sensitivity_labels)  # type: ignore[misc]
        elif system == ACT_CODE_SYSTEM and code in _LABELS:
            if _LABELS[code] not in out.sensitivity_labels:
                out.sensitivity_labels.append(_LABELS[code])  # type: ignore[arg-type]
        else:
            raise FhirConsentInvalid(
                "UNKNOWN_CODE", f"security label {code!r}", {"field": f"{path}.securityLabel"}
            )
    for purpose in raw.get("purpose", []):
        code = purpose.get("code", "")
        if purpose.get("system") != ACT_REASON_SYSTEM or code not in _PURPOSES:
            raise FhirConsentInvalid(
                "UNKNOWN_CODE", f"purpose {code!r}", {"field": f"{path}.purpose"}
            )
        out.purposes.append(_PURPOSES[code])  # type: ignore[arg-type]
    out.categories.extend(_categories(raw, path))  # type: ignore[arg-type]
    period = _period(raw.get("period"), f"{path}.period")
    if period.start_unix_ms or period.end_unix_ms:
        if context.reading.period_is_data_period and is_root:
            out.data_period.CopyFrom(period)
        else:
            out.period.CopyFrom(period)
    if raw.get("dataPeriod"):
        out.data_period.CopyFrom(_period(raw.get("dataPeriod"), f"{path}.dataPeriod"))
    for index, data in enumerate(raw.get("data", [])):
        where = f"{path}.data[{index}]"
        record = _resolve(data.get("reference", {}), context, where)
        if not RECORD_NAME.match(record):
            raise FhirConsentInvalid(
                "UNRESOLVED_REFERENCE", "data must be a record", {"field": where}
            )
        out.records.append(record)
    for index, child in enumerate(raw.get("provision", [])):
        out.provisions.append(_provision(child, context, f"{path}.provision[{index}]"))
    return out


def _categories(raw: Mapping[str, Any], path: str) -> list[int]:
    by_class: set[int] = set()
    for item in raw.get("class", []):
        system, code = item.get("system", ""), item.get("code", "")
        if system == RESOURCE_TYPES_SYSTEM and code in _RESOURCE_CATEGORY:
            by_class.add(_RESOURCE_CATEGORY[code])
        elif system == "urn:ietf:bcp:13" and code in _MIME_CATEGORY:
            by_class.add(_MIME_CATEGORY[code])
        else:
            raise FhirConsentInvalid("UNKNOWN_CODE", f"class {code!r}", {"field": f"{path}.class"})
    by_code: set[int] = set()
    for concept in raw.get("code", []):
        for system, code in _codes(concept):
            if system != LOINC or code not in _LOINC_CATEGORY:
                raise FhirConsentInvalid(
                    "UNKNOWN_CODE", f"code {code!r}", {"field": f"{path}.code"}
                )
            by_code.add(_LOINC_CATEGORY[code])
    # class and code are both criteria, so together they narrow to what both allow.
    if by_class and by_code:
        both = by_class & by_code
        if not both:
            raise FhirConsentInvalid(
                "CONTRADICTORY_CRITERIA", "class and code match no common category", {"field": path}
            )
        return sorted(both)
    return sorted(by_class or by_code)


# --- export -------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _period_json(period: ct.TimePeriod) -> dict[str, str] | None:
    if not period.start_unix_ms and not period.end_unix_ms:
        return None
    out: dict[str, str] = {}
    if period.start_unix_ms:
        out["start"] = _iso(period.start_unix_ms)
    if period.end_unix_ms:
        out["end"] = _iso(period.end_unix_ms)
    return out


def _party_name(party: ct.Party) -> str:
    kind = party.WhichOneof("party")
    if kind == "principal":
        return party.principal
    if kind == "organisation":
        return party.organisation
    return f"{party.role.organisation}#{party.role.role}"


def _reference(party: ct.Party) -> dict[str, Any]:
    system = ROLE_SYSTEM if party.WhichOneof("party") == "role" else NAME_SYSTEM
    return {"identifier": {"system": system, "value": _party_name(party)}}


def _provision_json(provision: ct.Provision) -> dict[str, Any]:
    out: dict[str, Any] = {"type": _TYPE_NAMES[provision.type]}
    period = _period_json(provision.period)
    if period:
        out["period"] = period
    if provision.actors:
        out["actor"] = [
            {
                "role": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": "PRCP"}]},
                "reference": _reference(a),
            }
            for a in provision.actors
        ]
    if provision.actions:
        names = {v: k for k, v in _ACTION_CODES.items()}
        out["action"] = [
            {"coding": [{"system": ACTION_SYSTEM, "code": names[a]}]} for a in provision.actions
        ]
    if provision.sensitivity_labels:
        names = {v: k for k, v in _LABELS.items()}
        out["securityLabel"] = [
            {"system": ACT_CODE_SYSTEM, "code": names[label]}
            for label in provision.sensitivity_labels
        ]
    if provision.purposes:
        names = {v: k for k, v in _PURPOSES.items()}
        out["purpose"] = [
            {"system": ACT_REASON_SYSTEM, "code": names[p]} for p in provision.purposes
        ]
    if provision.categories:
        out["class"] = [
            {"system": RESOURCE_TYPES_SYSTEM, "code": _CATEGORY_RESOURCE[c]}
            for c in provision.categories
        ]
    data_period = _period_json(provision.data_period)
    if data_period:
        out["dataPeriod"] = data_period
    if provision.records:
        out["data"] = [
            {
                "meaning": "instance",
                "reference": {"identifier": {"system": NAME_SYSTEM, "value": r}},
            }
            for r in provision.records
        ]
    if provision.provisions:
        out["provision"] = [_provision_json(p) for p in provision.provisions]
    return out


def export_fhir_consent(consent_id: str, terms: ct.ConsentTerms, *, status: str = "active") -> str:
    """A FHIR R4 Consent (JSON) for the terms; importing it gives the same terms back."""
    scope = {v: k for k, v in _SCOPES.items()}[terms.scope]
    evidence = terms.grantor_evidence
    grantor_parts: list[dict[str, Any]] = [
        {"url": "principal", "valueString": terms.grantor},
        {"url": "capacity", "valueCode": ct.GrantorCapacity.Name(terms.grantor_capacity)},
        {"url": "evidence", "valueCode": ct.EvidenceKind.Name(evidence.kind)},
        {"url": "captured", "valueString": str(evidence.captured_at_unix_ms)},
    ]
    if evidence.record:
        grantor_parts.append({"url": "record", "valueString": evidence.record})
    if evidence.witness:
        grantor_parts.append({"url": "witness", "valueString": evidence.witness})
    if evidence.document_sha256:
        grantor_parts.append({"url": "sha256", "valueString": evidence.document_sha256.hex()})
    root = _provision_json(terms.provision)
    period = _period_json(terms.period)
    document: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent_id,
        "extension": [
            {"url": EXTENSION_BASE + "grantee", "valueReference": _reference(terms.grantee)},
            {"url": EXTENSION_BASE + "grantor", "extension": grantor_parts},
        ],
        "status": status,
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": scope}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{terms.patient_pseudonym}"},
        "dateTime": _iso(evidence.captured_at_unix_ms),
        "performer": [{"identifier": {"system": NAME_SYSTEM, "value": terms.grantor}}],
        "policyRule": {
            "coding": [
                {
                    "system": ACT_CODE_SYSTEM,
                    "code": "OPTIN"
                    if terms.provision.type == ct.PROVISION_TYPE_PERMIT
                    else "OPTOUT",
                }
            ]
        },
        "provision": root,
    }
    if period:
        document["extension"].append({"url": EXTENSION_BASE + "period", "valuePeriod": period})
    return json.dumps(document, sort_keys=True)


__all__: Sequence[str] = (
    "FhirImport",
    "Question",
    "Reading",
    "export_fhir_consent",
    "import_fhir_consent",
)
