"""The validator block store: gapless heights, exactly-once transactions, durability."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.ledger.store import (
    BlockStore,
    DuplicateTransactionError,
    HeightGapError,
    StoreError,
    TransactionLocation,
)


def test_append_and_read_back(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks.db")
    assert store.height == -1
    store.append(0, b"h0", b"block0", [])
    store.append(1, b"h1", b"block1", [b"tx-a", b"tx-b"])
    assert store.height == 1
    got = store.block(1)
    assert got is not None and got.block == b"block1" and got.certificate is None
    assert store.block_by_hash(b"h0") is not None
    assert store.transaction(b"tx-b") == TransactionLocation(height=1, index=1)
    assert not store.contains_transaction(b"tx-c")
    store.set_certificate(1, b"cert1")
    assert store.certificate(1) == b"cert1"
    assert [b.height for b in store.blocks(0, 10)] == [0, 1]


def test_heights_must_be_gapless(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks.db")
    store.append(0, b"h0", b"b", [])
    with pytest.raises(HeightGapError):
        store.append(2, b"h2", b"b", [])
    assert store.height == 0


def test_transaction_final_at_most_once_and_nothing_partial(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks.db")
    store.append(0, b"h0", b"b", [b"tx"])
    with pytest.raises(DuplicateTransactionError):
        store.append_many([(1, b"h1", b"b", [b"other"], None), (2, b"h2", b"b", [b"tx"], None)])
    assert store.height == 0
    assert store.block(1) is None
    assert not store.contains_transaction(b"other")


def test_certificate_for_missing_block_is_refused(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "blocks.db")
    with pytest.raises(StoreError):
        store.set_certificate(5, b"cert")


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    store = BlockStore(path)
    store.append(0, b"h0", b"b0", [b"t0"])
    store.save_safety_state(b"state-1")
    store.save_safety_state(b"state-2")
    store.set_meta("chain_id", b"test-chain")
    store.close()
    assert not store.is_open
    again = BlockStore(path)
    assert again.height == 0
    assert again.safety_state() == b"state-2"
    assert again.meta("chain_id") == b"test-chain"
    assert again.contains_transaction(b"t0")
