"""The identity service's errors, each a core error category with its own reason.

MedledgerError (core)
├── InvalidArgument    BadIdentityChange      a change no registry would accept (reason says why)
├── NotFound           OrganisationNotFound, PrincipalNotFound, KeyNotFound
├── AlreadyExists      OrganisationExists, PrincipalExists, KeyAlreadyRegistered
├── FailedPrecondition ChangeRefused          the registry refused a final change
│                      TokenKeyNotRegistered  this service's token key is not on chain yet
├── PermissionDenied   WrongOrganisation      callers manage their own organisation only
├── Unauthenticated    ChallengeRejected      bad, expired, reused or mismatched challenge
└── Unavailable        LedgerUnavailable      the ledger did not take or confirm the change
"""

from __future__ import annotations

from medledger.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MedledgerError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)


class BadIdentityChange(InvalidArgument):
    reason = "BAD_IDENTITY_CHANGE"


class OrganisationNotFound(NotFound):
    reason = "ORGANISATION_NOT_FOUND"


class PrincipalNotFound(NotFound):
    reason = "PRINCIPAL_NOT_FOUND"


class KeyNotFound(NotFound):
    reason = "KEY_NOT_FOUND"


class OrganisationExists(AlreadyExists):
    reason = "ORGANISATION_EXISTS"


class PrincipalExists(AlreadyExists):
    reason = "PRINCIPAL_EXISTS"


class KeyAlreadyRegistered(AlreadyExists):
    reason = "KEY_ALREADY_REGISTERED"


class ChangeRefused(FailedPrecondition):
    reason = "CHANGE_REFUSED"


class TokenKeyNotRegistered(FailedPrecondition):
    reason = "TOKEN_KEY_NOT_REGISTERED"


class WrongOrganisation(PermissionDenied):
    reason = "WRONG_ORGANISATION"


class ChallengeRejected(Unauthenticated):
    reason = "CHALLENGE_REJECTED"


class LedgerUnavailable(Unavailable):
    reason = "LEDGER_UNAVAILABLE"


class ChangeNotCommitted(Unavailable):
    reason = "CHANGE_NOT_COMMITTED"


_BY_REASON: dict[str, type[MedledgerError]] = {
    "ORGANISATION_NOT_FOUND": OrganisationNotFound,
    "PRINCIPAL_NOT_FOUND": PrincipalNotFound,
    "KEY_NOT_FOUND": KeyNotFound,
    "ORGANISATION_EXISTS": OrganisationExists,
    "PRINCIPAL_EXISTS": PrincipalExists,
    "KEY_ALREADY_REGISTERED": KeyAlreadyRegistered,
    "PRINCIPAL_REVOKED": ChangeRefused,
    "KEY_ALREADY_REVOKED": ChangeRefused,
    "OLD_KEY_NOT_ACTIVE": ChangeRefused,
}


def error_for_refusal(reason: str, message: str) -> MedledgerError:
    """The API error for a registry refusal reason (see registry.Refusal)."""
    if reason.startswith("SIGNER_"):
        return ChangeRefused(reason, message)
    return _BY_REASON.get(reason, BadIdentityChange)(reason, message)
