"""Canonical byte layouts that are hashed or signed (specified in docs/ledger.md).

Integers are big-endian and fixed width (u32 or u64); byte strings and UTF-8 text are
prefixed by their u32 length; each layout starts with a length-prefixed version tag,
so a later layout can never be mistaken for this one.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from medledger.crypto import sha256

if TYPE_CHECKING:
    from medledger.ledger.consensus.types import (
        BlockHeader,
        ChainParameters,
        ValidatorSet,
    )

HEADER_TAG = b"medledger.ledger.block-header.v1"
VALIDATOR_SET_TAG = b"medledger.ledger.validator-set.v1"
PARAMETERS_TAG = b"medledger.ledger.chain-parameters.v1"
PROPOSAL_TAG = b"medledger.ledger.proposal.v1"
VOTE_TAG = b"medledger.ledger.vote.v1"
TIMEOUT_TAG = b"medledger.ledger.timeout.v1"
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


def encode_header(header: BlockHeader) -> bytes:
    return b"".join(
        (
            lp(HEADER_TAG),
            text(header.chain_id),
            u64(header.height),
            u64(header.round),
            lp(header.parent_hash),
            lp(header.tx_root),
            lp(header.validator_set_hash),
            lp(header.next_validator_set_hash),
            u32(header.proposer),
            u64(header.timestamp_unix_ms),
        )
    )


def header_hash(header: BlockHeader) -> bytes:
    """The block hash: SHA-256 of the canonical header encoding."""
    return sha256(encode_header(header))


def encode_validator_set(validators: ValidatorSet) -> bytes:
    parts = [lp(VALIDATOR_SET_TAG), u32(len(validators.validators))]
    for v in validators.validators:
        parts += [text(v.name), text(v.organisation), lp(v.public_key), u64(v.power)]
    return b"".join(parts)


def validator_set_hash(validators: ValidatorSet) -> bytes:
    return sha256(encode_validator_set(validators))


def encode_parameters(parameters: ChainParameters) -> bytes:
    return b"".join(
        (
            lp(PARAMETERS_TAG),
            u64(parameters.max_block_txs),
            u64(parameters.max_block_bytes),
            u64(parameters.max_tx_bytes),
            u64(parameters.max_clock_drift_ms),
        )
    )


def proposal_payload(chain_id: str, block_hash: bytes, round_: int) -> bytes:
    return lp(PROPOSAL_TAG) + text(chain_id) + lp(block_hash) + u64(round_)


def vote_payload(chain_id: str, block_hash: bytes, height: int, round_: int) -> bytes:
    return lp(VOTE_TAG) + text(chain_id) + lp(block_hash) + u64(height) + u64(round_)


def timeout_payload(chain_id: str, round_: int, high_qc_round: int) -> bytes:
    return lp(TIMEOUT_TAG) + text(chain_id) + u64(round_) + u64(high_qc_round)


def finality_payload(chain_id: str, height: int, block_hash: bytes) -> bytes:
    return lp(FINALITY_TAG) + text(chain_id) + u64(height) + lp(block_hash)
