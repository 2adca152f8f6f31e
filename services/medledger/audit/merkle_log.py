"""The audit log's Merkle tree kept as stored nodes: O(log n) appends, proofs from a few lookups.

Every perfect subtree ("node" (level, index), covering leaves [index·2^level, (index+1)·2^level))
is stored once, in the row of the leaf that completes it: the last leaf of its range, at
leaf index (index + 1)·2^level - 1. A leaf's row holds its own hash (level 0) and the hashes
of the nodes it completes (levels 1..t, t = trailing one bits of the index), 32 bytes each, so
a node is one primary-key lookup away. Proofs follow RFC 9162's recursive definitions; any
subtree they need that is not perfect is folded from O(log n) perfect ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from medledger.merkle import EMPTY_ROOT, HASH_SIZE, MerkleAccumulator, leaf_hash, node_hash

NodeId = tuple[int, int]
"""(level, index) of a perfect subtree; level 0 is a leaf."""

_PLACEHOLDER = bytes(HASH_SIZE)


def completing_leaf(node: NodeId) -> int:
    """The leaf index whose row stores `node`."""
    level, index = node
    return ((index + 1) << level) - 1


def completed_levels(leaf_index: int) -> int:
    """How many interior nodes (levels 1..t) leaf `leaf_index` completes."""
    return (~leaf_index & (leaf_index + 1)).bit_length() - 1


def node_from_row(node: NodeId, leaf_hash_value: bytes, completed: bytes) -> bytes:
    """The hash of `node` read from the row of its completing leaf."""
    level = node[0]
    if level == 0:
        return leaf_hash_value
    return completed[(level - 1) * HASH_SIZE : level * HASH_SIZE]


@dataclass(frozen=True, slots=True)
class AppendedLeaf:
    """What one append adds to the store: the leaf's position, hash and completed nodes."""

    leaf_index: int
    leaf_hash: bytes
    completed: bytes


class TreeFrontier:
    """The right edge of the tree (one peak per set bit of the size), advanced per append.

    Appending is a binary-counter carry: O(log n) hashes, and every carry is a node the
    store must keep, which `append` hands back.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        self._size = size
        self._peaks = list(peaks)
        MerkleAccumulator.from_state(size, self._peaks)  # validates size against peaks

    @property
    def size(self) -> int:
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        return tuple(self._peaks)

    def copy(self) -> TreeFrontier:
        return TreeFrontier(self._size, self._peaks)

    def append(self, data: bytes) -> AppendedLeaf:
        value = leaf_hash(data)
        carry = value
        size = self._size
        completed: list[bytes] = []
        peaks = self._peaks
        while size & 1:
            carry = node_hash(peaks.pop(), carry)
            completed.append(carry)
            size >>= 1
        peaks.append(carry)
        index = self._size
        self._size += 1
        return AppendedLeaf(index, value, b"".join(completed))

    def root(self) -> bytes:
        return MerkleAccumulator.from_state(self._size, self._peaks).root()

    def accumulator_bytes(self) -> bytes:
        return MerkleAccumulator.from_state(self._size, self._peaks).to_bytes()


def peak_nodes(size: int) -> list[NodeId]:
    """The perfect subtrees covering [0, size), largest first."""
    return _perfect_cover(0, size)


def _perfect_cover(start: int, end: int) -> list[NodeId]:
    nodes: list[NodeId] = []
    while start < end:
        level = 0
        while (start % (1 << (level + 1)) == 0) and start + (1 << (level + 1)) <= end:
            level += 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


NodeLookup = Callable[[NodeId], bytes]


def _subtree_root(start: int, end: int, node: NodeLookup) -> bytes:
    cover = _perfect_cover(start, end)
    result = node(cover[-1])
    for item in reversed(cover[:-1]):
        result = node_hash(node(item), result)
    return result


def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_path(index: int, start: int, end: int, node: NodeLookup) -> list[bytes]:
    path: list[bytes] = []
    # Iterative form of PATH(m, D[start:end]); siblings are collected top-down, then reversed.
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(_subtree_root(start + k, end, node))
            end = start + k
        else:
            path.append(_subtree_root(start, start + k, node))
            start = start + k
    path.reverse()
    return path


def _consistency_path(old_size: int, new_size: int, node: NodeLookup) -> list[bytes]:
    path: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    # Iterative form of SUBPROOF(m, D[start:end], b).
    while True:
        n = end - start
        if m == n:
            if not complete:
                path.append(_subtree_root(start, end, node))
            break
        k = _split(n)
        if m <= k:
            path.append(_subtree_root(start + k, end, node))
            end = start + k
        else:
            path.append(_subtree_root(start, start + k, node))
            start, m, complete = start + k, m - k, False
    path.reverse()
    return path


class _Recorder:
    """A lookup that notes which nodes a computation needs and answers with a placeholder."""

    def __init__(self) -> None:
        self.needed: set[NodeId] = set()

    def __call__(self, node: NodeId) -> bytes:
        self.needed.add(node)
        return _PLACEHOLDER


def nodes_for_inclusion(index: int, size: int) -> set[NodeId]:
    """The stored nodes an inclusion proof of leaf `index` at `size` is built from."""
    recorder = _Recorder()
    _inclusion_path(index, 0, size, recorder)
    return recorder.needed


def nodes_for_consistency(old_size: int, new_size: int) -> set[NodeId]:
    recorder = _Recorder()
    _consistency_path(old_size, new_size, recorder)
    return recorder.needed


def nodes_for_root(size: int) -> set[NodeId]:
    return set(peak_nodes(size))


def _lookup(nodes: Mapping[NodeId, bytes]) -> NodeLookup:
    def get(node: NodeId) -> bytes:
        return nodes[node]

    return get


def inclusion_path(index: int, size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """RFC 9162 PATH(index, D[size]) from the nodes `nodes_for_inclusion` named."""
    return _inclusion_path(index, 0, size, _lookup(nodes))


def consistency_path(old_size: int, new_size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """RFC 9162 PROOF(old_size, D[new_size]) from the nodes `nodes_for_consistency` named."""
    if old_size == new_size:
        return []
    return _consistency_path(old_size, new_size, _lookup(nodes))


def root_at(size: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return _subtree_root(0, size, _lookup(nodes))


def leaves_storing(nodes: Iterable[NodeId]) -> set[int]:
    """The leaf rows to read for `nodes`."""
    return {completing_leaf(node) for node in nodes}
