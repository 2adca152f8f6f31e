"""The gRPC runtime as a real client sees it: errors, auth, health, limits, PHI, tracing."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medledger.core.auth import (
    ANY_AUTHENTICATED,
    AuthorisationTable,
    CallerIdentity,
    StaticTokens,
    current_caller,
)
from medledger.core.errors import NotFound, rpc_error_details
from medledger.core.grpc_channel import create_channel
from medledger.core.grpc_server import GrpcServer, GrpcService, ReadinessCheck
from medledger.core.logging import configure_logging
from medledger.core.settings import MIB, CommonSettings
from medledger.core.telemetry import Telemetry, configure_telemetry

SERVICE = "medledger.test.v1.EchoService"
ECHO = f"/{SERVICE}/Echo"
WHOAMI = f"/{SERVICE}/WhoAmI"
UPLOAD = f"/{SERVICE}/Upload"
DOWNLOAD = f"/{SERVICE}/Download"
PUBLIC = f"/{SERVICE}/Ping"
UNLISTED = f"/{SERVICE}/Unlisted"

CLINICIAN = CallerIdentity("prn-clin-1", "org-a", frozenset({"clinician"}))
AUDITOR = CallerIdentity("prn-aud-1", "org-a", frozenset({"auditor"}))
TOKENS = {"tok-clinician": CLINICIAN, "tok-auditor": AUDITOR}


class OrderNotFound(NotFound):
    reason = "ORDER_NOT_FOUND"


async def _echo(request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
    action = request.fields["action"].string_value if "action" in request.fields else ""
    if action == "not_found":
        raise OrderNotFound("ORDER_NOT_FOUND", "order not found", {"order_id": "ord-9"})
    if action == "crash":
        raise RuntimeError("secret internal detail /var/lib/db password=hunter2")
    return request


async def _whoami(request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
    caller = current_caller()
    reply = struct_pb2.Struct()
    reply.update({"principal_id": caller.principal_id, "org_id": caller.org_id})
    return reply


async def _upload(requests: AsyncIterator[wrappers_pb2.BytesValue], context: Any) -> Any:
    total = 0
    async for chunk in requests:
        total += len(chunk.value)
    return wrappers_pb2.Int64Value(value=total)


async def _download(
    request: wrappers_pb2.Int64Value, context: Any
) -> AsyncIterator[wrappers_pb2.BytesValue]:
    for _ in range(request.value):
        yield wrappers_pb2.BytesValue(value=b"\x01" * MIB)


def _register(server: grpc.aio.Server) -> None:
    struct_in, struct_out = struct_pb2.Struct.FromString, struct_pb2.Struct.SerializeToString
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo, struct_in, struct_out),
        "WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami, struct_in, struct_out),
        "Ping": grpc.unary_unary_rpc_method_handler(_echo, struct_in, struct_out),
        "Unlisted": grpc.unary_unary_rpc_method_handler(_echo, struct_in, struct_out),
        "Upload": grpc.stream_unary_rpc_method_handler(
            _upload,
            wrappers_pb2.BytesValue.FromString,
            wrappers_pb2.Int64Value.SerializeToString,
        ),
        "Download": grpc.unary_stream_rpc_method_handler(
            _download,
            wrappers_pb2.Int64Value.FromString,
            wrappers_pb2.BytesValue.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


ECHO_SERVICE = GrpcService(
    SERVICE,
    _register,
    AuthorisationTable.of(
        {
            ECHO: {"clinician"},
            WHOAMI: {ANY_AUTHENTICATED},
            UPLOAD: {"clinician"},
            DOWNLOAD: {"clinician"},
        },
        public=[PUBLIC],
    ),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Flag:
    def __init__(self) -> None:
        self.up = True

    def __call__(self) -> bool:
        return self.up


@pytest.fixture(scope="module")
def telemetry() -> Iterator[Telemetry]:
    telemetry = configure_telemetry("echo", None, _free_port())
    yield telemetry
    telemetry.shutdown()


@pytest.fixture
def store_open() -> Flag:
    return Flag()


@pytest.fixture
async def server(telemetry: Telemetry, store_open: Flag) -> AsyncIterator[GrpcServer]:
    settings = CommonSettings(org_id="org-a", grpc_port=0, shutdown_grace_seconds=2)
    server = GrpcServer(
        service_name="echo",
        settings=settings,
        services=[ECHO_SERVICE],
        authenticator=StaticTokens(TOKENS),
        readiness_checks=[ReadinessCheck("store", store_open)],
        telemetry=telemetry,
        readiness_interval_seconds=0.05,
    )
    await server.start()
    yield server
    await server.stop(0)


def _target(server: GrpcServer) -> str:
    return f"127.0.0.1:{server.port}"


async def _call_echo(
    channel: grpc.aio.Channel, fields: dict[str, Any], method: str = ECHO
) -> struct_pb2.Struct:
    request = struct_pb2.Struct()
    request.update(fields)
    call = channel.unary_unary(
        method,
        request_serializer=struct_pb2.Struct.SerializeToString,
        response_deserializer=struct_pb2.Struct.FromString,
    )
    reply: struct_pb2.Struct = await call(request, timeout=5)
    return reply


# --- error mapping --------------------------------------------------------------------------


async def test_medledger_error_reaches_client_with_error_info(server: GrpcServer) -> None:
    async with create_channel(_target(server), token="tok-clinician") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call_echo(channel, {"action": "not_found"})
    details = rpc_error_details(raised.value)
    assert details.code is grpc.StatusCode.NOT_FOUND
    assert details.reason == "ORDER_NOT_FOUND"
    assert details.domain == "echo.medledger"
    assert details.metadata == {"order_id": "ord-9"}
    assert details.message == "order not found"


async def test_unknown_exception_becomes_internal_without_details(server: GrpcServer) -> None:
    async with create_channel(_target(server), token="tok-clinician") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call_echo(channel, {"action": "crash"})
    details = rpc_error_details(raised.value)
    assert details.code is grpc.StatusCode.INTERNAL
    assert details.reason == "INTERNAL"
    assert "hunter2" not in details.message and "/var/lib" not in details.message
    assert "hunter2" not in repr(raised.value)


# --- authentication and authorisation --------------------------------------------------------


async def test_call_without_token_is_unauthenticated(server: GrpcServer) -> None:
    async with create_channel(_target(server)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call_echo(channel, {"x": 1})
    details = rpc_error_details(raised.value)
    assert details.code is grpc.StatusCode.UNAUTHENTICATED
    assert details.reason == "MISSING_TOKEN"


async def test_unknown_token_is_unauthenticated(server: GrpcServer) -> None:
    async with create_channel(_target(server), token="tok-forged") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call_echo(channel, {"x": 1})
    assert rpc_error_details(raised.value).reason == "INVALID_TOKEN"


async def test_wrong_role_is_permission_denied(server: GrpcServer) -> None:
    async with create_channel(_target(server), token="tok-auditor") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call_echo(channel, {"x": 1})
    details = rpc_error_details(raised.value)
    assert details.code is grpc.StatusCode.PERMISSION_DENIED
    assert details.reason == "ROLE_NOT_ALLOWED"


async def test_method_missing_from_table_is_denied_even_to_valid_callers(
    server: GrpcServer,
) -> None:
    async with create_channel(_target(server), token="tok-clinician") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call_echo(channel, {"x": 1}, method=UNLISTED)
    details = rpc_error_details(raised.value)
    assert details.code is grpc.StatusCode.PERMISSION_DENIED
    assert details.reason == "METHOD_NOT_AUTHORISED"


async def test_streaming_calls_are_authenticated_too(server: GrpcServer) -> None:
    async with create_channel(_target(server)) as channel:
        upload = channel.stream_unary(
            UPLOAD,
            request_serializer=wrappers_pb2.BytesValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int64Value.FromString,
        )

        async def chunks() -> AsyncIterator[wrappers_pb2.BytesValue]:
            yield wrappers_pb2.BytesValue(value=b"x")

        with pytest.raises(grpc.aio.AioRpcError) as upload_error:
            await upload(chunks(), timeout=5)
        download = channel.unary_stream(
            DOWNLOAD,
            request_serializer=wrappers_pb2.Int64Value.SerializeToString,
            response_deserializer=wrappers_pb2.BytesValue.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as download_error:
            async for _ in download(wrappers_pb2.Int64Value(value=1), timeout=5):
                pass
    assert upload_error.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert rpc_error_details(download_error.value).reason == "MISSING_TOKEN"


async def test_right_role_passes_and_servicer_sees_the_caller(server: GrpcServer) -> None:
    async with create_channel(_target(server), token="tok-clinician") as channel:
        assert (await _call_echo(channel, {"code": "J45"}))["code"] == "J45"
    async with create_channel(_target(server), token="tok-auditor") as channel:
        reply = await _call_echo(channel, {}, method=WHOAMI)
    assert reply["principal_id"] == "prn-aud-1"


async def test_public_method_and_health_need_no_token(server: GrpcServer) -> None:
    async with create_channel(_target(server)) as channel:
        assert (await _call_echo(channel, {"n": 1}, method=PUBLIC))["n"] == 1
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- health, readiness, reflection ----------------------------------------------------------


async def test_health_follows_readiness_checks(server: GrpcServer, store_open: Flag) -> None:
    async with create_channel(_target(server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(service: str = "") -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            return int(reply.status)

        assert await status() == health_pb2.HealthCheckResponse.SERVING
        assert await status(SERVICE) == health_pb2.HealthCheckResponse.SERVING
        store_open.up = False
        await _eventually(lambda: status(SERVICE), health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        store_open.up = True
        await _eventually(status, health_pb2.HealthCheckResponse.SERVING)


async def _eventually(probe: Any, expected: int, within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        got = await probe()
        if got == expected:
            return
        assert asyncio.get_running_loop().time() < deadline, f"still {got}, wanted {expected}"
        await asyncio.sleep(0.02)


async def test_reflection_lists_registered_services(server: GrpcServer) -> None:
    async with create_channel(_target(server)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")

        async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield request

        names: set[str] = set()
        async for reply in stub.ServerReflectionInfo(requests(), timeout=5):
            names |= {s.name for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_graceful_stop_turns_health_not_serving_and_ends_watchers(
    server: GrpcServer,
) -> None:
    async with create_channel(_target(server)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        seen = [(await watch.read()).status]
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(server.stop(5))
        eof: Any = grpc.aio.EOF  # type: ignore[attr-defined]
        while (reply := await watch.read()) is not eof:
            seen.append(reply.status)
        await stopping
        assert loop.time() - started < 2, "an open Watch held the drain"
    assert seen == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]


# --- message size limits --------------------------------------------------------------------


async def test_chunks_over_one_mib_pass_in_both_directions(server: GrpcServer) -> None:
    async with create_channel(_target(server), token="tok-clinician") as channel:
        upload = channel.stream_unary(
            UPLOAD,
            request_serializer=wrappers_pb2.BytesValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int64Value.FromString,
        )

        async def chunks() -> AsyncIterator[wrappers_pb2.BytesValue]:
            for _ in range(3):
                yield wrappers_pb2.BytesValue(value=b"\x00" * (MIB + 4096))

        total = await upload(chunks(), timeout=10)
        assert total.value == 3 * (MIB + 4096)

        download = channel.unary_stream(
            DOWNLOAD,
            request_serializer=wrappers_pb2.Int64Value.SerializeToString,
            response_deserializer=wrappers_pb2.BytesValue.FromString,
        )
        sizes = [len(m.value) async for m in download(wrappers_pb2.Int64Value(value=2), timeout=10)]
        assert sizes == [MIB, MIB]


async def test_oversized_message_is_rejected_with_resource_exhausted(server: GrpcServer) -> None:
    # The client allows far more than the server so the server's limit is what rejects it.
    async with create_channel(
        _target(server), token="tok-clinician", max_message_bytes=64 * MIB
    ) as channel:
        upload = channel.stream_unary(
            UPLOAD,
            request_serializer=wrappers_pb2.BytesValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int64Value.FromString,
        )

        async def chunks() -> AsyncIterator[wrappers_pb2.BytesValue]:
            yield wrappers_pb2.BytesValue(
                value=b"\x00" * (server.settings.grpc_max_message_bytes + 1)
            )

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await upload(chunks(), timeout=10)
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # The server is still fine afterwards.
        assert (await _call_echo(channel, {"n": 2}))["n"] == 2


# --- logging without PHI --------------------------------------------------------------------

PHI = {
    "given_name": "Alice",
    "familyName": "Liddell-Wonder",
    "mrn": "MRN-5550123",
    "birthDate": "1961-07-04",
    "note": "patient reports chest pain after fall",
}
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJwcm4tY2xpbi0xIn0.c2lnbmF0dXJlLWJ5dGVz"


async def test_logging_interceptor_logs_one_scrubbed_line_per_call(server: GrpcServer) -> None:
    output = io.StringIO()
    configure_logging("DEBUG", "json", stream=output)
    try:
        async with create_channel(_target(server), token="tok-clinician") as channel:
            await _call_echo(
                channel,
                {**PHI, "patient_id": "pt-77aa", "code": "ICD10-R07.9", "ref": f"Bearer {JWT}"},
            )
        # The server logs after the client already has its answer: give it a moment.
        for _ in range(100):
            if f'"method": "{ECHO}"' in output.getvalue():
                break
            await asyncio.sleep(0.02)
    finally:
        configure_logging("INFO", "json")
    text = output.getvalue()
    for secret in [*PHI.values(), JWT, "Liddell"]:
        assert secret not in text
    calls = [
        json.loads(line)
        for line in text.splitlines()
        if line.startswith("{") and json.loads(line).get("method") == ECHO
    ]
    assert len(calls) == 1
    line = calls[0]
    assert line["code"] == "OK"
    assert line["principal_id"] == "prn-clin-1"
    assert line["request"]["patient_id"] == "pt-77aa"
    assert line["request"]["code"] == "ICD10-R07.9"
    assert line["request"]["mrn"] == "[REDACTED]"
    assert isinstance(line["duration_ms"], float)


async def test_failed_call_is_logged_with_code_and_reason(server: GrpcServer) -> None:
    output = io.StringIO()
    configure_logging("INFO", "json", stream=output)
    try:
        async with create_channel(_target(server), token="tok-auditor") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await _call_echo(channel, {"x": 1})
        # The server logs after the client already has its status: give it a moment.
        for _ in range(100):
            if '"grpc call"' in output.getvalue():
                break
            await asyncio.sleep(0.02)
    finally:
        configure_logging("INFO", "json")
    lines = [json.loads(x) for x in output.getvalue().splitlines() if '"grpc call"' in x]
    assert [(x["code"], x["reason"]) for x in lines] == [("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")]
    assert "request" not in lines[0]


# --- tracing and metrics --------------------------------------------------------------------


async def test_server_span_continues_the_client_trace(
    server: GrpcServer, telemetry: Telemetry
) -> None:
    exporter = InMemorySpanExporter()
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = telemetry.tracer_provider.get_tracer("test")
    async with create_channel(_target(server), token="tok-clinician") as channel:
        with tracer.start_as_current_span("client-operation") as client_span:
            await _call_echo(channel, {"n": 3})
            client_context = client_span.get_span_context()
    server_spans = [s for s in exporter.get_finished_spans() if s.name == ECHO.lstrip("/")]
    assert len(server_spans) == 1
    span = server_spans[0]
    assert span.kind is trace.SpanKind.SERVER
    assert span.context is not None and span.context.trace_id == client_context.trace_id
    assert span.parent is not None and span.parent.span_id == client_context.span_id
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == "OK"


async def test_metrics_endpoint_counts_calls_by_method_and_code(
    server: GrpcServer, telemetry: Telemetry
) -> None:
    async with create_channel(_target(server), token="tok-clinician") as channel:
        await _call_echo(channel, {"n": 4})
        with pytest.raises(grpc.aio.AioRpcError):
            await _call_echo(channel, {"action": "not_found"})
    url = f"http://127.0.0.1:{telemetry.metrics_port}/metrics"
    with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as response:
        body = response.read().decode()
    counted = [line for line in body.splitlines() if line.startswith("rpc_server_requests_total")]
    assert any(f'rpc_method="{ECHO}"' in x and 'status_code="OK"' in x for x in counted)
    assert any(f'rpc_method="{ECHO}"' in x and 'status_code="NOT_FOUND"' in x for x in counted)
    assert "rpc_server_duration_seconds_bucket" in body
