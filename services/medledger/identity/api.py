"""IdentityService over gRPC: translate, authorise, delegate to the domain service."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import grpc

from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger._gen.identity.v1 import identity_service_pb2_grpc as pb_grpc
from medledger.core.auth import ANY_AUTHENTICATED, AuthorisationTable, current_caller
from medledger.core.errors import FailedPrecondition, InvalidArgument
from medledger.core.grpc_server import GrpcService
from medledger.crypto import SigningKey
from medledger.identity.service import IdentityService

SERVICE_NAME = "medledger.identity.v1.IdentityService"
ADMINISTRATOR = "administrator"
AUDITOR = "auditor"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_FIELD_CHARS = 512

Context = grpc.aio.ServicerContext[Any, Any]


def _method(name: str) -> str:
    return f"/{SERVICE_NAME}/{name}"


AUTHORISATION = AuthorisationTable.of(
    {
        _method("CreateOrganisation"): [ADMINISTRATOR],
        _method("GetOrganisation"): [ANY_AUTHENTICATED],
        _method("ListOrganisations"): [ANY_AUTHENTICATED],
        _method("CreatePrincipal"): [ADMINISTRATOR],
        _method("GetPrincipal"): [ANY_AUTHENTICATED],
        _method("ListPrincipals"): [ADMINISTRATOR, AUDITOR],
        _method("RotatePrincipalKey"): [ADMINISTRATOR],
        _method("RevokePrincipalKey"): [ADMINISTRATOR],
        _method("RevokePrincipal"): [ADMINISTRATOR],
    },
    # Logging in needs no token, and verification keys are public by nature.
    public=[_method("CreateTokenChallenge"), _method("IssueToken"), _method("GetJwks")],
)


class BadPageToken(InvalidArgument):
    reason = "BAD_PAGE_TOKEN"


class FieldTooLarge(InvalidArgument):
    reason = "FIELD_TOO_LARGE"


class BootstrapKeyMissing(FailedPrecondition):
    reason = "BOOTSTRAP_KEY_NOT_CONFIGURED"


def _bounded(**fields: str) -> None:
    for name, value in fields.items():
        if len(value) > MAX_FIELD_CHARS:
            raise FieldTooLarge("FIELD_TOO_LARGE", f"{name} is too long", {"field": name})


def _page(page_size: int, page_token: str, scope: str) -> tuple[int, str]:
    """(limit, last name seen) of an AIP-158 page request; tokens are bound to ``scope``."""
    if page_size < 0:
        raise InvalidArgument("BAD_PAGE_SIZE", "page_size must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return size, ""
    try:
        decoded = base64.urlsafe_b64decode(page_token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise BadPageToken("BAD_PAGE_TOKEN", "page_token is not one this server issued") from exc
    token_scope, _, after = decoded.partition("\n")
    if token_scope != scope:
        raise BadPageToken("BAD_PAGE_TOKEN", "page_token belongs to a different request")
    return size, after


def _next_token(scope: str, names: list[str], size: int) -> str:
    if len(names) < size:
        return ""
    return base64.urlsafe_b64encode(f"{scope}\n{names[-1]}".encode()).decode("ascii")


class IdentityApi(pb_grpc.IdentityServiceServicer):
    """The gRPC face of the identity service."""

    def __init__(self, service: IdentityService, bootstrap_key: SigningKey | None = None) -> None:
        self._service = service
        self._bootstrap_key = bootstrap_key

    async def CreateOrganisation(  # noqa: N802 -- gRPC method name
        self, request: pb.CreateOrganisationRequest, context: Context
    ) -> pb.Organisation:
        current_caller()
        _bounded(organisation_id=request.organisation_id, request_id=request.request_id)
        if self._bootstrap_key is None:
            raise BootstrapKeyMissing(
                "BOOTSTRAP_KEY_NOT_CONFIGURED",
                "registering an organisation needs its validator key; use the CLI bootstrap",
            )
        return await self._service.create_organisation(
            request.organisation_id, request.organisation, request.request_id, self._bootstrap_key
        )

    async def GetOrganisation(  # noqa: N802
        self, request: pb.GetOrganisationRequest, context: Context
    ) -> pb.Organisation:
        _bounded(name=request.name)
        return self._service.organisation(request.name)

    async def ListOrganisations(  # noqa: N802
        self, request: pb.ListOrganisationsRequest, context: Context
    ) -> pb.ListOrganisationsResponse:
        size, after = _page(request.page_size, request.page_token, "organisations")
        found = self._service.store.list_organisations(after, size)
        return pb.ListOrganisationsResponse(
            organisations=found,
            next_page_token=_next_token("organisations", [o.name for o in found], size),
        )

    async def CreatePrincipal(  # noqa: N802
        self, request: pb.CreatePrincipalRequest, context: Context
    ) -> pb.Principal:
        _bounded(
            parent=request.parent,
            principal_id=request.principal_id,
            request_id=request.request_id,
            patient_pseudonym=request.principal.patient_pseudonym,
        )
        return await self._service.create_principal(
            current_caller(),
            request.parent,
            request.principal_id,
            request.principal,
            request.request_id,
        )

    async def GetPrincipal(  # noqa: N802
        self, request: pb.GetPrincipalRequest, context: Context
    ) -> pb.Principal:
        _bounded(name=request.name)
        return self._service.principal(request.name)

    async def ListPrincipals(  # noqa: N802
        self, request: pb.ListPrincipalsRequest, context: Context
    ) -> pb.ListPrincipalsResponse:
        _bounded(parent=request.parent, role=request.role)
        organisation: str | None = request.parent
        if request.parent == "organisations/-":
            organisation = None
        else:
            self._service.organisation(request.parent)
        scope = f"principals|{request.parent}|{request.role}|{request.kind}|{request.show_revoked}"
        size, after = _page(request.page_size, request.page_token, scope)
        found = self._service.store.list_principals(
            organisation=organisation,
            role=request.role,
            kind=request.kind,
            show_revoked=request.show_revoked,
            after=after,
            limit=size,
        )
        return pb.ListPrincipalsResponse(
            principals=found, next_page_token=_next_token(scope, [p.name for p in found], size)
        )

    async def RotatePrincipalKey(  # noqa: N802
        self, request: pb.RotatePrincipalKeyRequest, context: Context
    ) -> pb.Principal:
        _bounded(name=request.name, old_key_id=request.old_key_id, request_id=request.request_id)
        grace_ms = request.grace_period.ToMilliseconds() if request.HasField("grace_period") else 0
        if grace_ms < 0:
            raise InvalidArgument("BAD_GRACE_PERIOD", "grace period must not be negative")
        return await self._service.rotate_key(
            current_caller(),
            request.name,
            request.old_key_id,
            request.new_key,
            grace_ms,
            request.request_id,
        )

    async def RevokePrincipalKey(  # noqa: N802
        self, request: pb.RevokePrincipalKeyRequest, context: Context
    ) -> pb.Principal:
        _bounded(name=request.name, key_id=request.key_id, request_id=request.request_id)
        return await self._service.revoke_key(
            current_caller(), request.name, request.key_id, request.reason, request.request_id
        )

    async def RevokePrincipal(  # noqa: N802
        self, request: pb.RevokePrincipalRequest, context: Context
    ) -> pb.Principal:
        _bounded(name=request.name, request_id=request.request_id)
        return await self._service.revoke_principal(
            current_caller(), request.name, request.reason, request.request_id
        )

    async def CreateTokenChallenge(  # noqa: N802
        self, request: pb.CreateTokenChallengeRequest, context: Context
    ) -> pb.TokenChallenge:
        _bounded(principal=request.principal, key_id=request.key_id)
        return await self._service.create_challenge(request.principal, request.key_id)

    async def IssueToken(  # noqa: N802
        self, request: pb.IssueTokenRequest, context: Context
    ) -> pb.IssueTokenResponse:
        _bounded(
            challenge_id=request.challenge_id, principal=request.principal, key_id=request.key_id
        )
        lifetime = (
            int(request.requested_lifetime.ToSeconds())
            if request.HasField("requested_lifetime")
            else 0
        )
        if lifetime < 0:
            raise InvalidArgument("BAD_LIFETIME", "requested lifetime must not be negative")
        return await self._service.issue_token(
            request.challenge_id, request.principal, request.key_id, request.signature, lifetime
        )

    async def GetJwks(  # noqa: N802
        self, request: pb.GetJwksRequest, context: Context
    ) -> pb.GetJwksResponse:
        _bounded(organisation=request.organisation)
        return pb.GetJwksResponse(keys=self._service.jwks(request.organisation))


def identity_grpc_service(
    service: IdentityService, bootstrap_key: SigningKey | None = None
) -> GrpcService:
    return GrpcService.from_servicer(
        SERVICE_NAME,
        pb_grpc.add_IdentityServiceServicer_to_server,
        IdentityApi(service, bootstrap_key),
        AUTHORISATION,
    )
