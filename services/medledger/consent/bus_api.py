"""The consent service on NATS: ``consent.check`` request/reply for the other services, the
audit events of every decision (JetStream, never lost) and break-glass announcements."""

from __future__ import annotations

import asyncio
import contextlib

from medledger._gen.common.v1 import audit_event_pb2
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger.consent.service import ConsentService
from medledger.core.audit_events import AuditPublisher
from medledger.core.logging import get_logger
from medledger.core.nats_bus import BusError, BusSubscription, NatsBus

CHECK_SUBJECT = "consent.check"
QUEUE_GROUP = "consent"
_log = get_logger("medledger.consent.bus")


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
        self._queue: asyncio.Queue[audit_event_pb2.AuditEvent] = asyncio.Queue(capacity)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0

    def record(self, event: audit_event_pb2.AuditEvent) -> None:
        self._publisher.complete(event)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Refusing the decision would be worse than losing the event; say so loudly.
            self.dropped += 1
            _log.error("audit queue full, event dropped", event_id=event.event_id)

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
            event = await self._queue.get()
            delay = 0.05
            try:
                while True:
                    try:
                        await self._publisher.publish(event)
                        break
                    except BusError as exc:
                        _log.warning("audit publish failed, retrying", reason=exc.reason)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
            finally:
                self._queue.task_done()


class ConsentBusApi:
    """Serves ``consent.check`` in the ``consent`` queue group."""

    def __init__(self, service: ConsentService, bus: NatsBus) -> None:
        self._service = service
        self._bus = bus
        self._subscription: BusSubscription | None = None

    async def start(self) -> None:
        async def check(request: pb.CheckAccessRequest) -> pb.CheckAccessResponse:
            return self._service.check_access(request)

        self._subscription = await self._bus.subscribe(
            CHECK_SUBJECT, pb.CheckAccessRequest, check, queue=QUEUE_GROUP
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
