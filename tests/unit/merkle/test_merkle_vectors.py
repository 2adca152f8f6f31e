"""Every transparency-dev/merkle RFC 6962 vector (vendored in ./vectors), one test per file.

MEDLEDGER_MERKLE_VECTORS points the tests at another copy, e.g. /work/shared/testdata/merkle.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from medledger.merkle import (
    MerkleAccumulator,
    ProofError,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(os.environ.get("MEDLEDGER_MERKLE_VECTORS", Path(__file__).parent / "vectors"))
INCLUSION = sorted((VECTORS / "testdata" / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((VECTORS / "testdata" / "consistency").rglob("*.json"))

# The one vector whose upstream expectation contradicts our rule that every hash
# is exactly 32 bytes (README of the vectors): equal sizes with equal 12-byte
# "roots". Upstream accepts it because it compares the roots without checking
# their length; we reject them as not being hashes at all.
STRICTER_THAN_UPSTREAM = {"additional/sizes-are-equal-one-and-proof-is-empty.json": "BAD_HASH_SIZE"}


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(data: dict[str, Any]) -> list[bytes]:
    # A Go nil slice is written as JSON null: an empty proof.
    return [_b64(element) for element in data["proof"] or []]


def _case_id(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def test_vectors_are_present() -> None:
    assert len(INCLUSION) == 98
    assert len(CONSISTENCY) == 98


def test_roots_of_the_standard_leaves() -> None:
    roots = _load(VECTORS / "roots.json")
    entries = [bytes.fromhex(value) for value in roots["leaf_inputs_hex"]]
    expected = roots["root_hashes_hex_by_tree_size"]
    assert len(expected) == len(entries) + 1
    accumulator = MerkleAccumulator()
    for size, want in enumerate(expected):
        assert root_hash(entries[:size]).hex() == want
        assert accumulator.root().hex() == want
        if size < len(entries):
            accumulator.append(entries[size])


@pytest.mark.parametrize(
    "path", INCLUSION, ids=[_case_id(p, VECTORS / "testdata" / "inclusion") for p in INCLUSION]
)
def test_inclusion_vector(path: Path) -> None:
    data = _load(path)
    arguments = (
        _b64(data["leafHash"]),
        data["leafIdx"],
        data["treeSize"],
        _proof(data),
        _b64(data["root"]),
    )
    if data["wantErr"]:
        with pytest.raises(ProofError) as caught:
            verify_inclusion(*arguments)
        assert caught.value.reason.isupper()
    else:
        verify_inclusion(*arguments)


@pytest.mark.parametrize(
    "path",
    CONSISTENCY,
    ids=[_case_id(p, VECTORS / "testdata" / "consistency") for p in CONSISTENCY],
)
def test_consistency_vector(path: Path) -> None:
    data = _load(path)
    arguments = (
        data["size1"],
        data["size2"],
        _proof(data),
        _b64(data["root1"]),
        _b64(data["root2"]),
    )
    stricter = STRICTER_THAN_UPSTREAM.get(_case_id(path, VECTORS / "testdata" / "consistency"))
    if data["wantErr"] or stricter:
        with pytest.raises(ProofError) as caught:
            verify_consistency(*arguments)
        if stricter:
            assert caught.value.reason == stricter
    else:
        verify_consistency(*arguments)


def test_the_stricter_vector_passes_with_real_hashes() -> None:
    """The upstream intent of the overridden vector (equal sizes, equal roots) still holds."""
    path = VECTORS / "testdata" / "consistency" / next(iter(STRICTER_THAN_UPSTREAM))
    data = _load(path)
    assert data["wantErr"] is False
    assert len(_b64(data["root1"])) != 32
    root = leaf_hash(b"only entry")
    verify_consistency(data["size1"], data["size2"], _proof(data), root, root)
