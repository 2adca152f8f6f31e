"""Who is calling and may they call this method: the Authenticator interface and role table.

The gRPC server authenticates every call except health and reflection with an
``Authenticator`` (the identity service supplies the JWT one), then checks the caller's
roles against the service's ``AuthorisationTable``: a method not in the table is denied.
Servicers read the caller with ``current_caller()``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from medledger.core.errors import PermissionDenied, SettingsError, Unauthenticated

ANY_AUTHENTICATED = "*"
"""Role that admits any authenticated caller, whatever their roles."""

PUBLIC_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
"""Services every caller may use without a token (probes and tooling)."""

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class CallerIdentity:
    """An authenticated principal as the services see it."""

    principal_id: str
    org_id: str
    roles: frozenset[str] = frozenset()
    kind: str = ""
    token_id: str = ""
    claims: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)

    def has_any_role(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)


class Authenticator(Protocol):
    """Turns call metadata into a caller, or raises Unauthenticated."""

    async def authenticate(self, method: str, metadata: Metadata) -> CallerIdentity: ...


class InvalidToken(Unauthenticated):
    reason = "INVALID_TOKEN"


class MissingToken(Unauthenticated):
    reason = "MISSING_TOKEN"


class RoleNotAllowed(PermissionDenied):
    reason = "ROLE_NOT_ALLOWED"


class MethodNotAuthorised(PermissionDenied):
    reason = "METHOD_NOT_AUTHORISED"


class NoCaller(Unauthenticated):
    reason = "NO_CALLER"


def bearer_token(metadata: Metadata) -> str | None:
    """The token of the ``authorization: Bearer <token>`` header, if any."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise InvalidToken("INVALID_TOKEN", "authorization header is not a bearer token")
    return None


class RejectAll:
    """The default when a service has no authenticator: every protected call is refused."""

    async def authenticate(self, method: str, metadata: Metadata) -> CallerIdentity:
        raise Unauthenticated("UNAUTHENTICATED", "this service accepts no credentials")


class AllowAll:
    """Admits every call as one fixed caller. For tests and local experiments only."""

    def __init__(self, caller: CallerIdentity) -> None:
        self._caller = caller

    async def authenticate(self, method: str, metadata: Metadata) -> CallerIdentity:
        return self._caller


class StaticTokens:
    """Fixed bearer tokens, each standing for one caller. For tests and the local stack."""

    def __init__(self, tokens: Mapping[str, CallerIdentity]) -> None:
        self._tokens = dict(tokens)

    async def authenticate(self, method: str, metadata: Metadata) -> CallerIdentity:
        token = bearer_token(metadata)
        if token is None:
            raise MissingToken("MISSING_TOKEN", "a bearer token is required")
        presented = token.encode()
        found: CallerIdentity | None = None
        # Compare against every token so timing does not reveal which one was close.
        for candidate, caller in self._tokens.items():
            if hmac.compare_digest(candidate.encode(), presented):
                found = caller
        if found is None:
            raise InvalidToken("INVALID_TOKEN", "bearer token not recognised")
        return found


@dataclass(frozen=True)
class AuthorisationTable:
    """Full gRPC method name → roles allowed to call it; anything absent is denied.

    ``public`` methods need no token at all (e.g. the identity challenge a principal
    signs to obtain its first token). ``ANY_AUTHENTICATED`` as a role admits every
    authenticated caller.
    """

    rules: Mapping[str, frozenset[str]] = field(default_factory=dict)
    public: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        rules: Mapping[str, Iterable[str]],
        public: Iterable[str] = (),
    ) -> AuthorisationTable:
        for method in (*rules, *public):
            if not method.startswith("/") or method.count("/") != 2:
                raise ValueError(f"{method!r} is not a full method name like /pkg.Service/Method")
        return cls({m: frozenset(r) for m, r in rules.items()}, frozenset(public))

    def merge(self, other: AuthorisationTable) -> AuthorisationTable:
        overlap = set(self.rules) & set(other.rules)
        if overlap:
            raise ValueError(f"methods authorised twice: {sorted(overlap)}")
        return AuthorisationTable({**self.rules, **other.rules}, self.public | other.public)

    def is_public(self, method: str) -> bool:
        service = method.lstrip("/").partition("/")[0]
        return service in PUBLIC_SERVICES or method in self.public

    def authorise(self, method: str, caller: CallerIdentity) -> None:
        """Raise PermissionDenied unless ``caller`` may call ``method``."""
        allowed = self.rules.get(method)
        if allowed is None:
            raise MethodNotAuthorised(
                "METHOD_NOT_AUTHORISED", "no caller may use this method", {"method": method}
            )
        if ANY_AUTHENTICATED in allowed or caller.has_any_role(allowed):
            return
        raise RoleNotAllowed(
            "ROLE_NOT_ALLOWED",
            "the caller's roles do not allow this method",
            {"method": method, "allowed_roles": ",".join(sorted(allowed))},
        )


_current_caller: ContextVar[CallerIdentity | None] = ContextVar(
    "medledger_current_caller", default=None
)


def current_caller() -> CallerIdentity:
    """The caller of the gRPC call being handled; Unauthenticated outside an authenticated call."""
    caller = _current_caller.get()
    if caller is None:
        raise NoCaller("NO_CALLER", "no authenticated caller for this call")
    return caller


def current_caller_or_none() -> CallerIdentity | None:
    return _current_caller.get()


def set_current_caller(caller: CallerIdentity | None) -> None:
    """Used by the auth interceptor (and tests of servicers) to set the call's caller."""
    _current_caller.set(caller)


def load_static_tokens(path: Path) -> StaticTokens:
    """Fixed bearer tokens from a JSON file (tests, local experiments): token → {"principal",
    "org", "roles", "kind", "claims"}. The file is a secret: mount it, never commit it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        tokens = {
            token: CallerIdentity(
                principal_id=str(entry["principal"]),
                org_id=str(entry["org"]),
                roles=frozenset(str(r) for r in entry.get("roles", [])),
                kind=str(entry.get("kind", "")),
                claims=dict(entry.get("claims", {})),
            )
            for token, entry in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(
            "BAD_API_TOKENS_FILE", f"MEDLEDGER_API_TOKENS_FILE {path}: {type(exc).__name__}"
        ) from exc
    return StaticTokens(tokens)
