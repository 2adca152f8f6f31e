"""Blob storage in S3 or MinIO through the `minio` SDK.

Objects are written by multipart upload, one part (at least 5 MiB) in flight
while the next fills, so memory stays at two parts whatever the object size;
a failed or cancelled write aborts its multipart upload. The SDK is
synchronous, so every call runs in this backend's own thread pool.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import MinioException, S3Error

from medledger.records.errors import BlobNotFound, InvalidRecordRequest, StorageUnavailable
from medledger.records.storage import READ_PIECE_SIZE, BlobWriter, check_blob_key

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
DEFAULT_PART_SIZE = 8 * MIB
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchUpload"})
_T = TypeVar("_T")


@dataclass(frozen=True)
class S3Config:
    """Where the bucket is and how to reach it; `endpoint` is an http(s):// URL."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    prefix: str = ""
    ca_file: Path | None = None
    verify_tls: bool = True
    part_size: int = DEFAULT_PART_SIZE
    max_threads: int = 8
    timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRecordRequest("the S3 endpoint must be an http:// or https:// URL")
        if self.part_size < MIN_PART_SIZE:
            raise InvalidRecordRequest(f"S3 parts are at least {MIN_PART_SIZE} bytes")
        if self.prefix and not self.prefix.endswith("/"):
            raise InvalidRecordRequest("an S3 key prefix ends with '/'")

    @property
    def secure(self) -> bool:
        return urlsplit(self.endpoint).scheme == "https"

    def client(self) -> Minio:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10.0, read=self.timeout_seconds),
            maxsize=self.max_threads,
            cert_reqs="CERT_REQUIRED" if self.verify_tls else "CERT_NONE",
            ca_certs=str(self.ca_file) if self.ca_file else None,
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        return Minio(
            urlsplit(self.endpoint).netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=http,
        )


