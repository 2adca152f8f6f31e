"""Ledger transactions: the signed envelope every change to shared state travels in.

The ledger checks what every validator can check alone and deterministically:
the envelope parses, the signature verifies over the carried body bytes, the
body names this chain, its type matches its payload, and sizes are bounded.
Replay protection is by transaction id (SHA-256 of the body), final at most
once. Whether a signer may make a change (is it an administrator of that
organisation? the patient?) is decided by the services' views, which replay
final blocks deterministically and record a refusal for a change that was not
allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError as ProtobufDecodeError

from medledger._gen.common.v1 import transaction_pb2
from medledger.crypto import KeyFormatError, SigningContext, SigningKey, VerifyKey, sha256
from medledger.ledger.consensus.types import ValidatorSet

TransactionType = transaction_pb2.TransactionType

_PAYLOAD_OF_TYPE: dict[int, str] = {
    transaction_pb2.TRANSACTION_TYPE_IDENTITY_CHANGE: "identity_change",
    transaction_pb2.TRANSACTION_TYPE_CONSENT_CHANGE: "consent_change",
    transaction_pb2.TRANSACTION_TYPE_RECORD_REGISTRATION: "record_registration",
    transaction_pb2.TRANSACTION_TYPE_AUDIT_CHECKPOINT_ANCHOR: "audit_checkpoint_anchor",
    transaction_pb2.TRANSACTION_TYPE_GOVERNANCE_CHANGE: "governance_change",
    transaction_pb2.TRANSACTION_TYPE_RECORD_ERASURE: "record_erasure",
}


class TransactionError(Exception):
    """A transaction that no validator will accept; `reason` says why."""

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


def transaction_id(body: bytes) -> bytes:
    """The id a transaction is final under at most once: SHA-256 of its body bytes."""
    return sha256(body)


def sign_transaction(body: transaction_pb2.TransactionBody, key: SigningKey) -> bytes:
    """Serialize `body`, sign exactly those bytes, and return the Transaction bytes."""
    body_bytes = body.SerializeToString(deterministic=True)
    envelope = transaction_pb2.Transaction(
        body=body_bytes,
        signer_key_id=key.public_key.key_id,
        signer_public_key=key.public_key.raw,
        signature=key.sign(SigningContext.TRANSACTION, body_bytes),
    )
    return envelope.SerializeToString(deterministic=True)


def check_transaction(data: bytes, chain_id: str, max_bytes: int) -> CheckedTransaction:
    """Parse and check a serialized Transaction; raise TransactionError naming the problem."""
    if len(data) > max_bytes:
        raise TransactionError("TX_TOO_LARGE", f"transaction of {len(data)} bytes > {max_bytes}")
    envelope = transaction_pb2.Transaction()
    try:
        envelope.ParseFromString(data)
    except (ProtobufDecodeError, ValueError, RecursionError) as exc:
        raise TransactionError("TX_MALFORMED", f"not a Transaction: {exc}") from exc
    if not envelope.body:
        raise TransactionError("TX_MALFORMED", "transaction has no body")
    try:
        key = VerifyKey(envelope.signer_public_key)
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
    expected = _PAYLOAD_OF_TYPE.get(body.type)
    if expected is None:
        raise TransactionError("TX_BAD_TYPE", "transaction type is unspecified or unknown")
    if body.WhichOneof("payload") != expected:
        raise TransactionError("TX_TYPE_MISMATCH", f"type requires payload {expected}")
    if not body.signer:
        raise TransactionError("TX_MALFORMED", "body names no signer")
    return CheckedTransaction(tx_id=transaction_id(envelope.body), envelope=envelope, body=body)


class LedgerTransactionRules:
    """The consensus core's TransactionRules for medledger's Transaction envelope."""

    def __init__(self, chain_id: str, max_tx_bytes: int) -> None:
        self._chain_id = chain_id
        self._max_tx_bytes = max_tx_bytes

    def tx_id(self, tx: bytes) -> bytes:
        envelope = transaction_pb2.Transaction()
        try:
            envelope.ParseFromString(tx)
        except (ProtobufDecodeError, ValueError, RecursionError):
            # An unparseable transaction still needs a stable id so it can be refused once.
            return sha256(b"unparseable:", tx)
        return transaction_id(envelope.body)

    def validate(self, tx: bytes) -> str | None:
        try:
            checked = check_transaction(tx, self._chain_id, self._max_tx_bytes)
        except TransactionError as exc:
            return exc.reason
        if checked.body.type == transaction_pb2.TRANSACTION_TYPE_GOVERNANCE_CHANGE:
            # Governance needs approvals of 2f+1 current validators, which this
            # envelope cannot carry yet; refuse rather than accept unchecked.
            return "GOVERNANCE_NOT_SUPPORTED"
        return None

    def validator_set_change(self, tx: bytes) -> ValidatorSet | None:
        return None
