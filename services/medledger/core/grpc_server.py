"""The gRPC server every medledger service runs: limits, TLS, health, reflection and interceptors.

Interceptors, outermost first: tracing (a server span per call, W3C context from the
metadata, request metrics), logging (one scrubbed line per call), error mapping
(MedledgerError → google.rpc.Status; anything else → INTERNAL) and authentication
(Authenticator + AuthorisationTable, deny by default). Health reflects readiness checks
and turns NOT_SERVING first on shutdown, before in-flight calls are drained.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from medledger.core.auth import (
    Authenticator,
    AuthorisationTable,
    RejectAll,
    set_current_caller,
)
from medledger.core.auth import current_caller_or_none as _current_caller_or_none
from medledger.core.errors import MedledgerError, to_rpc_status
from medledger.core.logging import get_logger, scrub
from medledger.core.settings import CommonSettings
from medledger.core.telemetry import Telemetry

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = reflection.SERVICE_NAME
_QUIET_SERVICES = (HEALTH_SERVICE, REFLECTION_SERVICE)
_log = get_logger("medledger.grpc")

ReadinessResult = bool | Awaitable[bool]


@dataclass(frozen=True)
class ReadinessCheck:
    """A named condition the service needs to serve (bus connected, store open, …)."""

    name: str
    check: Callable[[], ReadinessResult]
    timeout_seconds: float = 2.0


@dataclass(frozen=True)
class GrpcService:
    """One gRPC service to host: its full name, how to add it, and who may call what."""

    name: str
    register: Callable[[grpc.aio.Server], None]
    authorisation: AuthorisationTable = field(default_factory=AuthorisationTable)

    @classmethod
    def from_servicer(
        cls,
        name: str,
        add_to_server: Callable[[Any, grpc.aio.Server], None],
        servicer: object,
        authorisation: AuthorisationTable,
    ) -> GrpcService:
        """For generated code: ``from_servicer(NAME, add_XServicer_to_server, impl, table)``."""
        return cls(name, lambda server: add_to_server(servicer, server), authorisation)


@dataclass
class _CallRecord:
    """What inner interceptors tell outer ones about the call being handled."""

    reason: str = ""


_call_record: ContextVar[_CallRecord | None] = ContextVar("medledger_call_record", default=None)

CallScope = Callable[
    [str, grpc.aio.ServicerContext[Any, Any], Any], AbstractAsyncContextManager[None]
]


def _wrap_handler(handler: grpc.RpcMethodHandler[Any, Any], method: str, scope: CallScope) -> Any:
    """The same handler with every call run inside ``scope`` (unary and streaming alike)."""
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if not handler.request_streaming and not handler.response_streaming:
        unary_unary: Any = handler.unary_unary

        async def wrapped_unary_unary(request: Any, context: Any) -> Any:
            async with scope(method, context, request):
                return await _maybe_await(unary_unary(request, context))

        return grpc.unary_unary_rpc_method_handler(wrapped_unary_unary, deserializer, serializer)
    if not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_streaming(handler.unary_stream, method, scope, request_is_message=True),
            deserializer,
            serializer,
        )
    if not handler.response_streaming:
        stream_unary: Any = handler.stream_unary

        async def wrapped_stream_unary(requests: Any, context: Any) -> Any:
            async with scope(method, context, None):
                return await _maybe_await(stream_unary(requests, context))

        return grpc.stream_unary_rpc_method_handler(wrapped_stream_unary, deserializer, serializer)
    return grpc.stream_stream_rpc_method_handler(
        _wrap_streaming(handler.stream_stream, method, scope, request_is_message=False),
        deserializer,
        serializer,
    )


def _wrap_streaming(
    behavior: Any, method: str, scope: CallScope, *, request_is_message: bool
) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def wrapped_generator(request: Any, context: Any) -> AsyncIterator[Any]:
            async with scope(method, context, request if request_is_message else None):
                async for response in behavior(request, context):
                    yield response

        return wrapped_generator

    # Handlers that write with context.write() (the health Watch does) return a coroutine.
    async def wrapped_writer(request: Any, context: Any) -> None:
        async with scope(method, context, request if request_is_message else None):
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    await context.write(response)
            else:
                await _maybe_await(result)

    return wrapped_writer


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# grpc-stubs make the interceptor bases generic; at run time they are not subscriptable.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class _ScopedInterceptor(_ServerInterceptor):
    """An interceptor whose whole job is an async context around each call."""

    def scope(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any
    ) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap_handler(handler, handler_call_details.method, self.scope)


def _status_name(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    """The status code a finished call ended with, as its name ("OK", "NOT_FOUND", …)."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK" if error is None else grpc.StatusCode.UNKNOWN.name


