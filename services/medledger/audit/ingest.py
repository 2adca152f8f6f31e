"""Consuming the AUDIT JetStream stream into the log, exactly once.

The store, not the consumer, is the record of progress: each batch is appended together with
the highest stream sequence it contains, in one transaction. At start the durable consumer is
re-created to deliver from just after that sequence, so what a killed process had fetched but
not stored is delivered again, and what it had stored is skipped (or, if redelivered anyway,
dropped by the store's unique event id). A batch is acknowledged (ack-all, one round trip)
only after its append is durable.

Batches are pulled with raw JetStream pull requests because the client library's ``fetch``
handles each message through a queue and tops out far below what the store can take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api

from medledger.audit.service import AuditLog
from medledger.core.audit_events import AUDIT_STREAM, audit_subject, ensure_audit_stream
from medledger.core.logging import get_logger
from medledger.core.nats_bus import NatsBus

_log = get_logger("medledger.audit.ingest")

_STATUS_HEADER = "Status"
_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class EventIngestor:
    """Moves events from `medledger.audit.<org>.events` into `log`."""

    def __init__(
        self,
        bus: NatsBus,
        log: AuditLog,
        organisation: str,
        *,
        batch: int = 2000,
        pull_expiry: float = 0.5,
        replicas: int = 1,
    ) -> None:
        self._bus = bus
        self._nc: NatsClient = bus.client
        self._log = log
        self._subject = audit_subject(organisation)
        self._durable = f"audit-{organisation.removeprefix('organisations/')}"
        self._batch = batch
        self._expiry = pull_expiry
        self._replicas = replicas
        self._inbox = ""
        self._sub: Subscription | None = None
        self._arrived: list[Msg] = []
        self._status: asyncio.Queue[str] = asyncio.Queue()
        self._wake = asyncio.Event()
        self.appended = 0
        self.duplicates = 0
        self.rejected = 0

    @property
    def durable(self) -> str:
        return self._durable

    async def start(self) -> None:
        """Ensure the stream; point the durable consumer just after what the store holds."""
        await ensure_audit_stream(self._bus, replicas=self._replicas)
        position = await self._log.stream_position()
        js = self._nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(AUDIT_STREAM, self._durable)
        config = js_api.ConsumerConfig(
            durable_name=self._durable,
            filter_subject=self._subject,
            ack_policy=js_api.AckPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=max(4 * self._batch, 10_000),
            max_waiting=16,
            num_replicas=self._replicas,
        )
        if position:
            config.deliver_policy = js_api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = position + 1
        else:
            config.deliver_policy = js_api.DeliverPolicy.ALL
        await js.add_consumer(AUDIT_STREAM, config)
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox,
            cb=self._on_message,
            pending_msgs_limit=8 * self._batch,
            pending_bytes_limit=256 * 1024 * 1024,
        )
        _log.info("audit.ingest_started", subject=self._subject, resume_after=position)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if not msg.data and headers and _STATUS_HEADER in headers:
            self._status.put_nowait(headers[_STATUS_HEADER])
        else:
            self._arrived.append(msg)
        self._wake.set()

    async def pull(self) -> list[Msg]:
        """One pull request: up to `batch` messages, fewer if the request expires first."""
        while not self._status.empty():
            self._status.get_nowait()
        request = {"batch": self._batch, "expires": int(self._expiry * 1e9)}
        await self._nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{AUDIT_STREAM}.{self._durable}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )
        deadline = asyncio.get_running_loop().time() + self._expiry + 2.0
        while len(self._arrived) < self._batch and self._status.empty():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        messages, self._arrived = self._arrived, []
        return messages

    async def ingest_once(self) -> int:
        """Pull one batch, append it durably, acknowledge it; returns messages handled."""
        return await self.store_batch(await self.pull())

    async def store_batch(self, messages: list[Msg]) -> int:
        """Append `messages` durably (retrying until it succeeds), then acknowledge them."""
        if not messages:
            return 0
        position = max(_stream_sequence(msg) for msg in messages)
        payloads = [msg.data for msg in messages]
        attempt = 0
        while True:
            try:
                result = await self._log.append(payloads, position)
                break
            except Exception as exc:
                # Nothing later may be stored or acked before this batch (the stored position
                # and the acks are both cumulative), so the same batch is retried until it goes in.
                _log.warning(
                    "audit.append_failed",
                    attempt=attempt,
                    error=type(exc).__name__,
                    reason=getattr(exc, "reason", ""),
                )
                await asyncio.sleep(_RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)])
                attempt += 1
        self.appended += result.appended
        self.duplicates += result.duplicates
        self.rejected += result.rejected
        if result.rejected:
            _log.error("audit.events_rejected", count=result.rejected, subject=self._subject)
        try:
            await messages[-1].ack_sync(timeout=5.0)
        except (nats.errors.Error, TimeoutError) as exc:
            # Harmless: the stored position already says these are done.
            _log.warning("audit.ack_failed", error=type(exc).__name__)
        return len(messages)

    async def run(self, stopping: asyncio.Event) -> None:
        # The next batch is pulled while this one is written: receiving is Python work on the
        # event loop, writing mostly happens in the database with the GIL released.
        prefetch: asyncio.Task[list[Msg]] | None = None
        try:
            while not stopping.is_set():
                try:
                    messages = await (prefetch or self.pull())
                    prefetch = asyncio.create_task(self.pull())
                    await self.store_batch(messages)
                except (nats.errors.Error, OSError) as exc:
                    prefetch = None
                    _log.warning("audit.ingest_bus_error", error=type(exc).__name__)
                    await asyncio.sleep(0.5)
        finally:
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
                    await prefetch


def _stream_sequence(msg: Msg) -> int:
    """The stream sequence from a JetStream delivery's reply subject (cheaper than metadata)."""
    tokens = msg.reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>, or
    # the v2 form with domain and account hash after "ACK" (and a trailing token).
    return int(tokens[5] if len(tokens) == 9 else tokens[7])
