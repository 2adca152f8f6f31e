"""HIPAA accounting of disclosures (45 CFR 164.528): which logged accesses are disclosures that
must be accounted for, and why the others are left out (docs/compliance.md explains each rule)."""

from __future__ import annotations

from medledger._gen.common.v1 import access_pb2, audit_event_pb2

LOOKBACK_YEARS = 6

# Actions through which PHI leaves the custodian's hands.
_DISCLOSING_ACTIONS = frozenset(
    {
        access_pb2.ACCESS_ACTION_READ,
        access_pb2.ACCESS_ACTION_DISCLOSE,
        access_pb2.ACCESS_ACTION_EXPORT,
        access_pb2.ACCESS_ACTION_SEARCH,
    }
)

# 164.528(a)(1)(i): treatment, payment and health care operations (164.506, 164.501).
_TPO = frozenset(
    {
        access_pb2.PURPOSE_OF_USE_TREAT,
        access_pb2.PURPOSE_OF_USE_ETREAT,
        access_pb2.PURPOSE_OF_USE_BTG,
        access_pb2.PURPOSE_OF_USE_HPAYMT,
        access_pb2.PURPOSE_OF_USE_COVERAGE,
        access_pb2.PURPOSE_OF_USE_HOPERAT,
        access_pb2.PURPOSE_OF_USE_CAREMGT,
        access_pb2.PURPOSE_OF_USE_HQUALIMP,
        access_pb2.PURPOSE_OF_USE_HACCRED,
        access_pb2.PURPOSE_OF_USE_HCOMPL,
        access_pb2.PURPOSE_OF_USE_RECORDMGT,
        access_pb2.PURPOSE_OF_USE_TRAIN,
    }
)

# 164.528(a)(1)(v): persons involved in care and notification, including disaster relief (164.510).
_INVOLVED_IN_CARE = frozenset(
    {
        access_pb2.PURPOSE_OF_USE_FAMRQT,
        access_pb2.PURPOSE_OF_USE_SUPNWK,
        access_pb2.PURPOSE_OF_USE_DISASTER,
    }
)

NOT_PERMITTED = "NOT_PERMITTED"
NOT_A_DISCLOSURE = "NOT_A_DISCLOSURE"
USE_WITHIN_ENTITY = "USE_WITHIN_ENTITY"
TREATMENT_PAYMENT_OPERATIONS = "TREATMENT_PAYMENT_OPERATIONS"
TO_THE_INDIVIDUAL = "TO_THE_INDIVIDUAL"
INVOLVED_IN_CARE = "INVOLVED_IN_CARE"
NATIONAL_SECURITY = "NATIONAL_SECURITY"

EXCLUSION_RULES: dict[str, str] = {
    NOT_PERMITTED: "access was denied, so nothing was disclosed",
    NOT_A_DISCLOSURE: "the action discloses no PHI (consent change, authentication, ...)",
    USE_WITHIN_ENTITY: "use by the custodian's own workforce, not a disclosure (164.501)",
    TREATMENT_PAYMENT_OPERATIONS: "treatment, payment or health care operations, 164.528(a)(1)(i)",
    TO_THE_INDIVIDUAL: "to the individual, 164.528(a)(1)(ii)",
    INVOLVED_IN_CARE: "persons involved in care or notification, 164.528(a)(1)(v)",
    NATIONAL_SECURITY: "national security or intelligence, 164.528(a)(1)(vi)",
}


def exclusion(event: audit_event_pb2.AuditEvent) -> str | None:
    """None when `event` is a disclosure to account for, else the rule that excludes it."""
    if event.decision != access_pb2.DECISION_PERMIT:
        return NOT_PERMITTED
    if event.action not in _DISCLOSING_ACTIONS:
        return NOT_A_DISCLOSURE
    if (
        event.actor.organisation == event.organisation
        and event.action != access_pb2.ACCESS_ACTION_DISCLOSE
    ):
        return USE_WITHIN_ENTITY
    if event.purpose in _TPO:
        return TREATMENT_PAYMENT_OPERATIONS
    if event.purpose == access_pb2.PURPOSE_OF_USE_PATRQT:
        return TO_THE_INDIVIDUAL
    if event.purpose in _INVOLVED_IN_CARE:
        return INVOLVED_IN_CARE
    if event.purpose == access_pb2.PURPOSE_OF_USE_GOV:
        return NATIONAL_SECURITY
    return None


def purpose_code(purpose: int) -> str:
    """The HL7 PurposeOfUse code ("HRESCH") of an enum value."""
    return access_pb2.PurposeOfUse.Name(purpose).removeprefix("PURPOSE_OF_USE_")  # type: ignore[arg-type]


def action_code(action: int) -> str:
    return access_pb2.AccessAction.Name(action).removeprefix("ACCESS_ACTION_")  # type: ignore[arg-type]


def decision_code(decision: int) -> str:
    return access_pb2.Decision.Name(decision).removeprefix("DECISION_")  # type: ignore[arg-type]


def description(event: audit_event_pb2.AuditEvent) -> str:
    """A brief description of the data, from codes and names only (164.528(b)(2)(iii))."""
    target = event.record or event.resource or "unspecified resource"
    return f"{action_code(event.action).lower()} of {target}"


def recipient(event: audit_event_pb2.AuditEvent) -> str:
    """Who received the data: principal and organisation resource names (164.528(b)(2)(ii))."""
    return f"{event.actor.principal} ({event.actor.organisation})"
