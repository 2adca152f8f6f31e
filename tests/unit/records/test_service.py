"""The records service over the directory backend and SQLite: byte-exact DICOM round trips,
ranges, tampering, consent denial, crypto-shredding, verification, rotation, aborted uploads
and flat memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pydicom.data import get_testdata_file

from medledger.crypto.kek import LocalKeyFileProvider
from medledger.crypto.stream import BASE_HEADER_SIZE, TAG_SIZE, StreamDecryptor, StreamEncryptor
from medledger.records.commitment import PlaintextCommitment
from medledger.records.directory import DirectoryBlobStorage
from medledger.records.errors import (
    AccessDenied,
    InvalidRecordRequest,
    RangeNotSatisfiable,
    RecordAlreadyExists,
    RecordErased,
    RecordIntegrityError,
    RecordNotFound,
    RecordPending,
    UploadDigestMismatch,
    UploadSizeMismatch,
)
from medledger.records.memory import MemoryAudit, MemoryLedger, StaticConsent
from medledger.records.service import (
    Caller,
    RecordsService,
    UploadRequest,
    VerificationResult,
)
from medledger.records.store import RecordFilter, SqliteMetadataStore

CHUNK = 4096
CALLER = Caller("principals/dr-a", "organisations/h1")
CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))
DICOM_BYTES = {CT: CT.read_bytes(), MR: MR.read_bytes()}


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = DirectoryBlobStorage(root / "blobs")
        self.store = SqliteMetadataStore(root / "records.sqlite3")
        self.kek = os.urandom(32)
        self.keys = LocalKeyFileProvider({"kek-1": self.kek}, "kek-1")
        self.consent = StaticConsent()
        self.ledger = MemoryLedger()
        self.audit = MemoryAudit()
        self.service = self.build()

    def build(self, **overrides: object) -> RecordsService:
        options: dict[str, object] = {
            "storage": self.storage,
            "store": self.store,
            "keys": self.keys,
            "consent": self.consent,
            "ledger": self.ledger,
            "audit": self.audit,
            "custodian": "organisations/h1",
            "study_key": b"s" * 32,
            "chunk_size": CHUNK,
            "registration_wait_seconds": 2.0,
        }
        options.update(overrides)
        return RecordsService(**options)  # type: ignore[arg-type]

    def blob_path(self, record_id: str) -> Path:
        [path] = (self.root / "blobs" / "records").glob(f"{record_id}.*")
        return path


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.store.close()
    await h.storage.close()


async def pieces(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


def request(content_type: str = "application/octet-stream", **kw: object) -> UploadRequest:
    options: dict[str, object] = {
        "caller": CALLER,
        "patient_pseudonym": "pp-123",
        "data_class": "IMAGING",
        "content_type": content_type,
        "purpose": "TREAT",
    }
    options.update(kw)
    return UploadRequest(**options)  # type: ignore[arg-type]


async def fetch(
    service: RecordsService, record_id: str, **kw: object
) -> tuple[bytes, Exception | None]:
    released: list[bytes] = []
    try:
        download = await service.download(record_id, CALLER, "TREAT", **kw)  # type: ignore[arg-type]
        async for piece in download.content:
            released.append(piece)
    except RecordIntegrityError as exc:
        return b"".join(released), exc
    return b"".join(released), None


@pytest.mark.parametrize(("path", "modality"), [(CT, "CT"), (MR, "MR")])
async def test_dicom_round_trip_is_byte_exact(harness: Harness, path: Path, modality: str) -> None:
    data = DICOM_BYTES[path]
    record = await harness.service.upload(request("application/dicom"), pieces(data))
    assert (record.size_bytes, record.modality) == (len(data), modality)
    assert record.sop_class_uid and record.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.")
    assert record.study_id and record.study_id.startswith("study-")
    assert await fetch(harness.service, record.record_id) == (data, None)
    stored = harness.blob_path(record.record_id).read_bytes()
    assert hashlib.sha256(stored).digest() == record.ciphertext_sha256
    assert len(stored) == record.ciphertext_size
    registration = harness.ledger.registrations[record.record_id]
    assert registration.ciphertext_sha256 == record.ciphertext_sha256
    assert registration.plaintext_commitment == record.plaintext_commitment
    [event] = harness.audit.events[-1:]
    assert (event.action, event.permitted, event.consent_ref) == (
        "RECORD_READ",
        True,
        "consents/test-grant",
    )


async def test_no_identifying_dicom_tags_in_clear(harness: Harness) -> None:
    import pydicom

    data = DICOM_BYTES[CT]
    dataset = pydicom.dcmread(CT)
    record = await harness.service.upload(request("application/dicom"), pieces(data))
    await harness.store.close()
    database = b"".join(p.read_bytes() for p in harness.root.glob("records.sqlite3*"))
    blob = harness.blob_path(record.record_id).read_bytes()
    for value in (
        str(dataset.PatientName),
        dataset.PatientID,
        dataset.StudyInstanceUID,
        dataset.SOPInstanceUID,
    ):
        assert value.encode() not in database
        assert value.encode() not in blob
    assert b"1.2.840.10008.5.1.4.1.1.2" in database  # SOP class is allowed in clear
    harness.store = SqliteMetadataStore(harness.root / "records.sqlite3")


async def test_ranges(harness: Harness) -> None:
    data = os.urandom(5 * CHUNK + 123)
    record = await harness.service.upload(request(), pieces(data, 777))
    for offset, length in [
        (0, 1),
        (CHUNK - 1, 2),
        (CHUNK, CHUNK),
        (100, None),
        (len(data), 5),
        (len(data) - 10, 100),
        (3 * CHUNK + 5, 0),
    ]:
        got, error = await fetch(harness.service, record.record_id, offset=offset, length=length)
        end = len(data) if length is None else offset + length
        assert (got, error) == (data[offset:end], None)
    with pytest.raises(RangeNotSatisfiable):
        await harness.service.download(record.record_id, CALLER, "TREAT", offset=len(data) + 1)


async def test_empty_record(harness: Harness) -> None:
    record = await harness.service.upload(request(), pieces(b""))
    assert record.ciphertext_size == BASE_HEADER_SIZE + 36 + TAG_SIZE
    assert await fetch(harness.service, record.record_id) == (b"", None)


def _tamper(path: Path, how: str, other: Path | None = None) -> None:
    stored = bytearray(path.read_bytes())
    header = BASE_HEADER_SIZE + 36
    step = CHUNK + TAG_SIZE
    if how == "flip":
        stored[header + 10] ^= 0x04
    elif how == "drop_last":
        count = -(-(len(stored) - header) // step)
        del stored[header + (count - 1) * step :]
    elif how == "swap":
        first, second = stored[header : header + step], stored[header + step : header + 2 * step]
        stored[header : header + 2 * step] = second + first
    elif how == "splice":
        assert other is not None
        stored[header : header + step] = other.read_bytes()[header : header + step]
    path.write_bytes(bytes(stored))


@pytest.mark.parametrize("how", ["flip", "drop_last", "swap", "splice"])
async def test_tampered_ciphertext_gives_integrity_error_and_no_plaintext(
    harness: Harness, how: str
) -> None:
    data = os.urandom(4 * CHUNK + 50)
    record = await harness.service.upload(request(), pieces(data))
    other = await harness.service.upload(request(), pieces(os.urandom(len(data))))
    _tamper(harness.blob_path(record.record_id), how, harness.blob_path(other.record_id))
    released, error = await fetch(harness.service, record.record_id)
    assert (released, type(error)) == (b"", RecordIntegrityError)
    # A range touching the tampered first chunk fails the same way.
    if how != "drop_last":
        released, error = await fetch(harness.service, record.record_id, offset=5, length=10)
        assert (released, type(error)) == (b"", RecordIntegrityError)
    verification = await harness.service.verify(record.record_id, CALLER)
    assert verification.result == VerificationResult.HASH_MISMATCH


async def test_consent_denial(harness: Harness) -> None:
    record = await harness.service.upload(request(), pieces(b"secret"))
    harness.consent.denied_patients.add("pp-123")
    with pytest.raises(AccessDenied) as denied:
        await harness.service.download(record.record_id, CALLER, "RESEARCH")
    assert denied.value.metadata["consent_reason"] == "NO_CONSENT"
    event = harness.audit.events[-1]
    assert (event.action, event.permitted, event.reason, event.purpose) == (
        "RECORD_READ",
        False,
        "NO_CONSENT",
        "RESEARCH",
    )


async def test_crypto_shredding(harness: Harness) -> None:
    data = b"patient letter " * 1000
    record = await harness.service.upload(request(), pieces(data))
    blob = harness.blob_path(record.record_id)
    ciphertext = blob.read_bytes()
    assert record.wrapped_key is not None
    erased = await harness.service.delete(record.record_id, CALLER, "PATIENT_REQUEST")
    assert erased.erased and erased.wrapped_key is None and erased.kek_id is None
    assert (await harness.service.delete(record.record_id, CALLER, "PATIENT_REQUEST")).erased
    assert not blob.exists()
    with pytest.raises(RecordErased):
        await harness.service.download(record.record_id, CALLER, "TREAT")
    assert harness.ledger.erasures == {record.record_id: "PATIENT_REQUEST"}
    # Even holding the KEK and a copy of the ciphertext, the wrapped key is gone from disk.
    await harness.store.close()
    database = b"".join(p.read_bytes() for p in harness.root.glob("records.sqlite3*"))
    assert record.wrapped_key not in database
    assert data[:30] not in ciphertext
    harness.store = SqliteMetadataStore(harness.root / "records.sqlite3")
    service = harness.build(store=harness.store)
    assert (await service.verify(record.record_id, CALLER)).result == VerificationResult.ERASED
    await service.settle_ledger()
    stored = await harness.store.get(record.record_id)
    assert stored.registered and stored.erasure_height > 0
    page = await harness.store.list_records(RecordFilter(patient_pseudonym="pp-123"))
    assert page.records == []


async def test_verify_results(harness: Harness) -> None:
    record = await harness.service.upload(request(), pieces(b"x" * 10000))
    verified = await harness.service.verify(record.record_id, CALLER)
    assert verified.result == VerificationResult.VERIFIED
    assert verified.computed_ciphertext_sha256 == record.ciphertext_sha256
    harness.ledger.hold = True
    pending = await harness.build(registration_wait_seconds=0.0).upload(request(), pieces(b"z"))
    unregistered = await harness.service.verify(pending.record_id, CALLER)
    assert unregistered.result == VerificationResult.NOT_REGISTERED
    harness.ledger.release()
    other = await harness.service.upload(request(), pieces(b"y"))
    harness.blob_path(other.record_id).unlink()
    missing = await harness.service.verify(other.record_id, CALLER)
    assert missing.result == VerificationResult.CONTENT_MISSING


async def _failing(data: bytes, fail_after: int) -> AsyncIterator[bytes]:
    sent = 0
    async for piece in pieces(data):
        if sent >= fail_after:
            raise ConnectionResetError("client went away")
        sent += len(piece)
        yield piece


async def _assert_nothing_left(harness: Harness) -> None:
    page = await harness.store.list_records(RecordFilter(include_erased=True, include_pending=True))
    assert page.records == []
    assert harness.storage.incomplete_count() == 0
    assert not list((harness.root / "blobs").glob("records/*"))
    assert harness.ledger.registrations == {}


async def test_upload_cut_off_midway_leaves_nothing(harness: Harness) -> None:
    with pytest.raises(ConnectionResetError):
        await harness.service.upload(request(), _failing(os.urandom(10 * CHUNK), 5 * CHUNK))
    await _assert_nothing_left(harness)


async def test_cancelled_upload_leaves_nothing(harness: Harness) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(3 * CHUNK)
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(harness.service.upload(request(), slow()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_nothing_left(harness)


async def test_rejected_uploads_leave_nothing(harness: Harness) -> None:
    with pytest.raises(UploadSizeMismatch):
        await harness.service.upload(request(expected_size=5), pieces(b"123456"))
    with pytest.raises(UploadDigestMismatch):
        await harness.service.upload(request(expected_sha256=bytes(32)), pieces(b"123456"))
    await _assert_nothing_left(harness)


async def test_outbox_keeps_records_pending_until_registered_even_across_a_restart(
    harness: Harness,
) -> None:
    harness.ledger.fail_submissions = True
    record = await harness.service.upload(request(), pieces(b"lab result"))
    assert not record.registered and record.registration_tx_id
    # Pending: not listed, not served, but known to GetRecord.
    assert (
        await harness.store.list_records(RecordFilter(patient_pseudonym="pp-123"))
    ).records == []
    with pytest.raises(RecordPending):
        await harness.service.download(record.record_id, CALLER, "TREAT")
    assert harness.audit.events[-1].reason == "RECORD_PENDING"
    # A new process over the same store (after a crash) submits what was left behind.
    harness.ledger.fail_submissions = False
    restarted = harness.build()
    await restarted.settle_ledger()
    assert await restarted.settle_ledger() == 0
    assert harness.ledger.registrations[record.record_id].ciphertext_sha256 == (
        record.ciphertext_sha256
    )
    assert (await harness.store.get(record.record_id)).registered
    assert await fetch(restarted, record.record_id) == (b"lab result", None)
    assert (await harness.store.unsettled(10)) == []


async def test_outbox_task_registers_in_the_background(harness: Harness) -> None:
    harness.ledger.hold = True
    service = harness.build(registration_wait_seconds=0.0)
    record = await service.upload(request(), pieces(b"note"))
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run_outbox(stopping, interval=0.02))
    await asyncio.sleep(0.1)
    assert not (await harness.store.get(record.record_id)).registered
    harness.ledger.release()
    for _ in range(100):
        if (await harness.store.get(record.record_id)).registered:
            break
        await asyncio.sleep(0.02)
    stopping.set()
    await task
    assert (await harness.store.get(record.record_id)).registered


async def test_an_existing_record_id_is_refused_and_its_content_kept(harness: Harness) -> None:
    first = await harness.service.upload(request(), pieces(b"original"))
    with pytest.raises(RecordAlreadyExists):
        await harness.service.upload(request(record_id=first.record_id), pieces(b"impostor"))
    assert await fetch(harness.service, first.record_id) == (b"original", None)
    assert len(list((harness.root / "blobs" / "records").iterdir())) == 1


async def test_request_id_makes_uploads_idempotent(harness: Harness) -> None:
    key = "9a1b8f7e-0000-4000-8000-000000000001"
    first = await harness.service.upload(request(request_id=key), pieces(b"once"))
    again = await harness.service.upload(request(request_id=key), pieces(b"twice"))
    assert again.record_id == first.record_id and again.size_bytes == 4
    page = await harness.store.list_records(RecordFilter(include_pending=True))
    assert [r.record_id for r in page.records] == [first.record_id]
    with pytest.raises(InvalidRecordRequest):
        await harness.service.upload(
            request(request_id=key, patient_pseudonym="pp-other"), pieces(b"x")
        )


async def test_encryption_runs_off_the_event_loop(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealing, digests and opening of large pieces happen in worker threads, never on the loop."""
    loop_thread = threading.get_ident()
    on_loop: list[str] = []

    def watch(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def spy(self: object, data: bytes, *args: object, **kw: object) -> object:
            if len(data) >= 64 * 1024 and threading.get_ident() == loop_thread:
                on_loop.append(f"{cls.__name__}.{name}")
            return original(self, data, *args, **kw)

        monkeypatch.setattr(cls, name, spy)

    watch(StreamEncryptor, "update")
    watch(StreamDecryptor, "update")
    watch(PlaintextCommitment, "update")
    service = harness.build(chunk_size=1024 * 1024)
    block = os.urandom(1024 * 1024)
    worst = 0.0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(24):
            yield block

    beat = asyncio.create_task(heartbeat())
    record = await service.upload(request(), source())
    download = await service.download(record.record_id, CALLER, "TREAT")
    async for _piece in download.content:
        pass
    done.set()
    await beat
    assert on_loop == []
    assert worst < 0.25, worst


async def test_kek_rotation_rewraps_without_touching_blobs(harness: Harness) -> None:
    records = [await harness.service.upload(request(), pieces(os.urandom(9000))) for _ in range(3)]
    blobs = {r.record_id: harness.blob_path(r.record_id).read_bytes() for r in records}
    kek2 = os.urandom(32)
    rotated = LocalKeyFileProvider({"kek-1": harness.kek, "kek-2": kek2}, "kek-2")
    service = harness.build(keys=rotated)
    assert await service.rewrap_keys(batch_size=2) == 3
    assert await service.rewrap_keys() == 0
    for record in records:
        stored = await harness.store.get(record.record_id)
        assert stored.kek_id == "kek-2" and stored.wrapped_key != record.wrapped_key
        assert harness.blob_path(record.record_id).read_bytes() == blobs[record.record_id]
    # The old KEK can now be retired: the new one alone opens every record.
    new_kek_only = LocalKeyFileProvider({"kek-2": kek2}, "kek-2")
    data, error = await fetch(harness.build(keys=new_kek_only), records[0].record_id)
    assert error is None and len(data) == 9000


async def test_unknown_record(harness: Harness) -> None:
    with pytest.raises(RecordNotFound):
        await harness.service.download("00000000-0000-0000-0000-000000000000", CALLER, "TREAT")


def _chunks_of(total: int, size: int) -> Iterator[bytes]:
    block = os.urandom(size)
    for _ in range(total // size):
        yield block


async def test_memory_stays_flat_for_64_mib(harness: Harness) -> None:
    service = harness.build(chunk_size=1024 * 1024)
    total = 64 * 1024 * 1024
    digest = hashlib.sha256()

    async def source() -> AsyncIterator[bytes]:
        for block in _chunks_of(total, 256 * 1024):
            digest.update(block)
            yield block

    tracemalloc.start()
    try:
        record = await service.upload(request(), source())
        upload_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        download = await service.download(record.record_id, CALLER, "TREAT")
        check = hashlib.sha256()
        async for piece in download.content:
            check.update(piece)
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert record.size_bytes == total
    assert check.digest() == digest.digest()
    # A handful of 1 MiB pieces in flight between the read-ahead stages, whatever the size.
    # A few 1 MiB pieces in flight (read-ahead, worker threads), never the 64 MiB object:
    # the bound leaves room for scheduling on a loaded machine (12.6 MiB seen once).
    assert upload_peak < 20 * 1024 * 1024, upload_peak
    assert download_peak < 20 * 1024 * 1024, download_peak
