"""The streaming AEAD format: fixed test vectors, an independent re-implementation of the
documented format, and every kind of tampering."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medledger.crypto.stream import (
    BASE_HEADER_SIZE,
    TAG_SIZE,
    ChunkAuthenticationError,
    KeyCommitmentError,
    RangeDecryptor,
    StreamDecryptor,
    StreamEncryptor,
    StreamFormatError,
    StreamHeader,
    StreamIntegrityError,
    StreamRangeError,
    TrailingDataError,
    TruncatedStreamError,
    chunk_span,
)

KEY = bytes(range(32))
SALT = bytes(range(0x20, 0x40))
PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")

# (plaintext, chunk size, key reference, stored bytes) -- fixed key, salt and nonce prefix.
VECTORS = [
    (
        b"",
        16,
        b"",
        "01004f0000001000202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "a0a1a2a3a4a5a624eefe63be71f354323b22b47beb5e62083496708a69f8c7c849a7a8d82132f3"
        "2e1b5557edd064ec28a260dadb282f60",
    ),
    (
        b"medledger",
        16,
        b"rec-1",
        "01005400000010057265632d31202122232425262728292a2b2c2d2e2f303132333435363738393a"
        "3b3c3d3e3fa0a1a2a3a4a5a6a0a611a6fb81152a118fef96e6b3492fbdc419fca7c65b2cf461d58b"
        "d7cd6cd4f16a7211025834e3dc63be9a42f9bdee7bde874d497fc17825",
    ),
    (
        bytes(range(40)),
        16,
        b"rec-1",
        "01005400000010057265632d31202122232425262728292a2b2c2d2e2f303132333435363738393a"
        "3b3c3d3e3fa0a1a2a3a4a5a6a0a611a6fb81152a118fef96e6b3492fbdc419fca7c65b2cf461d58b"
        "d7cd6cd4d563fede6399fe6045bf704ad48fd31ebd72cb66fea56b37fcc7387d12656e3e8af44f2c"
        "a7e1ccccdaeeac65c3c8cf1453ce2a587c0b29bcb6aaf7e01ec9f2294a7b2bf5b4e36b28539db003"
        "d85c606642a44fec96032260",
    ),
]


def reference_encrypt(
    key: bytes, plaintext: bytes, chunk_size: int, key_ref: bytes, salt: bytes, prefix: bytes
) -> bytes:
    """docs/encryption.md written out with bare primitives, independently of stream.py."""
    header_len = 1 + 2 + 4 + 1 + len(key_ref) + 32 + 7 + 32
    committed = struct.pack(">BHIB", 1, header_len, chunk_size, len(key_ref)) + key_ref + salt
    committed += prefix
    okm = HKDF(hashes.SHA256(), 64, salt, b"medledger/v1/records/stream\x00" + committed).derive(
        key
    )
    header = committed + okm[32:]
    aead = AESGCM(okm[:32])
    chunks = [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)] or [b""]
    out = [header]
    for index, chunk in enumerate(chunks):
        flag = b"\x01" if index == len(chunks) - 1 else b"\x00"
        out.append(aead.encrypt(prefix + struct.pack(">I", index) + flag, chunk, header))
    return b"".join(out)


def encrypt(
    plaintext: bytes,
    *,
    key: bytes = KEY,
    chunk_size: int = 16,
    key_ref: bytes = b"r",
    pieces: int = 7,
) -> bytes:
    encryptor = StreamEncryptor(key, key_ref=key_ref, chunk_size=chunk_size)
    out = [encryptor.header_bytes]
    for at in range(0, len(plaintext), pieces):
        out += encryptor.update(plaintext[at : at + pieces])
    out.append(encryptor.finalize())
    return b"".join(out)


def decrypt(stored: bytes, *, key: bytes = KEY, pieces: int = 5) -> tuple[bytes, Exception | None]:
    """(plaintext released, error): what a consumer would have seen before failing."""
    decryptor = StreamDecryptor(key)
    released: list[bytes] = []
    try:
        for at in range(0, len(stored), pieces):
            released += decryptor.update(stored[at : at + pieces])
        released.append(decryptor.finalize())
    except StreamIntegrityError as exc:
        return b"".join(released), exc
    return b"".join(released), None


@pytest.mark.parametrize(("plaintext", "chunk_size", "key_ref", "expected"), VECTORS)
def test_vectors(plaintext: bytes, chunk_size: int, key_ref: bytes, expected: str) -> None:
    encryptor = StreamEncryptor(
        KEY, key_ref=key_ref, chunk_size=chunk_size, salt=SALT, nonce_prefix=PREFIX
    )
    stored = encryptor.header_bytes + b"".join(encryptor.update(plaintext)) + encryptor.finalize()
    assert stored.hex() == expected
    assert reference_encrypt(KEY, plaintext, chunk_size, key_ref, SALT, PREFIX).hex() == expected
    assert decrypt(stored) == (plaintext, None)


def test_header_fields_and_sizes() -> None:
    stored = bytes.fromhex(VECTORS[2][3])
    header = StreamHeader.parse(stored)
    assert (header.chunk_size, header.key_ref, header.salt, header.nonce_prefix) == (
        16,
        b"rec-1",
        SALT,
        PREFIX,
    )
    assert header.size == BASE_HEADER_SIZE + 5
    assert header.ciphertext_size(40) == len(stored) == header.size + 40 + 3 * TAG_SIZE
    assert header.plaintext_size(len(stored)) == 40
    with pytest.raises(TruncatedStreamError):
        header.plaintext_size(len(stored) - 24 - TAG_SIZE)  # a whole last chunk dropped


def test_a_full_last_chunk_is_not_followed_by_an_empty_one() -> None:
    stored = encrypt(bytes(32), chunk_size=16)
    assert len(stored) == BASE_HEADER_SIZE + 1 + 32 + 2 * TAG_SIZE
    assert decrypt(stored) == (bytes(32), None)


def test_wrong_key_fails_the_commitment_before_any_chunk() -> None:
    stored = encrypt(b"x" * 100)
    released, error = decrypt(stored, key=bytes(32))
    assert released == b""
    assert isinstance(error, KeyCommitmentError)


@pytest.mark.parametrize("position", range(0, BASE_HEADER_SIZE + 1))
def test_every_header_byte_is_protected(position: int) -> None:
    stored = bytearray(encrypt(b"clinical note " * 5))
    stored[position] ^= 0x01
    try:
        released, error = decrypt(bytes(stored))
    except StreamFormatError:
        return  # version or lengths no longer parse: refused outright
    assert released == b""
    assert isinstance(error, StreamIntegrityError)


def test_flipped_bit_in_a_chunk() -> None:
    stored = bytearray(encrypt(b"A" * 64))
    stored[BASE_HEADER_SIZE + 1 + 16 + TAG_SIZE + 3] ^= 0x80  # chunk 1
    released, error = decrypt(bytes(stored))
    assert isinstance(error, ChunkAuthenticationError)
    assert released == b"A" * 16  # only chunk 0, which authenticated


def _chunks(stored: bytes, chunk_size: int = 16) -> tuple[bytes, list[bytes]]:
    header = StreamHeader.parse(stored)
    body = stored[header.size :]
    step = chunk_size + TAG_SIZE
    return stored[: header.size], [body[i : i + step] for i in range(0, len(body), step)]


def test_dropped_last_chunk_is_truncation() -> None:
    header, chunks = _chunks(encrypt(bytes(range(64))))
    released, error = decrypt(header + b"".join(chunks[:-1]))
    assert isinstance(error, TruncatedStreamError)
    assert released == bytes(range(32))


def test_header_only_and_partial_tag_are_truncation() -> None:
    header, chunks = _chunks(encrypt(b"abc"))
    for stored in (header, header + chunks[0][:10], header[:20]):
        assert isinstance(decrypt(stored)[1], TruncatedStreamError)


def test_swapped_and_reordered_chunks() -> None:
    header, chunks = _chunks(encrypt(bytes(range(64))))
    swapped = header + chunks[1] + chunks[0] + b"".join(chunks[2:])
    released, error = decrypt(swapped)
    assert isinstance(error, ChunkAuthenticationError)
    assert released == b""


def test_chunks_from_another_stream_under_the_same_key() -> None:
    header_a, chunks_a = _chunks(encrypt(bytes(64)))
    _, chunks_b = _chunks(encrypt(bytes(64)))
    released, error = decrypt(header_a + chunks_b[0] + b"".join(chunks_a[1:]))
    assert isinstance(error, ChunkAuthenticationError)
    assert released == b""


def test_trailing_data_after_the_last_chunk() -> None:
    stored = encrypt(bytes(32))  # a full last chunk: the extra bytes start a "next" chunk
    assert isinstance(decrypt(stored + b"\x00" * 20)[1], TrailingDataError)
    assert isinstance(decrypt(encrypt(bytes(20)) + b"junk")[1], StreamIntegrityError)


def test_expected_key_ref_binds_the_stream_to_its_record() -> None:
    stored = encrypt(b"data", key_ref=b"record-a")
    decryptor = StreamDecryptor(KEY, expected_key_ref=b"record-b")
    with pytest.raises(KeyCommitmentError):
        decryptor.update(stored)


def test_range_decrypt_reads_only_the_span() -> None:
    plaintext = os.urandom(1000)
    stored = encrypt(plaintext, chunk_size=64)
    header = StreamHeader.parse(stored)
    span = chunk_span(header, len(plaintext), 130, 200)
    assert (span.first_chunk, span.end_chunk, span.skip, span.length) == (2, 6, 2, 200)
    decryptor = RangeDecryptor(KEY, header, span)
    out = b"".join(decryptor.update(stored[span.ciphertext_start : span.ciphertext_end]))
    decryptor.finalize()
    assert out == plaintext[130:330]


def test_range_errors() -> None:
    stored = encrypt(bytes(100), chunk_size=32)
    header = StreamHeader.parse(stored)
    with pytest.raises(StreamRangeError):
        chunk_span(header, 100, 101)
    assert chunk_span(header, 100, 100).length == 0
    assert chunk_span(header, 100, 90, 1000).length == 10
    span = chunk_span(header, 100, 0, 100)
    decryptor = RangeDecryptor(KEY, header, span)
    decryptor.update(stored[span.ciphertext_start : span.ciphertext_end - 10])
    with pytest.raises(TruncatedStreamError):
        decryptor.finalize()
    decryptor = RangeDecryptor(KEY, header, span)
    with pytest.raises(TrailingDataError):
        decryptor.update(stored[span.ciphertext_start :] + b"x")


def test_range_with_a_wrong_total_size_fails_on_the_last_flag() -> None:
    stored = encrypt(bytes(100), chunk_size=32)
    header = StreamHeader.parse(stored)
    # Metadata claiming 96 bytes: chunk 2 would be last, but it was sealed as "more follows".
    span = chunk_span(header, 96, 64, 32)
    decryptor = RangeDecryptor(KEY, header, span)
    with pytest.raises(TruncatedStreamError):
        decryptor.update(stored[span.ciphertext_start : span.ciphertext_end])


def test_bad_parameters() -> None:
    with pytest.raises(StreamFormatError):
        StreamEncryptor(bytes(16))
    with pytest.raises(StreamFormatError):
        StreamEncryptor(KEY, chunk_size=0)
    with pytest.raises(StreamFormatError):
        StreamEncryptor(KEY, key_ref=b"x" * 256)
    with pytest.raises(StreamFormatError):
        StreamHeader.parse(b"\x02" + bytes(100))


def test_documented_vectors_match() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "encryption.md").read_text()
    for _, _, _, expected in VECTORS[:2]:
        assert f"`{expected}`" in doc
