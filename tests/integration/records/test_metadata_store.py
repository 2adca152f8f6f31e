"""The metadata store on SQLite and on a real PostgreSQL (pg_dsn): the same behaviour on both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from medledger.records.errors import InvalidRecordRequest, RecordAlreadyExists, RecordNotFound
from medledger.records.store import (
    CommitKind,
    MetadataStore,
    RecordFilter,
    RecordMetadata,
    RecordPage,
    open_metadata_store,
)

pytestmark = pytest.mark.integration
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataStore]:
    if request.param == "sqlite":
        dsn = f"sqlite:///{tmp_path / 'meta.sqlite3'}"
    else:
        dsn = request.getfixturevalue("pg_dsn")
    opened = await open_metadata_store(dsn)
    yield opened
    await opened.close()


def record(n: int, **kw: object) -> RecordMetadata:
    options: dict[str, object] = {
        "record_id": f"00000000-0000-0000-0000-{n:012d}",
        "patient_pseudonym": "pp-1" if n % 2 else "pp-2",
        "data_class": "IMAGING" if n % 3 == 0 else "DOCUMENT",
        "content_type": "application/dicom",
        "size_bytes": 1000 + n,
        "ciphertext_size": 2000 + n,
        "ciphertext_sha256": os.urandom(32),
        "plaintext_commitment": os.urandom(32),
        "blob_key": f"records/{n}",
        "wrapped_key": os.urandom(61),
        "kek_id": "kek-1",
        "custodian": "organisations/h1",
        "created_by": "principals/a",
        "created_at": T0 + timedelta(seconds=n),
        "sensitivity_labels": ("MENTAL_HEALTH",) if n == 4 else (),
        "study_id": "study-x" if n < 3 else None,
        "modality": "CT",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "registration_tx": b"tx-%d" % n,
        "registration_tx_id": f"{n:064x}",
        "registration_height": n,
    }
    options.update(kw)
    return RecordMetadata(**options)  # type: ignore[arg-type]


async def test_insert_get_and_duplicates(store: MetadataStore) -> None:
    original = record(4)
    await store.insert(original)
    assert await store.get(original.record_id) == original
    with pytest.raises(RecordAlreadyExists):
        await store.insert(original)
    with pytest.raises(RecordNotFound):
        await store.get("nope")


async def test_list_filters_and_pagination(store: MetadataStore) -> None:
    for n in range(1, 12):
        await store.insert(record(n))
    seen: list[str] = []
    token = ""
    while True:
        page = await store.list_records(RecordFilter(), page_size=4, page_token=token)
        seen += [r.record_id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert seen == [record(n).record_id for n in range(11, 0, -1)]
    by_patient = await store.list_records(
        RecordFilter(patient_pseudonym="pp-1", data_class="IMAGING")
    )
    assert [r.record_id for r in by_patient.records] == [record(n).record_id for n in (9, 3)]
    by_study = await store.list_records(RecordFilter(study_id="study-x"))
    assert len(by_study.records) == 2
    with pytest.raises(InvalidRecordRequest):
        await store.list_records(RecordFilter(), page_token="!!")


async def test_shred_and_rewrap(store: MetadataStore) -> None:
    first, second = record(1), record(2)
    await store.insert(first)
    await store.insert(second)
    assert await store.wrapped_keys_not_under("kek-2", 10) == [
        (first.record_id, "kek-1", first.wrapped_key),
        (second.record_id, "kek-1", second.wrapped_key),
    ]
    assert await store.replace_wrapped_key(first.record_id, "kek-1", "kek-2", b"new")
    assert not await store.replace_wrapped_key(first.record_id, "kek-1", "kek-2", b"again")
    erased = await store.shred(second.record_id, T0 + timedelta(days=1), b"erase", "e" * 64)
    assert (erased.erased, erased.wrapped_key, erased.kek_id) == (True, None, None)
    assert erased.erased_at == T0 + timedelta(days=1)
    again = await store.shred(second.record_id, T0 + timedelta(days=2), b"other", "f" * 64)
    assert (again.erased_at, again.erasure_tx_id) == (erased.erased_at, "e" * 64)
    assert await store.wrapped_keys_not_under("kek-2", 10) == []
    live = await store.list_records(RecordFilter())
    assert [r.record_id for r in live.records] == [first.record_id]
    everything = await store.list_records(RecordFilter(include_erased=True))
    assert len(everything.records) == 2
    await store.delete(first.record_id)
    with pytest.raises(RecordNotFound):
        await store.get(first.record_id)


async def test_outbox_entries_until_final(store: MetadataStore) -> None:
    pending = record(5, registration_height=0)
    await store.insert(pending)
    await store.insert(record(6))
    assert await store.list_records(RecordFilter(patient_pseudonym="pp-1")) == RecordPage([], "")
    with_pending = await store.list_records(RecordFilter(include_pending=True))
    assert [r.record_id for r in with_pending.records] == [record(6).record_id, pending.record_id]
    [entry] = await store.unsettled(10)
    assert (entry.record_id, entry.kind, entry.tx_id, entry.signed_tx) == (
        pending.record_id,
        CommitKind.REGISTRATION,
        pending.registration_tx_id,
        b"tx-5",
    )
    await store.mark_final(pending.record_id, CommitKind.REGISTRATION, 42)
    assert (await store.get(pending.record_id)).registration_height == 42
    await store.shred(pending.record_id, T0, b"erase-5", "e" * 64)
    [erasure] = await store.unsettled(10)
    assert (erasure.kind, erasure.signed_tx) == (CommitKind.ERASURE, b"erase-5")
    await store.mark_final(pending.record_id, CommitKind.ERASURE, 43)
    assert await store.unsettled(10) == []
    assert (await store.get(pending.record_id)).erasure_height == 43
