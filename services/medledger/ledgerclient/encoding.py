"""Canonical byte layouts of the ledger that a verifier recomputes: block header
hash, validator-set hash and the finality payload (specified in docs/ledger.md).

Integers are big-endian and fixed width; byte strings and UTF-8 text carry a u32
length prefix; each layout starts with a length-prefixed version tag.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from medledger.crypto import sha256

HEADER_TAG = b"medledger.ledger.block-header.v1"
VALIDATOR_SET_TAG = b"medledger.ledger.validator-set.v1"
FINALITY_TAG = b"medledger.ledger.finality.v1"

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def lp(value: bytes) -> bytes:
    """Length-prefixed bytes: u32 length || bytes."""
    return _U32.pack(len(value)) + value


def text(value: str) -> bytes:
    return lp(value.encode("utf-8"))


def header_bytes(
    *,
    chain_id: str,
    height: int,
    round_: int,
    parent_hash: bytes,
    tx_root: bytes,
    validator_set_hash: bytes,
    next_validator_set_hash: bytes,
    proposer: int,
    timestamp_unix_ms: int,
) -> bytes:
    """The canonical encoding of a block header; its SHA-256 is the block hash."""
    return b"".join(
        (
            lp(HEADER_TAG),
            text(chain_id),
            u64(height),
            u64(round_),
            lp(parent_hash),
            lp(tx_root),
            lp(validator_set_hash),
            lp(next_validator_set_hash),
            u32(proposer),
            u64(timestamp_unix_ms),
        )
    )


def validator_set_bytes(validators: Iterable[tuple[str, str, bytes, int]]) -> bytes:
    """Canonical encoding of (name, organisation id, public key, power) in set order."""
    entries = list(validators)
    parts = [lp(VALIDATOR_SET_TAG), u32(len(entries))]
    for name, organisation, public_key, power in entries:
        parts += [text(name), text(organisation), lp(public_key), u64(power)]
    return b"".join(parts)


def finality_payload(chain_id: str, height: int, block_hash: bytes) -> bytes:
    """What a FINALITY signature covers (inside the signing context)."""
    return lp(FINALITY_TAG) + text(chain_id) + u64(height) + lp(block_hash)


def validator_set_digest(validators: Iterable[tuple[str, str, bytes, int]]) -> bytes:
    return sha256(validator_set_bytes(validators))
