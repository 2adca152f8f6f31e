"""An incremental Merkle tree root: O(log n) hashes of state, O(log n) per append.

The audit log and the ledger keep one of these beside their stores so a new
root never needs the whole tree. The state is the compact range [0, size): the
roots of the perfect subtrees that the binary digits of `size` split the tree into.
"""

from __future__ import annotations

from collections.abc import Sequence

from medledger.merkle.errors import TreeError
from medledger.merkle.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash

_SIZE_BYTES = 8
MAX_TREE_SIZE = (1 << (8 * _SIZE_BYTES)) - 1


class MerkleAccumulator:
    """The running root of an append-only RFC 9162 tree.

    `peaks` are the roots of the perfect subtrees covering leaves [0, size),
    largest (leftmost) first; there is one per set bit of `size`.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._peaks: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, peaks: Sequence[bytes]) -> MerkleAccumulator:
        """Rebuild from `size` and `peaks` as `state` returns them; TreeError if inconsistent."""
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_TREE_SIZE:
            raise TreeError(f"bad tree size {size!r}", reason="BAD_ACCUMULATOR_STATE")
        if len(peaks) != size.bit_count():
            raise TreeError(
                f"a tree of size {size} has {size.bit_count()} peaks, got {len(peaks)}",
                reason="BAD_ACCUMULATOR_STATE",
            )
        for peak in peaks:
            if not isinstance(peak, bytes) or len(peak) != HASH_SIZE:
                raise TreeError(
                    f"a peak is not a {HASH_SIZE}-byte hash", reason="BAD_ACCUMULATOR_STATE"
                )
        accumulator = cls()
        accumulator._size = size
        accumulator._peaks = list(peaks)
        return accumulator

    @classmethod
    def from_bytes(cls, data: bytes) -> MerkleAccumulator:
        """Inverse of `to_bytes`."""
        if len(data) < _SIZE_BYTES or (len(data) - _SIZE_BYTES) % HASH_SIZE:
            raise TreeError(
                f"{len(data)} bytes is not a serialized accumulator",
                reason="BAD_ACCUMULATOR_STATE",
            )
        size = int.from_bytes(data[:_SIZE_BYTES], "big")
        body = data[_SIZE_BYTES:]
        peaks = [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)]
        return cls.from_state(size, peaks)

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Sequence[bytes]) -> MerkleAccumulator:
        accumulator = cls()
        for value in leaf_hashes:
            accumulator.append_leaf_hash(value)
        return accumulator

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def state(self) -> tuple[int, tuple[bytes, ...]]:
        """(size, peaks): everything needed to resume appending."""
        return self._size, tuple(self._peaks)

    def to_bytes(self) -> bytes:
        """uint64 big-endian size followed by the peaks, largest subtree first."""
        return self._size.to_bytes(_SIZE_BYTES, "big") + b"".join(self._peaks)

    def append(self, entry: bytes) -> bytes:
        """Append a raw entry; returns its leaf hash."""
        value = leaf_hash(entry)
        self.append_leaf_hash(value)
        return value

    def append_leaf_hash(self, value: bytes) -> None:
        """Append a leaf by its hash (SHA-256(0x00 || entry))."""
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise TreeError(f"a leaf hash is {HASH_SIZE} bytes", reason="BAD_HASH_SIZE")
        if self._size == MAX_TREE_SIZE:
            raise TreeError("the tree is full", reason="BAD_TREE_SIZE")
        # Like incrementing a binary counter: every trailing 1 bit of the size is
        # a perfect subtree of the same height as the carry, and merges with it.
        carry = value
        size = self._size
        while size & 1:
            carry = node_hash(self._peaks.pop(), carry)
            size >>= 1
        self._peaks.append(carry)
        self._size += 1

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self._peaks:
            return EMPTY_ROOT
        result = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            result = node_hash(peak, result)
        return result

    def copy(self) -> MerkleAccumulator:
        return MerkleAccumulator.from_state(self._size, self._peaks)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MerkleAccumulator)
            and other._size == self._size
            and other._peaks == self._peaks
        )

    # Mutable, so unhashable despite __eq__.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MerkleAccumulator(size={self._size}, root={self.root().hex()[:16]}…)"


# The same object under the name transparency-dev/merkle gives it: the compact range [0, size).
CompactRange = MerkleAccumulator
