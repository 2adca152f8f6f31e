"""Hypothesis properties of proofs over random trees.

A proof only binds the shape of the path it was made for, not the tree size it
was claimed for: a proof made for one size can verify under another size when
the two paths have the same shape (e.g. leaf 0 in trees of 3 and 4 leaves). So
the wrong-size properties compare against the path shape from RFC 9162's
recursive definition instead of demanding failure; callers take the size from
the signed checkpoint, never from the proof.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.merkle import (
    ProofError,
    consistency_proof_from_leaf_hashes,
    inclusion_proof_from_leaf_hashes,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 300
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def _k(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def path_sides(index: int, size: int) -> tuple[str, ...]:
    """Which side each element of PATH(index, D[size]) sits on, lowest first (RFC 9162 §2.1.3.1)."""
    if size == 1:
        return ()
    k = _k(size)
    if index < k:
        return (*path_sides(index, k), "right")
    return (*path_sides(index - k, size - k), "left")


@st.composite
def trees(draw: st.DrawFn, min_size: int = 1) -> list[bytes]:
    size = draw(st.integers(min_value=min_size, max_value=MAX_SIZE))
    salt = draw(st.binary(max_size=8))
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(size)]


def flip(value: bytes, bit: int) -> bytes:
    bit %= 8 * len(value)
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def inclusion_fails(*arguments: object) -> bool:
    try:
        verify_inclusion(*arguments)  # type: ignore[arg-type]
    except ProofError:
        return True
    return False


def consistency_fails(*arguments: object) -> bool:
    try:
        verify_consistency(*arguments)  # type: ignore[arg-type]
    except ProofError:
        return True
    return False


@PROPERTY_SETTINGS
@given(leaves=trees(), data=st.data())
def test_every_inclusion_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = inclusion_proof_from_leaf_hashes(leaves, index)
    assert len(proof) == len(path_sides(index, len(leaves)))
    verify_inclusion(leaves[index], index, len(leaves), proof, root_from_leaf_hashes(leaves))


@PROPERTY_SETTINGS
@given(leaves=trees(), data=st.data())
def test_every_consistency_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    old_size = data.draw(st.integers(1, len(leaves)))
    proof = consistency_proof_from_leaf_hashes(leaves, old_size)
    old_root = root_from_leaf_hashes(leaves[:old_size])
    verify_consistency(old_size, len(leaves), proof, old_root, root_from_leaf_hashes(leaves))


@PROPERTY_SETTINGS
@given(leaves=trees(), data=st.data())
def test_any_bit_flip_breaks_an_inclusion_proof(leaves: list[bytes], data: st.DataObject) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof_from_leaf_hashes(leaves, index)
    root = root_from_leaf_hashes(leaves)
    bit = data.draw(st.integers(0, 255))
    assert inclusion_fails(flip(leaves[index], bit), index, size, proof, root)
    assert inclusion_fails(leaves[index], index, size, proof, flip(root, bit))
    if proof:
        element = data.draw(st.integers(0, len(proof) - 1))
        broken = [*proof[:element], flip(proof[element], bit), *proof[element + 1 :]]
        assert inclusion_fails(leaves[index], index, size, broken, root)
        assert inclusion_fails(leaves[index], index, size, proof[:-1], root)
    assert inclusion_fails(leaves[index], index, size, [*proof, root], root)
    assert inclusion_fails(leaves[index], index, size, [root, *proof], root)


@PROPERTY_SETTINGS
@given(leaves=trees(min_size=2), data=st.data())
def test_a_wrong_index_breaks_an_inclusion_proof(leaves: list[bytes], data: st.DataObject) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    wrong = data.draw(st.integers(-2, size + 2).filter(lambda i: i != index))
    proof = inclusion_proof_from_leaf_hashes(leaves, index)
    assert inclusion_fails(leaves[index], wrong, size, proof, root_from_leaf_hashes(leaves))


@PROPERTY_SETTINGS
@given(leaves=trees(), data=st.data())
def test_a_wrong_size_verifies_only_for_the_same_path_shape(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    wrong = data.draw(st.integers(0, 2 * MAX_SIZE).filter(lambda n: n != size))
    proof = inclusion_proof_from_leaf_hashes(leaves, index)
    same_shape = index < wrong and path_sides(index, wrong) == path_sides(index, size)
    root = root_from_leaf_hashes(leaves)
    assert inclusion_fails(leaves[index], index, wrong, proof, root) is not same_shape


@PROPERTY_SETTINGS
@given(leaves=trees(min_size=2), data=st.data())
def test_any_bit_flip_breaks_a_consistency_proof(leaves: list[bytes], data: st.DataObject) -> None:
    size = len(leaves)
    old_size = data.draw(st.integers(1, size - 1))
    proof = consistency_proof_from_leaf_hashes(leaves, old_size)
    old_root = root_from_leaf_hashes(leaves[:old_size])
    new_root = root_from_leaf_hashes(leaves)
    bit = data.draw(st.integers(0, 255))
    element = data.draw(st.integers(0, len(proof) - 1))
    broken = [*proof[:element], flip(proof[element], bit), *proof[element + 1 :]]
    assert consistency_fails(old_size, size, broken, old_root, new_root)
    assert consistency_fails(old_size, size, proof, flip(old_root, bit), new_root)
    assert consistency_fails(old_size, size, proof, old_root, flip(new_root, bit))
    assert consistency_fails(old_size, size, proof, new_root, old_root)
    assert consistency_fails(old_size, size, proof[:-1], old_root, new_root)
    assert consistency_fails(old_size, size, [*proof, new_root], old_root, new_root)
    assert consistency_fails(old_size, size, [old_root, *proof], old_root, new_root)


@PROPERTY_SETTINGS
@given(leaves=trees(min_size=2), data=st.data())
def test_a_wrong_old_size_breaks_a_consistency_proof(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    old_size = data.draw(st.integers(1, size - 1))
    wrong = data.draw(st.integers(-1, size + 1).filter(lambda m: m != old_size))
    proof = consistency_proof_from_leaf_hashes(leaves, old_size)
    old_root = root_from_leaf_hashes(leaves[:old_size])
    assert consistency_fails(wrong, size, proof, old_root, root_from_leaf_hashes(leaves))


@PROPERTY_SETTINGS
@given(leaves=trees(min_size=2), data=st.data())
def test_a_wrong_new_size_verifies_only_for_the_same_path_shape(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    old_size = data.draw(st.integers(1, size - 1))
    wrong = data.draw(st.integers(0, 2 * MAX_SIZE).filter(lambda n: n != size))
    proof = consistency_proof_from_leaf_hashes(leaves, old_size)
    old_root = root_from_leaf_hashes(leaves[:old_size])
    # A consistency proof is the upper part of the inclusion path of leaf old_size - 1.
    same_shape = old_size < wrong and path_sides(old_size - 1, wrong) == path_sides(
        old_size - 1, size
    )
    fails = consistency_fails(old_size, wrong, proof, old_root, root_from_leaf_hashes(leaves))
    assert fails is not same_shape
