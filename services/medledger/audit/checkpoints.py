"""Checkpoints: the canonical bytes an audit service signs, signing and checking them, and the
ledger transaction that anchors one (docs/audit.md specifies the bytes)."""

from __future__ import annotations

import secrets
import struct

from medledger._gen.common.v1 import audit_anchor_pb2, transaction_pb2
from medledger.audit.model import CheckpointRow
from medledger.crypto import CryptoError, SigningContext, SigningKey, VerifyKey
from medledger.ledgerclient import sign_transaction
from medledger.merkle import HASH_SIZE

CHECKPOINT_VERSION = b"medledger.audit.checkpoint.v1"


class CheckpointFormatError(ValueError):
    reason = "BAD_CHECKPOINT"


def checkpoint_bytes(log_id: str, tree_size: int, root_hash: bytes, time_ms: int) -> bytes:
    """The signed payload: version tag, then length-prefixed log id, size, root and time.

    u16 len ‖ "medledger.audit.checkpoint.v1" ‖ u16 len ‖ utf8(log_id)
    ‖ u64 tree_size ‖ 32-byte root ‖ i64 time (Unix ms)       (all big-endian)
    """
    log = log_id.encode("utf-8")
    if not log or len(log) > 0xFFFF:
        raise CheckpointFormatError("log id must be 1 to 65535 bytes of UTF-8")
    if len(root_hash) != HASH_SIZE:
        raise CheckpointFormatError("root hash must be 32 bytes")
    if not 0 <= tree_size < 1 << 64:
        raise CheckpointFormatError("tree size out of range")
    return b"".join(
        (
            struct.pack(">H", len(CHECKPOINT_VERSION)),
            CHECKPOINT_VERSION,
            struct.pack(">H", len(log)),
            log,
            struct.pack(">Q", tree_size),
            root_hash,
            struct.pack(">q", time_ms),
        )
    )


def sign_checkpoint(
    key: SigningKey, log_id: str, tree_size: int, root_hash: bytes, time_ms: int
) -> bytes:
    payload = checkpoint_bytes(log_id, tree_size, root_hash, time_ms)
    return key.sign(SigningContext.CHECKPOINT, payload)


def checkpoint_signature_valid(
    public_key: bytes,
    signature: bytes,
    log_id: str,
    tree_size: int,
    root_hash: bytes,
    time_ms: int,
) -> bool:
    try:
        key = VerifyKey(public_key)
        payload = checkpoint_bytes(log_id, tree_size, root_hash, time_ms)
    except (CryptoError, CheckpointFormatError):
        return False
    return key.is_valid(SigningContext.CHECKPOINT, payload, signature)


def anchor_payload(checkpoint: CheckpointRow) -> audit_anchor_pb2.AuditCheckpointAnchor:
    return audit_anchor_pb2.AuditCheckpointAnchor(
        log_id=checkpoint.log_id,
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash,
        checkpoint_time_unix_ms=checkpoint.time_ms,
        signer=checkpoint.signer,
        signer_key_id=checkpoint.signer_key_id,
        signature=checkpoint.signature,
    )


def anchor_transaction(checkpoint: CheckpointRow, chain_id: str, key: SigningKey) -> bytes:
    """The signed ledger transaction (serialized Transaction) anchoring `checkpoint`."""
    body = transaction_pb2.TransactionBody(
        chain_id=chain_id,
        type=transaction_pb2.TRANSACTION_TYPE_AUDIT_CHECKPOINT_ANCHOR,
        # Random, so re-anchoring the same tree size after a restart is a distinct transaction.
        nonce=secrets.randbits(63),
        created_at_unix_ms=checkpoint.time_ms,
        signer=checkpoint.signer,
        audit_checkpoint_anchor=anchor_payload(checkpoint),
    )
    return sign_transaction(body, key)
