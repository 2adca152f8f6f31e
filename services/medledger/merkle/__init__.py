"""RFC 9162 Merkle tree hashing, proofs and their verification, shared by the ledger and audit."""

from medledger.merkle.compact import CompactRange, MerkleAccumulator
from medledger.merkle.errors import MerkleError, ProofError, TreeError
from medledger.merkle.hashing import EMPTY_ROOT, HASH_SIZE, leaf_hash, node_hash
from medledger.merkle.tree import (
    consistency_proof,
    consistency_proof_from_leaf_hashes,
    inclusion_proof,
    inclusion_proof_from_leaf_hashes,
    root_from_leaf_hashes,
    root_hash,
)
from medledger.merkle.verify import root_from_inclusion_proof, verify_consistency, verify_inclusion

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleAccumulator",
    "MerkleError",
    "ProofError",
    "TreeError",
    "consistency_proof",
    "consistency_proof_from_leaf_hashes",
    "inclusion_proof",
    "inclusion_proof_from_leaf_hashes",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]
