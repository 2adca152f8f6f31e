"""Validation of consent terms and resource names, shared by the API (early, as errors) and
the decision index (late, as refusals of final transactions): one rule set, two callers."""

from __future__ import annotations

import re
from collections.abc import Iterable

from medledger._gen.common.v1 import access_pb2, consent_change_pb2, consent_terms_pb2
from medledger.consent.errors import ConsentInvalid

MAX_PROVISION_DEPTH = 8
MAX_PROVISIONS = 256
MAX_LIST = 64

ANY_ORGANISATION = "organisations/-"
"""Grantee meaning every party (AIP-159 wildcard): used for FHIR consents that name no
recipient, such as a patient's overall opt-out."""

CONSENT_NAME = re.compile(r"^consents/[a-z0-9][a-z0-9-]{0,62}$")
ORGANISATION_NAME = re.compile(r"^organisations/[a-z][a-z0-9-]{0,62}$")
PRINCIPAL_NAME = re.compile(
    r"^organisations/[a-z][a-z0-9-]{0,62}/principals/[a-z0-9][a-z0-9-]{0,62}$"
)
RECORD_NAME = re.compile(r"^records/[A-Za-z0-9][A-Za-z0-9-]{0,127}$")
PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ROLE_CODE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

_ACTIONS = frozenset(access_pb2.AccessAction.values()) - {access_pb2.ACCESS_ACTION_UNSPECIFIED}
_CATEGORIES = frozenset(access_pb2.RecordCategory.values()) - {
    access_pb2.RECORD_CATEGORY_UNSPECIFIED
}
_LABELS = frozenset(access_pb2.SensitivityLabel.values()) - {
    access_pb2.SENSITIVITY_LABEL_UNSPECIFIED
}
_PURPOSES = frozenset(access_pb2.PurposeOfUse.values()) - {access_pb2.PURPOSE_OF_USE_UNSPECIFIED}
_CAPACITIES = frozenset(consent_terms_pb2.GrantorCapacity.values()) - {
    consent_terms_pb2.GRANTOR_CAPACITY_UNSPECIFIED
}
_EVIDENCE = frozenset(consent_terms_pb2.EvidenceKind.values()) - {
    consent_terms_pb2.EVIDENCE_KIND_UNSPECIFIED
}
_SCOPES = frozenset(consent_terms_pb2.ConsentScope.values()) - {
    consent_terms_pb2.CONSENT_SCOPE_UNSPECIFIED
}
_PROVISION_TYPES = frozenset(
    {consent_terms_pb2.PROVISION_TYPE_PERMIT, consent_terms_pb2.PROVISION_TYPE_DENY}
)
_REVOCATION_REASONS = frozenset(consent_change_pb2.ConsentRevocationReason.values()) - {
    consent_change_pb2.CONSENT_REVOCATION_REASON_UNSPECIFIED
}


def invalid(reason: str, message: str, field: str) -> ConsentInvalid:
    return ConsentInvalid(reason, message, {"field": field})


def check_consent_name(name: str) -> None:
    if not CONSENT_NAME.match(name):
        raise invalid("BAD_CONSENT_NAME", "consent names are consents/{id}", "name")


def check_pseudonym(pseudonym: str, field: str = "patient_pseudonym") -> None:
    if not PSEUDONYM.match(pseudonym):
        raise invalid("BAD_PATIENT_PSEUDONYM", "a patient pseudonym is required", field)


def check_party(party: consent_terms_pb2.Party, field: str) -> None:
    kind = party.WhichOneof("party")
    if kind == "principal":
        if not PRINCIPAL_NAME.match(party.principal):
            raise invalid("BAD_PARTY", "not a principal resource name", field)
    elif kind == "organisation":
        if party.organisation != ANY_ORGANISATION and not ORGANISATION_NAME.match(
            party.organisation
        ):
            raise invalid("BAD_PARTY", "not an organisation resource name", field)
    elif kind == "role":
        if not ORGANISATION_NAME.match(party.role.organisation) or not ROLE_CODE.match(
            party.role.role
        ):
            raise invalid("BAD_PARTY", "a role needs an organisation and a role code", field)
    else:
        raise invalid("PARTY_REQUIRED", "name a principal, organisation or role", field)


def check_period(period: consent_terms_pb2.TimePeriod, field: str) -> None:
    # Instants before 1970 are negative and valid (data from 1964); only 0 means unbounded.
    if period.end_unix_ms and period.end_unix_ms <= period.start_unix_ms:
        raise invalid("PERIOD_ENDS_BEFORE_START", "the period ends before it starts", field)


def _check_codes(values: Iterable[int], known: frozenset[int], what: str, field: str) -> None:
    values = list(values)
    if len(values) > MAX_LIST:
        raise invalid("TOO_MANY_VALUES", f"at most {MAX_LIST} {what}", field)
    for value in values:
        if value not in known:
            raise invalid("UNKNOWN_CODE", f"unknown {what} code {value}", field)


