"""The plaintext commitment registered on the ledger for each record.

    commitment_key = HKDF-SHA256(ikm=data_key, salt="", info=LABEL || record_id, 32 bytes)
    commitment     = HMAC-SHA256(commitment_key, plaintext)

Hiding: without the commitment key (derived from the secret data key) the value
reveals nothing about the plaintext, unlike a bare hash of a guessable file.
Binding: HMAC-SHA256 with a 32-byte key is collision resistant over (key,
plaintext) pairs, so the custodian can open it to one plaintext only, by
revealing the commitment key, which does not reveal the data key.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COMMITMENT_LABEL = b"medledger/v1/records/plaintext-commitment\x00"
COMMITMENT_SIZE = 32


def commitment_key(data_key: bytes, record_id: str) -> bytes:
    """The per-record key a commitment is opened with."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=COMMITMENT_SIZE,
        salt=None,
        info=COMMITMENT_LABEL + record_id.encode("ascii"),
    ).derive(data_key)


class PlaintextCommitment:
    """Computes a record's commitment incrementally as plaintext streams through."""

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def for_record(cls, data_key: bytes, record_id: str) -> PlaintextCommitment:
        return cls(commitment_key(data_key, record_id))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._mac.update(data)

    def digest(self) -> bytes:
        return self._mac.digest()


def open_commitment(key: bytes, plaintext: bytes, commitment: bytes) -> bool:
    """Whether `plaintext` under the revealed `key` is what `commitment` commits to."""
    return hmac.compare_digest(hmac.new(key, plaintext, hashlib.sha256).digest(), commitment)
