"""docs/merkle.md's example and the package's public surface match the code."""

from __future__ import annotations

from pathlib import Path

import medledger.merkle
from medledger.merkle import (
    MerkleAccumulator,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "merkle.md"
ENTRIES = [b"", b"\x00", b"\x10"]


def _short(value: bytes) -> str:
    return f"`{value.hex()[:8]}…{value.hex()[-6:]}`"


def test_example_section_matches() -> None:
    text = DOC.read_text()
    example = text[text.index("## Example") : text.index("## Errors")]
    leaves = ", ".join(f"`{leaf_hash(e).hex()}`" for e in ENTRIES)
    assert f"| leaf hashes | {leaves} |" in example
    assert f"| root of size 2 | `{root_hash(ENTRIES[:2]).hex()}` |" in example
    assert f"| root of size 3 | `{root_hash(ENTRIES).hex()}` |" in example
    proof0 = ", ".join(_short(p) for p in inclusion_proof(ENTRIES, 0))
    assert f"| inclusion proof of leaf 0, size 3 | {proof0} (" in example
    proof2 = ", ".join(_short(p) for p in inclusion_proof(ENTRIES, 2))
    assert f"| inclusion proof of leaf 2, size 3 | {proof2} (" in example
    consistency = ", ".join(_short(p) for p in consistency_proof(ENTRIES, 2))
    assert f"| consistency proof 2 → 3 | {consistency} (" in example
    state = MerkleAccumulator.from_leaf_hashes([leaf_hash(e) for e in ENTRIES]).to_bytes()
    size, peaks = state[:8], [state[8:40], state[40:72]]
    rendered = " ".join([f"`{size.hex()}`", *(_short(p) for p in peaks)])
    assert f"| accumulator state at size 3 | {rendered} |" in example


def test_public_surface() -> None:
    required = {
        "leaf_hash",
        "node_hash",
        "root_hash",
        "inclusion_proof",
        "consistency_proof",
        "verify_inclusion",
        "verify_consistency",
        "ProofError",
        "root_from_leaf_hashes",
        "inclusion_proof_from_leaf_hashes",
        "consistency_proof_from_leaf_hashes",
        "CompactRange",
        "MerkleAccumulator",
    }
    assert required <= set(medledger.merkle.__all__)
    for name in medledger.merkle.__all__:
        assert getattr(medledger.merkle, name) is not None
    assert issubclass(medledger.merkle.ProofError, medledger.merkle.MerkleError)
