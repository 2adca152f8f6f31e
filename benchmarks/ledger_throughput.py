"""Ledger throughput and finality latency with 4 validator processes on this machine.

Starts an embedded nats-server and four `medledger serve ledger` processes, then
clients submit signed transactions as fast as they are accepted for a fixed
duration. Prints committed tx/s and finality latency p50/p99 (submission →
block final and certified, seen by a follower fetching blocks), and, measured
in the same run, this machine's Ed25519 verify rate and the ceiling it implies
(cores x verify rate / validators: every validator verifies every transaction).
The last line is one JSON object with the figures.

    .venv/bin/python benchmarks/ledger_throughput.py [--duration 20] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.core.embedded_nats import EmbeddedNats
from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.ledger import codec
from medledger.ledger.genesis import ConsensusParameters, create_consortium
from medledger.ledger.store import BlockStore
from medledger.ledgerclient import LedgerClient, LedgerClientError
from medledger.ledgerclient.transactions import parse_envelope, transaction_id
from medledger.testing.ledger import ValidatorProcess, record_tx

ORGS = ["org-a", "org-b", "org-c", "org-d"]


def ed25519_verify_rate(seconds: float = 1.0) -> float:
    """Single-core verifications per second of a typical transaction-sized message."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = os.urandom(200)
    signature = key.sign(message)
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            public.verify(signature, message)
        count += 200
    return count / (time.perf_counter() - start)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(duration: float, concurrency: int, workdir: Path) -> dict[str, float]:
    parameters = ConsensusParameters(
        round_timeout_ms=2000, max_round_timeout_ms=10_000, idle_block_interval_ms=500
    )
    genesis = create_consortium(
        workdir / "consortium", ORGS, "bench", int(time.time() * 1000), parameters=parameters
    )
    nats = EmbeddedNats(work_dir=workdir / "nats")
    nats.start()
    validators = [
        ValidatorProcess(workdir / "consortium", org, [nats.url], workdir / org) for org in ORGS
    ]
    try:
        for v in validators:
            v.process.start()
        for v in validators:
            v.process.wait_until(v.serving, timeout=60, what=f"{v.organisation} validator")
        bus = await NatsBus.connect(nats.url, name="bench")
        client = LedgerClient(bus, genesis.chain_id, request_timeout=10)

        # Sign everything up front so the client's CPU goes to submitting.
        key = SigningKey.generate()
        budget = int(duration * 6000)
        print(f"signing {budget} transactions …", flush=True)
        txs = [record_tx(genesis.chain_id, key, n) for n in range(1, budget + 1)]
        ids = [transaction_id(parse_envelope(tx).body).hex() for tx in txs]
        submitted_at: dict[str, float] = {}
        final_at: dict[str, float] = {}
        rejected = 0
        next_index = 0
        start = time.perf_counter()
        stop_at = start + duration

        async def submitter() -> None:
            nonlocal next_index, rejected
            while time.perf_counter() < stop_at and next_index < len(txs):
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                try:
                    await client.submit(txs[i])
                except LedgerClientError:
                    rejected += 1
                    await asyncio.sleep(0.01)
                    continue
                submitted_at[ids[i]] = t0

        async def follower() -> None:
            height = 1
            while time.perf_counter() < stop_at + 15:
                batch = await client.block_batch(height)
                now = time.perf_counter()
                for block in batch.blocks:
                    for tx in block.transactions:
                        final_at[transaction_id(tx.body).hex()] = now
                    height += 1
                if not batch.blocks:
                    if time.perf_counter() > stop_at and all(t in final_at for t in submitted_at):
                        return
                    await asyncio.sleep(0.01)

        follow = asyncio.create_task(follower())
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        await follow
        await bus.close()
    finally:
        for v in validators:
            v.stop()
        nats.stop()
    store = BlockStore(validators[0].store_path(genesis.chain_id, 0))
    blocks = [codec.decode_block(b.block) for b in store.blocks(1, 1_000_000)]
    store.close()
    rounds_lost = (blocks[-1].round - len(blocks)) if blocks else 0

    in_window = [t for t, at in final_at.items() if at <= stop_at and t in submitted_at]
    latencies = [final_at[t] - submitted_at[t] for t in submitted_at if t in final_at]
    verify_rate = ed25519_verify_rate()
    cores = os.cpu_count() or 1
    return {
        "duration_s": duration,
        "submitted": len(submitted_at),
        "rejected_submissions": rejected,
        "final": len([t for t in submitted_at if t in final_at]),
        "committed_tx_per_s": len(in_window) / duration,
        "finality_p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "finality_p99_ms": 1000 * percentile(latencies, 0.99) if latencies else float("nan"),
        "ed25519_verify_per_s_one_core": verify_rate,
        "cores": cores,
        "validators": len(ORGS),
        "verify_ceiling_tx_per_s": cores * verify_rate / len(ORGS),
        "blocks": len(blocks),
        "mean_txs_per_block": statistics.mean(len(b.transactions) for b in blocks) if blocks else 0,
        "rounds_without_block": rounds_lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medledger-bench-") as tmp:
        figures = asyncio.run(run(args.duration, args.concurrency, Path(tmp)))
    ratio = figures["committed_tx_per_s"] / figures["verify_ceiling_tx_per_s"]
    figures["ratio_to_verify_ceiling"] = ratio
    print(
        f"committed: {figures['committed_tx_per_s']:.0f} tx/s "
        f"({figures['final']} final of {figures['submitted']} submitted)"
    )
    print(
        f"finality:  p50 {figures['finality_p50_ms']:.0f} ms, "
        f"p99 {figures['finality_p99_ms']:.0f} ms"
    )
    print(
        f"reference: Ed25519 verify {figures['ed25519_verify_per_s_one_core']:.0f}/s on one core; "
        f"ceiling {figures['verify_ceiling_tx_per_s']:.0f} tx/s "
        f"({figures['cores']} cores / {figures['validators']} validators); ratio {ratio:.2f}"
    )
    print(
        f"blocks:    {figures['blocks']} "
        f"({figures['mean_txs_per_block']:.0f} txs each on average), "
        f"{figures['rounds_without_block']} rounds timed out"
    )
    print("targets:   >= 1500 tx/s with p99 < 1000 ms (goal 4000 tx/s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
