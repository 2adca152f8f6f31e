"""Access tokens: short-lived EdDSA JWTs (RFC 7519, RFC 8037) issued by an organisation's
identity service and verified by every service against that organisation's JWKS.

Claims: ``iss`` and ``org`` (the issuing organisation, ``organisations/{org}``), ``sub`` (the
principal's resource name), ``roles``, ``kind``, ``pkid`` (the principal key that signed the
login challenge), ``aud``, ``jti``, ``iat``, ``nbf``, ``exp``; the header's ``kid`` names the
token-signing key. Errors are ``Unauthenticated`` with a reason saying what was wrong.
"""

# Error names follow core.errors: they name the condition, with no "Error" suffix.
# ruff: noqa: N818

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import OKPKey

from medledger.core.errors import InvalidArgument, Unauthenticated
from medledger.crypto import KeyFormatError, SigningKey, VerifyKey

ALGORITHM = "EdDSA"
DEFAULT_AUDIENCE = "medledger"
DEFAULT_LIFETIME_SECONDS = 300
MAX_LIFETIME_SECONDS = 3600
DEFAULT_LEEWAY_SECONDS = 30
MAX_TOKEN_BYTES = 8 * 1024

_ORG_NAME = re.compile(r"^organisations/([a-z][a-z0-9-]{0,62})$")
_PRINCIPAL_NAME = re.compile(
    r"^organisations/([a-z][a-z0-9-]{0,62})/principals/[a-z0-9][a-z0-9-]{0,62}$"
)


@contextmanager
def _eddsa_allowed() -> Iterator[None]:
    """RFC 9864 prefers the fully specified "Ed25519" name; the API contract (JsonWebKey.alg)
    and deployed verifiers use "EdDSA", which for OKP/Ed25519 keys means the same thing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)
        yield


class TokenError(Unauthenticated):
    """A bearer token that must not be accepted."""

    reason = "INVALID_TOKEN"


class MalformedToken(TokenError):
    reason = "TOKEN_MALFORMED"


class TokenBadSignature(TokenError):
    reason = "TOKEN_BAD_SIGNATURE"


class TokenExpired(TokenError):
    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(TokenError):
    reason = "TOKEN_NOT_YET_VALID"


class TokenWrongAudience(TokenError):
    reason = "TOKEN_WRONG_AUDIENCE"


class TokenUnknownKey(TokenError):
    reason = "TOKEN_UNKNOWN_KEY"


class TokenIssuerMismatch(TokenError):
    reason = "TOKEN_ISSUER_MISMATCH"


class MalformedJwk(InvalidArgument):
    reason = "MALFORMED_JWK"


@dataclass(frozen=True)
class TokenClaims:
    """The verified content of an access token."""

    issuer: str
    subject: str
    organisation: str
    roles: tuple[str, ...]
    kind: str
    principal_key_id: str
    audience: tuple[str, ...]
    token_id: str
    key_id: str
    issued_at: int
    not_before: int
    expires_at: int

    @property
    def organisation_id(self) -> str:
        """The bare organisation id (``st-mary`` of ``organisations/st-mary``)."""
        return self.organisation.removeprefix("organisations/")

    def as_dict(self) -> dict[str, object]:
        return {
            "iss": self.issuer,
            "sub": self.subject,
            "org": self.organisation,
            "roles": list(self.roles),
            "kind": self.kind,
            "pkid": self.principal_key_id,
            "aud": list(self.audience),
            "jti": self.token_id,
            "kid": self.key_id,
            "iat": self.issued_at,
            "nbf": self.not_before,
            "exp": self.expires_at,
        }


@dataclass(frozen=True)
class UnverifiedHeader:
    """What a verifier reads before it knows which key to check against: never trust it."""

    key_id: str
    issuer: str


def organisation_of(principal: str) -> str:
    """``organisations/{org}`` of a principal resource name; MalformedToken when it is not one."""
    match = _PRINCIPAL_NAME.match(principal)
    if match is None:
        raise MalformedToken("TOKEN_MALFORMED", "subject is not a principal resource name")
    return f"organisations/{match.group(1)}"


class TokenIssuer:
    """Signs access tokens with one organisation's token-signing key."""

    def __init__(
        self,
        organisation: str,
        key: SigningKey,
        *,
        audience: str = DEFAULT_AUDIENCE,
        lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
        max_lifetime_seconds: int = MAX_LIFETIME_SECONDS,
    ) -> None:
        if _ORG_NAME.match(organisation) is None:
            raise ValueError(f"{organisation!r} is not an organisation resource name")
        if not 0 < lifetime_seconds <= max_lifetime_seconds:
            raise ValueError("lifetime must be positive and at most the maximum lifetime")
        self.organisation = organisation
        self.key_id = key.public_key.key_id
        self.public_key = key.public_key
        self.audience = audience
        self.lifetime_seconds = lifetime_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        self._jwk = OKPKey.import_key(key.crypto_key)

    def issue(
        self,
        *,
        subject: str,
        roles: Iterable[str],
        kind: str,
        principal_key_id: str,
        now: int,
        lifetime_seconds: int | None = None,
    ) -> tuple[str, TokenClaims]:
        """A signed token for ``subject`` and its claims; ``now`` is Unix seconds."""
        if organisation_of(subject) != self.organisation:
            raise TokenIssuerMismatch(
                "TOKEN_ISSUER_MISMATCH", "an organisation issues tokens for its own principals"
            )
        lifetime = lifetime_seconds or self.lifetime_seconds
        lifetime = max(1, min(lifetime, self.max_lifetime_seconds))
        claims = TokenClaims(
            issuer=self.organisation,
            subject=subject,
            organisation=self.organisation,
            roles=tuple(sorted(set(roles))),
            kind=kind,
            principal_key_id=principal_key_id,
            audience=(self.audience,),
            token_id=str(uuid.uuid4()),
            key_id=self.key_id,
            issued_at=now,
            not_before=now,
            expires_at=now + lifetime,
        )
        payload = claims.as_dict()
        del payload["kid"]  # the key id travels in the protected header
        with _eddsa_allowed():
            token = jwt.encode(
                {"alg": ALGORITHM, "typ": "JWT", "kid": self.key_id},
                payload,
                self._jwk,
                algorithms=[ALGORITHM],
            )
        return token, claims