class TracingInterceptor(_ScopedInterceptor):
    """A server span per call, continuing the caller's W3C trace; records request metrics."""

    def __init__(self, telemetry: Telemetry | None) -> None:
        self._telemetry = telemetry

    @asynccontextmanager
    async def scope(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any
    ) -> AsyncIterator[None]:
        carrier = {
            key: value
            for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)
        }
        parent = propagate.extract(carrier)
        tracer = (
            self._telemetry.tracer if self._telemetry is not None else trace.get_tracer("medledger")
        )
        service, _, rpc_method = method.lstrip("/").partition("/")
        started = time.perf_counter()
        error: BaseException | None = None
        with tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = _status_name(context, error)
                span.set_attribute("rpc.grpc.status_code", code)
                if code not in ("OK", "CANCELLED"):
                    span.set_status(Status(StatusCode.ERROR, code))
                if self._telemetry is not None:
                    self._telemetry.record_rpc(method, code, time.perf_counter() - started)


class LoggingInterceptor(_ScopedInterceptor):
    """One structured line per call: method, code, reason, duration and the caller's ids.

    Request bodies appear only at DEBUG, only for unary requests, and only scrubbed.
    """

    @asynccontextmanager
    async def scope(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any
    ) -> AsyncIterator[None]:
        record = _CallRecord()
        _call_record.set(record)
        set_current_caller(None)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            _call_record.set(None)
            code = _status_name(context, error)
            caller = _current_caller_or_none()
            fields: dict[str, Any] = {
                "method": method,
                "code": code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            if record.reason:
                fields["reason"] = record.reason
            if caller is not None:
                fields["principal_id"] = caller.principal_id
                fields["org_id"] = caller.org_id
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                fields["trace_id"] = format(span_context.trace_id, "032x")
            quiet = method.lstrip("/").partition("/")[0] in _QUIET_SERVICES and code == "OK"
            level = logging.DEBUG if quiet else logging.INFO
            std_logger = logging.getLogger("medledger.grpc")
            if request is not None and std_logger.isEnabledFor(logging.DEBUG):
                fields["request"] = scrub(request)
            _log.log(level, "grpc call", **fields)


class ErrorMappingInterceptor(_ScopedInterceptor):
    """The one place errors become gRPC status: google.rpc.Status with ErrorInfo in the trailer."""

    def __init__(self, service_name: str) -> None:
        self._service_name = service_name

    @asynccontextmanager
    async def scope(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any
    ) -> AsyncIterator[None]:
        try:
            yield
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            record = _call_record.get()
            if isinstance(exc, MedledgerError):
                if record is not None:
                    record.reason = exc.reason
            else:
                if record is not None:
                    record.reason = "INTERNAL"
                _log.error(
                    "unhandled error in grpc call",
                    method=method,
                    error_type=type(exc).__name__,
                    exc_info=exc,
                )
            # abort_with_status is missing from grpc-stubs' aio context.
            aborting: Any = context
            await aborting.abort_with_status(to_rpc_status(exc, self._service_name))


class AuthInterceptor(_ScopedInterceptor):
    """Authenticate every call but health/reflection/public ones, then check the role table."""

    def __init__(self, authenticator: Authenticator, table: AuthorisationTable) -> None:
        self._authenticator = authenticator
        self._table = table

    @asynccontextmanager
    async def scope(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any
    ) -> AsyncIterator[None]:
        if not self._table.is_public(method):
            metadata = tuple(context.invocation_metadata() or ())
            caller = await self._authenticator.authenticate(method, metadata)
            self._table.authorise(method, caller)
            set_current_caller(caller)
        yield


class DrainingHealthServicer(health_async.HealthServicer):  # type: ignore[misc]
    """grpc's aio health servicer, except that Watch streams end once shutdown is announced.

    Without this an open Watch would hold the drain until the grace period runs out.
    """

    async def Watch(self, request: Any, context: Any) -> None:  # noqa: N802 - gRPC method name
        # Mirrors HealthServicer.Watch, which keeps its state in these attributes.
        condition = self._server_watchers[request.service]
        self._watcher_count_by_service[request.service] += 1
        last_status = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(
                        request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != last_status:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                    last_status = status
                    if self._gracefully_shutting_down:
                        return
                    await condition.wait()
        finally:
            self._watcher_count_by_service[request.service] -= 1
            if self._watcher_count_by_service[request.service] == 0:
                del self._server_watchers[request.service]
                del self._watcher_count_by_service[request.service]


def server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings; requiring client certificates when a client CA is set."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = settings.tls_key_file.read_bytes()
    chain = settings.tls_cert_file.read_bytes()
    client_ca = (
        settings.tls_client_ca_file.read_bytes()
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class GrpcServer:
    """A configured grpc.aio server for one medledger service."""

    def __init__(
        self,
        *,
        service_name: str,
        settings: CommonSettings,
        services: Sequence[GrpcService],
        authenticator: Authenticator | None = None,
        readiness_checks: Sequence[ReadinessCheck] = (),
        telemetry: Telemetry | None = None,
        readiness_interval_seconds: float = 2.0,
    ) -> None:
        self.service_name = service_name
        self.settings = settings
        self.services = tuple(services)
        self.readiness_checks = tuple(readiness_checks)
        self.readiness_interval_seconds = readiness_interval_seconds
        table = AuthorisationTable()
        for service in self.services:
            table = table.merge(service.authorisation)
        self.authorisation = table
        self.health = DrainingHealthServicer()
        self._server = grpc.aio.server(
            interceptors=[
                TracingInterceptor(telemetry),
                LoggingInterceptor(),
                ErrorMappingInterceptor(service_name),
                AuthInterceptor(authenticator or RejectAll(), table),
            ],
            options=[
                *message_size_options(settings.grpc_max_message_bytes),
                # Fail fast when the port is taken instead of sharing it with another process.
                ("grpc.so_reuseport", 0),
            ],
        )
        self._ready: bool | None = None
        self._readiness_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.port = 0

    @property
    def ready(self) -> bool:
        return bool(self._ready)

    async def start(self) -> int:
        """Bind, register the services, evaluate readiness once and serve; returns the port."""
        for service in self.services:
            service.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [service.name for service in self.services]
        reflection.enable_server_reflection(
            [*names, HEALTH_SERVICE, REFLECTION_SERVICE], self._server
        )
        credentials = server_credentials(self.settings)
        address = self.settings.grpc_address
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self.evaluate_readiness()
        await self._server.start()
        self._readiness_task = asyncio.create_task(self._watch_readiness())
        _log.info(
            "grpc server started",
            service=self.service_name,
            host=self.settings.grpc_host,
            port=self.port,
            tls=self.settings.tls_enabled,
            mtls=self.settings.mtls_required,
            services=names,
        )
        return self.port

    async def evaluate_readiness(self) -> bool:
        """Run every readiness check now and publish the outcome on the health service."""
        failed: list[str] = []
        for readiness in self.readiness_checks:
            try:
                ok = await asyncio.wait_for(
                    _maybe_await(readiness.check()), readiness.timeout_seconds
                )
            except Exception as exc:
                _log.warning(
                    "readiness check raised", check=readiness.name, error=type(exc).__name__
                )
                ok = False
            if not ok:
                failed.append(readiness.name)
        ready = not failed
        if ready != self._ready and not self._stopping:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *(service.name for service in self.services)):
                await self.health.set(name, status)
            if self._ready is not None or not ready:
                _log.info("readiness changed", ready=ready, failed_checks=failed)
            self._ready = ready
        return ready

    async def _watch_readiness(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.readiness_interval_seconds)
            await self.evaluate_readiness()

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Announce NOT_SERVING, refuse new calls, let in-flight ones finish within the grace."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            await asyncio.gather(self._readiness_task, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        _log.info("grpc server draining", service=self.service_name, grace_seconds=grace)
        await self._server.stop(grace)
        _log.info("grpc server stopped", service=self.service_name)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
