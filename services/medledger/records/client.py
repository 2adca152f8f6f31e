"""Client side of the records API: upload files and folders (one study, bounded concurrency,
resumable by idempotency keys), download to a file resuming a partial one with a byte range.

Progress is reported through a callback so the CLI can draw bars and tests can count bytes.
Nothing here holds more than one piece (1 MiB) of a file in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from medledger._gen.common.v1 import access_pb2
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger._gen.records.v1 import records_service_pb2_grpc as pb_grpc
from medledger.core.errors import from_rpc_error
from medledger.records.codes import category_value, label_values, purpose_value
from medledger.records.dicom import DICOM_CONTENT_TYPE

PIECE_SIZE = 1024 * 1024
DEFAULT_CONCURRENCY = 4
# Idempotency keys of file uploads: the same file (path, size, mtime) for the same patient
# maps to the same key, so re-running an interrupted folder upload skips what was stored.
_FILE_NAMESPACE = uuid.UUID("5d3f1c2a-8f0b-4a6e-9c47-2b9e8d7a6f15")
_DICOM_MAGIC_OFFSET = 128

Progress = Callable[[str, int], None]
"""Called with (file or record label, bytes just transferred)."""


def _no_progress(_label: str, _count: int) -> None:
    return None


@dataclass(frozen=True)
class UploadOptions:
    patient_pseudonym: str
    category: str
    purpose: str = "TREAT"
    labels: tuple[str, ...] = ()
    content_type: str | None = None
    study: str = ""


@dataclass
class UploadOutcome:
    path: Path
    record: pb.Record | None = None
    error: str = ""


@dataclass
class FolderResult:
    outcomes: list[UploadOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[UploadOutcome]:
        return [o for o in self.outcomes if o.record is None]


def content_type_of(path: Path) -> str:
    """application/dicom for DICOM Part 10 files (by their 'DICM' marker), else by name."""
    with path.open("rb") as handle:
        handle.seek(_DICOM_MAGIC_OFFSET)
        if handle.read(4) == b"DICM":
            return DICOM_CONTENT_TYPE
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def request_id_for(path: Path, patient: str) -> str:
    stat = path.stat()
    key = f"{patient}\x00{path.resolve()}\x00{stat.st_size}\x00{stat.st_mtime_ns}"
    return str(uuid.uuid5(_FILE_NAMESPACE, key))


def files_under(paths: Sequence[Path]) -> list[Path]:
    """The regular files named, folders walked recursively, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()))
        else:
            found.append(path)
    return found


async def _read(handle: IO[bytes], size: int) -> bytes:
    return await asyncio.to_thread(handle.read, size)


@dataclass(frozen=True)
class _FileFacts:
    size: int
    sha256: bytes
    content_type: str
    request_id: str


def _file_facts(path: Path, options: UploadOptions) -> _FileFacts:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(PIECE_SIZE):
            digest.update(piece)
    return _FileFacts(
        size=path.stat().st_size,
        sha256=digest.digest(),
        content_type=options.content_type or content_type_of(path),
        request_id=request_id_for(path, options.patient_pseudonym),
    )


def _resume_point(partial: Path, marker: Path) -> tuple[int, str]:
    """(bytes already downloaded, ciphertext hash of the object they came from)."""
    if not (partial.exists() and marker.exists()):
        return 0, ""
    try:
        expected = str(json.loads(marker.read_text())["ciphertext_sha256"])
    except (ValueError, KeyError, TypeError):
        return 0, ""
    return partial.stat().st_size, expected


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _finish(partial: Path, marker: Path, destination: Path, size: int) -> None:
    got = partial.stat().st_size
    if got != size:
        raise OSError(f"{partial}: got {got} of {size} bytes")
    os.replace(partial, destination)
    marker.unlink(missing_ok=True)