def read_unverified(token: str) -> UnverifiedHeader:
    """The key id and issuer a token claims, to pick the key that must verify it."""
    if len(token) > MAX_TOKEN_BYTES:
        raise MalformedToken("TOKEN_MALFORMED", "token is too large")
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        header = compact.headers()
        payload = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError, binascii.Error) as exc:
        raise MalformedToken("TOKEN_MALFORMED", "token is not a compact JWS") from exc
    if not isinstance(payload, dict) or not isinstance(header, dict):
        raise MalformedToken("TOKEN_MALFORMED", "token payload is not a JSON object")
    kid, iss = header.get("kid"), payload.get("iss")
    if header.get("alg") != ALGORITHM:
        raise MalformedToken("TOKEN_MALFORMED", f"token algorithm must be {ALGORITHM}")
    if not isinstance(kid, str) or not kid or not isinstance(iss, str) or not _ORG_NAME.match(iss):
        raise MalformedToken("TOKEN_MALFORMED", "token lacks a key id or an issuer organisation")
    return UnverifiedHeader(key_id=kid, issuer=iss)


def verify_token(
    token: str,
    key: VerifyKey,
    *,
    audience: str,
    now: float,
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
) -> TokenClaims:
    """Check signature, time window, audience and shape; the key is the issuer's key ``kid``.

    The caller must have picked ``key`` from the JWKS of the issuer the token names.
    """
    header = read_unverified(token)
    try:
        with _eddsa_allowed():
            decoded = jwt.decode(token, OKPKey.import_key(key.crypto_key), algorithms=[ALGORITHM])
    except JoseError as exc:
        if "signature" in type(exc).__name__.lower() or "signature" in str(exc).lower():
            raise TokenBadSignature("TOKEN_BAD_SIGNATURE", "token signature is invalid") from exc
        raise MalformedToken("TOKEN_MALFORMED", "token cannot be decoded") from exc
    claims = _claims_from(decoded.claims, header.key_id)
    if claims.expires_at + leeway_seconds < now:
        raise TokenExpired("TOKEN_EXPIRED", "token has expired")
    if claims.not_before - leeway_seconds > now or claims.issued_at - leeway_seconds > now:
        raise TokenNotYetValid("TOKEN_NOT_YET_VALID", "token is not valid yet")
    if audience not in claims.audience:
        raise TokenWrongAudience("TOKEN_WRONG_AUDIENCE", "token is meant for another audience")
    if claims.organisation != claims.issuer or organisation_of(claims.subject) != claims.issuer:
        raise TokenIssuerMismatch(
            "TOKEN_ISSUER_MISMATCH", "token subject is not a principal of its issuer"
        )
    return claims


def _claims_from(raw: Mapping[str, Any], key_id: str) -> TokenClaims:
    aud = raw.get("aud")
    audience = (aud,) if isinstance(aud, str) else aud
    roles = raw.get("roles", [])
    try:
        claims = TokenClaims(
            issuer=_text(raw, "iss"),
            subject=_text(raw, "sub"),
            organisation=_text(raw, "org"),
            roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
            kind=_text(raw, "kind"),
            principal_key_id=_text(raw, "pkid"),
            audience=tuple(str(a) for a in audience) if isinstance(audience, list) else (),
            token_id=_text(raw, "jti"),
            key_id=key_id,
            issued_at=_integer(raw, "iat"),
            not_before=_integer(raw, "nbf"),
            expires_at=_integer(raw, "exp"),
        )
    except (KeyError, TypeError) as exc:
        raise MalformedToken("TOKEN_MALFORMED", f"token claim missing or malformed: {exc}") from exc
    if not isinstance(roles, list) or not claims.audience:
        raise MalformedToken("TOKEN_MALFORMED", "token roles or audience malformed")
    return claims


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str) or not value:
        raise TypeError(name)
    return value


def _integer(raw: Mapping[str, Any], name: str) -> int:
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(name)
    return value


# --- JSON Web Keys ---------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_of(key: VerifyKey) -> dict[str, str]:
    """The public JWK (RFC 8037) of an Ed25519 token-signing key."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(key.raw),
        "kid": key.key_id,
        "alg": ALGORITHM,
        "use": "sig",
    }


def verify_key_from_jwk(jwk: Mapping[str, str]) -> VerifyKey:
    """The key of a public Ed25519 JWK whose ``kid`` matches it; MalformedJwk otherwise."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise MalformedJwk("MALFORMED_JWK", "only OKP/Ed25519 keys are accepted")
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        raise MalformedJwk("MALFORMED_JWK", "key is not an EdDSA signature key")
    x = jwk.get("x", "")
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        key = VerifyKey(raw)
    except (ValueError, binascii.Error, KeyFormatError) as exc:
        raise MalformedJwk("MALFORMED_JWK", "x is not a base64url Ed25519 public key") from exc
    if jwk.get("kid") != key.key_id:
        raise MalformedJwk("MALFORMED_JWK", "kid does not match the key")
    return key
