"""The bearer-token Authenticator every service runs: verifies an identity-issued JWT against
the issuing organisation's JWKS and checks the principal and its key are not revoked.

Keys and principal status come from the identity service over NATS (``identity.jwks`` and
``identity.principal``), cached for a short TTL; ``identity.changes`` announcements evict
entries at once. Any organisation's identity service answers for every organisation, since
each builds its registry from the whole chain: that is how a token of another hospital is
checked without a central identity provider.
"""

# Error names follow core.errors: they name the condition, with no "Error" suffix.
# ruff: noqa: N818

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message

from medledger._gen.identity.v1 import identity_service_pb2 as identity_pb
from medledger.core.auth import CallerIdentity, Metadata, MissingToken, bearer_token
from medledger.core.errors import Unavailable
from medledger.core.logging import get_logger
from medledger.core.nats_bus import BusError, BusSubscription, MessageBus, RemoteError
from medledger.core.tokens import (
    DEFAULT_AUDIENCE,
    DEFAULT_LEEWAY_SECONDS,
    MalformedJwk,
    TokenClaims,
    TokenError,
    TokenExpired,
    TokenUnknownKey,
    read_unverified,
    verify_key_from_jwk,
    verify_token,
)
from medledger.crypto import VerifyKey

JWKS_SUBJECT = "identity.jwks"
PRINCIPAL_SUBJECT = "identity.principal"
CHANGES_SUBJECT = "identity.changes"
DEFAULT_CACHE_TTL_SECONDS = 5.0
UNKNOWN_PRINCIPAL_RETRIES = 8
UNKNOWN_PRINCIPAL_RETRY_SECONDS = 0.25

_log = get_logger("medledger.auth")

V = TypeVar("V")
R = TypeVar("R", identity_pb.GetJwksResponse, identity_pb.Principal)


class PrincipalRevoked(TokenError):
    reason = "PRINCIPAL_REVOKED"


class PrincipalUnknown(TokenError):
    reason = "PRINCIPAL_UNKNOWN"


class PrincipalKeyRevoked(TokenError):
    reason = "PRINCIPAL_KEY_REVOKED"


class IdentityUnavailable(Unavailable):
    reason = "IDENTITY_UNAVAILABLE"


@dataclass(frozen=True)
class KeyWindow:
    """When one of a principal's keys may be used: state and validity window (Unix ms)."""

    state: int
    not_before_ms: int
    not_after_ms: int

    def valid_at(self, now_ms: int) -> bool:
        if self.state not in (identity_pb.KEY_STATE_ACTIVE, identity_pb.KEY_STATE_GRACE):
            return False
        if self.not_before_ms and now_ms < self.not_before_ms:
            return False
        return not (self.not_after_ms and now_ms > self.not_after_ms)


@dataclass(frozen=True)
class PrincipalStatus:
    """A principal as of the identity view's latest final block; ``exists`` False if unknown."""

    exists: bool
    active: bool
    keys: Mapping[str, KeyWindow]

    @classmethod
    def of(cls, principal: identity_pb.Principal) -> PrincipalStatus:
        if not principal.name:
            return cls(False, False, {})
        return cls(
            exists=True,
            active=principal.state == identity_pb.PRINCIPAL_STATE_ACTIVE,
            keys={
                key.key_id: KeyWindow(
                    key.state,
                    _ms(key.not_before) if key.HasField("not_before") else 0,
                    _ms(key.not_after) if key.HasField("not_after") else 0,
                )
                for key in principal.keys
            },
        )


def _ms(stamp: object) -> int:
    to_ms: Callable[[], int] = stamp.ToMilliseconds  # type: ignore[attr-defined]
    return to_ms()


class IdentityDirectory(Protocol):
    """Where the authenticator learns organisations' token keys and principals' status."""

    async def jwks(self, organisation: str, *, refresh: bool = False) -> Mapping[str, VerifyKey]:
        """Token-verification keys of ``organisations/{org}``, by key id."""
        ...

    async def principal(self, name: str) -> PrincipalStatus: ...


