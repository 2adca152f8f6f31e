"""Verification of inclusion and consistency proofs (RFC 9162 §2.1.3.2 and §2.1.4.2).

Both verifiers raise ProofError on any failure and return None on success. They
are stricter than the RFC's prose where it is silent: every hash must be exactly
32 bytes, and no proof is accepted against or from a tree of size 0.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from medledger.merkle.errors import ProofError
from medledger.merkle.hashing import HASH_SIZE, node_hash


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows `leaf_hash` at `index` in the tree with `root`."""
    _check_hash(root, "root")
    computed = root_from_inclusion_proof(leaf_hash, index, tree_size, proof)
    if not hmac.compare_digest(computed, root):
        raise ProofError("inclusion proof leads to a different root", reason="ROOT_MISMATCH")


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """The root a tree of `tree_size` must have for `proof` to show `leaf_hash` at `index`."""
    _check_size(tree_size, "tree size")
    _check_size(index, "leaf index")
    if tree_size == 0:
        raise ProofError("no leaf is included in the empty tree", reason="EMPTY_TREE")
    if index >= tree_size:
        raise ProofError(
            f"leaf index {index} is outside a tree of size {tree_size}",
            reason="INDEX_OUT_OF_RANGE",
        )
    _check_hash(leaf_hash, "leaf hash")
    _check_proof_hashes(proof)

    fn, sn = index, tree_size - 1
    result = leaf_hash
    for sibling in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long", reason="WRONG_PROOF_LENGTH")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            # On the right border a node without a right sibling is promoted
            # unchanged; skip the levels where that happens.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short", reason="WRONG_PROOF_LENGTH")
    return result


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Raise ProofError unless `proof` shows the tree `old_root` is a prefix of `new_root`."""
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_proof_hashes(proof)
    if old_size > new_size:
        raise ProofError(
            f"old tree size {old_size} is larger than new tree size {new_size}",
            reason="BAD_TREE_SIZE",
        )
    if old_size == 0:
        # Every tree extends the empty one, so such a proof would prove nothing.
        raise ProofError("no consistency proof from the empty tree", reason="EMPTY_TREE")
    if old_size == new_size:
        if proof:
            raise ProofError(
                "trees of equal size need an empty consistency proof",
                reason="WRONG_PROOF_LENGTH",
            )
        if not hmac.compare_digest(old_root, new_root):
            raise ProofError("trees of equal size have different roots", reason="ROOT_MISMATCH")
        return
    if not proof:
        raise ProofError("consistency proof is empty", reason="WRONG_PROOF_LENGTH")

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree of the new one: its root is the
        # proof's implicit first element.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    old_result = new_result = path[0]
    for node in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long", reason="WRONG_PROOF_LENGTH")
        if fn & 1 or fn == sn:
            old_result = node_hash(node, old_result)
            new_result = node_hash(node, new_result)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            new_result = node_hash(new_result, node)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short", reason="WRONG_PROOF_LENGTH")
    if not hmac.compare_digest(old_result, old_root):
        raise ProofError("consistency proof leads to a different old root", reason="ROOT_MISMATCH")
    if not hmac.compare_digest(new_result, new_root):
        raise ProofError("consistency proof leads to a different new root", reason="ROOT_MISMATCH")


def _check_size(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"{what} must be a non-negative integer", reason="BAD_TREE_SIZE")


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash", reason="BAD_HASH_SIZE")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    if not isinstance(proof, Sequence) or isinstance(proof, bytes | str):
        raise ProofError("a proof is a sequence of hashes", reason="BAD_HASH_SIZE")
    for position, value in enumerate(proof):
        _check_hash(value, f"proof element {position}")