class RecordsClient:
    """Calls a records service through `stub` (an aio stub) with `metadata` on every call."""

    def __init__(
        self, stub: pb_grpc.RecordsServiceAsyncStub, metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        self._stub = stub
        self._metadata = tuple(metadata)

    async def _call(self, call: Awaitable[object]) -> object:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def upload_file(
        self, path: Path, options: UploadOptions, progress: Progress = _no_progress
    ) -> pb.Record:
        facts = await asyncio.to_thread(_file_facts, path, options)
        header = pb.RecordHeader(
            patient_pseudonym=options.patient_pseudonym,
            data_class=access_pb2.DataClass(
                category=category_value(options.category),  # type: ignore[arg-type]
                sensitivity_labels=label_values(options.labels),  # type: ignore[arg-type]
            ),
            content_type=facts.content_type,
            purpose=purpose_value(options.purpose),  # type: ignore[arg-type]
            expected_size_bytes=facts.size,
            expected_sha256=facts.sha256,
            study=options.study,
            request_id=facts.request_id,
        )
        label = str(path)

        async def messages() -> AsyncIterator[pb.UploadRecordRequest]:
            yield pb.UploadRecordRequest(header=header)
            handle = await asyncio.to_thread(path.open, "rb")
            try:
                while piece := await _read(handle, PIECE_SIZE):
                    yield pb.UploadRecordRequest(chunk=piece)
                    progress(label, len(piece))
            finally:
                handle.close()

        record = await self._call(self._stub.UploadRecord(messages(), metadata=self._metadata))
        assert isinstance(record, pb.Record)
        return record

    async def upload_many(
        self,
        paths: Sequence[Path],
        options: UploadOptions,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress = _no_progress,
        finished: Callable[[UploadOutcome], None] = lambda _o: None,
    ) -> FolderResult:
        """Upload every file with at most `concurrency` in flight; failures do not stop the rest."""
        slots = asyncio.Semaphore(max(1, concurrency))
        result = FolderResult()

        async def one(path: Path) -> None:
            async with slots:
                outcome = UploadOutcome(path)
                try:
                    outcome.record = await self.upload_file(path, options, progress)
                except Exception as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                result.outcomes.append(outcome)
                finished(outcome)

        await asyncio.gather(*(one(path) for path in paths))
        result.outcomes.sort(key=lambda o: str(o.path))
        return result

    async def download_to(
        self,
        name: str,
        destination: Path,
        *,
        purpose: str = "TREAT",
        progress: Progress = _no_progress,
        started: Callable[[int, int], None] = lambda _done, _total: None,
    ) -> pb.Record:
        """Download into `destination`, resuming from `destination.part` when one is left.

        A partial file is only continued if it belongs to the same stored object (its
        ciphertext hash, kept beside it); the finished file replaces `destination` at once.
        """
        partial = destination.with_name(destination.name + ".part")
        marker = destination.with_name(destination.name + ".part.json")
        offset, expected_hash = await asyncio.to_thread(_resume_point, partial, marker)
        call = self._stub.DownloadRecord(
            pb.DownloadRecordRequest(name=name, purpose=purpose_value(purpose), offset=offset),  # type: ignore[arg-type]
            metadata=self._metadata,
        )
        record: pb.Record | None = None
        handle: IO[bytes] | None = None
        try:
            async for message in call:
                if message.WhichOneof("part") == "header":
                    record = message.header.record
                    if offset and record.ciphertext_sha256.hex() != expected_hash:
                        # Another object now: start over rather than splice two.
                        call.cancel()
                        await asyncio.to_thread(_discard, partial, marker)
                        return await self.download_to(
                            name, destination, purpose=purpose, progress=progress, started=started
                        )
                    marker.write_text(
                        json.dumps(
                            {"record": name, "ciphertext_sha256": record.ciphertext_sha256.hex()}
                        )
                    )
                    handle = partial.open("ab" if offset else "wb")
                    started(offset, record.size_bytes)
                    continue
                assert handle is not None
                await asyncio.to_thread(handle.write, message.chunk)
                progress(name, len(message.chunk))
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        finally:
            if handle is not None:
                handle.close()
        assert record is not None
        await asyncio.to_thread(_finish, partial, marker, destination, record.size_bytes)
        return record
