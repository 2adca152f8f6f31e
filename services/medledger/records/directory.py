"""Blob storage in a local directory, the embedded default.

An object is written to a private temporary file under `.incoming/`, fsynced
and renamed into place on commit, so readers see a whole object or none; a
failed or abandoned write removes its temporary file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import IO, Any

from medledger.records.errors import BlobNotFound, StorageUnavailable
from medledger.records.storage import READ_PIECE_SIZE, BlobWriter, check_blob_key

INCOMING = ".incoming"
FILE_MODE = 0o600


class DirectoryBlobStorage:
    """Objects as files under `root`; file I/O runs in a small thread pool."""

    def __init__(self, root: str | os.PathLike[str], *, max_threads: int = 4) -> None:
        self.root = Path(root)
        self._incoming = self.root / INCOMING
        self._incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="blob-dir")

    async def _run(self, func: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(func, *args)
            )
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageUnavailable(f"blob directory I/O failed: {exc.strerror}") from None

    def _path(self, key: str) -> Path:
        return self.root / check_blob_key(key)

    async def open_writer(self, key: str) -> BlobWriter:
        final = self._path(key)
        temporary = self._incoming / f"{uuid.uuid4().hex}.part"
        file = await self._run(_create_private, temporary)
        return _DirectoryWriter(self, file, temporary, final)

    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        try:
            file: IO[bytes] = await self._run(path.open, "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key!r}") from None
        try:
            await self._run(file.seek, start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                want = READ_PIECE_SIZE if remaining is None else min(READ_PIECE_SIZE, remaining)
                piece: bytes = await self._run(file.read, want)
                if not piece:
                    break
                if remaining is not None:
                    remaining -= len(piece)
                yield piece
        finally:
            file.close()

    async def size(self, key: str) -> int:
        try:
            stat: os.stat_result = await self._run(os.stat, self._path(key))
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key!r}") from None
        return stat.st_size

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self._run(os.unlink, self._path(key))

    async def cleanup_incomplete(self, older_than_seconds: float) -> int:
        return int(await self._run(self._cleanup, older_than_seconds))

    def _cleanup(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in self._incoming.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime <= cutoff:
                    entry.unlink()
                    removed += 1
        return removed

    def incomplete_count(self) -> int:
        """Unfinished writes present now (for tests and health reporting)."""
        return sum(1 for _ in self._incoming.iterdir())

    async def close(self) -> None:
        self._executor.shutdown(wait=True)


class _DirectoryWriter:
    def __init__(
        self, storage: DirectoryBlobStorage, file: IO[bytes], temporary: Path, final: Path
    ) -> None:
        self._storage = storage
        self._file = file
        self._temporary = temporary
        self._final = final
        self._size = 0
        self._done = False

    async def write(self, data: bytes) -> None:
        if self._done:
            raise StorageUnavailable("the blob writer is closed")
        await self._storage._run(self._file.write, data)
        self._size += len(data)

    async def commit(self) -> int:
        if self._done:
            raise StorageUnavailable("the blob writer is closed")
        try:
            await self._storage._run(_publish, self._file, self._temporary, self._final)
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return self._size

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        # Runs inline: it must finish even when the task is being cancelled.
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()


def _create_private(path: Path) -> IO[bytes]:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    return os.fdopen(descriptor, "wb")


def _publish(file: IO[bytes], temporary: Path, final: Path) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, final)
    _fsync_directory(final.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
