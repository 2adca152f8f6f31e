"""The signed transaction envelope every change to the shared ledger travels in.

Signatures cover the carried body bytes exactly; the transaction id is the
SHA-256 of those bytes. Any service builds transactions with `sign_transaction`;
validators check them with `check_transaction`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from google.protobuf.message import DecodeError as ProtobufDecodeError

from medledger._gen.common.v1 import transaction_pb2
from medledger.crypto import KeyFormatError, SigningContext, SigningKey, VerifyKey, sha256

PAYLOAD_OF_TYPE: dict[int, str] = {
    transaction_pb2.TRANSACTION_TYPE_IDENTITY_CHANGE: "identity_change",
    transaction_pb2.TRANSACTION_TYPE_CONSENT_CHANGE: "consent_change",
    transaction_pb2.TRANSACTION_TYPE_RECORD_REGISTRATION: "record_registration",
    transaction_pb2.TRANSACTION_TYPE_AUDIT_CHECKPOINT_ANCHOR: "audit_checkpoint_anchor",
    transaction_pb2.TRANSACTION_TYPE_GOVERNANCE_CHANGE: "governance_change",
    transaction_pb2.TRANSACTION_TYPE_RECORD_ERASURE: "record_erasure",
}
TYPE_OF_PAYLOAD = {payload: kind for kind, payload in PAYLOAD_OF_TYPE.items()}


class TransactionError(Exception):
    """A transaction no validator will accept; `reason` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CheckedTransaction:
    """A transaction whose envelope, signature and shape have been checked."""

    tx_id: bytes
    envelope: transaction_pb2.Transaction
    body: transaction_pb2.TransactionBody

    @property
    def tx_id_hex(self) -> str:
        return self.tx_id.hex()

    @property
    def signer_key(self) -> VerifyKey:
        return VerifyKey(self.envelope.signer_public_key)


_KEY_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _verify_key(raw: bytes) -> VerifyKey:
    # Signers (services, validators) sign many transactions with one key: parsing the
    # key once instead of per transaction is a measurable share of a validator's CPU.
    return VerifyKey(raw)


def transaction_id(body: bytes) -> bytes:
    """The id a transaction is final under at most once: SHA-256 of its body bytes."""
    return sha256(body)


def sign_transaction(body: transaction_pb2.TransactionBody, key: SigningKey) -> bytes:
    """Serialize `body`, sign exactly those bytes; returns the serialized Transaction.

    The type is filled in from the payload when left unspecified.
    """
    if body.type == transaction_pb2.TRANSACTION_TYPE_UNSPECIFIED:
        payload = body.WhichOneof("payload")
        if payload is not None:
            body.type = TYPE_OF_PAYLOAD[payload]  # type: ignore[assignment]
    body_bytes = body.SerializeToString(deterministic=True)
    envelope = transaction_pb2.Transaction(
        body=body_bytes,
        signer_key_id=key.public_key.key_id,
        signer_public_key=key.public_key.raw,
        signature=key.sign(SigningContext.TRANSACTION, body_bytes),
    )
    return envelope.SerializeToString(deterministic=True)


def parse_envelope(data: bytes) -> transaction_pb2.Transaction:
    envelope = transaction_pb2.Transaction()
    try:
        envelope.ParseFromString(data)
    except (ProtobufDecodeError, ValueError, RecursionError) as exc:
        raise TransactionError("TX_MALFORMED", f"not a Transaction: {exc}") from exc
    return envelope


def check_transaction(data: bytes, chain_id: str, max_bytes: int) -> CheckedTransaction:
    """Parse and check a serialized Transaction; raise TransactionError naming the problem."""
    if len(data) > max_bytes:
        raise TransactionError("TX_TOO_LARGE", f"transaction of {len(data)} bytes > {max_bytes}")
    envelope = parse_envelope(data)
    # Blocks carry transactions as bytes and verifiers hash re-serialized messages,
    # so only the canonical serialization is accepted.
    if envelope.SerializeToString(deterministic=True) != data:
        raise TransactionError("TX_NOT_CANONICAL", "transaction bytes are not canonical")
    if not envelope.body:
        raise TransactionError("TX_MALFORMED", "transaction has no body")
    try:
        key = _verify_key(envelope.signer_public_key)
    except KeyFormatError as exc:
        raise TransactionError("TX_BAD_SIGNER_KEY", str(exc)) from exc
    if envelope.signer_key_id != key.key_id:
        raise TransactionError("TX_BAD_SIGNER_KEY", "signer_key_id does not match the public key")
    if not key.is_valid(SigningContext.TRANSACTION, envelope.body, envelope.signature):
        raise TransactionError("TX_BAD_SIGNATURE", "signature does not verify over the body")
    body = transaction_pb2.TransactionBody()
    try:
        body.ParseFromString(envelope.body)
    except (ProtobufDecodeError, ValueError, RecursionError) as exc:
        raise TransactionError("TX_MALFORMED", f"body is not a TransactionBody: {exc}") from exc
    if body.chain_id != chain_id:
        raise TransactionError("TX_WRONG_CHAIN", f"transaction is for chain {body.chain_id!r}")
    expected = PAYLOAD_OF_TYPE.get(body.type)
    if expected is None:
        raise TransactionError("TX_BAD_TYPE", "transaction type is unspecified or unknown")
    if body.WhichOneof("payload") != expected:
        raise TransactionError("TX_TYPE_MISMATCH", f"type requires payload {expected}")
    if not body.signer:
        raise TransactionError("TX_MALFORMED", "body names no signer")
    return CheckedTransaction(tx_id=transaction_id(envelope.body), envelope=envelope, body=body)
