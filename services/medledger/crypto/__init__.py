"""Keys, signatures with domain separation, and hashing shared by every service."""

from medledger.crypto.errors import CryptoError, KeyFormatError, SignatureError
from medledger.crypto.keys import (
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    save_signing_key,
    save_verify_key,
    signing_key_from_pem,
    signing_key_to_pem,
    verify_key_from_pem,
    verify_key_from_raw,
    verify_key_to_pem,
    verify_key_to_raw,
)
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
    "generate_signing_key",
    "load_signing_key",
    "load_verify_key",
    "save_signing_key",
    "save_verify_key",
    "sha256",
    "signed_bytes",
    "signing_key_from_pem",
    "signing_key_to_pem",
    "verify_key_from_pem",
    "verify_key_from_raw",
    "verify_key_to_pem",
    "verify_key_to_raw",
]
