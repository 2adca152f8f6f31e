"""MerkleAccumulator (CompactRange): the incremental root equals the batch root."""

from __future__ import annotations

import pytest

from medledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleAccumulator,
    TreeError,
    leaf_hash,
    root_from_leaf_hashes,
    root_hash,
)

SIZES = 400


def test_root_equals_batch_root_for_every_size() -> None:
    leaves = [leaf_hash(f"event {i}".encode()) for i in range(SIZES)]
    accumulator = MerkleAccumulator()
    assert accumulator.root() == EMPTY_ROOT
    for size in range(1, SIZES + 1):
        accumulator.append_leaf_hash(leaves[size - 1])
        assert accumulator.size == size
        assert accumulator.root() == root_from_leaf_hashes(leaves[:size]), size
        assert len(accumulator.state[1]) == size.bit_count()


def test_append_of_raw_entries_returns_leaf_hashes() -> None:
    entries = [b"a", b"b", b"c"]
    accumulator = CompactRange()
    assert [accumulator.append(e) for e in entries] == [leaf_hash(e) for e in entries]
    assert accumulator.root() == root_hash(entries)
    assert CompactRange is MerkleAccumulator


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 255, 256, 257])
def test_state_round_trips_and_resumes(size: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size + 5)]
    accumulator = MerkleAccumulator.from_leaf_hashes(leaves[:size])
    encoded = accumulator.to_bytes()
    assert len(encoded) == 8 + 32 * size.bit_count()
    restored = MerkleAccumulator.from_bytes(encoded)
    assert restored == accumulator
    assert MerkleAccumulator.from_state(*accumulator.state) == accumulator
    for value in leaves[size:]:
        restored.append_leaf_hash(value)
    assert restored.root() == root_from_leaf_hashes(leaves)
    assert accumulator.size == size  # resuming the copy left the original alone


def test_copy_is_independent() -> None:
    accumulator = MerkleAccumulator.from_leaf_hashes([leaf_hash(b"x")])
    twin = accumulator.copy()
    twin.append(b"y")
    assert accumulator.size == 1
    assert twin.size == 2


@pytest.mark.parametrize(
    "encoded",
    [
        b"",
        b"\x00" * 7,
        (1).to_bytes(8, "big"),  # one leaf needs one peak
        (0).to_bytes(8, "big") + b"\x00" * 32,  # the empty tree has none
        (3).to_bytes(8, "big") + b"\x00" * 32,  # three leaves need two
        (2).to_bytes(8, "big") + b"\x00" * 31,
    ],
)
def test_corrupt_state_is_rejected(encoded: bytes) -> None:
    with pytest.raises(TreeError) as caught:
        MerkleAccumulator.from_bytes(encoded)
    assert caught.value.reason == "BAD_ACCUMULATOR_STATE"


def test_bad_leaf_hash_is_rejected_and_state_unchanged() -> None:
    accumulator = MerkleAccumulator.from_leaf_hashes([leaf_hash(b"x")])
    before = accumulator.to_bytes()
    with pytest.raises(TreeError) as caught:
        accumulator.append_leaf_hash(b"short")
    assert caught.value.reason == "BAD_HASH_SIZE"
    assert accumulator.to_bytes() == before
    with pytest.raises(TreeError):
        MerkleAccumulator.from_state(-1, [])
