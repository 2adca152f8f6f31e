"""The genesis block (height 0) and its QC, fixed by the genesis alone."""

from __future__ import annotations

from medledger.ledger.consensus.encoding import encode_parameters
from medledger.ledger.consensus.types import (
    HASH_SIZE,
    Block,
    BlockHeader,
    Genesis,
    QuorumCertificate,
)
from medledger.merkle import root_hash


def genesis_block(genesis: Genesis) -> Block:
    """Height 0, round 0, zero parent hash; its tx_root commits to the chain parameters."""
    header = BlockHeader(
        chain_id=genesis.chain_id,
        height=0,
        round=0,
        parent_hash=bytes(HASH_SIZE),
        tx_root=root_hash([encode_parameters(genesis.parameters)]),
        validator_set_hash=genesis.validators.hash,
        next_validator_set_hash=genesis.validators.hash,
        proposer=0,
        timestamp_unix_ms=genesis.timestamp_unix_ms,
    )
    return Block(header=header, transactions=(), justify=genesis_qc_for(header.hash))


def genesis_qc_for(genesis_hash: bytes) -> QuorumCertificate:
    """The QC every chain starts from: the genesis block at round 0, with no signatures."""
    return QuorumCertificate(block_hash=genesis_hash, height=0, round=0, signatures=())


def genesis_qc(genesis: Genesis) -> QuorumCertificate:
    return genesis_block(genesis).justify
