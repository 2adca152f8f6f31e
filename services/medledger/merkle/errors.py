"""Errors raised by medledger.merkle.

MerkleError                 base; never raised itself
├── ProofError              a proof, root or leaf hash does not verify
└── TreeError               a request the tree cannot answer, or corrupt accumulator state
"""

from __future__ import annotations


class MerkleError(Exception):
    """Base of every error raised by medledger.merkle."""

    reason = "MERKLE_ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ProofError(MerkleError):
    """An inclusion or consistency proof does not verify.

    `reason` says why: BAD_HASH_SIZE, BAD_TREE_SIZE, INDEX_OUT_OF_RANGE,
    EMPTY_TREE, WRONG_PROOF_LENGTH or ROOT_MISMATCH.
    """

    reason = "PROOF_INVALID"


class TreeError(MerkleError):
    """A proof was asked for an index or size the tree does not have, or state is corrupt.

    `reason` is INDEX_OUT_OF_RANGE, BAD_TREE_SIZE, BAD_HASH_SIZE or BAD_ACCUMULATOR_STATE.
    """

    reason = "TREE_ERROR"
