"""The NATS message bus between services: protobuf request/reply, publish/subscribe and JetStream,
with W3C trace context carried in NATS headers so one trace spans every hop."""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
import nats
import nats.errors
import nats.js.errors
import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.client import Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js import api as js_api
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from medledger.core.errors import MedledgerError

# Errors are drawn as a tree so callers know what to catch:
#
#   BusError                      BUS_ERROR
#   ├── BusUnavailable            NATS_UNAVAILABLE
#   ├── BusTimeout                NATS_TIMEOUT
#   ├── BusNoResponders           NATS_NO_RESPONDERS
#   ├── PayloadError              BAD_PAYLOAD
#   ├── JetStreamError            JETSTREAM_ERROR
#   └── RemoteError               reason sent by the remote handler

ERROR_REASON_HEADER = "Medledger-Error-Reason"
MSG_ID_HEADER = "Nats-Msg-Id"
INTERNAL_REASON = "INTERNAL"

DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_REQUEST_TIMEOUT = 5.0

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

log = structlog.get_logger(__name__)


_EXPECTED_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class BusError(Exception):
    """Base of every error raised by the message bus."""

    reason = "BUS_ERROR"


class BusUnavailable(BusError):  # noqa: N818 -- the name is the API
    """No NATS server could be reached, or the connection is closed."""

    reason = "NATS_UNAVAILABLE"


class BusTimeout(BusError):  # noqa: N818 -- the name is the API
    """A request got no reply in time."""

    reason = "NATS_TIMEOUT"


class BusNoResponders(BusError):  # noqa: N818 -- the name is the API
    """A request went to a subject nobody is listening on."""

    reason = "NATS_NO_RESPONDERS"


class PayloadError(BusError):
    """A message body is not the protobuf message it was expected to be."""

    reason = "BAD_PAYLOAD"


class JetStreamError(BusError):
    """JetStream refused a stream, consumer or publish operation."""

    reason = "JETSTREAM_ERROR"


class RemoteError(BusError):
    """The handler on the other side of a request failed and said why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


Handler = Callable[[M], Awaitable[Message | None]]


class BusSubscription(Protocol):
    """A live subscription; unsubscribe stops delivery."""

    async def unsubscribe(self) -> None: ...


class MessageBus(Protocol):
    """What services need from the bus; NatsBus and the in-memory bus both provide it."""

    @property
    def is_connected(self) -> bool: ...

    async def publish(self, subject: str, message: Message) -> None: ...

    async def request(
        self,
        subject: str,
        message: Message,
        response_type: type[R],
        timeout: float = DEFAULT_REQUEST_TIMEOUT,  # noqa: ASYNC109 -- a NATS request deadline
    ) -> R: ...

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        queue: str = "",
    ) -> BusSubscription: ...

    async def close(self) -> None: ...


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any user, password or token replaced, safe to log or show."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def redact_text(text: str) -> str:
    """Text (typically an error message) with credentials in any URL inside it replaced."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def error_reply_for(exc: BaseException) -> tuple[str, str]:
    """The (reason, message) a handler failure is reported to the requester as.

    Only errors that carry a machine-readable reason say what went wrong; anything else may hold
    data from the request (possibly PHI) in its text, so the requester is told only that it failed.
    """
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason, str(exc)
    return INTERNAL_REASON, "internal error"


def raise_if_error_reply(headers: Mapping[str, str] | None, data: bytes) -> None:
    """Raise RemoteError if a reply carries the error header."""
    if headers and ERROR_REASON_HEADER in headers:
        raise RemoteError(headers[ERROR_REASON_HEADER], data.decode("utf-8", errors="replace"))


def decode(message_type: type[M], data: bytes, subject: str) -> M:
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise PayloadError(
            f"payload on {subject!r} is not a valid {message_type.DESCRIPTOR.full_name}"
        ) from exc


def _messaging_attributes(subject: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
    }


def _inject_trace(headers: dict[str, str]) -> dict[str, str]:
    propagate.inject(headers)
    return headers


