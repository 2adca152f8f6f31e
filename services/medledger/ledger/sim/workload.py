"""Signed client transactions for simulations, and the rules that check them."""

from __future__ import annotations

import random

from medledger.crypto import SigningContext, SigningKey, VerifyKey, sha256
from medledger.crypto.signing import SIGNATURE_SIZE
from medledger.ledger.consensus import ValidatorSetChange

_PREFIX = b"simtx1"


class SimTransactionRules:
    """A transaction is PREFIX || body || Ed25519 signature by the workload's client key."""

    def __init__(self, client_key: VerifyKey) -> None:
        self._client = client_key
        self._changes: dict[bytes, ValidatorSetChange] = {}

    def register_change(self, tx: bytes, change: ValidatorSetChange) -> None:
        """Make `tx` a governance transaction asking for `change` (the simulation's
        stand-in for parsing one)."""
        self._changes[tx] = change

    def tx_id(self, tx: bytes) -> bytes:
        return sha256(tx[:-SIGNATURE_SIZE])

    def validate(self, tx: bytes) -> str | None:
        if len(tx) <= len(_PREFIX) + SIGNATURE_SIZE or not tx.startswith(_PREFIX):
            return "not a simulation transaction"
        body, signature = tx[:-SIGNATURE_SIZE], tx[-SIGNATURE_SIZE:]
        if not self._client.is_valid(SigningContext.TRANSACTION, body, signature):
            return "bad client signature"
        return None

    def validator_set_change(self, tx: bytes) -> ValidatorSetChange | None:
        return self._changes.get(tx)


class Workload:
    """Makes the run's transactions: mostly valid, a few with a forged signature."""

    def __init__(self, rng: random.Random, client: SigningKey) -> None:
        self._rng = rng
        self._client = client

    def make(self, sequence: int, valid: bool) -> bytes:
        payload = self._rng.randbytes(self._rng.randint(8, 48))
        body = _PREFIX + sequence.to_bytes(4, "big") + payload
        signature = self._client.sign(SigningContext.TRANSACTION, body)
        if not valid:
            signature = bytes([signature[0] ^ 0x01]) + signature[1:]
        return body + signature

    def governance(self, change: ValidatorSetChange, rules: SimTransactionRules) -> bytes:
        """A client-signed transaction carrying `change`."""
        body = _PREFIX + b"governance" + change.validators.hash
        tx = body + self._client.sign(SigningContext.TRANSACTION, body)
        rules.register_change(tx, change)
        return tx
