"""Every RPC of every service in the protos, through the real gRPC server, interceptor and
JwtAuthenticator, against that service's AUTHORISATION table (or deny-all when the service has
none yet): no token, wrong role, expired, tampered, wrong-audience, revoked-key and
foreign-unregistered tokens are all refused; public methods are the only exceptions."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import medledger._gen
from medledger._gen.identity.v1 import identity_service_pb2 as identity_pb
from medledger.core.auth import ANY_AUTHENTICATED, AuthorisationTable
from medledger.core.errors import rpc_error_details
from medledger.core.grpc_channel import create_channel
from medledger.core.grpc_server import GrpcServer, GrpcService
from medledger.core.jwt_auth import JwtAuthenticator, PrincipalStatus
from medledger.core.settings import CommonSettings
from medledger.core.tokens import TokenIssuer
from medledger.crypto import SigningKey, VerifyKey

ORG = "organisations/org-a"
NOW = 1_800_000_000
ISSUER_KEY = SigningKey.generate()
ROGUE_KEY = SigningKey.generate()


def _services() -> list[ServiceDescriptor]:
    found = []
    for info in pkgutil.walk_packages(medledger._gen.__path__, "medledger._gen."):
        if info.name.endswith("_pb2") and not info.name.endswith("_grpc"):
            module = importlib.import_module(info.name)
            found.extend(module.DESCRIPTOR.services_by_name.values())
    return sorted(found, key=lambda s: s.full_name)


def _table(service: ServiceDescriptor) -> AuthorisationTable:
    package = service.full_name.split(".")[1]
    try:
        api = importlib.import_module(f"medledger.{package}.api")
    except ModuleNotFoundError:
        return AuthorisationTable()
    table = getattr(api, "AUTHORISATION", None)
    return table if isinstance(table, AuthorisationTable) else AuthorisationTable()


SERVICES = _services()
METHODS = [(s, m) for s in SERVICES for m in s.methods]


class Directory:
    """The registry as the authenticator sees it: org a's token key; revoked key 'k-revoked'."""

    async def jwks(self, organisation: str, *, refresh: bool = False) -> Mapping[str, VerifyKey]:
        return {ISSUER_KEY.public_key.key_id: ISSUER_KEY.public_key} if organisation == ORG else {}

    async def principal(self, name: str) -> PrincipalStatus:
        from medledger.core.jwt_auth import KeyWindow

        keys = {
            "k-good": KeyWindow(identity_pb.KEY_STATE_ACTIVE, 0, 0),
            "k-revoked": KeyWindow(identity_pb.KEY_STATE_REVOKED, 0, 0),
        }
        return PrincipalStatus(name.startswith(ORG), True, keys)


def _token(
    roles: list[str],
    *,
    key: SigningKey = ISSUER_KEY,
    org: str = ORG,
    pkid: str = "k-good",
    now: int = NOW,
    audience: str = "medledger",
) -> str:
    issuer = TokenIssuer(org, key, audience=audience)
    token, _ = issuer.issue(
        subject=f"{org}/principals/p-1",
        roles=roles,
        kind="PRACTITIONER",
        principal_key_id=pkid,
        now=now,
    )
    return token


def _register_all(server: grpc.aio.Server) -> None:
    async def unary(request: bytes, context: Any) -> bytes:
        return b""

    async def streaming(request: Any, context: Any) -> AsyncIterator[bytes]:
        yield b""

    for service in SERVICES:
        handlers = {}
        for method in service.methods:
            if method.server_streaming:
                factory = (
                    grpc.stream_stream_rpc_method_handler
                    if method.client_streaming
                    else grpc.unary_stream_rpc_method_handler
                )
                handlers[method.name] = factory(streaming)
            else:
                factory = (
                    grpc.stream_unary_rpc_method_handler
                    if method.client_streaming
                    else grpc.unary_unary_rpc_method_handler
                )
                handlers[method.name] = factory(unary)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )


@pytest.fixture
async def target() -> AsyncIterator[str]:
    services = [GrpcService(s.full_name, (lambda srv: None), _table(s)) for s in SERVICES]
    services[0] = GrpcService(services[0].name, _register_all, services[0].authorisation)
    server = GrpcServer(
        service_name="matrix",
        settings=CommonSettings(org_id="org-a", grpc_port=0, metrics_port=0),
        services=services,
        authenticator=JwtAuthenticator(Directory(), clock=lambda: NOW + 5),
    )
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


async def _call(target: str, method: MethodDescriptor, token: str | None) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    async with create_channel(target) as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            if method.client_streaming:
                call: Any = (
                    channel.stream_stream if method.server_streaming else channel.stream_unary
                )(path, request_serializer=None, response_deserializer=None)
                result = call(iter([b""]), metadata=metadata, timeout=5)
            else:
                call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(
                    path, request_serializer=None, response_deserializer=None
                )
                result = call(b"", metadata=metadata, timeout=5)
            if method.server_streaming:
                async for _ in result:
                    pass
            else:
                await result
        except grpc.aio.AioRpcError as exc:
            failure = exc
        else:
            return grpc.StatusCode.OK
    if not rpc_error_details(failure).reason:
        raise AssertionError("every refusal carries a reason")
    return failure.code()


def test_every_service_of_the_protos_is_covered() -> None:
    names = {s.full_name for s in SERVICES}
    assert {"medledger.identity.v1.IdentityService", "medledger.ledger.v1.LedgerService"} <= names
    for service in SERVICES:
        table = _table(service)
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            # A table names only methods that exist, so a typo cannot silently deny.
            assert path in table.rules or path in table.public or not table.rules
    for table in [_table(s) for s in SERVICES if _table(s).rules]:
        for path in (*table.rules, *table.public):
            assert any(path == f"/{s.full_name}/{m.name}" for s, m in METHODS), path


@pytest.mark.parametrize(
    ("service", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS]
)
async def test_rpc_refuses_every_bad_credential(
    target: str, service: ServiceDescriptor, method: MethodDescriptor
) -> None:
    table = _table(service)
    path = f"/{service.full_name}/{method.name}"
    if table.is_public(path):
        assert path in table.public
        return
    allowed = table.rules.get(path, frozenset())
    role = next(iter(sorted(allowed - {ANY_AUTHENTICATED})), "nobody")
    assert await _call(target, method, None) is grpc.StatusCode.UNAUTHENTICATED
    if ANY_AUTHENTICATED not in allowed:
        assert (
            await _call(target, method, _token(["not_a_role"])) is grpc.StatusCode.PERMISSION_DENIED
        )
    good = _token([role])
    expected_ok = grpc.StatusCode.OK if allowed else grpc.StatusCode.PERMISSION_DENIED
    assert await _call(target, method, good) is expected_ok
    head, payload, signature = good.split(".")
    bad_tokens = {
        "expired": _token([role], now=NOW - 4000),
        "tampered": f"{head}.{payload}x.{signature}",
        "wrong audience": _token([role], audience="elsewhere"),
        "revoked key": _token([role], pkid="k-revoked"),
        "foreign unregistered": _token([role], key=ROGUE_KEY, org="organisations/rogue"),
        "unregistered signing key": _token([role], key=ROGUE_KEY),
    }
    for case, token in bad_tokens.items():
        assert await _call(target, method, token) is grpc.StatusCode.UNAUTHENTICATED, case
