"""The directory backend: atomic publication, ranged reads, no leftovers on failure."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from medledger.records.directory import DirectoryBlobStorage
from medledger.records.errors import BlobNotFound, InvalidRecordRequest
from medledger.records.storage import blob_writer, read_blob, write_blob


async def test_write_read_ranges_delete(tmp_path: Path) -> None:
    storage = DirectoryBlobStorage(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 7)
    assert await write_blob(storage, "records/a", [data[:100], data[100:]]) == len(data)
    assert await storage.size("records/a") == len(data)
    assert await read_blob(storage, "records/a") == data
    assert (
        await read_blob(storage, "records/a", 1024 * 1024 - 3, 2 * 1024 * 1024 + 9)
        == (data[1024 * 1024 - 3 : 2 * 1024 * 1024 + 9])
    )
    await storage.delete("records/a")
    await storage.delete("records/a")
    with pytest.raises(BlobNotFound):
        await storage.size("records/a")
    with pytest.raises(BlobNotFound):
        await read_blob(storage, "records/a")
    await storage.close()


async def test_invisible_until_commit_and_cleaned_on_failure(tmp_path: Path) -> None:
    storage = DirectoryBlobStorage(tmp_path)

    async def cut_off() -> None:
        async with blob_writer(storage, "records/b") as writer:
            await writer.write(b"partial")
            with pytest.raises(BlobNotFound):
                await storage.size("records/b")
            assert storage.incomplete_count() == 1
            raise RuntimeError("cut")

    with pytest.raises(RuntimeError):
        await cut_off()
    assert storage.incomplete_count() == 0
    with pytest.raises(BlobNotFound):
        await storage.size("records/b")
    async with blob_writer(storage, "records/c") as writer:
        await writer.write(b"never committed")
    assert storage.incomplete_count() == 0
    await storage.close()


async def test_cleanup_of_writes_left_by_a_crash(tmp_path: Path) -> None:
    storage = DirectoryBlobStorage(tmp_path)
    stale = tmp_path / ".incoming" / "dead.part"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    (tmp_path / ".incoming" / "fresh.part").write_bytes(b"y")
    assert await storage.cleanup_incomplete(3600) == 1
    assert storage.incomplete_count() == 1
    await storage.close()


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "", "a//b", "a b"])
async def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    storage = DirectoryBlobStorage(tmp_path)
    with pytest.raises(InvalidRecordRequest):
        await storage.open_writer(key)
    await storage.close()
