"""The identity service on NATS: answers ``identity.jwks`` and ``identity.principal`` for every
service's authenticator and announces registry changes on ``identity.changes``; plus the
in-process directory the identity service's own authenticator reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger.core.jwt_auth import (
    CHANGES_SUBJECT,
    JWKS_SUBJECT,
    PRINCIPAL_SUBJECT,
    PrincipalStatus,
)
from medledger.core.nats_bus import BusSubscription, MessageBus
from medledger.core.tokens import verify_key_from_jwk
from medledger.crypto import VerifyKey
from medledger.identity.errors import PrincipalNotFound
from medledger.identity.service import IdentityService

QUEUE_GROUP = "identity"


class LocalIdentityDirectory:
    """core.jwt_auth.IdentityDirectory read straight from this process's registry view."""

    def __init__(self, service: IdentityService) -> None:
        self._service = service

    async def jwks(self, organisation: str, *, refresh: bool = False) -> Mapping[str, VerifyKey]:
        keys = {}
        for jwk in self._service.jwks(organisation):
            key = verify_key_from_jwk(
                {"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x, "kid": jwk.kid, "alg": jwk.alg}
            )
            keys[key.key_id] = key
        return keys

    async def principal(self, name: str) -> PrincipalStatus:
        try:
            return PrincipalStatus.of(self._service.principal(name))
        except PrincipalNotFound:
            return PrincipalStatus(False, False, {})


async def serve_directory(bus: MessageBus, service: IdentityService) -> list[BusSubscription]:
    """Answer the authenticators' questions, and tell them what each final block changed."""

    async def on_jwks(request: pb.GetJwksRequest) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(keys=service.jwks(request.organisation))

    async def on_principal(request: pb.GetPrincipalRequest) -> pb.Principal:
        return service.principal(request.name)

    async def announce(changed: Sequence[str]) -> None:
        for name in changed:
            await bus.publish(CHANGES_SUBJECT, pb.GetPrincipalRequest(name=name))

    service.on_change(announce)
    return [
        await bus.subscribe(JWKS_SUBJECT, pb.GetJwksRequest, on_jwks, queue=QUEUE_GROUP),
        await bus.subscribe(
            PRINCIPAL_SUBJECT, pb.GetPrincipalRequest, on_principal, queue=QUEUE_GROUP
        ),
    ]
