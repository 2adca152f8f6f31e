"""TLS and mutual TLS on the service port, with certificates made here by `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.core.auth import AuthorisationTable, CallerIdentity, StaticTokens, current_caller
from medledger.core.grpc_channel import ClientTLS, create_channel
from medledger.core.grpc_server import GrpcServer, GrpcService
from medledger.core.settings import CommonSettings

SERVICE = "medledger.test.v1.TlsProbe"
WHOAMI = f"/{SERVICE}/WhoAmI"
EHR = CallerIdentity("svc-ehr", "org-a", frozenset({"ehr"}))


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, other_key = _key(), _key()
    ca = _certificate("medledger test CA", ca_key, None, ca=True)
    other_ca = _certificate("someone else's CA", other_key, None, ca=True)
    server_key, client_key = _key(), _key()
    server = _certificate("localhost", server_key, (ca.subject, ca_key), server=True)
    client = _certificate("org-a ehr", client_key, (ca.subject, ca_key))
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server-key.pem", server_key),
        client_cert=_write_cert(directory / "client.pem", client),
        client_key=_write_key(directory / "client-key.pem", client_key),
        other_ca=_write_cert(directory / "other-ca.pem", other_ca),
    )


async def _whoami(request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
    reply = struct_pb2.Struct()
    reply.update({"principal_id": current_caller().principal_id})
    return reply


def _register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _whoami, struct_pb2.Struct.FromString, struct_pb2.Struct.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"WhoAmI": handler}),)
    )


async def _start(pki: Pki, *, mtls: bool) -> GrpcServer:
    settings = CommonSettings(
        org_id="org-a",
        grpc_port=0,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca if mtls else None,
    )
    server = GrpcServer(
        service_name="tlsprobe",
        settings=settings,
        services=[GrpcService(SERVICE, _register, AuthorisationTable.of({WHOAMI: {"ehr"}}))],
        authenticator=StaticTokens(
            {"tok-ehr": CallerIdentity("svc-ehr", "org-a", frozenset({"ehr"}))}
        ),
    )
    await server.start()
    return server


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[GrpcServer]:
    server = await _start(pki, mtls=False)
    yield server
    await server.stop(0)


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[GrpcServer]:
    server = await _start(pki, mtls=True)
    yield server
    await server.stop(0)


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


async def _whoami_call(channel: grpc.aio.Channel) -> str:
    call = channel.unary_unary(
        WHOAMI,
        request_serializer=struct_pb2.Struct.SerializeToString,
        response_deserializer=struct_pb2.Struct.FromString,
    )
    reply: struct_pb2.Struct = await call(struct_pb2.Struct(), timeout=5)
    return str(reply["principal_id"])


async def test_tls_client_trusting_the_ca_connects_with_a_token(
    tls_server: GrpcServer, pki: Pki
) -> None:
    tls = ClientTLS(ca_file=pki.ca)
    async with create_channel(f"localhost:{tls_server.port}", tls=tls, token="tok-ehr") as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await _whoami_call(channel) == "svc-ehr"


async def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server: GrpcServer) -> None:
    async with create_channel(f"127.0.0.1:{tls_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _health(channel)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_client_not_trusting_the_server_ca_is_refused(
    tls_server: GrpcServer, pki: Pki
) -> None:
    tls = ClientTLS(ca_file=pki.other_ca)
    async with create_channel(f"localhost:{tls_server.port}", tls=tls) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _health(channel)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_admits_a_client_with_a_certificate(mtls_server: GrpcServer, pki: Pki) -> None:
    tls = ClientTLS(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    async with create_channel(f"localhost:{mtls_server.port}", tls=tls, token="tok-ehr") as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await _whoami_call(channel) == "svc-ehr"


async def test_mtls_refuses_a_client_without_a_certificate(
    mtls_server: GrpcServer, pki: Pki
) -> None:
    async with create_channel(
        f"localhost:{mtls_server.port}", tls=ClientTLS(ca_file=pki.ca)
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _health(channel)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_bearer_token_is_never_sent_in_plaintext_off_the_host() -> None:
    with pytest.raises(ValueError, match="plaintext"):
        create_channel("records.hospital.example:50053", token="tok-ehr")
