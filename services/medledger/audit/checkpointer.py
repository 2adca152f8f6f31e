"""The periodic work of the log: a checkpoint every interval when there is something new, each
anchored on the ledger at once, and a slower sweep that retries anchors that failed."""

from __future__ import annotations

import asyncio
import contextlib

from medledger.audit.model import CheckpointRow
from medledger.audit.service import AuditLog, Ledger
from medledger.core.logging import get_logger

_log = get_logger("medledger.audit.checkpoints")


class CheckpointScheduler:
    def __init__(
        self,
        log: AuditLog,
        ledger: Ledger | None,
        *,
        interval: float = 1.0,
        anchor_timeout: float = 10.0,
        retry_interval: float = 5.0,
    ) -> None:
        self._log = log
        self._ledger = ledger
        self._interval = interval
        self._anchor_timeout = anchor_timeout
        self._retry_interval = retry_interval
        self._in_flight: dict[int, asyncio.Task[None]] = {}

    async def tick(self) -> CheckpointRow | None:
        """One round: checkpoint if anything is new, and start anchoring it."""
        chain_id = self._ledger.chain_id if self._ledger is not None else None
        row = await self._log.checkpoint(chain_id)
        if row is not None and self._ledger is not None:
            self._start_anchor(row)
        return row

    def _start_anchor(self, row: CheckpointRow) -> None:
        if self._ledger is None or row.tree_size in self._in_flight:
            return
        task = asyncio.create_task(self._anchor(row))
        self._in_flight[row.tree_size] = task
        task.add_done_callback(lambda _: self._in_flight.pop(row.tree_size, None))

    async def _anchor(self, row: CheckpointRow) -> None:
        if self._ledger is None:
            return
        try:
            await self._log.anchor(self._ledger, row, self._anchor_timeout)
        except Exception as exc:
            # The sweep retries it; the checkpoint stays signed and stored meanwhile.
            _log.warning(
                "audit.anchor_failed",
                tree_size=row.tree_size,
                reason=getattr(exc, "reason", type(exc).__name__),
            )

    async def run(self, stopping: asyncio.Event) -> None:
        last_sweep = 0.0
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)
            if stopping.is_set():
                break
            try:
                await self.tick()
                if self._ledger is not None and loop.time() - last_sweep >= self._retry_interval:
                    last_sweep = loop.time()
                    for row in await self._log.store.unanchored_checkpoints():
                        self._start_anchor(row)
            except Exception as exc:
                _log.error(
                    "audit.checkpoint_failed",
                    reason=getattr(exc, "reason", type(exc).__name__),
                )

    async def stop(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
