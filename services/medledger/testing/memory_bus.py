"""An in-memory MessageBus for unit tests of pure logic: request/reply and publish/subscribe with
NATS subject and queue-group semantics, payloads serialised as on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from medledger.core.nats_bus import (
    DEFAULT_REQUEST_TIMEOUT,
    BusNoResponders,
    BusSubscription,
    BusTimeout,
    BusUnavailable,
    Handler,
    M,
    R,
    RemoteError,
    decode,
    error_reply_for,
)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a trailing `>` is one or more."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for i, part in enumerate(pattern_tokens):
        if part == ">":
            return len(subject_tokens) > i
        if i >= len(subject_tokens) or (part not in ("*", subject_tokens[i])):
            return False
    return len(pattern_tokens) == len(subject_tokens)


@dataclass(eq=False)
class _Listener:
    bus: InMemoryBus
    subject: str
    message_type: type[Any]
    handler: Handler[Any]
    queue: str

    async def unsubscribe(self) -> None:
        self.bus._listeners = [x for x in self.bus._listeners if x is not self]


@dataclass
class InMemoryBus:
    """A bus that never leaves the process. `published` records every publish for assertions."""

    published: list[tuple[str, Message]] = field(default_factory=list)
    _listeners: list[_Listener] = field(default_factory=list)
    _closed: bool = False
    _round_robin: itertools.count[int] = field(default_factory=itertools.count)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def _targets(self, subject: str) -> list[_Listener]:
        """One listener per queue group, every plain listener, as NATS delivers."""
        plain: list[_Listener] = []
        groups: dict[str, list[_Listener]] = defaultdict(list)
        for listener in self._listeners:
            if subject_matches(listener.subject, subject):
                if listener.queue:
                    groups[listener.queue].append(listener)
                else:
                    plain.append(listener)
        turn = next(self._round_robin)
        return plain + [members[turn % len(members)] for members in groups.values()]

    def _check_open(self) -> None:
        if self._closed:
            raise BusUnavailable("the in-memory bus is closed")

    async def publish(self, subject: str, message: Message) -> None:
        self._check_open()
        self.published.append((subject, message))
        data = message.SerializeToString()
        for listener in self._targets(subject):
            task = asyncio.create_task(self._deliver(listener, subject, data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, listener: _Listener, subject: str, data: bytes) -> None:
        # As on NATS, a failing subscriber does not affect the publisher.
        with contextlib.suppress(Exception):
            await listener.handler(decode(listener.message_type, data, subject))

    async def request(
        self,
        subject: str,
        message: Message,
        response_type: type[R],
        timeout: float = DEFAULT_REQUEST_TIMEOUT,  # noqa: ASYNC109 -- same signature as NatsBus
    ) -> R:
        self._check_open()
        targets = self._targets(subject)
        if not targets:
            raise BusNoResponders(f"no service is listening on {subject!r}")
        listener = targets[0]
        data = message.SerializeToString()
        try:
            async with asyncio.timeout(timeout):
                reply = await listener.handler(decode(listener.message_type, data, subject))
        except TimeoutError:
            raise BusTimeout(f"no reply on {subject!r} within {timeout:g}s") from None
        except Exception as exc:
            raise RemoteError(*error_reply_for(exc)) from None
        body = reply.SerializeToString() if reply is not None else b""
        return decode(response_type, body, subject)

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        queue: str = "",
    ) -> BusSubscription:
        self._check_open()
        listener = _Listener(self, subject, message_type, handler, queue)
        self._listeners.append(listener)
        return listener

    async def drain(self) -> None:
        """Wait until every published message has been handled."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        await self.drain()
        self._closed = True
        self._listeners.clear()
