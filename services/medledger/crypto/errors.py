"""Errors raised by medledger.crypto."""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error raised by medledger.crypto."""

    reason = "CRYPTO_ERROR"


class SignatureError(CryptoError):
    """A signature does not verify, or is not 64 bytes."""

    reason = "BAD_SIGNATURE"


class KeyFormatError(CryptoError):
    """Key material is malformed, of the wrong type, or cannot be decrypted."""

    reason = "BAD_KEY"
