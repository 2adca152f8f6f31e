"""The checkpoint's canonical bytes are exactly those docs/audit.md specifies, and a signature
over them is checked by any Ed25519 implementation with the CHECKPOINT context."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medledger.audit.checkpoints import (
    CheckpointFormatError,
    checkpoint_bytes,
    checkpoint_signature_valid,
    sign_checkpoint,
)
from medledger.crypto import SigningContext, SigningKey

DOC = Path(__file__).parents[3] / "docs" / "audit.md"
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ROOT = bytes.fromhex("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77")


def test_layout() -> None:
    data = checkpoint_bytes("st-mary/audit", 3, ROOT, 1_700_000_000_000)
    assert data == (
        b"\x00\x1dmedledger.audit.checkpoint.v1"
        + b"\x00\x0dst-mary/audit"
        + (3).to_bytes(8, "big")
        + ROOT
        + (1_700_000_000_000).to_bytes(8, "big")
    )


def test_the_documented_example_matches() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = {
        name: value
        for name, value in re.findall(
            r"\| (checkpoint bytes|signature) \(hex\) \| `([0-9a-f]+)` \|", text
        )
    }
    key = SigningKey.from_seed(RFC8032_SEED)
    data = checkpoint_bytes("st-mary/audit", 3, ROOT, 1_700_000_000_000)
    assert documented["checkpoint bytes"] == data.hex()
    signature = sign_checkpoint(key, "st-mary/audit", 3, ROOT, 1_700_000_000_000)
    assert documented["signature"] == signature.hex()
    assert key.public_key.is_valid(SigningContext.CHECKPOINT, data, signature)


def test_any_changed_field_breaks_the_signature() -> None:
    key = SigningKey.generate()
    signature = sign_checkpoint(key, "l", 10, ROOT, 5)
    raw = key.public_key.raw
    assert checkpoint_signature_valid(raw, signature, "l", 10, ROOT, 5)
    assert not checkpoint_signature_valid(raw, signature, "m", 10, ROOT, 5)
    assert not checkpoint_signature_valid(raw, signature, "l", 11, ROOT, 5)
    assert not checkpoint_signature_valid(raw, signature, "l", 10, bytes(32), 5)
    assert not checkpoint_signature_valid(raw, signature, "l", 10, ROOT, 6)
    assert not checkpoint_signature_valid(raw[:31], signature, "l", 10, ROOT, 5)


@pytest.mark.parametrize(
    ("log_id", "size", "root"), [("", 1, ROOT), ("l", 1, b"short"), ("l", -1, ROOT)]
)
def test_malformed_fields_are_refused(log_id: str, size: int, root: bytes) -> None:
    with pytest.raises(CheckpointFormatError):
        checkpoint_bytes(log_id, size, root, 0)
