"""Property tests of the streaming AEAD: round trips whatever the piece sizes, exact ranges,
and any single alteration of the stored bytes failing without releasing wrong plaintext."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medledger.crypto.stream import (
    RangeDecryptor,
    StreamDecryptor,
    StreamEncryptor,
    StreamError,
    StreamHeader,
    chunk_span,
)

KEY = bytes(range(1, 33))
plaintexts = st.binary(max_size=600)
chunk_sizes = st.integers(min_value=1, max_value=80)
piece_sizes = st.integers(min_value=1, max_value=200)


def encrypt(plaintext: bytes, chunk_size: int, piece: int) -> bytes:
    encryptor = StreamEncryptor(KEY, key_ref=b"rec", chunk_size=chunk_size)
    out = [encryptor.header_bytes]
    for at in range(0, len(plaintext), piece):
        out += encryptor.update(plaintext[at : at + piece])
    out.append(encryptor.finalize())
    return b"".join(out)


def decrypt(stored: bytes, piece: int) -> bytes:
    decryptor = StreamDecryptor(KEY, expected_key_ref=b"rec")
    out: list[bytes] = []
    for at in range(0, len(stored), piece):
        out += decryptor.update(stored[at : at + piece])
    out.append(decryptor.finalize())
    return b"".join(out)


@given(plaintexts, chunk_sizes, piece_sizes, piece_sizes)
def test_round_trip(plaintext: bytes, chunk_size: int, in_piece: int, out_piece: int) -> None:
    stored = encrypt(plaintext, chunk_size, in_piece)
    header = StreamHeader.parse(stored)
    assert len(stored) == header.ciphertext_size(len(plaintext))
    assert header.plaintext_size(len(stored)) == len(plaintext)
    assert decrypt(stored, out_piece) == plaintext


@given(plaintexts, chunk_sizes, st.data())
def test_range_matches_slice(plaintext: bytes, chunk_size: int, data: st.DataObject) -> None:
    stored = encrypt(plaintext, chunk_size, 64)
    header = StreamHeader.parse(stored)
    offset = data.draw(st.integers(0, len(plaintext)))
    length = data.draw(st.none() | st.integers(0, len(plaintext) + 10))
    span = chunk_span(header, len(plaintext), offset, length)
    decryptor = RangeDecryptor(KEY, header, span)
    piece = data.draw(piece_sizes)
    window = stored[span.ciphertext_start : span.ciphertext_end]
    out: list[bytes] = []
    for at in range(0, len(window), piece):
        out += decryptor.update(window[at : at + piece])
    decryptor.finalize()
    end = len(plaintext) if length is None else offset + length
    assert b"".join(out) == plaintext[offset:end]
    # Only the chunks touching the range are read.
    if span.length:
        assert (
            span.end_chunk - span.first_chunk
            == (offset + span.length - 1) // chunk_size - (offset // chunk_size) + 1
        )


def _released(stored: bytes) -> tuple[bytes, bool]:
    decryptor = StreamDecryptor(KEY, expected_key_ref=b"rec")
    out: list[bytes] = []
    try:
        for at in range(0, len(stored), 50):
            out += decryptor.update(stored[at : at + 50])
        out.append(decryptor.finalize())
    except StreamError:
        return b"".join(out), True
    return b"".join(out), False


tampers = st.sampled_from(["flip", "truncate", "extend", "swap", "drop", "duplicate"])


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(st.binary(min_size=1, max_size=400), chunk_sizes, tampers, st.data())
def test_every_tamper_fails_and_releases_only_authentic_prefix(
    plaintext: bytes, chunk_size: int, tamper: str, data: st.DataObject
) -> None:
    stored = bytearray(encrypt(plaintext, chunk_size, 33))
    header = StreamHeader.parse(stored)
    body_start, step = header.size, header.ciphertext_chunk_size
    chunks = [bytes(stored[i : i + step]) for i in range(body_start, len(stored), step)]
    if tamper == "flip":
        at = data.draw(st.integers(0, len(stored) - 1))
        stored[at] ^= 1 << data.draw(st.integers(0, 7))
        tampered = bytes(stored)
    elif tamper == "truncate":
        tampered = bytes(stored[: data.draw(st.integers(0, len(stored) - 1))])
    elif tamper == "extend":
        tampered = bytes(stored) + data.draw(st.binary(min_size=1, max_size=100))
    elif tamper in ("swap", "drop", "duplicate"):
        i = data.draw(st.integers(0, len(chunks) - 1))
        j = data.draw(st.integers(0, len(chunks) - 1))
        if tamper == "swap":
            if chunks[i] == chunks[j]:
                return
            chunks[i], chunks[j] = chunks[j], chunks[i]
        elif tamper == "drop":
            del chunks[i]
        else:
            chunks.insert(i, chunks[j])
        tampered = bytes(stored[:body_start]) + b"".join(chunks)
    released, failed = _released(tampered)
    assert failed
    assert plaintext.startswith(released)
    assert len(released) % chunk_size == 0 and len(released) < len(plaintext) + 1
