"""Merkle tree hashes and proofs built from a whole list of entries (RFC 9162 §2.1).

The `*_from_leaf_hashes` forms take stored leaf hashes, so a store can answer
proofs without keeping the raw entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from medledger.merkle.errors import TreeError
from medledger.merkle.hashing import EMPTY_ROOT, HASH_SIZE, LEAF_PREFIX, NODE_PREFIX


def root_hash(entries: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over the raw entries; the empty tree hashes to SHA-256("")."""
    return _root(_leaf_hashes(entries))


def inclusion_proof(entries: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]): the audit path of entry `index`, lowest level first."""
    return inclusion_proof_from_leaf_hashes(_leaf_hashes(entries), index)


def consistency_proof(entries: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]): shows the first `old_size` entries are a prefix of `entries`."""
    return consistency_proof_from_leaf_hashes(_leaf_hashes(entries), old_size)


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes."""
    _check_leaf_hashes(leaf_hashes)
    return _root(leaf_hashes)


def inclusion_proof_from_leaf_hashes(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) over a list of leaf hashes."""
    if not 0 <= index < len(leaf_hashes):
        raise TreeError(
            f"leaf index {index} is outside a tree of size {len(leaf_hashes)}",
            reason="INDEX_OUT_OF_RANGE",
        )
    _check_leaf_hashes(leaf_hashes)
    proof: list[bytes] = []
    level = list(leaf_hashes)
    position = index
    while len(level) > 1:
        sibling = position ^ 1
        # The last node of an odd level has no sibling: RFC 9162's split at the
        # largest power of two promotes it unchanged, so it adds nothing to the path.
        if sibling < len(level):
            proof.append(level[sibling])
        level = _parent_level(level)
        position >>= 1
    return proof


def consistency_proof_from_leaf_hashes(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) over a list of leaf hashes; empty when old_size == n."""
    size = len(leaf_hashes)
    if not 0 < old_size <= size:
        raise TreeError(
            f"no consistency proof from size {old_size} to size {size}: need 0 < old <= new",
            reason="BAD_TREE_SIZE",
        )
    _check_leaf_hashes(leaf_hashes)
    # SUBPROOF(m, D[lo:hi], complete) unrolled: each step appends the hash of the
    # sibling subtree, so the list comes out top-down and is reversed at the end.
    top_down: list[bytes] = []
    lo, hi, m, complete = 0, size, old_size, True
    while m != hi - lo:
        split = _largest_power_of_two_below(hi - lo)
        if m <= split:
            top_down.append(_root(leaf_hashes[lo + split : hi]))
            hi = lo + split
        else:
            top_down.append(_root(leaf_hashes[lo : lo + split]))
            lo += split
            m -= split
            complete = False
    if not complete:
        top_down.append(_root(leaf_hashes[lo:hi]))
    top_down.reverse()
    return top_down


# The two helpers below are the hot loops (a root over 100k entries is 200k
# hashes), so they call hashlib directly instead of leaf_hash/node_hash.


def _leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    sha256 = hashlib.sha256
    return [sha256(LEAF_PREFIX + entry).digest() for entry in entries]


def _parent_level(level: Sequence[bytes]) -> list[bytes]:
    sha256 = hashlib.sha256
    pairs = iter(level)
    parents = [
        sha256(NODE_PREFIX + left + right).digest()
        for left, right in zip(pairs, pairs, strict=False)
    ]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


def _root(leaf_hashes: Sequence[bytes]) -> bytes:
    if not leaf_hashes:
        return EMPTY_ROOT
    level = leaf_hashes
    while len(level) > 1:
        level = _parent_level(level)
    return level[0]


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for position, value in enumerate(leaf_hashes):
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise TreeError(
                f"leaf hash {position} is not a {HASH_SIZE}-byte hash", reason="BAD_HASH_SIZE"
            )
