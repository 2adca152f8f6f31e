"""Tree hashes and proofs checked against a literal transcription of RFC 9162 §2.1."""

from __future__ import annotations

import hashlib
import time

import pytest

from medledger.merkle import (
    EMPTY_ROOT,
    ProofError,
    TreeError,
    consistency_proof,
    consistency_proof_from_leaf_hashes,
    inclusion_proof,
    inclusion_proof_from_leaf_hashes,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    root_hash,
    verify_consistency,
    verify_inclusion,
)


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rfc_mth(entries: list[bytes]) -> bytes:
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = _k(len(entries))
    return hashlib.sha256(b"\x01" + rfc_mth(entries[:k]) + rfc_mth(entries[k:])).digest()


def rfc_path(m: int, entries: list[bytes]) -> list[bytes]:
    if len(entries) == 1:
        return []
    k = _k(len(entries))
    if m < k:
        return [*rfc_path(m, entries[:k]), rfc_mth(entries[k:])]
    return [*rfc_path(m - k, entries[k:]), rfc_mth(entries[:k])]


def rfc_subproof(m: int, entries: list[bytes], complete: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if complete else [rfc_mth(entries)]
    k = _k(n)
    if m <= k:
        return [*rfc_subproof(m, entries[:k], complete), rfc_mth(entries[k:])]
    return [*rfc_subproof(m - k, entries[k:], False), rfc_mth(entries[:k])]


def entries_of(size: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(size)]


def test_hash_prefixes() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = bytes(range(32)), bytes(range(32, 64))
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert root_hash([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert root_hash([b"abc"]) == leaf_hash(b"abc")


@pytest.mark.parametrize("size", range(0, 70))
def test_root_matches_rfc(size: int) -> None:
    entries = entries_of(size)
    assert root_hash(entries) == rfc_mth(entries)
    assert root_from_leaf_hashes([leaf_hash(e) for e in entries]) == rfc_mth(entries)


@pytest.mark.parametrize("size", range(1, 40))
def test_every_inclusion_proof_matches_rfc_and_verifies(size: int) -> None:
    entries = entries_of(size)
    root = rfc_mth(entries)
    leaves = [leaf_hash(e) for e in entries]
    for index in range(size):
        proof = inclusion_proof(entries, index)
        assert proof == rfc_path(index, entries)
        assert inclusion_proof_from_leaf_hashes(leaves, index) == proof
        verify_inclusion(leaves[index], index, size, proof, root)
        assert root_from_inclusion_proof(leaves[index], index, size, proof) == root


@pytest.mark.parametrize("size", range(1, 40))
def test_every_consistency_proof_matches_rfc_and_verifies(size: int) -> None:
    entries = entries_of(size)
    root = rfc_mth(entries)
    leaves = [leaf_hash(e) for e in entries]
    for old_size in range(1, size + 1):
        proof = consistency_proof(entries, old_size)
        assert proof == rfc_subproof(old_size, entries, True)
        assert consistency_proof_from_leaf_hashes(leaves, old_size) == proof
        verify_consistency(old_size, size, proof, rfc_mth(entries[:old_size]), root)


def test_proof_generation_rejects_impossible_requests() -> None:
    entries = entries_of(5)
    for index in (-1, 5, 6):
        with pytest.raises(TreeError) as caught:
            inclusion_proof(entries, index)
        assert caught.value.reason == "INDEX_OUT_OF_RANGE"
    for old_size in (0, -1, 6):
        with pytest.raises(TreeError) as caught:
            consistency_proof(entries, old_size)
        assert caught.value.reason == "BAD_TREE_SIZE"
    with pytest.raises(TreeError) as caught:
        root_from_leaf_hashes([b"\x00" * 31])
    assert caught.value.reason == "BAD_HASH_SIZE"


GOOD_ROOT = rfc_mth(entries_of(5))
GOOD_LEAF = leaf_hash(b"entry 2")
GOOD_PROOF = rfc_path(2, entries_of(5))


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ((GOOD_LEAF, 2, 5, GOOD_PROOF, GOOD_ROOT[:31]), "BAD_HASH_SIZE"),
        ((GOOD_LEAF + b"\x00", 2, 5, GOOD_PROOF, GOOD_ROOT), "BAD_HASH_SIZE"),
        ((GOOD_LEAF, 2, 5, [*GOOD_PROOF[:-1], b""], GOOD_ROOT), "BAD_HASH_SIZE"),
        ((GOOD_LEAF, 2, 5, [GOOD_PROOF[0], "text"], GOOD_ROOT), "BAD_HASH_SIZE"),
        ((GOOD_LEAF, 2, 5, b"".join(GOOD_PROOF), GOOD_ROOT), "BAD_HASH_SIZE"),
        ((GOOD_LEAF, 2, 5, None, GOOD_ROOT), "BAD_HASH_SIZE"),
        ((GOOD_LEAF, 2, -5, GOOD_PROOF, GOOD_ROOT), "BAD_TREE_SIZE"),
        ((GOOD_LEAF, -1, 5, GOOD_PROOF, GOOD_ROOT), "BAD_TREE_SIZE"),
        ((GOOD_LEAF, 2.0, 5, GOOD_PROOF, GOOD_ROOT), "BAD_TREE_SIZE"),
        ((GOOD_LEAF, 0, 0, [], EMPTY_ROOT), "EMPTY_TREE"),
        ((GOOD_LEAF, 5, 5, GOOD_PROOF, GOOD_ROOT), "INDEX_OUT_OF_RANGE"),
        ((GOOD_LEAF, 2, 5, GOOD_PROOF[:-1], GOOD_ROOT), "WRONG_PROOF_LENGTH"),
        ((GOOD_LEAF, 2, 5, [*GOOD_PROOF, GOOD_ROOT], GOOD_ROOT), "WRONG_PROOF_LENGTH"),
        ((GOOD_LEAF, 2, 5, GOOD_PROOF, EMPTY_ROOT), "ROOT_MISMATCH"),
    ],
)
def test_inclusion_failure_reasons(arguments: tuple[object, ...], reason: str) -> None:
    with pytest.raises(ProofError) as caught:
        verify_inclusion(*arguments)  # type: ignore[arg-type]
    assert caught.value.reason == reason


def test_the_good_inclusion_case_of_that_table_verifies() -> None:
    verify_inclusion(GOOD_LEAF, 2, 5, GOOD_PROOF, GOOD_ROOT)


OLD_ROOT = rfc_mth(entries_of(3))
CONSISTENCY = rfc_subproof(3, entries_of(5), True)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ((3, 5, CONSISTENCY, OLD_ROOT[:-1], GOOD_ROOT), "BAD_HASH_SIZE"),
        ((3, 5, CONSISTENCY, OLD_ROOT, GOOD_ROOT + b"\x00"), "BAD_HASH_SIZE"),
        ((3, 5, [b"", *CONSISTENCY], OLD_ROOT, GOOD_ROOT), "BAD_HASH_SIZE"),
        ((5, 3, CONSISTENCY, OLD_ROOT, GOOD_ROOT), "BAD_TREE_SIZE"),
        ((-3, 5, CONSISTENCY, OLD_ROOT, GOOD_ROOT), "BAD_TREE_SIZE"),
        ((True, 5, CONSISTENCY, OLD_ROOT, GOOD_ROOT), "BAD_TREE_SIZE"),
        ((0, 5, CONSISTENCY, EMPTY_ROOT, GOOD_ROOT), "EMPTY_TREE"),
        ((0, 0, [], EMPTY_ROOT, EMPTY_ROOT), "EMPTY_TREE"),
        ((5, 5, CONSISTENCY, GOOD_ROOT, GOOD_ROOT), "WRONG_PROOF_LENGTH"),
        ((5, 5, [], OLD_ROOT, GOOD_ROOT), "ROOT_MISMATCH"),
        ((3, 5, [], OLD_ROOT, GOOD_ROOT), "WRONG_PROOF_LENGTH"),
        ((3, 5, CONSISTENCY[:-1], OLD_ROOT, GOOD_ROOT), "WRONG_PROOF_LENGTH"),
        ((3, 5, [*CONSISTENCY, GOOD_ROOT], OLD_ROOT, GOOD_ROOT), "WRONG_PROOF_LENGTH"),
        ((3, 5, CONSISTENCY, GOOD_ROOT, GOOD_ROOT), "ROOT_MISMATCH"),
        ((3, 5, CONSISTENCY, OLD_ROOT, OLD_ROOT), "ROOT_MISMATCH"),
    ],
)
def test_consistency_failure_reasons(arguments: tuple[object, ...], reason: str) -> None:
    with pytest.raises(ProofError) as caught:
        verify_consistency(*arguments)  # type: ignore[arg-type]
    assert caught.value.reason == reason


def test_the_good_consistency_case_of_that_table_verifies() -> None:
    verify_consistency(3, 5, CONSISTENCY, OLD_ROOT, GOOD_ROOT)
    verify_consistency(5, 5, [], GOOD_ROOT, GOOD_ROOT)


def test_an_overlong_proof_is_rejected_without_hashing_it_all() -> None:
    proof = [GOOD_ROOT] * 100_000
    with pytest.raises(ProofError) as caught:
        verify_inclusion(GOOD_LEAF, 2, 5, proof, GOOD_ROOT)
    assert caught.value.reason == "WRONG_PROOF_LENGTH"


def test_root_of_100k_entries_is_fast() -> None:
    entries = [i.to_bytes(8, "big") for i in range(100_000)]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        root = root_hash(entries)
        best = min(best, time.perf_counter() - started)
    assert len(root) == 32
    assert best < 1.0, f"root_hash of 100k entries took {best:.3f}s"
