"""Four validators as separate processes on a 3-node NATS cluster under a steady
transaction load: kill -9 a validator, then a NATS node, restart both. The chain
keeps finalizing, the restarted validator catches up, every acknowledged
transaction is final exactly once, and all validators agree on every block."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

from medledger.core.embedded_nats import EmbeddedNatsCluster
from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.ledger import codec
from medledger.ledger.genesis import create_consortium
from medledger.ledger.store import BlockStore
from medledger.ledgerclient import LedgerClient, LedgerClientError
from medledger.ledgerclient.transactions import parse_envelope, transaction_id
from medledger.testing.ledger import FAST_PARAMETERS, ValidatorProcess, record_tx

ORGS = ["org-a", "org-b", "org-c", "org-d"]


async def _load(
    client: LedgerClient, key: SigningKey, acked: list[str], stop: asyncio.Event
) -> None:
    nonce = 0
    while not stop.is_set():
        nonce += 1
        with contextlib.suppress(LedgerClientError):
            acked.append(await client.submit(record_tx(client.chain_id, key, nonce)))
        await asyncio.sleep(0.02)


async def test_chain_survives_validator_and_nats_node_crashes(
    nats_cluster: EmbeddedNatsCluster, tmp_path: Path
) -> None:
    genesis = create_consortium(
        tmp_path / "consortium",
        ORGS,
        "live-chain",
        int(time.time() * 1000),
        parameters=FAST_PARAMETERS,
    )
    urls = nats_cluster.urls
    validators = [
        ValidatorProcess(
            tmp_path / "consortium", org, urls[i % 3 :] + urls[: i % 3], tmp_path / org
        )
        for i, org in enumerate(ORGS)
    ]
    for v in validators:
        v.process.start()
    try:
        for v in validators:
            v.process.wait_until(v.serving, timeout=30, what=f"{v.organisation} validator")
        bus = await NatsBus.connect(urls, name="load")
        client = LedgerClient(bus, genesis.chain_id)
        key = SigningKey.generate()
        acked: list[str] = []
        stop = asyncio.Event()
        load = asyncio.create_task(_load(client, key, acked, stop))

        await asyncio.sleep(2)
        validators[3].kill()
        before_kill = len(acked)
        await asyncio.sleep(2)
        nats_cluster.node(0).kill()
        await asyncio.sleep(2)
        nats_cluster.node(0).start()
        validators[3].start()
        await asyncio.sleep(3)
        stop.set()
        await load
        assert len(acked) > before_kill + 20, "the chain stopped taking transactions"

        receipts = [await client.wait_receipt(tx_id, timeout=30) for tx_id in acked]
        top = max(r.height for r in receipts)
        await bus.close()
        # The restarted validator catches up to every acknowledged transaction.
        store3 = BlockStore(validators[3].store_path(genesis.chain_id, 3))
        deadline = time.monotonic() + 30
        while store3.height < top and time.monotonic() < deadline:  # noqa: ASYNC110 -- polls a file
            await asyncio.sleep(0.2)
        assert store3.height >= top
        store3.close()
    finally:
        for v in validators:
            v.stop()

    stores = [BlockStore(v.store_path(genesis.chain_id, i)) for i, v in enumerate(validators)]
    common = min(s.height for s in stores)
    assert common >= top
    for height in range(common + 1):
        hashes = {s.block(height).block_hash for s in stores}  # type: ignore[union-attr]
        assert len(hashes) == 1, f"validators disagree at height {height}"
    final_ids: Counter[str] = Counter()
    rules_store = stores[0]
    for height in range(1, rules_store.height + 1):
        stored = rules_store.block(height)
        assert stored is not None
        for tx in codec.decode_block(stored.block).transactions:
            final_ids[transaction_id(parse_envelope(tx).body).hex()] += 1
    assert all(final_ids[t] == 1 for t in acked), "an acknowledged tx is not final exactly once"
    assert max(final_ids.values()) == 1
