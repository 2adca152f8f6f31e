"""Ed25519 signing with domain separation.

Every signed payload is prefixed by a fixed context string naming what it is,
so a signature made for one purpose can never be replayed as another. The exact
bytes are specified in docs/signing.md:

    signed_bytes = ascii(context) || 0x00 || payload
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from medledger.crypto.errors import KeyFormatError, SignatureError

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32


class SigningContext(StrEnum):
    """The purposes a medledger key signs for; the value is the signed prefix."""

    TRANSACTION = "medledger/v1/ledger/transaction"
    PROPOSAL = "medledger/v1/ledger/proposal"
    VOTE = "medledger/v1/ledger/vote"
    TIMEOUT = "medledger/v1/ledger/timeout"
    FINALITY = "medledger/v1/ledger/finality"
    CONSENSUS_MESSAGE = "medledger/v1/ledger/consensus-message"
    CHECKPOINT = "medledger/v1/audit/checkpoint"
    TOKEN_CHALLENGE = "medledger/v1/identity/token-challenge"  # noqa: S105 (a context, not a secret)


def signed_bytes(context: SigningContext, payload: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers for `payload` in `context`."""
    return context.value.encode("ascii") + b"\x00" + payload


def sha256(*parts: bytes) -> bytes:
    """SHA-256 of the concatenation of `parts`."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()


class VerifyKey:
    """An Ed25519 public key."""

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_SIZE:
            raise KeyFormatError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise KeyFormatError(f"not an Ed25519 public key: {exc}") from exc
        self._raw = bytes(raw)

    @classmethod
    def from_crypto(cls, key: Ed25519PublicKey) -> VerifyKey:
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @property
    def raw(self) -> bytes:
        """The 32 raw public key bytes (RFC 8032)."""
        return self._raw

    @property
    def crypto_key(self) -> Ed25519PublicKey:
        return self._key

    @property
    def key_id(self) -> str:
        """A short stable identifier: hex of the first 8 bytes of SHA-256(raw)."""
        return sha256(self._raw)[:8].hex()

    def verify(self, context: SigningContext, payload: bytes, signature: bytes) -> None:
        """Raise SignatureError unless `signature` is this key's over `payload` in `context`."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError(f"an Ed25519 signature is 64 bytes, got {len(signature)}")
        try:
            self._key.verify(signature, signed_bytes(context, payload))
        except InvalidSignature as exc:
            raise SignatureError(f"signature does not verify for {context.value}") from exc

    def is_valid(self, context: SigningContext, payload: bytes, signature: bytes) -> bool:
        """True when `verify` would succeed."""
        try:
            self.verify(context, payload, signature)
        except SignatureError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id})"


class SigningKey:
    """An Ed25519 private key. Never logged: its repr shows only the public key id."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = VerifyKey.from_crypto(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose RFC 8032 private seed is `seed` (32 bytes)."""
        if len(seed) != SEED_SIZE:
            raise KeyFormatError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def crypto_key(self) -> Ed25519PrivateKey:
        return self._key

    @property
    def public_key(self) -> VerifyKey:
        return self._public

    def sign(self, context: SigningContext, payload: bytes) -> bytes:
        """Sign `payload` in `context`; Ed25519 is deterministic, so is this."""
        return self._key.sign(signed_bytes(context, payload))

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.key_id})"
