"""Four in-process validators over a real nats-server: transactions become final
with verifiable receipts, and every validator stores the same chain."""

from __future__ import annotations

import asyncio

import pytest

from medledger._gen.common.v1 import transaction_pb2
from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.ledgerclient import (
    LedgerClientError,
    verify_block,
    verify_receipt,
)
from medledger.testing.ledger import LocalLedger, record_tx


async def test_transactions_become_final_with_verifiable_receipts(
    ledger_network: LocalLedger, nats_bus: NatsBus
) -> None:
    client = ledger_network.client(nats_bus)
    key = SigningKey.generate()
    txs = [record_tx(ledger_network.genesis.chain_id, key, n) for n in range(1, 21)]
    tx_ids = [await client.submit(tx) for tx in txs]
    receipts = await asyncio.gather(*(client.wait_receipt(t, timeout=20) for t in tx_ids))
    validators = ledger_network.validator_set
    for receipt, tx in zip(receipts, txs, strict=True):
        verify_receipt(receipt, validators)
        assert receipt.transaction.SerializeToString(deterministic=True) == tx
    # Resubmitting a final transaction is idempotent and says FINAL.
    assert await client.submit(txs[0]) == tx_ids[0]

    top = max(r.height for r in receipts)
    for validator in ledger_network.running():
        await validator.wait_height(top, timeout=10)
    hashes = {
        tuple(v.store.block(h).block_hash for h in range(top + 1))  # type: ignore[union-attr]
        for v in ledger_network.running()
    }
    assert len(hashes) == 1, "validators disagree on the chain"
    block = await client.block(top)
    verify_block(block, validators)


async def test_bad_transactions_are_refused_with_reasons(
    ledger_network: LocalLedger, nats_bus: NatsBus
) -> None:
    client = ledger_network.client(nats_bus)
    key = SigningKey.generate()
    good = record_tx(ledger_network.genesis.chain_id, key, 1)
    tampered = transaction_pb2.Transaction.FromString(good)
    tampered.signature = bytes(64)
    with pytest.raises(LedgerClientError) as info:
        await client.submit(tampered.SerializeToString())
    assert info.value.reason == "TX_BAD_SIGNATURE"
    with pytest.raises(LedgerClientError) as info:
        await client.submit(record_tx("another-chain", key, 2))
    assert info.value.reason == "TX_WRONG_CHAIN"


async def test_following_blocks_verifies_each(
    ledger_network: LocalLedger, nats_bus: NatsBus
) -> None:
    client = ledger_network.client(nats_bus)
    key = SigningKey.generate()
    receipt = await client.submit_and_wait(record_tx(ledger_network.genesis.chain_id, key, 7), 20)
    seen = []
    async for block in client.blocks(0):
        seen.append(block.header.height)
        if block.header.height >= receipt.height:
            break
    assert seen == list(range(receipt.height + 1))
