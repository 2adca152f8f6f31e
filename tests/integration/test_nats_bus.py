"""NatsBus against real nats-server processes, and the in-memory bus against the same contract."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medledger.core.embedded_nats import EmbeddedNats
from medledger.core.nats_bus import (
    ERROR_REASON_HEADER,
    BusNoResponders,
    BusTimeout,
    BusUnavailable,
    MessageBus,
    NatsBus,
    RemoteError,
)
from medledger.testing.memory_bus import InMemoryBus, subject_matches
from medledger.testing.processes import free_port

pytestmark = pytest.mark.integration


class ConsentDeniedError(Exception):
    reason = "CONSENT_DENIED"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture(params=["nats", "memory"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[MessageBus]:
    """The same contract tests run over a real NATS connection and the in-memory bus."""
    if request.param == "memory":
        memory = InMemoryBus()
        yield memory
        await memory.close()
        return
    url: str = request.getfixturevalue("nats_url")
    nats_bus = await NatsBus.connect(url, name="contract-test")
    yield nats_bus
    await nats_bus.close()


# --- contract: both buses ------------------------------------------------------------------


async def test_publish_reaches_wildcard_subscriber_with_protobuf_payload(bus: MessageBus) -> None:
    prefix = unique("events.")
    received: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def on_event(message: Int64Value) -> None:
        await received.put(("event", message.value))

    await bus.subscribe(f"{prefix}.*", Int64Value, on_event)
    await bus.publish(f"{prefix}.created", Int64Value(value=42))

    assert await asyncio.wait_for(received.get(), 5) == ("event", 42)


async def test_request_reply_round_trips_protobuf(bus: MessageBus) -> None:
    subject = unique("echo.")

    async def shout(message: StringValue) -> StringValue:
        return StringValue(value=message.value.upper())

    await bus.subscribe(subject, StringValue, shout, queue="echo")
    reply = await bus.request(subject, StringValue(value="consent"), StringValue, timeout=5)

    assert reply == StringValue(value="CONSENT")


async def test_queue_group_delivers_each_request_to_one_member(bus: MessageBus) -> None:
    subject = unique("work.")
    calls: list[str] = []

    def member(name: str) -> Callable[[StringValue], Awaitable[StringValue]]:
        async def handle(message: StringValue) -> StringValue:
            calls.append(name)
            return StringValue(value=name)

        return handle

    await bus.subscribe(subject, StringValue, member("a"), queue="workers")
    await bus.subscribe(subject, StringValue, member("b"), queue="workers")
    for _ in range(6):
        await bus.request(subject, StringValue(value="x"), StringValue, timeout=5)

    assert len(calls) == 6


async def test_handler_error_reaches_requester_with_its_reason(bus: MessageBus) -> None:
    subject = unique("consent.check.")

    async def deny(message: StringValue) -> StringValue:
        raise ConsentDeniedError(f"no consent for {message.value}")

    await bus.subscribe(subject, StringValue, deny)
    with pytest.raises(RemoteError) as caught:
        await bus.request(subject, StringValue(value="purpose TREATMENT"), StringValue, timeout=5)

    assert caught.value.reason == "CONSENT_DENIED"
    assert caught.value.message == "no consent for purpose TREATMENT"


async def test_unexpected_handler_error_is_reported_without_its_text(bus: MessageBus) -> None:
    subject = unique("crash.")

    async def crash(message: StringValue) -> StringValue:
        raise RuntimeError(f"patient John Doe: {message.value}")

    await bus.subscribe(subject, StringValue, crash)
    with pytest.raises(RemoteError) as caught:
        await bus.request(subject, StringValue(value="MRN 1234"), StringValue, timeout=5)

    assert caught.value.reason == "INTERNAL"
    assert "John" not in str(caught.value)
    assert "1234" not in str(caught.value)


async def test_request_to_nobody_raises_no_responders(bus: MessageBus) -> None:
    subject = unique("nobody.")
    with pytest.raises(BusNoResponders, match=subject):
        await bus.request(subject, StringValue(value="?"), StringValue, timeout=2)


async def test_slow_handler_makes_request_raise_timeout_naming_subject(bus: MessageBus) -> None:
    subject = unique("slow.")

    async def slow(message: StringValue) -> StringValue:
        await asyncio.sleep(0.6)
        return message

    await bus.subscribe(subject, StringValue, slow)
    with pytest.raises(BusTimeout, match=subject) as caught:
        await bus.request(subject, StringValue(value="?"), StringValue, timeout=0.2)
    assert caught.value.reason == "NATS_TIMEOUT"


async def test_unsubscribe_stops_delivery(bus: MessageBus) -> None:
    subject = unique("gone.")

    async def echo(message: StringValue) -> StringValue:
        return message

    subscription = await bus.subscribe(subject, StringValue, echo)
    await bus.request(subject, StringValue(value="x"), StringValue, timeout=5)
    await subscription.unsubscribe()
    with pytest.raises((BusNoResponders, BusTimeout)):
        await bus.request(subject, StringValue(value="x"), StringValue, timeout=0.5)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("*.b", "a.c", False),
        ("a.b", "a.b.c", False),
    ],
)
def test_memory_bus_subject_matching(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


# --- NATS only -----------------------------------------------------------------------------


async def test_bad_payload_is_answered_with_error_not_timeout(nats_bus: NatsBus) -> None:
    subject = unique("typed.")

    async def echo(message: StringValue) -> StringValue:
        return message

    await nats_bus.subscribe(subject, StringValue, echo)
    reply = await nats_bus.client.request(subject, b"\xff\xff\xff", timeout=5)

    assert reply.headers is not None
    assert reply.headers[ERROR_REASON_HEADER] == "BAD_PAYLOAD"


async def test_concurrent_handlers_overlap_and_close_waits_for_their_replies(
    nats_url: str,
) -> None:
    server = await NatsBus.connect(nats_url, name="concurrent-server")
    client = await NatsBus.connect(nats_url, name="concurrent-client")
    subject = unique("consent.check.")
    running: list[int] = []
    peak = 0

    async def check(message: Int64Value) -> Int64Value:
        nonlocal peak
        running.append(message.value)
        peak = max(peak, len(running))
        await asyncio.sleep(0.3)
        running.remove(message.value)
        return Int64Value(value=message.value * 10)

    await server.subscribe(subject, Int64Value, check, max_concurrency=4)
    replies = [
        asyncio.create_task(client.request(subject, Int64Value(value=i), Int64Value, timeout=5))
        for i in range(4)
    ]
    await eventually(lambda: peak == 4, within=5)
    # Closing the server now must still let the four in-flight requests be answered.
    await server.close()

    assert sorted(r.value for r in await asyncio.gather(*replies)) == [0, 10, 20, 30]
    await client.close()


async def test_connect_to_missing_server_fails_fast_naming_url_without_credentials() -> None:
    port = free_port()
    url = f"nats://alice:s3cret-pw@127.0.0.1:{port}"

    with pytest.raises(BusUnavailable) as caught:
        await asyncio.wait_for(NatsBus.connect(url, name="nobody-home"), 15)

    assert caught.value.reason == "NATS_UNAVAILABLE"
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    assert "alice" not in str(caught.value)


async def test_bus_reconnects_and_resubscribes_after_server_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(work_dir=tmp_path / "nats")
    await asyncio.to_thread(server.start)
    try:
        bus = await NatsBus.connect(server.url, name="reconnector", reconnect_wait=0.05)

        async def echo(message: StringValue) -> StringValue:
            return message

        await bus.subscribe("ping", StringValue, echo)
        await asyncio.to_thread(server.kill)
        await eventually(lambda: not bus.is_connected)

        await asyncio.to_thread(server.start)
        await eventually(lambda: bus.is_connected)
        reply = await bus.request("ping", StringValue(value="back"), StringValue, timeout=5)

        assert reply.value == "back"
        await bus.close()
    finally:
        await asyncio.to_thread(server.stop)


# --- JetStream -----------------------------------------------------------------------------


async def test_ensure_stream_is_idempotent_and_updates_config(nats_bus: NatsBus) -> None:
    name = unique("AUDIT")
    first = await nats_bus.ensure_stream(name, [f"{name}.>"], max_age=3600)
    second = await nats_bus.ensure_stream(name, [f"{name}.>"], max_age=3600)
    updated = await nats_bus.ensure_stream(name, [f"{name}.>"], max_age=7200)

    assert first.config.name == second.config.name == name
    assert first.state.messages == second.state.messages == 0
    assert updated.config.max_age == 7200
    names = [info.config.name for info in await nats_bus.client.jetstream().streams_info()]
    assert names.count(name) == 1


async def test_js_publish_with_same_msg_id_is_stored_once(nats_bus: NatsBus) -> None:
    name = unique("DEDUP")
    await nats_bus.ensure_stream(name, [f"{name}.events"])
    event_id = str(uuid.uuid4())

    first = await nats_bus.js_publish(f"{name}.events", StringValue(value="e1"), msg_id=event_id)
    again = await nats_bus.js_publish(f"{name}.events", StringValue(value="e1"), msg_id=event_id)
    other = await nats_bus.js_publish(f"{name}.events", StringValue(value="e2"), msg_id="other")

    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert other.seq == first.seq + 1
    info = await nats_bus.client.jetstream().stream_info(name)
    assert info.state.messages == 2


async def test_unacked_message_is_redelivered_after_ack_wait(nats_bus: NatsBus) -> None:
    name = unique("WORK")
    await nats_bus.ensure_stream(name, [f"{name}.>"])
    await nats_bus.ensure_durable_consumer(
        name, "auditor", filter_subject=f"{name}.>", ack_wait=1.0, max_ack_pending=10
    )
    await nats_bus.js_publish(f"{name}.access", StringValue(value="read"), msg_id="evt-1")

    [(message, handle)] = await nats_bus.fetch(name, "auditor", StringValue, timeout=2)
    assert message.value == "read"
    assert handle.num_delivered == 1
    assert handle.msg_id == "evt-1"
    # Not acked: the server hands it out again once ack_wait has passed.
    [(again, handle2)] = await nats_bus.fetch(name, "auditor", StringValue, timeout=3)
    assert again.value == "read"
    assert handle2.num_delivered == 2
    assert handle2.stream_sequence == handle.stream_sequence
    await handle2.ack()

    assert await nats_bus.fetch(name, "auditor", StringValue, batch=5, timeout=1.5) == []


async def test_durable_consumer_resumes_where_it_left_off_after_reconnect(
    nats_bus: NatsBus, nats_url: str
) -> None:
    name = unique("RESUME")
    await nats_bus.ensure_stream(name, [f"{name}.>"])
    await nats_bus.ensure_durable_consumer(name, "reader", ack_wait=30)
    for i in range(3):
        await nats_bus.js_publish(f"{name}.e", Int64Value(value=i))
    [(first, handle)] = await nats_bus.fetch(name, "reader", Int64Value, batch=1, timeout=2)
    await handle.ack()

    other = await NatsBus.connect(nats_url, name="second-reader")
    try:
        await other.ensure_durable_consumer(name, "reader", ack_wait=30)
        rest = await other.fetch(name, "reader", Int64Value, batch=10, timeout=1)
    finally:
        await other.close()

    assert first.value == 0
    assert [m.value for m, _ in rest] == [1, 2]


# --- tracing -------------------------------------------------------------------------------


def _tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _span(exporter: InMemorySpanExporter, name: str) -> trace.Span | object:
    matches = [s for s in exporter.get_finished_spans() if s.name == name]
    assert matches, f"no span {name!r} in {[s.name for s in exporter.get_finished_spans()]}"
    return matches[0]


async def test_trace_context_crosses_request_reply_and_jetstream(nats_url: str) -> None:
    provider, exporter = _tracing()
    producer = await NatsBus.connect(nats_url, name="producer", tracer_provider=provider)
    consumer = await NatsBus.connect(nats_url, name="consumer", tracer_provider=provider)
    subject = unique("traced.")
    stream = unique("TRACED")
    try:

        async def echo(message: StringValue) -> StringValue:
            return message

        await consumer.subscribe(subject, StringValue, echo)
        await producer.ensure_stream(stream, [f"{stream}.>"])
        await consumer.ensure_durable_consumer(stream, "tracer")

        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("handle upload") as root:
            await producer.request(subject, StringValue(value="hi"), StringValue, timeout=5)
            await producer.js_publish(f"{stream}.audit", StringValue(value="event"))
        trace_id = root.get_span_context().trace_id

        [(_, handle)] = await consumer.fetch(stream, "tracer", StringValue, timeout=2)
    finally:
        await producer.close()
        await consumer.close()

    spans = {s.name: s for s in exporter.get_finished_spans()}
    serve = spans[f"serve {subject}"]
    receive = spans[f"receive {stream}.audit"]
    publish = spans[f"publish {stream}.audit"]
    request = spans[f"request {subject}"]
    assert serve.context is not None and receive.context is not None
    assert serve.context.trace_id == trace_id
    assert serve.kind is trace.SpanKind.SERVER
    assert serve.parent is not None and request.context is not None
    assert serve.parent.span_id == request.context.span_id
    assert receive.context.trace_id == trace_id
    assert receive.kind is trace.SpanKind.CONSUMER
    assert publish.kind is trace.SpanKind.PRODUCER
    assert trace.get_current_span(handle.context).get_span_context().trace_id == trace_id


async def test_memory_bus_publish_is_recorded_for_assertions() -> None:
    bus = InMemoryBus()
    await bus.publish("audit.events", StringValue(value="x"))
    published: list[tuple[str, Message]] = bus.published
    assert published == [("audit.events", StringValue(value="x"))]
    await bus.close()
    with pytest.raises(BusUnavailable):
        await bus.publish("audit.events", StringValue(value="y"))