class _TtlCache(Generic[V]):
    """Entries that expire ``ttl`` seconds after they are fetched; one fetch per key at a time."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}
        self._inflight: dict[str, asyncio.Future[V]] = {}

    def evict(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    async def get(self, key: str, fetch: Callable[[], Awaitable[V]], refresh: bool = False) -> V:
        entry = self._entries.get(key)
        if entry is not None and not refresh and entry[0] > self._clock():
            return entry[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        self._entries[key] = (self._clock() + self._ttl, value)
        future.set_result(value)
        return value


class NatsIdentityDirectory:
    """An IdentityDirectory that asks the identity service over NATS and caches the answers."""

    def __init__(
        self,
        bus: MessageBus | None = None,
        *,
        ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS,
        request_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bus = bus
        self._timeout = request_timeout
        self._jwks: _TtlCache[dict[str, VerifyKey]] = _TtlCache(ttl_seconds, clock)
        self._principals: _TtlCache[PrincipalStatus] = _TtlCache(ttl_seconds, clock)
        self._subscription: BusSubscription | None = None

    def bind(self, bus: MessageBus) -> None:
        """Use ``bus`` from now on: services build their authenticator before they connect."""
        self._bus = bus

    async def start(self) -> None:
        """Follow ``identity.changes`` so revocations take effect before the TTL runs out."""
        if self._bus is None:
            raise RuntimeError("bind a bus before starting the identity directory")
        if self._subscription is None:
            self._subscription = await self._bus.subscribe(
                CHANGES_SUBJECT, identity_pb.GetPrincipalRequest, self._on_change
            )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_change(self, change: identity_pb.GetPrincipalRequest) -> None:
        # The name is a principal or an organisation; a principal change can alter its
        # organisation's token keys (token-issuer principals), so both are evicted.
        self._principals.evict(change.name)
        parts = change.name.split("/")
        self._jwks.evict("/".join(parts[:2]))

    async def jwks(self, organisation: str, *, refresh: bool = False) -> Mapping[str, VerifyKey]:
        async def fetch() -> dict[str, VerifyKey]:
            reply = await self._request(
                JWKS_SUBJECT,
                identity_pb.GetJwksRequest(organisation=organisation),
                identity_pb.GetJwksResponse,
            )
            keys: dict[str, VerifyKey] = {}
            for jwk in reply.keys:
                try:
                    key = verify_key_from_jwk(
                        {
                            "kty": jwk.kty,
                            "crv": jwk.crv,
                            "x": jwk.x,
                            "kid": jwk.kid,
                            "alg": jwk.alg or "EdDSA",
                            "use": jwk.use or "sig",
                        }
                    )
                except MalformedJwk:
                    _log.warning("ignoring malformed jwk", organisation=organisation)
                    continue
                keys[key.key_id] = key
            return keys

        return await self._jwks.get(organisation, fetch, refresh)

    async def principal(self, name: str) -> PrincipalStatus:
        async def fetch() -> PrincipalStatus:
            # A token names a principal its issuer already knew; an identity service that
            # answers "not found" is most likely a few blocks behind, so ask again briefly.
            for attempt in range(UNKNOWN_PRINCIPAL_RETRIES + 1):
                try:
                    reply = await self._request(
                        PRINCIPAL_SUBJECT,
                        identity_pb.GetPrincipalRequest(name=name),
                        identity_pb.Principal,
                    )
                except RemoteError as exc:
                    if not exc.reason.endswith("NOT_FOUND"):
                        raise
                    if attempt < UNKNOWN_PRINCIPAL_RETRIES:
                        await asyncio.sleep(UNKNOWN_PRINCIPAL_RETRY_SECONDS)
                    continue
                return PrincipalStatus.of(reply)
            return PrincipalStatus(False, False, {})

        status = await self._principals.get(name, fetch)
        if not status.exists:
            # Never remember an absence: the principal may be registered a block later.
            self._principals.evict(name)
        return status

    async def _request(self, subject: str, message: Message, response: type[R]) -> R:
        if self._bus is None:
            raise IdentityUnavailable("IDENTITY_UNAVAILABLE", "not connected to the bus yet")
        try:
            return await self._bus.request(
                subject,
                message,
                response,
                timeout=self._timeout,
            )
        except RemoteError as exc:
            if exc.reason.endswith("NOT_FOUND"):
                raise
            raise IdentityUnavailable(
                "IDENTITY_UNAVAILABLE", f"identity service failed on {subject}: {exc.reason}"
            ) from exc
        except BusError as exc:
            raise IdentityUnavailable(
                "IDENTITY_UNAVAILABLE", f"identity service did not answer on {subject}"
            ) from exc


class JwtAuthenticator:
    """core.auth.Authenticator for identity-issued EdDSA JWTs.

    A token's signature is checked once and remembered (by its SHA-256) until it expires;
    expiry, the signing key's presence in the issuer's current JWKS and the principal's and
    its key's status are checked on every call.
    """

    def __init__(
        self,
        directory: IdentityDirectory,
        *,
        audience: str = DEFAULT_AUDIENCE,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        clock: Callable[[], float] = time.time,
        verified_cache_size: int = 10_000,
    ) -> None:
        self._directory = directory
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock
        self._verified: OrderedDict[bytes, TokenClaims] = OrderedDict()
        self._verified_cache_size = verified_cache_size

    async def authenticate(self, method: str, metadata: Metadata) -> CallerIdentity:
        token = bearer_token(metadata)
        if token is None:
            raise MissingToken("MISSING_TOKEN", "a bearer token is required")
        claims = await self.verify(token)
        return CallerIdentity(
            principal_id=claims.subject,
            org_id=claims.organisation_id,
            roles=frozenset(claims.roles),
            kind=claims.kind,
            token_id=claims.token_id,
            claims=claims.as_dict(),
        )

    async def verify(self, token: str) -> TokenClaims:
        """The claims of ``token`` if it is valid now; TokenError (UNAUTHENTICATED) otherwise."""
        now = self._clock()
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        claims = self._verified.get(digest)
        keys: Mapping[str, VerifyKey]
        if claims is None:
            header = read_unverified(token)
            keys = await self._directory.jwks(header.issuer)
            if header.key_id not in keys:
                # A key may have been registered since the cache was filled.
                keys = await self._directory.jwks(header.issuer, refresh=True)
            key = keys.get(header.key_id)
            if key is None:
                raise TokenUnknownKey(
                    "TOKEN_UNKNOWN_KEY", "token is not signed by a key of its issuer"
                )
            claims = verify_token(
                token, key, audience=self._audience, now=now, leeway_seconds=self._leeway
            )
            self._remember(digest, claims)
        else:
            if claims.expires_at + self._leeway < now:
                self._verified.pop(digest, None)
                raise TokenExpired("TOKEN_EXPIRED", "token has expired")
            keys = await self._directory.jwks(claims.issuer)
            if claims.key_id not in keys:
                raise TokenUnknownKey("TOKEN_UNKNOWN_KEY", "token signing key is no longer valid")
        status = await self._directory.principal(claims.subject)
        if not status.exists:
            raise PrincipalUnknown("PRINCIPAL_UNKNOWN", "token subject is not registered")
        if not status.active:
            raise PrincipalRevoked("PRINCIPAL_REVOKED", "token subject has been revoked")
        window = status.keys.get(claims.principal_key_id)
        if window is None or not window.valid_at(int(now * 1000)):
            raise PrincipalKeyRevoked(
                "PRINCIPAL_KEY_REVOKED", "the key the token was obtained with is no longer valid"
            )
        return claims

    def _remember(self, digest: bytes, claims: TokenClaims) -> None:
        self._verified[digest] = claims
        while len(self._verified) > self._verified_cache_size:
            self._verified.popitem(last=False)


__all__ = [
    "CHANGES_SUBJECT",
    "JWKS_SUBJECT",
    "PRINCIPAL_SUBJECT",
    "IdentityDirectory",
    "IdentityUnavailable",
    "JwtAuthenticator",
    "KeyWindow",
    "NatsIdentityDirectory",
    "PrincipalKeyRevoked",
    "PrincipalRevoked",
    "PrincipalStatus",
    "PrincipalUnknown",
]
