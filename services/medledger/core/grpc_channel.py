"""Client channels to medledger services: message limits, TLS/mTLS, trace context, bearer tokens.

Bearer tokens travel as call credentials on TLS channels. On a plaintext channel they
are only sent to a loopback address (local stack, tests), never across a network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import propagate

from medledger.core.settings import DEFAULT_MAX_MESSAGE_BYTES

TokenSource = Callable[[], str]
"""Returns the current bearer token; called per call so a refreshed token is picked up."""


@dataclass(frozen=True)
class ClientTLS:
    """Server CA to trust, and an optional client certificate for mTLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name_override: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


def _inject_metadata(
    details: grpc.aio.ClientCallDetails, extra: Sequence[tuple[str, str]]
) -> grpc.aio.ClientCallDetails:
    metadata = list(details.metadata or ())
    present = {key for key, _ in metadata}
    metadata.extend((key, value) for key, value in extra if key not in present)
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


# grpc-stubs make the interceptor bases generic; at run time they are not subscriptable.
if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


MetadataSource = Callable[[], list[tuple[str, str]]]


# grpc.aio sorts a channel's interceptors by the first of the four kinds each one is,
# so adding metadata to every kind of call takes one interceptor object per kind.
class _UnaryUnaryMetadata(_UnaryUnary):
    def __init__(self, source: MetadataSource) -> None:
        self._source = source

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_inject_metadata(details, self._source()), request)


class _UnaryStreamMetadata(_UnaryStream):
    def __init__(self, source: MetadataSource) -> None:
        self._source = source

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_inject_metadata(details, self._source()), request)


class _StreamUnaryMetadata(_StreamUnary):
    def __init__(self, source: MetadataSource) -> None:
        self._source = source

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_inject_metadata(details, self._source()), requests)


class _StreamStreamMetadata(_StreamStream):
    def __init__(self, source: MetadataSource) -> None:
        self._source = source

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_inject_metadata(details, self._source()), requests)


def metadata_interceptors(source: MetadataSource) -> list[Any]:
    """Client interceptors adding ``source()``'s metadata to unary and streaming calls alike."""
    return [
        _UnaryUnaryMetadata(source),
        _UnaryStreamMetadata(source),
        _StreamUnaryMetadata(source),
        _StreamStreamMetadata(source),
    ]


def trace_context_metadata() -> list[tuple[str, str]]:
    """The current W3C trace context (traceparent, tracestate) as call metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def trace_context_interceptors() -> list[Any]:
    """The client tracing interceptors: every call carries the caller's trace context."""
    return metadata_interceptors(trace_context_metadata)


class _BearerTokenPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, token: TokenSource) -> None:
        self._token = token

    def __call__(
        self,
        context: grpc.AuthMetadataContext,
        callback: grpc.AuthMetadataPluginCallback,
    ) -> None:
        try:
            callback((("authorization", f"Bearer {self._token()}"),), None)
        except Exception as exc:
            callback((), exc)


def bearer_token_credentials(token: TokenSource) -> grpc.CallCredentials:
    """Call credentials sending a bearer token from ``token`` with every call (TLS only)."""
    return grpc.metadata_call_credentials(_BearerTokenPlugin(token), name="medledger-bearer")


def create_channel(
    target: str,
    *,
    tls: ClientTLS | None = None,
    token: TokenSource | str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An aio channel to ``target`` (host:port) with medledger's limits and interceptors."""
    token_source: TokenSource | None = (lambda: token) if isinstance(token, str) else token
    channel_options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *options,
    ]
    if tls is not None and tls.server_name_override:
        channel_options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    interceptors: list[Any] = trace_context_interceptors()
    if tls is None:
        if token_source is not None:
            if not _is_loopback(target):
                raise ValueError(
                    f"refusing to send a bearer token in plaintext to {target!r}; use TLS"
                )
            # Plaintext channels take no call credentials, so the header is added directly.
            source = token_source
            interceptors += metadata_interceptors(lambda: [("authorization", f"Bearer {source()}")])
        return grpc.aio.insecure_channel(target, options=channel_options, interceptors=interceptors)
    credentials = tls.credentials()
    if token_source is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, bearer_token_credentials(token_source)
        )
    return grpc.aio.secure_channel(
        target, credentials, options=channel_options, interceptors=interceptors
    )


def _is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0] if ":" in target else target
    host = host.removeprefix("ipv4:").removeprefix("ipv6:").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