class S3BlobStorage:
    """Objects in one bucket (under an optional key prefix)."""

    def __init__(self, config: S3Config, client: Minio | None = None) -> None:
        self.config = config
        self.client = client or config.client()
        self._executor = ThreadPoolExecutor(config.max_threads, thread_name_prefix="blob-s3")

    @classmethod
    async def open(cls, config: S3Config) -> S3BlobStorage:
        """Connect and create the bucket if it is missing."""
        storage = cls(config)
        try:
            await storage.ensure_bucket()
        except BaseException:
            await storage.close()
            raise
        return storage

    async def _call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, partial(func, *args, **kwargs)
        )
        try:
            return await future
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES:
                raise BlobNotFound(f"no S3 object ({exc.code})") from None
            raise StorageUnavailable(f"S3 request failed: {exc.code}") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageUnavailable(f"S3 unreachable: {type(exc).__name__}") from None

    async def ensure_bucket(self) -> None:
        bucket = self.config.bucket
        if await self._call(self.client.bucket_exists, bucket):
            return
        try:
            await self._call(self.client.make_bucket, bucket, self.config.region)
        except StorageUnavailable:
            # Another replica may have created it in between.
            if not await self._call(self.client.bucket_exists, bucket):
                raise

    def _name(self, key: str) -> str:
        return self.config.prefix + check_blob_key(key)

    async def open_writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, self._name(key))

    async def read(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if end is not None and end <= start:
            return
        length = 0 if end is None else end - start
        response = await self._call(
            self.client.get_object, self.config.bucket, self._name(key), start, length
        )
        try:
            while True:
                piece: bytes = await self._call(response.read, READ_PIECE_SIZE)
                if not piece:
                    break
                yield piece
        finally:
            response.close()
            response.release_conn()

    async def size(self, key: str) -> int:
        stat = await self._call(self.client.stat_object, self.config.bucket, self._name(key))
        if stat.size is None:
            raise StorageUnavailable("S3 did not report the object size")
        return int(stat.size)

    async def delete(self, key: str) -> None:
        await self._call(self.client.remove_object, self.config.bucket, self._name(key))

    async def incomplete_uploads(self) -> list[tuple[str, str, datetime | None]]:
        """(object name, upload id, initiated) of multipart uploads under the prefix."""
        found: list[tuple[str, str, datetime | None]] = []
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            result = await self._call(
                self.client._list_multipart_uploads,
                self.config.bucket,
                prefix=self.config.prefix or None,
                key_marker=key_marker,
                upload_id_marker=upload_marker,
            )
            found.extend(
                (upload.object_name, upload.upload_id or "", upload.initiated_time)
                for upload in result.uploads
            )
            if not result.is_truncated:
                return found
            key_marker, upload_marker = result.next_key_marker, result.next_upload_id_marker

    async def cleanup_incomplete(self, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        aborted = 0
        for name, upload_id, initiated in await self.incomplete_uploads():
            if initiated is not None and initiated.astimezone(UTC).timestamp() > cutoff:
                continue
            try:
                await self._call(
                    self.client._abort_multipart_upload, self.config.bucket, name, upload_id
                )
            except BlobNotFound:
                continue
            aborted += 1
        return aborted

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.client._http.clear()

    def _shielded(self, func: Callable[..., _T], *args: Any) -> Awaitable[_T]:
        # Cleanup must finish even if the caller is cancelled again while waiting.
        return asyncio.shield(self._call(func, *args))


class _S3Writer:
    def __init__(self, storage: S3BlobStorage, name: str) -> None:
        self._storage = storage
        self._client = storage.client
        self._bucket = storage.config.bucket
        self._part_size = storage.config.part_size
        self._name = name
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[Part] = []
        self._inflight: asyncio.Future[str] | None = None
        self._done = False

    async def write(self, data: bytes) -> None:
        if self._done:
            raise StorageUnavailable("the blob writer is closed")
        if not data:
            return
        self._pieces.append(bytes(data))
        self._buffered += len(data)
        self._size += len(data)
        if self._buffered >= self._part_size:
            await self._send_part()

    async def _send_part(self) -> None:
        # The previous part finishes before this one is joined: two parts in memory at most.
        await self._await_inflight()
        part = b"".join(self._pieces)
        self._pieces, self._buffered = [], 0
        if self._upload_id is None:
            self._upload_id = await self._storage._call(
                self._client._create_multipart_upload,
                self._bucket,
                self._name,
                {"Content-Type": "application/octet-stream"},
            )
        number = len(self._parts) + 1
        self._parts.append(Part(number, ""))
        self._inflight = asyncio.ensure_future(
            self._storage._call(
                self._client._upload_part,
                self._bucket,
                self._name,
                part,
                None,
                self._upload_id,
                number,
            )
        )

    async def _await_inflight(self) -> None:
        if self._inflight is None:
            return
        inflight, self._inflight = self._inflight, None
        etag = await inflight
        last = self._parts[-1]
        self._parts[-1] = Part(last.part_number, etag)

    async def commit(self) -> int:
        if self._done:
            raise StorageUnavailable("the blob writer is closed")
        try:
            if self._upload_id is None:
                data = b"".join(self._pieces)
                self._pieces = []
                await self._storage._call(
                    self._client.put_object, self._bucket, self._name, io.BytesIO(data), len(data)
                )
            else:
                if self._pieces:
                    await self._send_part()
                await self._await_inflight()
                await self._storage._call(
                    self._client._complete_multipart_upload,
                    self._bucket,
                    self._name,
                    self._upload_id,
                    self._parts,
                )
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return self._size

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pieces = []
        if self._inflight is not None:
            # The part upload runs in a thread that cannot be interrupted; let it finish first.
            await asyncio.gather(self._inflight, return_exceptions=True)
            self._inflight = None
        if self._upload_id is not None:
            await self._storage._shielded(
                self._client._abort_multipart_upload, self._bucket, self._name, self._upload_id
            )
