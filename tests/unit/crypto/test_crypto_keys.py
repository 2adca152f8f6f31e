"""medledger.crypto.keys: PEM and raw encodings, key files, and the errors for bad input."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import traceback
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from medledger.crypto import (
    KeyFormatError,
    SigningContext,
    SigningKey,
    VerifyKey,
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
from medledger.crypto import keys as keys_module

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _secret_forms(key: SigningKey) -> list[str]:
    seed = key.seed
    return [seed.hex(), seed.hex().upper(), base64.b64encode(seed).decode(), repr(seed)]


def test_generated_keys_are_distinct_and_sign(key: SigningKey) -> None:
    other = generate_signing_key()
    assert other.seed != key.seed
    signature = key.sign(SigningContext.CHECKPOINT, b"payload")
    key.public_key.verify(SigningContext.CHECKPOINT, b"payload", signature)


def test_unencrypted_pem_round_trip(key: SigningKey) -> None:
    pem = signing_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = signing_key_from_pem(pem)
    assert loaded.seed == key.seed
    assert loaded.public_key == key.public_key


@pytest.mark.parametrize("passphrase", [PASSPHRASE, PASSPHRASE.encode(), "pässwörd"])
def test_encrypted_pem_round_trip(key: SigningKey, passphrase: str | bytes) -> None:
    pem = signing_key_to_pem(key, passphrase)
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert signing_key_from_pem(pem, passphrase).seed == key.seed


def test_encryption_is_salted_pbes2(key: SigningKey) -> None:
    pem = signing_key_to_pem(key, PASSPHRASE)
    assert pem != signing_key_to_pem(key, PASSPHRASE)
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    pbes2 = bytes.fromhex("06092a864886f70d01050d")  # OID 1.2.840.113549.1.5.13
    aes_256_cbc = bytes.fromhex("060960864801650304012a")  # OID 2.16.840.1.101.3.4.1.42
    assert pbes2 in der
    assert aes_256_cbc in der


def test_wrong_passphrase_is_rejected_without_echoing_it(key: SigningKey) -> None:
    pem = signing_key_to_pem(key, PASSPHRASE)
    wrong = "Tr0ub4dor&3-not-the-passphrase"
    with pytest.raises(KeyFormatError) as caught:
        signing_key_from_pem(pem, wrong)
    assert caught.value.reason == "BAD_KEY"
    rendered = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    for secret in (wrong, PASSPHRASE, *_secret_forms(key)):
        assert secret not in rendered
    assert caught.value.__cause__ is None


def test_passphrase_mismatches_are_explained(key: SigningKey) -> None:
    with pytest.raises(KeyFormatError, match="passphrase is required"):
        signing_key_from_pem(signing_key_to_pem(key, PASSPHRASE))
    with pytest.raises(KeyFormatError, match="not encrypted"):
        signing_key_from_pem(signing_key_to_pem(key), PASSPHRASE)
    with pytest.raises(KeyFormatError, match="non-empty"):
        signing_key_to_pem(key, "")


def test_rsa_keys_are_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFormatError, match="expected an Ed25519 private key, got RSA"):
        signing_key_from_pem(private_pem)
    with pytest.raises(KeyFormatError, match="expected an Ed25519 public key, got RSA"):
        verify_key_from_pem(public_pem)


def test_ec_keys_are_rejected() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyFormatError, match="Ed25519"):
        signing_key_from_pem(pem)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"\x00" * 48,
    ],
)
def test_garbage_is_rejected(data: bytes) -> None:
    with pytest.raises(KeyFormatError):
        signing_key_from_pem(data)
    with pytest.raises(KeyFormatError):
        verify_key_from_pem(data)


def test_private_and_public_pem_are_not_interchangeable(key: SigningKey) -> None:
    with pytest.raises(KeyFormatError):
        signing_key_from_pem(verify_key_to_pem(key.public_key))
    with pytest.raises(KeyFormatError):
        verify_key_from_pem(signing_key_to_pem(key))


def test_public_key_pem_and_raw_round_trip(key: SigningKey) -> None:
    pem = verify_key_to_pem(key.public_key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert verify_key_from_pem(pem) == key.public_key
    raw = verify_key_to_raw(key.public_key)
    assert len(raw) == 32
    assert verify_key_from_raw(raw) == key.public_key
    # SubjectPublicKeyInfo for Ed25519 is a fixed 12-byte header then the raw key (RFC 8410).
    der = key.public_key.crypto_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert der == bytes.fromhex("302a300506032b6570032100") + raw


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, b"\x01" * 33])
def test_raw_public_key_of_wrong_length_is_rejected(raw: bytes) -> None:
    with pytest.raises(KeyFormatError):
        verify_key_from_raw(raw)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_are_private_and_round_trip(tmp_path: Path, key: SigningKey) -> None:
    old_umask = os.umask(0)
    try:
        save_signing_key(tmp_path / "node.key", key, PASSPHRASE)
        save_verify_key(tmp_path / "node.pub", key.public_key)
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "node.key") == 0o600
    assert _mode(tmp_path / "node.pub") == 0o600
    assert load_signing_key(tmp_path / "node.key", PASSPHRASE).seed == key.seed
    assert load_verify_key(str(tmp_path / "node.pub")) == key.public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key", "node.pub"]


def test_public_key_file_mode_can_be_widened(tmp_path: Path, key: SigningKey) -> None:
    save_verify_key(tmp_path / "node.pub", key.public_key, mode=0o644)
    assert _mode(tmp_path / "node.pub") == 0o644


def test_overwrite_replaces_a_world_readable_file(tmp_path: Path, key: SigningKey) -> None:
    target = tmp_path / "node.key"
    target.write_bytes(b"old")
    target.chmod(0o644)
    save_signing_key(target, key)
    assert _mode(target) == 0o600
    assert load_signing_key(target).seed == key.seed


def test_failed_write_leaves_the_old_key_and_no_temporary(
    tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "node.key"
    save_signing_key(target, key)
    before = target.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_signing_key(target, generate_signing_key())
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]


def test_unreadable_or_oversized_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyFormatError, match="cannot read"):
        load_signing_key(tmp_path / "missing.key")
    big = tmp_path / "big.key"
    big.write_bytes(b"A" * (keys_module.MAX_KEY_FILE_SIZE + 1))
    with pytest.raises(KeyFormatError, match="larger than"):
        load_signing_key(big)


def test_repr_and_str_never_show_key_material(key: SigningKey) -> None:
    pem_body = b"".join(signing_key_to_pem(key).splitlines()[1:-1]).decode()
    for rendered in (repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})):
        for secret in (*_secret_forms(key), pem_body):
            assert secret not in rendered
        assert key.public_key.key_id in rendered
    assert repr(key.public_key) == f"VerifyKey({key.public_key.key_id})"


openssl = shutil.which("openssl")


@pytest.mark.skipif(openssl is None, reason="needs the openssl command")
def test_openssl_reads_our_encrypted_key(tmp_path: Path, key: SigningKey) -> None:
    assert openssl is not None
    save_signing_key(tmp_path / "node.key", key, PASSPHRASE)
    result = subprocess.run(
        [openssl, "pkey", "-in", str(tmp_path / "node.key"), "-passin", "env:KEY_PASS", "-pubout"],
        env={**os.environ, "KEY_PASS": PASSPHRASE},
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert verify_key_from_pem(result.stdout) == key.public_key


@pytest.mark.skipif(openssl is None, reason="needs the openssl command")
def test_we_read_an_openssl_generated_key(tmp_path: Path) -> None:
    assert openssl is not None
    private = tmp_path / "openssl.key"
    subprocess.run(
        [openssl, "genpkey", "-algorithm", "ed25519", "-out", str(private)],
        capture_output=True,
        check=True,
        timeout=30,
    )
    public = subprocess.run(
        [openssl, "pkey", "-in", str(private), "-pubout"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    loaded = load_signing_key(private)
    assert loaded.public_key == verify_key_from_pem(public)
    assert isinstance(loaded.public_key, VerifyKey)
