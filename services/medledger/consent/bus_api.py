"""The consent service on NATS: ``consent.check`` request/reply for the other services, the
audit events of every decision (JetStream, never lost) and break-glass announcements."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, NamedTuple

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from opentelemetry import propagate, trace

from medledger._gen.common.v1 import audit_event_pb2
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger.consent.service import ConsentService, DecisionRecord
from medledger.core.audit_events import AuditPublisher, current_trace_id
from medledger.core.logging import get_logger
from medledger.core.nats_bus import (
    ERROR_REASON_HEADER,
    INTERNAL_REASON,
    BusError,
    NatsBus,
    PayloadError,
    decode,
    error_reply_for,
)

CHECK_SUBJECT = "consent.check"
QUEUE_GROUP = "consent"
TRACEPARENT = "traceparent"
_log = get_logger("medledger.consent.bus")


def stamp(event: audit_event_pb2.AuditEvent) -> None:
    """What must be taken when the event happens: its time and the trace it belongs to.
    The rest (event id, service, organisation) is filled in off the decision path."""
    event.time.FromNanoseconds(time.time_ns())
    trace_id = current_trace_id()
    if trace_id:
        event.trace_id = trace_id


class StampedDecision(NamedTuple):
    """A decision with the time and trace taken when it was made."""

    decision: DecisionRecord
    time_ns: int
    trace_id: str

    @classmethod
    def now(cls, decision: DecisionRecord) -> StampedDecision:
        return cls(decision, time.time_ns(), current_trace_id())

    def event(self) -> audit_event_pb2.AuditEvent:
        event = self.decision.event()
        event.time.FromNanoseconds(self.time_ns)
        event.trace_id = self.trace_id
        return event


def break_glass_subject(organisation: str) -> str:
    return f"medledger.consent.{organisation.removeprefix('organisations/')}.break_glass"


class AuditingSink:
    """DecisionSink that publishes audit events from a queue, so a decision never waits for
    JetStream; publishes are retried until acknowledged (the message id deduplicates)."""

    def __init__(
        self, bus: NatsBus, organisation: str, *, workers: int = 16, capacity: int = 100_000
    ) -> None:
        self._bus = bus
        self._publisher = AuditPublisher(bus, organisation, "consent")
        self._organisation = organisation
        self._queue: asyncio.Queue[audit_event_pb2.AuditEvent | StampedDecision] = asyncio.Queue(
            capacity
        )
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0

    def decided(self, decision: DecisionRecord) -> None:
        self._enqueue(StampedDecision.now(decision))

    def record(self, event: audit_event_pb2.AuditEvent) -> None:
        stamp(event)
        self._enqueue(event)

    def _enqueue(self, item: audit_event_pb2.AuditEvent | StampedDecision) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Refusing the decision would be worse than losing the event; say so loudly.
            self.dropped += 1
            _log.error("audit queue full, event dropped", dropped=self.dropped)

    async def announce_break_glass(self, session: pb.BreakGlassSession) -> None:
        announced = pb.BreakGlassSession()
        announced.CopyFrom(session)
        announced.justification = ""  # the justification stays in the audit log
        try:
            await self._bus.publish(break_glass_subject(self._organisation), announced)
        except BusError as exc:
            _log.warning("break-glass announcement failed", reason=exc.reason)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]

    async def drain(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                event = item.event() if isinstance(item, StampedDecision) else item
                # The id is fixed before the first attempt, so retries deduplicate.
                self._publisher.complete(event)
                await self._publish(event)
            finally:
                self._queue.task_done()

    async def _publish(self, event: audit_event_pb2.AuditEvent) -> None:
        delay = 0.05
        while True:
            try:
                await self._publisher.publish(event)
                return
            except BusError as exc:
                _log.warning("audit publish failed, retrying", reason=exc.reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


class ConsentBusApi:
    """Serves ``consent.check`` in the ``consent`` queue group.

    A question answerable from memory (the common case) is decided and answered inline, with
    no task, span or header work per message; one that must read the store runs as a task,
    at most ``max_concurrency`` at once (beyond that the subscription waits, so the backlog
    stays on the server). A request that carries W3C trace context continues its trace.
    """

    def __init__(
        self,
        service: ConsentService,
        bus: NatsBus,
        *,
        max_concurrency: int = 64,
        subject: str = CHECK_SUBJECT,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._service = service
        self._bus = bus
        self._subject = subject
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscription: NatsSubscription | None = None
        self._tracer = trace.get_tracer(__name__)

    async def start(self) -> None:
        nc = self._bus.client
        self._subscription = await nc.subscribe(
            self._subject, queue=QUEUE_GROUP, cb=self._on_message
        )
        # Registered on the server before anyone relies on it.
        await nc.flush()

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop taking questions and let those in progress be answered."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None and not self._bus.client.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _on_message(self, msg: Msg) -> None:
        try:
            question = decode(pb.CheckAccessRequest, msg.data, msg.subject)
        except PayloadError as exc:
            await self._fail(msg, exc)
            return
        if self._service.index.remote and not self._service.answerable_from_memory(question):
            await self._spawn(self._answer(msg, question))
            return
        with self._span(msg):
            try:
                response = self._service.check_access(question)
            except Exception as exc:
                await self._fail(msg, exc)
                return
        await self._reply(msg, response)

    async def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _answer(self, msg: Msg, question: pb.CheckAccessRequest) -> None:
        with self._span(msg):
            try:
                response = await self._service.check(question)
            except Exception as exc:
                await self._fail(msg, exc)
                return
        await self._reply(msg, response)

    def _span(self, msg: Msg) -> contextlib.AbstractContextManager[object]:
        """A server span continuing the asker's trace, when the request carries one; an
        untraced request costs no span."""
        if not msg.headers or TRACEPARENT not in msg.headers:
            return contextlib.nullcontext()
        return self._tracer.start_as_current_span(
            f"serve {msg.subject}",
            context=propagate.extract(msg.headers),
            kind=trace.SpanKind.SERVER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.operation.type": "process",
            },
        )

    async def _reply(self, msg: Msg, response: pb.CheckAccessResponse) -> None:
        if not msg.reply:
            return
        try:
            await self._bus.client.publish(msg.reply, response.SerializeToString())
        except nats.errors.Error as exc:
            # The asker times out; nothing else can be done from here.
            _log.warning("consent.check reply failed", error=type(exc).__name__)

    async def _fail(self, msg: Msg, exc: Exception) -> None:
        reason, text = error_reply_for(exc)
        if reason == INTERNAL_REASON:
            _log.error("consent.check failed", error=type(exc).__name__)
        if not msg.reply:
            return
        try:
            await self._bus.client.publish(
                msg.reply, text.encode(), headers={ERROR_REASON_HEADER: reason}
            )
        except nats.errors.Error as error:
            _log.warning("consent.check reply failed", error=type(error).__name__)
