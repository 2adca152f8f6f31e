"""Structural checks of incoming messages, before the replica trusts any field.

A decoder may hand over anything: wrong types, negative or huge integers, hashes of the
wrong length, signer indices outside the set. Each check returns None or the
UPPER_SNAKE_CASE reason the message is dropped for; none of them raises.
"""

from __future__ import annotations

from medledger.crypto.signing import SIGNATURE_SIZE
from medledger.ledger.consensus.types import (
    HASH_SIZE,
    Block,
    BlockHeader,
    BlockRequest,
    BlockResponse,
    CertifiedBlock,
    ChainParameters,
    FinalityCertificate,
    FinalityVote,
    Message,
    Proposal,
    QuorumCertificate,
    SyncInfo,
    SyncRequest,
    SyncResponse,
    Timeout,
    TimeoutCertificate,
    TimeoutSignature,
    TransactionBatch,
    ValidatorSignature,
    Vote,
)

MAX_U64 = 2**64 - 1
MAX_CHAIN_ID = 64
MAX_SYNC_BLOCKS = 256


class MalformedError(Exception):
    """Internal signal: the message is structurally bad (never escapes this module)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _int(value: object, low: int = 0, high: int = MAX_U64) -> int:
    if type(value) is not int or not low <= value <= high:
        raise MalformedError("BAD_INTEGER")
    return value


def _hash(value: object) -> None:
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise MalformedError("BAD_HASH")


def _sig(value: object) -> None:
    if type(value) is not bytes or len(value) != SIGNATURE_SIZE:
        raise MalformedError("BAD_SIGNATURE_FORMAT")


def _signer(value: object, n: int) -> None:
    if type(value) is not int or not 0 <= value < n:
        raise MalformedError("BAD_SIGNER")


def _signatures(value: object, n: int) -> None:
    if type(value) is not tuple or len(value) > n:
        raise MalformedError("BAD_SIGNATURES")
    for sig in value:
        if type(sig) is not ValidatorSignature:
            raise MalformedError("BAD_SIGNATURES")
        _signer(sig.signer, n)
        _sig(sig.signature)


def _qc(value: object, n: int) -> None:
    if type(value) is not QuorumCertificate:
        raise MalformedError("BAD_QC")
    _hash(value.block_hash)
    _int(value.height)
    _int(value.round)
    _signatures(value.signatures, n)


def _tc(value: object, n: int) -> None:
    if type(value) is not TimeoutCertificate:
        raise MalformedError("BAD_TC")
    _int(value.round)
    if type(value.signatures) is not tuple or not 0 < len(value.signatures) <= n:
        raise MalformedError("BAD_TC")
    for sig in value.signatures:
        if type(sig) is not TimeoutSignature:
            raise MalformedError("BAD_TC")
        _signer(sig.signer, n)
        _int(sig.high_qc_round)
        _sig(sig.signature)
    _qc(value.high_qc, n)


def _optional_tc(value: object, n: int) -> None:
    if value is not None:
        _tc(value, n)


def _header(value: object, n: int, chain_id: str) -> None:
    if type(value) is not BlockHeader:
        raise MalformedError("BAD_HEADER")
    if type(value.chain_id) is not str:
        raise MalformedError("BAD_HEADER")
    if value.chain_id != chain_id:
        raise MalformedError("WRONG_CHAIN")
    _int(value.height, 1)
    _int(value.round, 1)
    _hash(value.parent_hash)
    _hash(value.tx_root)
    _hash(value.validator_set_hash)
    _hash(value.next_validator_set_hash)
    _signer(value.proposer, n)
    _int(value.timestamp_unix_ms)


def _block(value: object, n: int, chain_id: str, params: ChainParameters) -> None:
    if type(value) is not Block:
        raise MalformedError("BAD_BLOCK")
    _header(value.header, n, chain_id)
    txs = value.transactions
    if type(txs) is not tuple or len(txs) > params.max_block_txs:
        raise MalformedError("TOO_MANY_TRANSACTIONS")
    total = 0
    for tx in txs:
        if type(tx) is not bytes or not 0 < len(tx) <= params.max_tx_bytes:
            raise MalformedError("BAD_TRANSACTION")
        total += len(tx)
    if total > params.max_block_bytes:
        raise MalformedError("BLOCK_TOO_LARGE")
    _qc(value.justify, n)
    if value.justify.block_hash != value.header.parent_hash:
        raise MalformedError("JUSTIFY_NOT_PARENT")
    if value.justify.height + 1 != value.header.height:
        raise MalformedError("BAD_HEIGHT")
    if value.justify.round >= value.header.round:
        raise MalformedError("BAD_ROUND")


def _certificate(value: object, n: int, chain_id: str) -> None:
    if type(value) is not FinalityCertificate:
        raise MalformedError("BAD_CERTIFICATE")
    if type(value.chain_id) is not str or value.chain_id != chain_id:
        raise MalformedError("WRONG_CHAIN")
    _int(value.height, 1)
    _hash(value.block_hash)
    _signatures(value.signatures, n)


def check_message(
    message: Message | object, n: int, chain_id: str, params: ChainParameters
) -> str | None:
    """None when `message` is structurally sound, else the reason to drop it."""
    try:
        _check(message, n, chain_id, params)
    except MalformedError as bad:
        return bad.reason
    return None


def _check(message: object, n: int, chain_id: str, params: ChainParameters) -> None:
    match message:
        case Proposal():
            _block(message.block, n, chain_id, params)
            _optional_tc(message.timeout_certificate, n)
            _sig(message.signature)
            r = message.block.header.round
            tc = message.timeout_certificate
            if message.block.justify.round + 1 != r and (tc is None or tc.round + 1 != r):
                raise MalformedError("UNJUSTIFIED_ROUND")
        case Vote():
            _hash(message.block_hash)
            _int(message.height, 1)
            _int(message.round, 1)
            _signer(message.signer, n)
            _sig(message.signature)
        case Timeout():
            _int(message.round, 1)
            _qc(message.high_qc, n)
            _optional_tc(message.last_tc, n)
            _signer(message.signer, n)
            _sig(message.signature)
            if message.high_qc.round >= message.round:
                raise MalformedError("BAD_ROUND")
            if message.last_tc is not None and message.last_tc.round >= message.round:
                raise MalformedError("BAD_ROUND")
        case SyncInfo():
            _qc(message.high_qc, n)
            _optional_tc(message.last_tc, n)
        case FinalityVote():
            _int(message.height, 1)
            _hash(message.block_hash)
            _signer(message.signer, n)
            _sig(message.signature)
        case FinalityCertificate():
            _certificate(message, n, chain_id)
        case TransactionBatch():
            txs = message.transactions
            if type(txs) is not tuple or len(txs) > params.max_block_txs:
                raise MalformedError("TOO_MANY_TRANSACTIONS")
            for tx in txs:
                if type(tx) is not bytes or not 0 < len(tx) <= params.max_tx_bytes:
                    raise MalformedError("BAD_TRANSACTION")
        case BlockRequest():
            _hash(message.block_hash)
            _int(message.height)
        case BlockResponse():
            _block(message.block, n, chain_id, params)
        case SyncRequest():
            _int(message.from_height, 1)
        case SyncResponse():
            blocks = message.blocks
            if type(blocks) is not tuple or len(blocks) > MAX_SYNC_BLOCKS:
                raise MalformedError("BAD_SYNC_RESPONSE")
            for item in blocks:
                if type(item) is not CertifiedBlock:
                    raise MalformedError("BAD_SYNC_RESPONSE")
                _block(item.block, n, chain_id, params)
                _certificate(item.certificate, n, chain_id)
        case _:
            raise MalformedError("UNKNOWN_MESSAGE")
