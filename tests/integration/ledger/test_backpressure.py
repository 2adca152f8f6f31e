"""A full mempool answers RESOURCE_EXHAUSTED (MEMPOOL_FULL) and loses nothing it
accepted: once consensus can proceed, every accepted transaction becomes final."""

from __future__ import annotations

from pathlib import Path

from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.ledgerclient import LedgerClientError
from medledger.testing.ledger import LocalLedger, record_tx


async def test_full_mempool_refuses_and_keeps_what_it_accepted(
    nats_url: str, nats_bus: NatsBus, tmp_path: Path
) -> None:
    ledger = LocalLedger(nats_url, tmp_path, chain_id="backpressure", mempool_capacity=10)
    # Only validator 0 runs: without a quorum nothing commits and the mempool fills.
    await ledger.start_validator(0)
    try:
        client = ledger.client(nats_bus)
        key = SigningKey.generate()
        accepted: list[str] = []
        refusals: list[str] = []
        for nonce in range(1, 16):
            try:
                accepted.append(await client.submit(record_tx(ledger.genesis.chain_id, key, nonce)))
            except LedgerClientError as exc:
                refusals.append(exc.reason)
        assert len(accepted) == 10
        assert refusals == ["MEMPOOL_FULL"] * 5
        for index in (1, 2, 3):
            await ledger.start_validator(index)
        for tx_id in accepted:
            receipt = await client.wait_receipt(tx_id, timeout=30)
            assert receipt.tx_id == tx_id
    finally:
        await ledger.stop()


def test_mempool_full_maps_to_resource_exhausted() -> None:
    import grpc

    from medledger.core.errors import to_rpc_status
    from medledger.ledger.node import _REJECTION_ERRORS

    error = _REJECTION_ERRORS["MEMPOOL_FULL"]("MEMPOOL_FULL", "mempool is full")
    assert to_rpc_status(error, "ledger").code == grpc.StatusCode.RESOURCE_EXHAUSTED