def check_provision(provision: consent_terms_pb2.Provision, field: str = "provision") -> None:
    count = 0

    def visit(node: consent_terms_pb2.Provision, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if depth > MAX_PROVISION_DEPTH:
            raise invalid("PROVISION_TOO_DEEP", f"at most {MAX_PROVISION_DEPTH} levels", path)
        if count > MAX_PROVISIONS:
            raise invalid("TOO_MANY_PROVISIONS", f"at most {MAX_PROVISIONS} provisions", path)
        if node.type not in _PROVISION_TYPES:
            raise invalid("PROVISION_TYPE_REQUIRED", "each provision must permit or deny", path)
        _check_codes(node.actions, _ACTIONS, "action", f"{path}.actions")
        _check_codes(node.categories, _CATEGORIES, "record category", f"{path}.categories")
        _check_codes(
            node.sensitivity_labels, _LABELS, "sensitivity label", f"{path}.sensitivity_labels"
        )
        _check_codes(node.purposes, _PURPOSES, "purpose of use", f"{path}.purposes")
        check_period(node.period, f"{path}.period")
        check_period(node.data_period, f"{path}.data_period")
        if len(node.actors) > MAX_LIST:
            raise invalid("TOO_MANY_VALUES", f"at most {MAX_LIST} actors", f"{path}.actors")
        for index, actor in enumerate(node.actors):
            check_party(actor, f"{path}.actors[{index}]")
        if len(node.records) > MAX_LIST:
            raise invalid("TOO_MANY_VALUES", f"at most {MAX_LIST} records", f"{path}.records")
        for record in node.records:
            if not RECORD_NAME.match(record):
                raise invalid("BAD_RECORD_NAME", "records are records/{id}", f"{path}.records")
        for index, child in enumerate(node.provisions):
            visit(child, f"{path}.provisions[{index}]", depth + 1)

    visit(provision, field, 1)


def check_evidence(evidence: consent_terms_pb2.GrantorEvidence, field: str) -> None:
    if evidence.kind not in _EVIDENCE:
        raise invalid("EVIDENCE_REQUIRED", "how the decision was captured is required", field)
    if evidence.captured_at_unix_ms <= 0:
        raise invalid("EVIDENCE_TIME_REQUIRED", "when the decision was captured", field)
    if evidence.kind == consent_terms_pb2.EVIDENCE_KIND_VERBAL_WITNESSED:
        if not PRINCIPAL_NAME.match(evidence.witness):
            raise invalid("WITNESS_REQUIRED", "a verbal decision needs a witness", field)
    elif evidence.witness:
        raise invalid("UNEXPECTED_WITNESS", "only verbal decisions name a witness", field)
    if evidence.kind in (
        consent_terms_pb2.EVIDENCE_KIND_SIGNED_FORM,
        consent_terms_pb2.EVIDENCE_KIND_LEGAL_AUTHORITY,
    ):
        if not RECORD_NAME.match(evidence.record) and len(evidence.document_sha256) != 32:
            raise invalid(
                "EVIDENCE_DOCUMENT_REQUIRED",
                "a form or legal document needs its record or its SHA-256",
                field,
            )
    elif evidence.record and not RECORD_NAME.match(evidence.record):
        raise invalid("BAD_RECORD_NAME", "records are records/{id}", field)
    if evidence.document_sha256 and len(evidence.document_sha256) != 32:
        raise invalid("BAD_DOCUMENT_HASH", "document_sha256 is 32 bytes", field)


def check_terms(terms: consent_terms_pb2.ConsentTerms) -> None:
    """Raise ConsentInvalid (with a reason and the offending field) unless the terms are sound."""
    check_pseudonym(terms.patient_pseudonym, "terms.patient_pseudonym")
    if not PRINCIPAL_NAME.match(terms.grantor):
        raise invalid("GRANTOR_REQUIRED", "the grantor is a principal", "terms.grantor")
    if terms.grantor_capacity not in _CAPACITIES:
        raise invalid("CAPACITY_REQUIRED", "grantor capacity is required", "terms.grantor_capacity")
    check_evidence(terms.grantor_evidence, "terms.grantor_evidence")
    capacity = terms.grantor_capacity
    kind = terms.grantor_evidence.kind
    if (capacity == consent_terms_pb2.GRANTOR_CAPACITY_PATIENT) != (
        kind == consent_terms_pb2.EVIDENCE_KIND_PATIENT_SIGNATURE
    ):
        raise invalid(
            "EVIDENCE_MISMATCH",
            "a patient's own grant is evidenced by their signature, and only it is",
            "terms.grantor_evidence.kind",
        )
    if capacity == consent_terms_pb2.GRANTOR_CAPACITY_LEGAL_REPRESENTATIVE and (
        kind != consent_terms_pb2.EVIDENCE_KIND_LEGAL_AUTHORITY
    ):
        raise invalid(
            "EVIDENCE_MISMATCH",
            "a legal representative needs a document of legal authority",
            "terms.grantor_evidence.kind",
        )
    if not terms.HasField("grantee"):
        raise invalid("GRANTEE_REQUIRED", "who the consent is granted to", "terms.grantee")
    check_party(terms.grantee, "terms.grantee")
    if not terms.HasField("provision"):
        raise invalid("PROVISION_REQUIRED", "a root provision is required", "terms.provision")
    check_provision(terms.provision, "terms.provision")
    check_period(terms.period, "terms.period")
    if terms.scope not in _SCOPES:
        raise invalid("SCOPE_REQUIRED", "the consent scope is required", "terms.scope")


def check_revocation(revocation: consent_change_pb2.ConsentRevocation) -> None:
    check_consent_name(revocation.consent)
    if revocation.version < 1:
        raise invalid("VERSION_REQUIRED", "the version being revoked", "version")
    if revocation.reason not in _REVOCATION_REASONS:
        raise invalid("REVOCATION_REASON_REQUIRED", "why the consent is revoked", "reason")
    check_evidence(revocation.evidence, "evidence")