def _server_backoff(
    base: float, ceiling: float
) -> Callable[[list[Server], dict[str, Any]], tuple[Server | None, float]]:
    """Pick the least-failed server and wait exponentially longer after repeated failures."""

    def choose(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        server = min(servers, key=lambda s: s.reconnects)
        delay = min(ceiling, base * (2 ** min(server.reconnects, 10)))
        # Jitter keeps a fleet of clients from reconnecting in lockstep; not security relevant.
        return server, delay * random.uniform(0.8, 1.2)  # noqa: S311

    return choose


def _tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext | None:
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


class AckHandle:
    """Settles one JetStream delivery; carries the trace context the message arrived with."""

    def __init__(self, msg: Msg, trace_context: otel_context.Context) -> None:
        self._msg = msg
        self.context = trace_context
        meta = msg.metadata
        self.subject: str = msg.subject
        self.stream_sequence: int = meta.sequence.stream
        self.num_delivered: int = meta.num_delivered
        self.msg_id: str | None = (msg.headers or {}).get(MSG_ID_HEADER)

    async def ack(self) -> None:
        """Confirm processing, waiting for the server so a later crash cannot redeliver."""
        await self._msg.ack_sync()

    async def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery, after `delay` seconds if given."""
        await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        """Reset the ack-wait timer for slow processing."""
        await self._msg.in_progress()

    async def term(self) -> None:
        """Never redeliver this message (it can never be processed)."""
        await self._msg.term()


class Delivery(NamedTuple, Generic[M]):
    """One message fetched from a pull consumer and the handle that acknowledges it."""

    message: M
    ack: AckHandle


@dataclass
class _NatsSubscriptionHandle:
    sub: NatsSubscription
    live: list[NatsSubscription]

    async def unsubscribe(self) -> None:
        if self.sub in self.live:
            self.live.remove(self.sub)
            await self.sub.unsubscribe()


class NatsBus:
    """MessageBus over a real NATS connection, plus the JetStream helpers services need."""

    def __init__(self, nc: NatsClient, tracer_provider: trace.TracerProvider | None) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._pull_subs: dict[tuple[str, str], JetStreamContext.PullSubscription] = {}
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._subscriptions: list[NatsSubscription] = []

    @classmethod
    async def connect(
        cls,
        urls: str | Sequence[str],
        *,
        name: str,
        creds_file: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        reconnect_wait: float = 0.25,
        max_reconnect_wait: float = 5.0,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> NatsBus:
        """Connect to the first reachable server of `urls`; after that, reconnect forever.

        Raises BusUnavailable naming the (redacted) URLs if none answers now.
        """
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise BusUnavailable("no NATS server URL configured")
        safe_urls = [redact_url(u) for u in url_list]
        nc = NatsClient()

        async def on_error(exc: Exception) -> None:
            log.warning("nats.error", error=type(exc).__name__, detail=redact_text(str(exc)))

        async def on_disconnected() -> None:
            log.warning("nats.disconnected", client=name)

        async def on_reconnected() -> None:
            url = nc.connected_url
            log.info(
                "nats.reconnected", client=name, server=redact_url(url.geturl()) if url else None
            )

        async def on_closed() -> None:
            log.info("nats.closed", client=name)

        try:
            # A bounded number of attempts so a missing server fails fast here; reconnection after
            # the first success is made unbounded below.
            await nc.connect(
                servers=url_list,
                name=name,
                # nats-py annotates this as int but passes it to asyncio.wait_for.
                connect_timeout=connect_timeout,  # type: ignore[arg-type]
                reconnect_time_wait=0,
                max_reconnect_attempts=1,
                allow_reconnect=True,
                user_credentials=creds_file,
                tls=_tls_context(tls_ca_file, tls_cert_file, tls_key_file),
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
                reconnect_to_server_handler=_server_backoff(reconnect_wait, max_reconnect_wait),
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await nc.close()
            raise BusUnavailable(
                f"cannot connect to NATS at {', '.join(safe_urls)}: {type(exc).__name__}"
            ) from None
        nc.options["max_reconnect_attempts"] = -1
        log.info("nats.connected", client=name, servers=safe_urls)
        return cls(nc, tracer_provider)

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def client(self) -> NatsClient:
        """The underlying nats-py client, for what the bus does not wrap."""
        return self._nc

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop taking messages, let in-flight handlers reply, flush publishes, then close."""
        if self._nc.is_closed:
            return
        try:
            async with asyncio.timeout(timeout):
                for sub in self._subscriptions:
                    if not self._nc.is_closed:
                        await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
                if self._handler_tasks:
                    await asyncio.gather(*self._handler_tasks, return_exceptions=True)
                # Unfetched messages of a pull consumer are redelivered by the server, so its
                # inbox is dropped rather than drained.
                for pull in self._pull_subs.values():
                    await pull.unsubscribe()
                self._pull_subs.clear()
                await self._nc.drain()
        except (TimeoutError, nats.errors.Error):
            pass
        finally:
            if not self._nc.is_closed:
                await self._nc.close()

    # --- core NATS -------------------------------------------------------------------------

    async def publish(self, subject: str, message: Message) -> None:
        with self._tracer.start_as_current_span(
            f"publish {subject}",
            kind=trace.SpanKind.PRODUCER,
            attributes=_messaging_attributes(subject, "publish"),
        ):
            try:
                await self._nc.publish(
                    subject, message.SerializeToString(), headers=_inject_trace({})
                )
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
                raise BusUnavailable(
                    f"cannot publish to {subject!r}: {type(exc).__name__}"
                ) from exc

    async def request(
        self,
        subject: str,
        message: Message,
        response_type: type[R],
        timeout: float = DEFAULT_REQUEST_TIMEOUT,  # noqa: ASYNC109 -- a NATS request deadline
    ) -> R:
        with self._tracer.start_as_current_span(
            f"request {subject}",
            kind=trace.SpanKind.CLIENT,
            attributes=_messaging_attributes(subject, "send"),
        ):
            try:
                reply = await self._nc.request(
                    subject,
                    message.SerializeToString(),
                    timeout=timeout,
                    headers=_inject_trace({}),
                )
            except nats.errors.NoRespondersError:
                raise BusNoResponders(f"no service is listening on {subject!r}") from None
            except TimeoutError:
                raise BusTimeout(f"no reply on {subject!r} within {timeout:g}s") from None
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.OutboundBufferLimitError,
            ) as exc:
                raise BusUnavailable(
                    f"cannot send request on {subject!r}: {type(exc).__name__}"
                ) from exc
            raise_if_error_reply(reply.headers, reply.data)
            return decode(response_type, reply.data, subject)

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        queue: str = "",
        *,
        max_concurrency: int = 1,
    ) -> BusSubscription:
        """Handle messages on `subject` (wildcards allowed), replying when the sender asked.

        With the default max_concurrency of 1 messages are handled one at a time, in order; a
        request/reply server whose requests are independent can raise it.
        """
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        slots = asyncio.Semaphore(max_concurrency)

        async def handle(msg: Msg) -> None:
            try:
                await self._serve(msg, message_type, handler)
            finally:
                slots.release()

        async def on_message(msg: Msg) -> None:
            await slots.acquire()
            if max_concurrency == 1:
                await handle(msg)
                return
            task = asyncio.create_task(handle(msg))
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)

        sub = await self._nc.subscribe(subject, queue=queue, cb=on_message)
        self._subscriptions.append(sub)
        # The subscription must be registered on the server before callers rely on it.
        await self._nc.flush()
        return _NatsSubscriptionHandle(sub, self._subscriptions)

    async def _serve(self, msg: Msg, message_type: type[M], handler: Handler[M]) -> None:
        parent = propagate.extract(msg.headers or {})
        is_request = bool(msg.reply)
        with self._tracer.start_as_current_span(
            f"{'serve' if is_request else 'process'} {msg.subject}",
            context=parent,
            kind=trace.SpanKind.SERVER if is_request else trace.SpanKind.CONSUMER,
            attributes=_messaging_attributes(msg.subject, "process"),
        ) as span:
            try:
                reply = await handler(decode(message_type, msg.data, msg.subject))
            except Exception as exc:
                reason, text = error_reply_for(exc)
                span.set_status(trace.StatusCode.ERROR, reason)
                # An answer the requester expects (not found yet, refused) is not a fault.
                expected = isinstance(exc, MedledgerError) and exc.grpc_code in _EXPECTED_CODES
                (log.debug if expected else log.warning)(
                    "nats.handler_failed", subject=msg.subject, reason=reason
                )
                if is_request:
                    await self._reply(msg.reply, text.encode(), {ERROR_REASON_HEADER: reason})
                return
            if is_request:
                body = reply.SerializeToString() if reply is not None else b""
                await self._reply(msg.reply, body, {})

    async def _reply(self, inbox: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            await self._nc.publish(inbox, body, headers=_inject_trace(headers))
        except nats.errors.Error as exc:
            # The requester will time out; nothing else can be done from here.
            log.warning("nats.reply_failed", error=type(exc).__name__)

    # --- JetStream -------------------------------------------------------------------------

    async def ensure_stream(
        self,
        name: str,
        subjects: Sequence[str],
        *,
        replicas: int | None = 1,
        max_age: float | None = None,
        storage: js_api.StorageType = js_api.StorageType.FILE,
        duplicate_window: float = 120.0,
    ) -> js_api.StreamInfo:
        """Create the stream, or bring an existing one to this configuration. Idempotent.

        ``replicas=None`` keeps an existing stream's replication (1 for a new stream), so a
        service that merely publishes never undoes what the operator configured.
        """
        config = js_api.StreamConfig(
            name=name,
            subjects=list(subjects),
            num_replicas=replicas or 1,
            max_age=max_age,
            storage=storage,
            duplicate_window=duplicate_window,
        )
        try:
            try:
                existing = await self._js.stream_info(name)
                if replicas is None and existing.config.num_replicas:
                    config.num_replicas = existing.config.num_replicas
            except nats.js.errors.NotFoundError:
                try:
                    return await self._js.add_stream(config)
                except nats.js.errors.BadRequestError:
                    # Another process created it between our lookup and add: fall through to update.
                    pass
            return await self._js.update_stream(config)
        except nats.js.errors.APIError as exc:
            raise JetStreamError(f"cannot ensure stream {name!r}: {exc.description}") from exc
        except TimeoutError as exc:
            raise BusTimeout(f"JetStream did not answer about stream {name!r}") from exc

    async def ensure_durable_consumer(
        self,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        max_deliver: int = -1,
    ) -> js_api.ConsumerInfo:
        """Create or update a durable pull consumer with explicit acks. Idempotent."""
        config = js_api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=filter_subject,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=max_deliver,
        )
        try:
            return await self._js.add_consumer(stream, config)
        except nats.js.errors.APIError as exc:
            raise JetStreamError(
                f"cannot ensure consumer {durable!r} on stream {stream!r}: {exc.description}"
            ) from exc
        except TimeoutError as exc:
            raise BusTimeout(f"JetStream did not answer about consumer {durable!r}") from exc

    async def js_publish(
        self,
        subject: str,
        message: Message,
        *,
        msg_id: str | None = None,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,  # noqa: ASYNC109 -- a NATS request deadline
    ) -> js_api.PubAck:
        """Persist a message; with msg_id, a repeat within the duplicate window is dropped."""
        with self._tracer.start_as_current_span(
            f"publish {subject}",
            kind=trace.SpanKind.PRODUCER,
            attributes=_messaging_attributes(subject, "publish"),
        ) as span:
            headers = _inject_trace({})
            if msg_id is not None:
                headers[MSG_ID_HEADER] = msg_id
            try:
                ack = await self._js.publish(
                    subject, message.SerializeToString(), timeout=timeout, headers=headers
                )
            except nats.js.errors.NoStreamResponseError:
                raise JetStreamError(f"no stream stores subject {subject!r}") from None
            except nats.js.errors.APIError as exc:
                raise JetStreamError(f"publish to {subject!r} refused: {exc.description}") from exc
            except TimeoutError:
                raise BusTimeout(f"JetStream did not acknowledge publish to {subject!r}") from None
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
            ) as exc:
                raise BusUnavailable(
                    f"cannot publish to {subject!r}: {type(exc).__name__}"
                ) from exc
            span.set_attribute("messaging.nats.stream_sequence", ack.seq)
            return ack

    async def fetch(
        self,
        stream: str,
        durable: str,
        message_type: type[M],
        *,
        batch: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 -- the pull request's expiry
    ) -> list[Delivery[M]]:
        """Pull up to `batch` messages from a durable consumer; empty if none came in time.

        Each delivery must be settled through its AckHandle; its `context` continues the
        producer's trace for whatever processing follows.
        """
        key = (stream, durable)
        sub = self._pull_subs.get(key)
        if sub is None:
            sub = await self._js.pull_subscribe_bind(durable=durable, stream=stream)
            self._pull_subs[key] = sub
        try:
            msgs = await sub.fetch(batch=batch, timeout=timeout)
        except TimeoutError:
            return []
        except nats.js.errors.ServiceUnavailableError:
            # In a cluster a consumer has no leader for a moment after creation or a node loss.
            raise BusUnavailable(
                f"consumer {stream!r}/{durable!r} is not available right now; retry"
            ) from None
        except nats.js.errors.APIError as exc:
            raise JetStreamError(
                f"cannot fetch from {stream!r}/{durable!r}: {exc.description}"
            ) from exc
        deliveries: list[Delivery[M]] = []
        for msg in msgs:
            parent = propagate.extract(msg.headers or {})
            span = self._tracer.start_span(
                f"receive {msg.subject}",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes=_messaging_attributes(msg.subject, "receive"),
            )
            span.end()
            context = trace.set_span_in_context(span, parent)
            try:
                message = decode(message_type, msg.data, msg.subject)
            except PayloadError:
                # A poison message would otherwise be redelivered forever.
                log.error("nats.poison_message", subject=msg.subject, stream=stream)
                await msg.term()
                continue
            deliveries.append(Delivery(message, AckHandle(msg, context)))
        return deliveries
