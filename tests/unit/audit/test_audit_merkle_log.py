"""The stored-node Merkle log gives exactly the roots and proofs of the reference implementation,
reading only O(log n) stored nodes."""

from __future__ import annotations

import pytest

from medledger.audit import merkle_log
from medledger.audit.merkle_log import NodeId, TreeFrontier
from medledger.merkle import (
    consistency_proof,
    inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)


def build(size: int) -> tuple[list[bytes], dict[NodeId, bytes], TreeFrontier]:
    """Append `size` entries; return the entries, every stored node, and the frontier."""
    entries = [f"event-{i}".encode() for i in range(size)]
    frontier = TreeFrontier()
    stored: dict[NodeId, bytes] = {}
    for data in entries:
        leaf = frontier.append(data)
        stored[(0, leaf.leaf_index)] = leaf.leaf_hash
        for level in range(1, merkle_log.completed_levels(leaf.leaf_index) + 1):
            node = (level, (leaf.leaf_index + 1 >> level) - 1)
            assert merkle_log.completing_leaf(node) == leaf.leaf_index
            stored[node] = merkle_log.node_from_row(node, leaf.leaf_hash, leaf.completed)
    return entries, stored, frontier


def test_every_root_inclusion_and_consistency_proof_matches_the_reference() -> None:
    entries, stored, frontier = build(40)
    assert frontier.root() == root_hash(entries)
    for size in range(1, 41):
        root = root_hash(entries[:size])
        assert merkle_log.root_at(size, stored) == root
        for index in range(size):
            wanted = merkle_log.nodes_for_inclusion(index, size)
            proof = merkle_log.inclusion_path(index, size, {n: stored[n] for n in wanted})
            assert proof == inclusion_proof(entries[:size], index)
            verify_inclusion(stored[(0, index)], index, size, proof, root)
        for old in range(1, size + 1):
            wanted = merkle_log.nodes_for_consistency(old, size)
            proof = merkle_log.consistency_path(old, size, {n: stored[n] for n in wanted})
            assert proof == consistency_proof(entries[:size], old)
            verify_consistency(old, size, proof, root_hash(entries[:old]), root)


@pytest.mark.parametrize("size", [1, 2, 3, 1000, 1 << 20, (1 << 40) + 12345])
def test_proofs_need_only_logarithmically_many_stored_nodes(size: int) -> None:
    bound = 2 * size.bit_length() ** 2 + 2
    assert len(merkle_log.nodes_for_inclusion(size - 1, size)) <= bound
    assert len(merkle_log.nodes_for_inclusion(0, size)) <= bound
    assert len(merkle_log.nodes_for_consistency(max(1, size // 3), size)) <= bound
    assert len(merkle_log.nodes_for_root(size)) == size.bit_count()


def test_each_leaf_stores_only_the_nodes_it_completes() -> None:
    _, _, frontier = build(0)
    sizes = []
    for i in range(64):
        sizes.append(len(frontier.append(b"x%d" % i).completed) // 32)
    # Leaf i completes one node per trailing one bit of i: 0,1,0,2,0,1,0,3,...
    assert sizes[:8] == [0, 1, 0, 2, 0, 1, 0, 3]
    assert sum(sizes) == 63  # n - 1 interior nodes in a perfect tree of 64 leaves


def test_a_frontier_resumes_from_its_peaks() -> None:
    entries, stored, frontier = build(37)
    peaks = [stored[node] for node in merkle_log.peak_nodes(37)]
    resumed = TreeFrontier(37, peaks)
    assert resumed.root() == frontier.root()
    resumed.append(b"more")
    assert resumed.root() == root_hash([*entries, b"more"])
