"""Keys, signatures with domain separation, and hashing shared by every service."""

from medledger.crypto.errors import CryptoError, KeyFormatError, SignatureError
from medledger.crypto.signing import (
    SigningContext,
    SigningKey,
    VerifyKey,
    sha256,
    signed_bytes,
)

__all__ = [
    "CryptoError",
    "KeyFormatError",
    "SignatureError",
    "SigningContext",
    "SigningKey",
    "VerifyKey",
    "sha256",
    "signed_bytes",
]
