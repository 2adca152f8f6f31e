"""Canonical byte layouts that are hashed or signed (specified in docs/ledger.md).

The header, validator-set and finality layouts are defined once, in
medledger.ledgerclient.encoding, because light clients recompute them; the
consensus-internal layouts (proposal, vote, timeout, parameters) live here.
Integers are big-endian and fixed width (u32 or u64); byte strings and UTF-8 text are
prefixed by their u32 length; each layout starts with a length-prefixed version tag,
so a later layout can never be mistaken for this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medledger.crypto import sha256
from medledger.ledgerclient.encoding import (
    finality_payload,
    header_bytes,
    lp,
    text,
    u64,
    validator_set_bytes,
)

__all__ = [
    "encode_header",
    "encode_parameters",
    "encode_validator_set",
    "finality_payload",
    "header_hash",
    "proposal_payload",
    "timeout_payload",
    "validator_set_hash",
    "vote_payload",
]

if TYPE_CHECKING:
    from medledger.ledger.consensus.types import (
        BlockHeader,
        ChainParameters,
        ValidatorSet,
    )

PARAMETERS_TAG = b"medledger.ledger.chain-parameters.v1"
PROPOSAL_TAG = b"medledger.ledger.proposal.v1"
VOTE_TAG = b"medledger.ledger.vote.v1"
TIMEOUT_TAG = b"medledger.ledger.timeout.v1"


def encode_header(header: BlockHeader) -> bytes:
    return header_bytes(
        chain_id=header.chain_id,
        height=header.height,
        round_=header.round,
        parent_hash=header.parent_hash,
        tx_root=header.tx_root,
        validator_set_hash=header.validator_set_hash,
        next_validator_set_hash=header.next_validator_set_hash,
        proposer=header.proposer,
        timestamp_unix_ms=header.timestamp_unix_ms,
    )


def header_hash(header: BlockHeader) -> bytes:
    """The block hash: SHA-256 of the canonical header encoding."""
    return sha256(encode_header(header))


def encode_validator_set(validators: ValidatorSet) -> bytes:
    return validator_set_bytes(
        (v.name, v.organisation, v.public_key, v.power) for v in validators.validators
    )


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
