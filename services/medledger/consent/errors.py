"""The consent service's errors; each maps to one gRPC code through medledger.core.errors.

ConsentError (mixin: every consent error)
├── ConsentInvalid            INVALID_ARGUMENT   malformed terms, unknown codes, bad periods
│   ├── FhirConsentInvalid    INVALID_ARGUMENT   not a valid FHIR R4 Consent
│   └── FhirConsentAmbiguous  INVALID_ARGUMENT   valid FHIR whose meaning is open
├── ConsentNotFound           NOT_FOUND
├── ConsentForbidden          PERMISSION_DENIED  the caller may not grant, revoke or read
├── ConsentConflict           ABORTED            stale version
├── ConsentReplayed           ALREADY_EXISTS     a transaction already final
├── ConsentStateError         FAILED_PRECONDITION
└── LedgerUnavailable         UNAVAILABLE
"""

# Error names follow medledger.core.errors: they name the condition.
# ruff: noqa: N818

from __future__ import annotations

from medledger.core.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)


class ConsentError:
    """Marker base of every error the consent package raises on purpose."""


class ConsentInvalid(InvalidArgument, ConsentError):
    reason = "CONSENT_INVALID"


class FhirConsentInvalid(ConsentInvalid):
    reason = "FHIR_CONSENT_INVALID"


class FhirConsentAmbiguous(ConsentInvalid):
    """Valid FHIR whose meaning is not determined; metadata lists each open question."""

    reason = "FHIR_CONSENT_AMBIGUOUS"


class ConsentNotFound(NotFound, ConsentError):
    reason = "CONSENT_NOT_FOUND"


class ConsentForbidden(PermissionDenied, ConsentError):
    reason = "CONSENT_FORBIDDEN"


class ConsentConflict(Aborted, ConsentError):
    reason = "STALE_CONSENT_VERSION"


class ConsentReplayed(AlreadyExists, ConsentError):
    reason = "TX_REPLAYED"


class ConsentStateError(FailedPrecondition, ConsentError):
    reason = "CONSENT_STATE"


class LedgerUnavailable(Unavailable, ConsentError):
    reason = "LEDGER_UNAVAILABLE"
