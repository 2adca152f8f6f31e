"""The consent service's block follower: it restarts after a failure and stops at once when
cancelled, even while pausing before a restart (shutdown waits for it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.consent.index import ConsentIndex, open_database
from medledger.consent.main import _follow
from medledger.consent.policy import DecisionEngine
from medledger.consent.service import ConsentService
from tests.unit.consent.test_index import Chain, Sink


class FailingLedger:
    """Serves the blocks it has, then fails as a ledger behind a closed bus does."""

    def __init__(self, blocks: list[ledger_pb.Block]) -> None:
        self._blocks = blocks
        self.attempts = 0

    async def blocks(self, start_height: int = 0) -> AsyncIterator[ledger_pb.Block]:
        self.attempts += 1
        for block in self._blocks[start_height:]:
            yield block
        raise ConnectionError("bus closed")


async def test_the_follower_restarts_after_failures_and_stops_when_cancelled() -> None:
    chain = Chain()
    index = ConsentIndex(open_database("sqlite:///:memory:"), chain.validators)
    service = ConsentService(index, DecisionEngine(), Sink())
    ledger = FailingLedger(chain.genesis_blocks())
    follower = asyncio.create_task(_follow(service, ledger, retry_seconds=0.01))
    try:
        async with asyncio.timeout(5):
            while ledger.attempts < 3:  # noqa: ASYNC110 -- the fake ledger has no event
                await asyncio.sleep(0.005)
        assert index.height == 1  # both blocks applied once, in order, across restarts
    finally:
        follower.cancel()
        done, _ = await asyncio.wait([follower], timeout=1)
        index.close()
    assert follower in done and follower.cancelled()


async def test_a_cancel_during_the_pause_before_a_restart_is_not_swallowed() -> None:
    index = ConsentIndex(open_database("sqlite:///:memory:"))
    service = ConsentService(index, DecisionEngine(), Sink())
    ledger = FailingLedger([])
    follower = asyncio.create_task(_follow(service, ledger, retry_seconds=60))
    while ledger.attempts < 1:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)  # now pausing before the restart
    follower.cancel()
    done, _ = await asyncio.wait([follower], timeout=1)
    index.close()
    assert follower in done and follower.cancelled()
