"""All validators stopping at once and restarting from their stores: the chain
finalizes again (the uncommitted, certified blocks are rebuilt from kept proposals)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.testing.ledger import LocalLedger, record_tx


async def test_chain_finalizes_after_every_validator_restarts(
    nats_url: str, nats_bus: NatsBus, tmp_path: Path
) -> None:
    ledger = LocalLedger(nats_url, tmp_path, chain_id="restart-all")
    await ledger.start()
    client = ledger.client(nats_bus)
    key = SigningKey.generate()
    try:
        for round_trip in range(3):
            receipt = await client.submit_and_wait(
                record_tx(ledger.genesis.chain_id, key, 100 + round_trip), 30
            )
            # Let the chain run on a little so validators hold certified, uncommitted blocks.
            await asyncio.sleep(0.3)
            before = max(v.store.height for v in ledger.running())
            await ledger.stop()
            await ledger.start()
            after = await client.submit_and_wait(
                record_tx(ledger.genesis.chain_id, key, 200 + round_trip), 30
            )
            assert after.height > max(before, receipt.height) - 1
    finally:
        await ledger.stop()
