"""Key-encryption-key (KEK) providers: wrap and unwrap per-record data keys.

A provider holds KEKs by id; it wraps with its current KEK and unwraps with
whichever KEK a wrapped key names, so rotating the KEK re-wraps data keys
without touching the encrypted blobs. The local provider reads 32-byte keys
from files (a Kubernetes secret mounted as a directory works as is); docs/
encryption.md describes how a Vault transit or cloud KMS provider maps onto
the same interface.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.crypto.errors import CryptoError

KEK_SIZE = 32
DATA_KEY_SIZE = 32
WRAP_NONCE_SIZE = 12
WRAP_VERSION = 1
WRAP_AAD_LABEL = b"medledger/v1/records/data-key\x00"
# A key file holds 32 bytes, possibly as hex or base64 text; anything bigger is a wrong path.
MAX_KEY_FILE_SIZE = 4096
_KEK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyProviderError(CryptoError):
    """Base of key provider errors; messages never contain key material."""

    reason = "KEY_PROVIDER_ERROR"


class KekNotFoundError(KeyProviderError):
    """A wrapped key names a KEK the provider does not hold (retired too early?)."""

    reason = "KEK_NOT_FOUND"


class KeyUnwrapError(KeyProviderError):
    """A wrapped key does not open under its KEK and context: corrupt, or bound elsewhere."""

    reason = "KEY_UNWRAP_FAILED"


class KekConfigError(KeyProviderError):
    """The KEK files or settings are unusable."""

    reason = "KEK_CONFIG_INVALID"


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted under the KEK `kek_id`; `ciphertext` is provider-specific."""

    kek_id: str
    ciphertext: bytes = field(repr=False)


