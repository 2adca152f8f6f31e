"""Ed25519 key generation and storage: PKCS#8 / SubjectPublicKeyInfo PEM, raw bytes, key files.

Private key files are written atomically with mode 0600 and may be encrypted
with a passphrase. Errors never contain key material or the passphrase.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medledger.crypto.errors import KeyFormatError
from medledger.crypto.signing import PUBLIC_KEY_SIZE, SigningKey, VerifyKey

PRIVATE_KEY_FILE_MODE = 0o600
PUBLIC_KEY_FILE_MODE = 0o600
# A PEM key is well under a kilobyte; refusing big files keeps a wrong path cheap.
MAX_KEY_FILE_SIZE = 64 * 1024

Passphrase = bytes | str
KeyPath = str | os.PathLike[str]


def generate_signing_key() -> SigningKey:
    """A fresh Ed25519 key from the operating system's CSPRNG."""
    return SigningKey.generate()


def signing_key_to_pem(key: SigningKey, passphrase: Passphrase | None = None) -> bytes:
    """PKCS#8 PEM of `key`, encrypted with the best available scheme when `passphrase` is given."""
    encryption: serialization.KeySerializationEncryption
    if passphrase is None:
        encryption = serialization.NoEncryption()
    else:
        encryption = serialization.BestAvailableEncryption(_passphrase_bytes(passphrase))
    return key.crypto_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def signing_key_from_pem(data: bytes, passphrase: Passphrase | None = None) -> SigningKey:
    """The Ed25519 key in PKCS#8 PEM `data`; KeyFormatError if it is anything else."""
    password = None if passphrase is None else _passphrase_bytes(passphrase)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        # cryptography raises TypeError for a passphrase mismatch in either direction.
        if password is None:
            raise KeyFormatError("the private key is encrypted: a passphrase is required") from None
        raise KeyFormatError(
            "the private key is not encrypted, but a passphrase was given"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # Deliberately not chained: the cause says nothing useful and a wrong
        # passphrase must not be distinguishable from a corrupt file in logs.
        detail = "wrong passphrase or corrupt key" if password else "malformed key"
        raise KeyFormatError(f"cannot load the private key: {detail}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"expected an Ed25519 private key, got {_key_kind(key)}")
    return SigningKey(key)


def verify_key_to_pem(key: VerifyKey) -> bytes:
    """SubjectPublicKeyInfo PEM of `key` (the "BEGIN PUBLIC KEY" form)."""
    return key.crypto_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_key_from_pem(data: bytes) -> VerifyKey:
    """The Ed25519 public key in SubjectPublicKeyInfo PEM `data`."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError("cannot load the public key: malformed PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"expected an Ed25519 public key, got {_key_kind(key)}")
    return VerifyKey.from_crypto(key)


def verify_key_to_raw(key: VerifyKey) -> bytes:
    """The 32 raw public key bytes of RFC 8032."""
    return key.raw


def verify_key_from_raw(data: bytes) -> VerifyKey:
    """The Ed25519 public key whose 32 raw RFC 8032 bytes are `data`."""
    if not isinstance(data, bytes) or len(data) != PUBLIC_KEY_SIZE:
        raise KeyFormatError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} raw bytes")
    return VerifyKey(data)


def save_signing_key(path: KeyPath, key: SigningKey, passphrase: Passphrase | None = None) -> None:
    """Write `key` as PKCS#8 PEM to `path` atomically, readable by its owner only."""
    _write_atomically(path, signing_key_to_pem(key, passphrase), PRIVATE_KEY_FILE_MODE)


def load_signing_key(path: KeyPath, passphrase: Passphrase | None = None) -> SigningKey:
    """Read a PKCS#8 PEM Ed25519 private key file."""
    return signing_key_from_pem(_read_key_file(path), passphrase)


def save_verify_key(path: KeyPath, key: VerifyKey, mode: int = PUBLIC_KEY_FILE_MODE) -> None:
    """Write `key` as SubjectPublicKeyInfo PEM to `path` atomically."""
    _write_atomically(path, verify_key_to_pem(key), mode)


def load_verify_key(path: KeyPath) -> VerifyKey:
    """Read a SubjectPublicKeyInfo PEM Ed25519 public key file."""
    return verify_key_from_pem(_read_key_file(path))


def _passphrase_bytes(passphrase: Passphrase) -> bytes:
    value = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not isinstance(value, bytes) or not value:
        raise KeyFormatError("a passphrase must be non-empty text or bytes")
    return value


def _key_kind(key: object) -> str:
    # The class name (e.g. "RSAPrivateKey") identifies the type without any key material.
    name = type(key).__name__.removeprefix("_")
    return name or "an unknown key type"


def _read_key_file(path: KeyPath) -> bytes:
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise KeyFormatError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyFormatError(f"key file {path} is larger than {MAX_KEY_FILE_SIZE} bytes")
    return data


def _write_atomically(path: KeyPath, data: bytes, mode: int) -> None:
    """Write to a private temporary file in the same directory, fsync, then rename over `path`.

    Readers see the old file or the new one, never a partial key, and the key
    is never on disk with wider permissions than `mode`.
    """
    path = Path(path)
    directory = path.parent
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as file:
            # mkstemp already creates the file 0600; fchmod sets `mode` exactly, whatever the umask.
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
