"""Who may read which part of the audit log.

Auditors, administrators and service accounts of the log's own organisation may query it;
only auditors export reports. A patient sees the access history of their own data and nothing
else: every query and export of a patient is pinned to the pseudonym in the token's
``patient_pseudonym`` claim.
"""

from __future__ import annotations

import dataclasses

from medledger.audit.errors import OutsidePatientScope
from medledger.audit.model import EventFilter
from medledger.core.auth import CallerIdentity
from medledger.core.errors import PermissionDenied

PATIENT = "patient"
AUDITOR = "auditor"
SERVICE = "service"
ADMINISTRATOR = "administrator"
PATIENT_PSEUDONYM_CLAIM = "patient_pseudonym"

_QUERY_KINDS = frozenset({AUDITOR, SERVICE, ADMINISTRATOR})


class CallerNotAllowed(PermissionDenied):
    reason = "AUDIT_ACCESS_DENIED"


def caller_kind(caller: CallerIdentity) -> str:
    """The caller's principal kind in lower case ("patient", "auditor", …)."""
    kind = caller.kind.strip().lower().removeprefix("principal_kind_")
    if kind:
        return kind
    # Static test tokens carry no kind; a role of the same name stands in for it.
    for candidate in (AUDITOR, ADMINISTRATOR, SERVICE, PATIENT):
        if candidate in caller.roles:
            return candidate
    return ""


def _org(value: str) -> str:
    return value.removeprefix("organisations/").split("/", 1)[0]


def patient_pseudonym(caller: CallerIdentity) -> str:
    value = caller.claims.get(PATIENT_PSEUDONYM_CLAIM)
    if not isinstance(value, str) or not value:
        raise OutsidePatientScope(
            "OUTSIDE_PATIENT_SCOPE", "the patient's token names no patient pseudonym"
        )
    return value


def _pin_to_patient(caller: CallerIdentity, requested: str) -> str:
    own = patient_pseudonym(caller)
    if requested and requested != own:
        raise OutsidePatientScope(
            "OUTSIDE_PATIENT_SCOPE", "a patient may only see the history of their own data"
        )
    return own


def scope_query(caller: CallerIdentity, where: EventFilter, log_organisation: str) -> EventFilter:
    """The filter the caller may actually run; PermissionDenied when none."""
    kind = caller_kind(caller)
    if kind == PATIENT:
        own = _pin_to_patient(caller, where.patient_pseudonym)
        return dataclasses.replace(where, patient_pseudonym=own)
    if kind in _QUERY_KINDS and _org(caller.org_id) == _org(log_organisation):
        return where
    raise CallerNotAllowed(
        "AUDIT_ACCESS_DENIED", "only this organisation's auditors, administrators and services"
    )


def scope_export(
    caller: CallerIdentity, patient: str, log_organisation: str, accounting: bool
) -> str:
    """Check an export is allowed; returns the patient pseudonym the report is pinned to."""
    kind = caller_kind(caller)
    if kind == PATIENT:
        if not accounting:
            raise OutsidePatientScope(
                "OUTSIDE_PATIENT_SCOPE", "a patient may export only their own accounting"
            )
        return _pin_to_patient(caller, patient)
    if kind == AUDITOR and _org(caller.org_id) == _org(log_organisation):
        return patient
    raise CallerNotAllowed("AUDIT_ACCESS_DENIED", "only this organisation's auditors export")
