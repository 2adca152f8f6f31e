"""Read-ahead between the stages of a transfer, so receiving, sealing or opening, and sending
overlap instead of taking turns; `depth` bounds how many pieces wait, and so the memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _End:
    error: Exception | None


@dataclass(frozen=True, slots=True)
class _Item(Generic[T]):
    value: T


async def read_ahead(source: AsyncIterator[T], depth: int) -> AsyncGenerator[T, None]:
    """The items of `source`, pulled by a task running up to `depth` items ahead.

    An error of the source is raised to the consumer in order, after the items before it;
    closing or cancelling the consumer cancels the task and closes the source.
    """
    queue: asyncio.Queue[_Item[T] | _End] = asyncio.Queue(max(1, depth))

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(_Item(item))
        except Exception as exc:
            await queue.put(_End(exc))
        else:
            await queue.put(_End(None))

    task = asyncio.create_task(pump())
    try:
        while True:
            entry = await queue.get()
            if isinstance(entry, _End):
                if entry.error is not None:
                    raise entry.error
                return
            yield entry.value
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()
