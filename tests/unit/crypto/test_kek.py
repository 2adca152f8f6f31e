"""KEK providers: key files and secret mounts, wrap/unwrap bound to a record, rotation."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from medledger.crypto.kek import (
    KekConfigError,
    KekNotFoundError,
    KeyProvider,
    KeyUnwrapError,
    LocalKeyFileProvider,
    WrappedKey,
    kek_fingerprint,
    new_data_key,
)


def write_secret_mount(directory: Path, keys: dict[str, bytes]) -> None:
    """The layout kubelet gives a mounted secret: ..data links plus one link per key."""
    data = directory / "..2025_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    for name, value in keys.items():
        (data / name).write_bytes(value)
    (directory / "..data").symlink_to(data.name)
    for name in keys:
        (directory / name).symlink_to(f"..data/{name}")


async def test_wrap_unwrap_round_trip_is_bound_to_its_record(tmp_path: Path) -> None:
    kek = os.urandom(32)
    (tmp_path / "kek").write_bytes(kek)
    provider = LocalKeyFileProvider.from_file(tmp_path / "kek")
    assert isinstance(provider, KeyProvider)
    assert provider.current_kek_id == kek_fingerprint(kek)
    data_key = new_data_key()
    wrapped = await provider.wrap(data_key, context=b"record-1")
    assert data_key not in wrapped.ciphertext
    assert await provider.unwrap(wrapped, context=b"record-1") == data_key
    with pytest.raises(KeyUnwrapError):
        await provider.unwrap(wrapped, context=b"record-2")
    tampered = bytearray(wrapped.ciphertext)
    tampered[-1] ^= 1
    with pytest.raises(KeyUnwrapError):
        await provider.unwrap(WrappedKey(wrapped.kek_id, bytes(tampered)), context=b"record-1")
    assert "ciphertext" not in repr(wrapped)


@pytest.mark.parametrize("encoding", ["raw", "hex", "base64"])
def test_key_file_encodings(tmp_path: Path, encoding: str) -> None:
    kek = os.urandom(32)
    text = {
        "raw": kek,
        "hex": kek.hex().encode() + b"\n",
        "base64": base64.b64encode(kek) + b"\n",
    }[encoding]
    (tmp_path / "k").write_bytes(text)
    assert LocalKeyFileProvider.from_file(tmp_path / "k", "k1").current_kek_id == "k1"


def test_bad_key_files(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"0123")
    with pytest.raises(KekConfigError):
        LocalKeyFileProvider.from_file(tmp_path / "short")
    with pytest.raises(KekConfigError):
        LocalKeyFileProvider.from_file(tmp_path / "missing")
    (tmp_path / "big").write_bytes(b"x" * 10000)
    with pytest.raises(KekConfigError):
        LocalKeyFileProvider.from_file(tmp_path / "big")


async def test_rotation_keeps_old_keks_for_unwrap(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    write_secret_mount(tmp_path / "v1", {"kek-2024": old})
    before = LocalKeyFileProvider.from_directory(tmp_path / "v1")
    assert before.current_kek_id == "kek-2024"
    data_key = new_data_key()
    wrapped = await before.wrap(data_key, context=b"r")

    write_secret_mount(tmp_path / "v2", {"kek-2024": old, "kek-2025": new})
    with pytest.raises(KekConfigError):
        LocalKeyFileProvider.from_directory(tmp_path / "v2")  # two keys, none named current
    after = LocalKeyFileProvider.from_directory(tmp_path / "v2", current_kek_id="kek-2025")
    assert after.kek_ids == {"kek-2024", "kek-2025"}
    assert await after.unwrap(wrapped, context=b"r") == data_key
    rewrapped = await after.rewrap(wrapped, context=b"r")
    assert rewrapped.kek_id == "kek-2025"
    assert await after.unwrap(rewrapped, context=b"r") == data_key
    assert await after.rewrap(rewrapped, context=b"r") is rewrapped

    retired = LocalKeyFileProvider({"kek-2025": new}, "kek-2025")
    with pytest.raises(KekNotFoundError):
        await retired.unwrap(wrapped, context=b"r")
    assert await retired.unwrap(rewrapped, context=b"r") == data_key


def test_provider_config_errors() -> None:
    with pytest.raises(KekConfigError):
        LocalKeyFileProvider({}, "a")
    with pytest.raises(KekConfigError):
        LocalKeyFileProvider({"a": bytes(32)}, "b")
    with pytest.raises(KekConfigError):
        LocalKeyFileProvider({"bad id!": bytes(32)}, "bad id!")
    provider = LocalKeyFileProvider({"a": bytes(32)}, "a")
    assert "0000" not in repr(provider)
