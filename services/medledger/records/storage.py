"""The blob storage interface every backend (S3/MinIO, local directory) implements.

Writes are all-or-nothing: an object becomes visible only on `commit`, and a
writer that is aborted, or left without committing, leaves nothing behind.
Reads stream a byte range in bounded pieces; nothing buffers a whole object.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Protocol

from medledger.records.errors import InvalidRecordRequest

READ_PIECE_SIZE = 1024 * 1024
_BLOB_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
MAX_BLOB_KEY_LENGTH = 512


class BlobWriter(Protocol):
    """An object being written; invisible until committed."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> int:
        """Make the object visible atomically; returns its size in bytes."""
        ...

    async def abort(self) -> None:
        """Discard everything written; safe to call more than once."""
        ...


class BlobStorage(Protocol):
    """Where encrypted record content lives."""

    async def open_writer(self, key: str) -> BlobWriter: ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of the object (through the end when `end` is None), in pieces."""
        ...

    async def size(self, key: str) -> int:
        """The object's size; BlobNotFound if there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; no error when it does not exist."""
        ...

    async def cleanup_incomplete(self, older_than_seconds: float) -> int:
        """Discard unfinished writes older than this (left by a crash); returns how many."""
        ...

    async def close(self) -> None: ...


def check_blob_key(key: str) -> str:
    """`key` if it is a safe object name: no '..', no leading '/', no odd characters."""
    if len(key) > MAX_BLOB_KEY_LENGTH or not _BLOB_KEY.match(key) or ".." in key:
        raise InvalidRecordRequest(f"bad blob key {key!r}")
    return key


@asynccontextmanager
async def blob_writer(storage: BlobStorage, key: str) -> AsyncIterator[BlobWriter]:
    """A writer that is aborted if the block raises or is cancelled before committing."""
    writer = await storage.open_writer(key)
    try:
        yield writer
    except BaseException:
        await writer.abort()
        raise
    # Leaving without commit is a bug in the caller, but must still leave nothing behind.
    await writer.abort()


async def write_blob(storage: BlobStorage, key: str, pieces: Iterable[bytes]) -> int:
    """Store `pieces` as one object; for tests and small objects."""
    async with blob_writer(storage, key) as writer:
        for piece in pieces:
            await writer.write(piece)
        return await writer.commit()


async def read_blob(
    storage: BlobStorage, key: str, start: int = 0, end: int | None = None
) -> bytes:
    """The whole range in memory; for tests and small objects only."""
    return b"".join([piece async for piece in storage.read(key, start, end)])
