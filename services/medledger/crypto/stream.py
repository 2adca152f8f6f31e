"""Chunked, key-committing AES-256-GCM streaming encryption of record content (STREAM style).

The byte format is specified in docs/encryption.md. In short::

    object  = header || chunk_0 || ... || chunk_{n-1}
    header  = version(1) || header_len(u16) || chunk_size(u32) || key_ref_len(u8) || key_ref
              || salt(32) || nonce_prefix(7) || commitment(32)
    payload_key || commitment = HKDF-SHA256(data_key, salt, LABEL || header_without_commitment, 64)
    chunk_i = AES-256-GCM(payload_key, nonce_prefix || u32(i) || last_flag, chunk, aad=header)

Encryptors and decryptors are incremental: they hold at most one chunk, and a
decryptor releases a chunk's plaintext only after that chunk authenticates.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medledger.crypto.errors import CryptoError

VERSION = 1
DATA_KEY_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
COMMITMENT_SIZE = 32
TAG_SIZE = 16
MAX_KEY_REF_SIZE = 255
DEFAULT_CHUNK_SIZE = 1024 * 1024
# Large enough for any sane deployment, small enough that one chunk never strains memory.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_CHUNKS = 1 << 32
HKDF_LABEL = b"medledger/v1/records/stream\x00"

_FIXED_PREFIX = struct.Struct(">BHIB")  # version, header_len, chunk_size, key_ref_len
# Everything but key_ref: the header length of a stream with an empty key reference.
BASE_HEADER_SIZE = _FIXED_PREFIX.size + SALT_SIZE + NONCE_PREFIX_SIZE + COMMITMENT_SIZE
MAX_HEADER_SIZE = BASE_HEADER_SIZE + MAX_KEY_REF_SIZE
# Enough leading bytes to learn the header length (version and header_len).
HEADER_LENGTH_PREFIX_SIZE = 3

_FLAG_MORE = b"\x00"
_FLAG_LAST = b"\x01"


class StreamError(CryptoError):
    """Base of errors about encrypted streams."""

    reason = "STREAM_ERROR"


class StreamFormatError(StreamError):
    """The bytes are not a stream this code can read (version, lengths, parameters)."""

    reason = "STREAM_MALFORMED"


class StreamRangeError(StreamError):
    """A requested plaintext range lies outside the stream."""

    reason = "STREAM_RANGE_INVALID"


class StreamIntegrityError(StreamError):
    """The stream is not what was encrypted under this key; no plaintext of it was released."""

    reason = "STREAM_INTEGRITY_FAILED"


class KeyCommitmentError(StreamIntegrityError):
    """The header does not commit to this data key: wrong key, or a tampered header."""

    reason = "KEY_COMMITMENT_MISMATCH"


class ChunkAuthenticationError(StreamIntegrityError):
    """A chunk failed GCM authentication: altered, reordered or from another stream."""

    reason = "CHUNK_AUTHENTICATION_FAILED"


class TruncatedStreamError(StreamIntegrityError):
    """The stream ends before its last chunk."""

    reason = "STREAM_TRUNCATED"


class TrailingDataError(StreamIntegrityError):
    """Bytes follow the last chunk."""

    reason = "STREAM_TRAILING_DATA"


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The parsed header of an encrypted stream."""

    chunk_size: int
    key_ref: bytes
    salt: bytes
    nonce_prefix: bytes
    commitment: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.version != VERSION:
            raise StreamFormatError(f"unsupported stream version {self.version}")
        _check_chunk_size(self.chunk_size)
        if len(self.key_ref) > MAX_KEY_REF_SIZE:
            raise StreamFormatError(f"a key reference is at most {MAX_KEY_REF_SIZE} bytes")
        if len(self.salt) != SALT_SIZE or len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise StreamFormatError("bad salt or nonce prefix length")
        if len(self.commitment) != COMMITMENT_SIZE:
            raise StreamFormatError("bad key commitment length")

    @property
    def size(self) -> int:
        return BASE_HEADER_SIZE + len(self.key_ref)

    @property
    def ciphertext_chunk_size(self) -> int:
        """Stored bytes of every chunk but the last."""
        return self.chunk_size + TAG_SIZE

    def committed_bytes(self) -> bytes:
        """The header up to the commitment: what HKDF's info binds."""
        prefix = _FIXED_PREFIX.pack(VERSION, self.size, self.chunk_size, len(self.key_ref))
        return prefix + self.key_ref + self.salt + self.nonce_prefix

    def to_bytes(self) -> bytes:
        return self.committed_bytes() + self.commitment

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> StreamHeader:
        """The header at the start of `data`, which must hold at least the whole header."""
        size = header_size(data)
        if len(data) < size:
            raise StreamFormatError("the stream is shorter than its header")
        _, declared, chunk_size, key_ref_len = _FIXED_PREFIX.unpack_from(data, 0)
        if declared != BASE_HEADER_SIZE + key_ref_len:
            raise StreamFormatError("header length does not match the key reference length")
        at = _FIXED_PREFIX.size
        key_ref = bytes(data[at : at + key_ref_len])
        at += key_ref_len
        salt = bytes(data[at : at + SALT_SIZE])
        at += SALT_SIZE
        nonce_prefix = bytes(data[at : at + NONCE_PREFIX_SIZE])
        at += NONCE_PREFIX_SIZE
        commitment = bytes(data[at : at + COMMITMENT_SIZE])
        return cls(chunk_size, key_ref, salt, nonce_prefix, commitment)

    def chunk_count(self, plaintext_size: int) -> int:
        """Number of chunks of a stream with `plaintext_size` bytes of plaintext (at least 1)."""
        if plaintext_size < 0:
            raise StreamRangeError("a plaintext size is not negative")
        return max(1, -(-plaintext_size // self.chunk_size))

    def ciphertext_size(self, plaintext_size: int) -> int:
        """Stored size of a stream with `plaintext_size` bytes of plaintext, header included."""
        return self.size + plaintext_size + TAG_SIZE * self.chunk_count(plaintext_size)

    def plaintext_size(self, ciphertext_size: int) -> int:
        """Plaintext size of a stored stream of `ciphertext_size` bytes (header included)."""
        body = ciphertext_size - self.size
        chunks = max(1, -(-body // self.ciphertext_chunk_size))
        size = body - TAG_SIZE * chunks
        if size < 0 or (chunks > 1 and size <= (chunks - 1) * self.chunk_size):
            raise TruncatedStreamError("the stream size is not that of any complete stream")
        return size


def header_size(data: bytes | bytearray | memoryview) -> int:
    """Total header length announced by the first HEADER_LENGTH_PREFIX_SIZE bytes of a stream."""
    if len(data) < HEADER_LENGTH_PREFIX_SIZE:
        raise StreamFormatError("the stream is shorter than its header")
    version, declared = struct.unpack_from(">BH", data, 0)
    if version != VERSION:
        raise StreamFormatError(f"unsupported stream version {version}")
    if not BASE_HEADER_SIZE <= declared <= MAX_HEADER_SIZE:
        raise StreamFormatError(f"implausible header length {declared}")
    return int(declared)


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise StreamFormatError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_SIZE:
        raise StreamFormatError(f"a data key is {DATA_KEY_SIZE} bytes")


def _derive(data_key: bytes, salt: bytes, committed: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=DATA_KEY_SIZE + COMMITMENT_SIZE,
        salt=salt,
        info=HKDF_LABEL + committed,
    ).derive(data_key)
    return okm[:DATA_KEY_SIZE], okm[DATA_KEY_SIZE:]


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= MAX_CHUNKS:
        raise StreamFormatError(f"a stream has at most {MAX_CHUNKS} chunks")
    return prefix + index.to_bytes(4, "big") + (_FLAG_LAST if last else _FLAG_MORE)


class _ChunkCipher:
    """The payload key of one stream, opening and sealing chunks by index."""

    __slots__ = ("_aad", "_aead", "_prefix")

    def __init__(self, header: StreamHeader, payload_key: bytes) -> None:
        self._aead = AESGCM(payload_key)
        self._prefix = header.nonce_prefix
        self._aad = header.to_bytes()

    def seal(self, index: int, plaintext: bytes | bytearray | memoryview, last: bool) -> bytes:
        return self._aead.encrypt(_nonce(self._prefix, index, last), plaintext, self._aad)

    def open(self, index: int, ciphertext: bytes | bytearray | memoryview, last: bool) -> bytes:
        """The chunk's plaintext, or an error saying how the chunk is wrong; never a partial."""
        data = ciphertext
        try:
            return self._aead.decrypt(_nonce(self._prefix, index, last), data, self._aad)
        except InvalidTag:
            pass
        # A second trial with the other flag only classifies the failure; its output is dropped.
        try:
            self._aead.decrypt(_nonce(self._prefix, index, not last), data, self._aad)
        except InvalidTag:
            raise ChunkAuthenticationError(f"chunk {index} failed authentication") from None
        if last:
            raise TruncatedStreamError(f"the stream ends after chunk {index}, which is not last")
        raise TrailingDataError(f"data follows chunk {index}, the last chunk")


def open_header(data_key: bytes, header: StreamHeader) -> _ChunkCipher:
    """Check the header's key commitment against `data_key` and return its chunk cipher."""
    _check_data_key(data_key)
    payload_key, commitment = _derive(data_key, header.salt, header.committed_bytes())
    if not hmac.compare_digest(commitment, header.commitment):
        raise KeyCommitmentError("the stream header does not commit to this data key")
    return _ChunkCipher(header, payload_key)


def new_header(
    data_key: bytes,
    *,
    key_ref: bytes = b"",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    salt: bytes | None = None,
    nonce_prefix: bytes | None = None,
) -> tuple[StreamHeader, _ChunkCipher]:
    """A header with fresh random salt and nonce prefix (fixed ones only for test vectors)."""
    _check_data_key(data_key)
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    nonce_prefix = os.urandom(NONCE_PREFIX_SIZE) if nonce_prefix is None else nonce_prefix
    draft = StreamHeader(chunk_size, key_ref, salt, nonce_prefix, bytes(COMMITMENT_SIZE))
    payload_key, commitment = _derive(data_key, salt, draft.committed_bytes())
    header = StreamHeader(chunk_size, key_ref, salt, nonce_prefix, commitment)
    return header, _ChunkCipher(header, payload_key)


class StreamEncryptor:
    """Encrypts a stream incrementally: `header`, then what `update` and `finalize` return.

    Holds back at most one chunk of plaintext, because a full chunk is the last
    one only if nothing follows it.
    """

    def __init__(
        self,
        data_key: bytes,
        *,
        key_ref: bytes = b"",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> None:
        self.header, self._cipher = new_header(
            data_key, key_ref=key_ref, chunk_size=chunk_size, salt=salt, nonce_prefix=nonce_prefix
        )
        self.header_bytes = self.header.to_bytes()
        self._pending = bytearray()
        self._index = 0
        self._finished = False
        self.plaintext_size = 0

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Sealed chunks completed by `data` (possibly none), in order."""
        if self._finished:
            raise StreamError("the encryptor is finished")
        self.plaintext_size += len(data)
        size = self.header.chunk_size
        out: list[bytes] = []
        view = memoryview(data)
        if self._pending:
            take = min(len(view), size - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if not view:
                return out
            out.append(self._seal(self._pending, last=False))
            self._pending = bytearray()
        # Seal straight from the caller's buffer, keeping back the last (possibly full) chunk.
        while len(view) > size:
            out.append(self._seal(view[:size], last=False))
            view = view[size:]
        self._pending += view
        return out

    def finalize(self) -> bytes:
        """The last chunk; the stream is complete after it."""
        if self._finished:
            raise StreamError("the encryptor is finished")
        self._finished = True
        chunk = self._seal(self._pending, last=True)
        self._pending = bytearray()
        return chunk

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        chunk = self._cipher.seal(self._index, plaintext, last)
        self._index += 1
        return chunk


class StreamDecryptor:
    """Decrypts a whole stream fed in pieces of any size; releases only authenticated chunks.

    `expected_key_ref`, when given, must equal the header's key reference, so a
    stream stored under one record cannot be served as another's.
    """

    def __init__(self, data_key: bytes, *, expected_key_ref: bytes | None = None) -> None:
        _check_data_key(data_key)
        self._data_key = data_key
        self._expected_key_ref = expected_key_ref
        self._buffer = bytearray()
        self.header: StreamHeader | None = None
        self._cipher: _ChunkCipher | None = None
        self._index = 0
        self._finished = False

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Plaintext of the chunks that `data` completed and that authenticated."""
        if self._finished:
            raise StreamError("the decryptor is finished")
        self._buffer += data
        if self._cipher is None and not self._read_header():
            return []
        assert self.header is not None
        size = self.header.ciphertext_chunk_size
        out: list[bytes] = []
        # Strictly more than one chunk buffered: only then is the first one known not to be last.
        consumed = 0
        while len(self._buffer) - consumed > size:
            out.append(self._open(memoryview(self._buffer)[consumed : consumed + size], last=False))
            consumed += size
        if consumed:
            del self._buffer[:consumed]
        return out

    def finalize(self) -> bytes:
        """Plaintext of the last chunk, after checking the stream ends exactly there."""
        if self._finished:
            raise StreamError("the decryptor is finished")
        self._finished = True
        if self._cipher is None and not self._read_header():
            raise TruncatedStreamError("the stream ends inside its header")
        if len(self._buffer) < TAG_SIZE:
            raise TruncatedStreamError("the stream ends inside a chunk")
        chunk = self._open(self._buffer, last=True)
        self._buffer = bytearray()
        return chunk

    def _read_header(self) -> bool:
        if len(self._buffer) < HEADER_LENGTH_PREFIX_SIZE:
            return False
        size = header_size(self._buffer)
        if len(self._buffer) < size:
            return False
        header = StreamHeader.parse(self._buffer)
        if self._expected_key_ref is not None and not hmac.compare_digest(
            header.key_ref, self._expected_key_ref
        ):
            raise KeyCommitmentError("the stream belongs to another key reference")
        self._cipher = open_header(self._data_key, header)
        self.header = header
        del self._buffer[:size]
        return True

    def _open(self, ciphertext: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        assert self._cipher is not None
        plaintext = self._cipher.open(self._index, ciphertext, last)
        self._index += 1
        return plaintext


@dataclass(frozen=True, slots=True)
class ChunkSpan:
    """The chunks holding a plaintext byte range, and where they are in the stored stream."""

    first_chunk: int
    end_chunk: int  # exclusive
    total_chunks: int
    ciphertext_start: int  # offset in the stored object, header included
    ciphertext_end: int  # exclusive
    skip: int  # plaintext bytes of the first chunk before the range
    length: int  # plaintext bytes in the range

    @property
    def empty(self) -> bool:
        return self.first_chunk == self.end_chunk


def chunk_span(
    header: StreamHeader, plaintext_size: int, offset: int = 0, length: int | None = None
) -> ChunkSpan:
    """The chunk range covering plaintext bytes [offset, offset+length) of a stream.

    `length` None means through the end; a range past the end is cut at the end;
    an offset past the end is a StreamRangeError.
    """
    if offset < 0 or (length is not None and length < 0):
        raise StreamRangeError("offset and length are not negative")
    if offset > plaintext_size:
        raise StreamRangeError(f"offset {offset} is past the end ({plaintext_size} bytes)")
    total = header.chunk_count(plaintext_size)
    end = plaintext_size if length is None else min(plaintext_size, offset + length)
    size = header.chunk_size
    if plaintext_size == 0:
        # The one empty chunk is still authenticated, so an empty record cannot be faked.
        return ChunkSpan(0, 1, 1, header.size, header.size + TAG_SIZE, 0, 0)
    if end == offset:
        start = header.size + min(offset // size, total) * header.ciphertext_chunk_size
        return ChunkSpan(0, 0, total, start, start, 0, 0)
    first = offset // size
    last = (end - 1) // size
    ciphertext_start = header.size + first * header.ciphertext_chunk_size
    last_plain = min(size, plaintext_size - last * size)
    ciphertext_end = header.size + last * header.ciphertext_chunk_size + last_plain + TAG_SIZE
    return ChunkSpan(
        first,
        last + 1,
        total,
        ciphertext_start,
        ciphertext_end,
        offset - first * size,
        end - offset,
    )


class RangeDecryptor:
    """Decrypts the chunks of a ChunkSpan fed as the stored bytes [ciphertext_start, _end).

    Each chunk is authenticated before any of its plaintext is returned; the
    output is trimmed to the requested range.
    """

    def __init__(self, data_key: bytes, header: StreamHeader, span: ChunkSpan) -> None:
        self._cipher = open_header(data_key, header)
        self._header = header
        self._span = span
        self._buffer = bytearray()
        self._index = span.first_chunk
        self._remaining = span.length
        self._finished = False

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Plaintext, within the range, of the chunks `data` completed."""
        if self._finished:
            raise StreamError("the decryptor is finished")
        self._buffer += data
        out: list[bytes] = []
        consumed = 0
        while self._index < self._span.end_chunk:
            need = self._chunk_length(self._index)
            if len(self._buffer) - consumed < need:
                break
            out.append(self._release(self._buffer[consumed : consumed + need]))
            consumed += need
        if consumed:
            del self._buffer[:consumed]
        if self._index == self._span.end_chunk and self._buffer:
            raise TrailingDataError("more bytes than the chunk range holds")
        return out

    def finalize(self) -> None:
        """Check that every chunk of the span arrived."""
        self._finished = True
        if self._index != self._span.end_chunk or self._buffer:
            raise TruncatedStreamError("the chunk range ended early")

    def _chunk_length(self, index: int) -> int:
        if index < self._span.total_chunks - 1:
            return self._header.ciphertext_chunk_size
        full = (self._span.total_chunks - 1) * self._header.ciphertext_chunk_size
        return self._span.ciphertext_end - self._header.size - full

    def _release(self, ciphertext: bytearray) -> bytes:
        last = self._index == self._span.total_chunks - 1
        plaintext = self._cipher.open(self._index, ciphertext, last)
        skip = self._span.skip if self._index == self._span.first_chunk else 0
        self._index += 1
        take = min(len(plaintext) - skip, self._remaining)
        self._remaining -= take
        if skip == 0 and take == len(plaintext):
            return plaintext
        return plaintext[skip : skip + take]