@runtime_checkable
class KeyProvider(Protocol):
    """What the records service needs from a KEK holder (local files, Vault transit, KMS).

    `context` binds a wrapped key to its record (the record id): a wrapped key
    copied onto another record does not unwrap.
    """

    @property
    def current_kek_id(self) -> str:
        """The KEK that `wrap` uses now."""
        ...

    async def wrap(self, data_key: bytes, *, context: bytes) -> WrappedKey:
        """Encrypt `data_key` under the current KEK."""
        ...

    async def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        """The data key inside `wrapped`, using the KEK it names."""
        ...

    async def rewrap(self, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
        """`wrapped` re-encrypted under the current KEK (unchanged if already current)."""
        ...


def new_data_key() -> bytes:
    """A fresh 32-byte data key from the operating system's CSPRNG."""
    return os.urandom(DATA_KEY_SIZE)


def kek_fingerprint(kek: bytes) -> str:
    """A stable id for a KEK with no id of its own; reveals nothing usable about the key."""
    return "kek-" + hashlib.sha256(b"medledger/v1/kek-id\x00" + kek).hexdigest()[:16]


def parse_key_material(raw: bytes, *, source: str) -> bytes:
    """32 key bytes from a file's contents: raw, or hex / base64 text (trailing newline ok)."""
    if len(raw) == KEK_SIZE:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEK_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEK_SIZE:
        return decoded
    raise KekConfigError(f"{source}: a KEK is 32 bytes (raw, 64 hex digits or base64)")


class LocalKeyFileProvider:
    """KEKs held in process memory, loaded from files; wraps with AES-256-GCM.

    Wrapped key layout (docs/encryption.md): version(1) || nonce(12) || AES-GCM(kek,
    data_key) with associated data LABEL || kek_id || 0x00 || context.
    """

    def __init__(self, keks: Mapping[str, bytes], current_kek_id: str) -> None:
        if not keks:
            raise KekConfigError("no KEK configured")
        for kek_id, kek in keks.items():
            if not _KEK_ID.match(kek_id):
                raise KekConfigError(f"bad KEK id {kek_id!r}")
            if len(kek) != KEK_SIZE:
                raise KekConfigError(f"KEK {kek_id} is not {KEK_SIZE} bytes")
        if current_kek_id not in keks:
            raise KekConfigError(f"the current KEK {current_kek_id!r} is not among the keys")
        self._keks = {kek_id: AESGCM(kek) for kek_id, kek in keks.items()}
        self._current = current_kek_id

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], kek_id: str | None = None
    ) -> LocalKeyFileProvider:
        """One KEK in one file; its id is `kek_id` or the key's fingerprint."""
        kek = parse_key_material(_read_key_file(Path(path)), source=str(path))
        kek_id = kek_id or kek_fingerprint(kek)
        return cls({kek_id: kek}, kek_id)

    @classmethod
    def from_directory(
        cls, path: str | os.PathLike[str], current_kek_id: str | None = None
    ) -> LocalKeyFileProvider:
        """Every file in `path` is a KEK named by its file name, as a mounted Kubernetes secret.

        Hidden entries (the secret volume's `..data` links) are skipped. With
        several keys, `current_kek_id` says which one wraps; old ones stay for
        unwrapping until every data key has been re-wrapped.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise KekConfigError(f"{directory}: not a directory")
        keks: dict[str, bytes] = {}
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            keks[entry.name] = parse_key_material(_read_key_file(entry), source=str(entry))
        if current_kek_id is None:
            if len(keks) != 1:
                raise KekConfigError(
                    f"{directory}: {len(keks)} keys found; name the current one explicitly"
                )
            current_kek_id = next(iter(keks))
        return cls(keks, current_kek_id)

    @property
    def current_kek_id(self) -> str:
        return self._current

    @property
    def kek_ids(self) -> frozenset[str]:
        return frozenset(self._keks)

    async def wrap(self, data_key: bytes, *, context: bytes) -> WrappedKey:
        return self._wrap(data_key, context)

    async def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        return self._unwrap(wrapped, context)

    async def rewrap(self, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
        if wrapped.kek_id == self._current:
            # Still checked, so a rewrap pass also finds corrupt wrapped keys.
            self._unwrap(wrapped, context)
            return wrapped
        return self._wrap(self._unwrap(wrapped, context), context)

    def _wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise KeyProviderError(f"a data key is {DATA_KEY_SIZE} bytes")
        nonce = os.urandom(WRAP_NONCE_SIZE)
        sealed = self._keks[self._current].encrypt(
            nonce, data_key, _wrap_aad(self._current, context)
        )
        return WrappedKey(self._current, bytes([WRAP_VERSION]) + nonce + sealed)

    def _unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        aead = self._keks.get(wrapped.kek_id)
        if aead is None:
            raise KekNotFoundError(f"no KEK {wrapped.kek_id!r}")
        blob = wrapped.ciphertext
        if len(blob) < 1 + WRAP_NONCE_SIZE or blob[0] != WRAP_VERSION:
            raise KeyUnwrapError("malformed wrapped key")
        nonce, sealed = blob[1 : 1 + WRAP_NONCE_SIZE], blob[1 + WRAP_NONCE_SIZE :]
        try:
            data_key = aead.decrypt(nonce, sealed, _wrap_aad(wrapped.kek_id, context))
        except InvalidTag:
            raise KeyUnwrapError("the wrapped key does not open under its KEK here") from None
        if len(data_key) != DATA_KEY_SIZE:
            raise KeyUnwrapError("the wrapped key does not hold a data key")
        return data_key

    def __repr__(self) -> str:
        return f"LocalKeyFileProvider(current={self._current!r}, keks={sorted(self._keks)!r})"


def _wrap_aad(kek_id: str, context: bytes) -> bytes:
    return WRAP_AAD_LABEL + kek_id.encode("ascii") + b"\x00" + context


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as exc:
        raise KekConfigError(f"cannot read KEK file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KekConfigError(f"KEK file {path} is larger than {MAX_KEY_FILE_SIZE} bytes")
    return data
