"""Random and mutated bytes on the consensus wire never crash the decoder or the
replica, and never make it commit anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medledger.crypto import SigningKey
from medledger.crypto.keys import load_signing_key
from medledger.ledger import codec
from medledger.ledger.consensus.genesis import genesis_block
from medledger.ledger.consensus.replica import Replica
from medledger.ledger.consensus.types import Proposal, TransactionBatch, Vote
from medledger.ledger.genesis import (
    consensus_genesis,
    create_consortium,
    replica_config,
    validator_key_path,
)
from medledger.ledger.node import StoreLedgerView
from medledger.ledger.store import BlockStore
from medledger.ledger.transactions import LedgerTransactionRules
from medledger.testing.ledger import record_tx

_ORGS = ["org-a", "org-b", "org-c", "org-d"]


class _Harness:
    """One replica over a real block store, plus real encoded messages to mutate."""

    def __init__(self, directory: Path) -> None:
        self.genesis = create_consortium(directory, _ORGS, "fuzz-chain", 1_700_000_000_000)
        self.keys = [load_signing_key(validator_key_path(directory, o)) for o in _ORGS]
        cons = consensus_genesis(self.genesis)
        self.store = BlockStore(directory / "store.db")
        block0 = genesis_block(cons)
        self.store.append(0, block0.hash, codec.encode_block(block0), [])
        rules = LedgerTransactionRules(self.genesis.chain_id, 65536)
        self.replica = Replica(
            replica_config(self.genesis, 0), self.keys[0], StoreLedgerView(self.store), rules, None
        )
        self.replica.start(0.0)
        tx = record_tx(self.genesis.chain_id, SigningKey.generate(), 1)
        self.samples = [
            codec.encode_message(self.genesis.chain_id, 1, TransactionBatch((tx,))),
            codec.encode_message(self.genesis.chain_id, 2, Vote(block0.hash, 0, 0, 2, bytes(64))),
            codec.encode_message(self.genesis.chain_id, 1, Proposal(block0, None, bytes(64))),
        ]

    def feed(self, data: bytes, now: float) -> None:
        try:
            _chain, sender, message = codec.decode_message(data)
        except codec.DecodeError:
            return
        self.replica.receive(sender % 4, message, now)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> _Harness:
    """One replica shared by every example: state must survive all of them."""
    return _Harness(tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=2048))
def test_random_bytes(harness: _Harness, data: bytes) -> None:
    h = harness
    h.feed(data, 1.0)
    assert h.replica.committed_height == 0


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 2), flips=st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_mutated_real_messages(harness: _Harness, which: int, flips: list[int]) -> None:
    h = harness
    data = bytearray(h.samples[which])
    for position in flips:
        data[position % len(data)] ^= 1 << (position % 8)
    h.feed(bytes(data), 2.0)
    assert h.replica.committed_height == 0
