"""The records service end to end over gRPC: pydicom's CT and MR files byte-exact, studies,
ranges, consent denial with its reason, audit events on JetStream, registration and erasure on
a real 4-validator ledger, verification against the ledger, and uploads cut off midway."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medledger._gen.common.v1 import (
    access_pb2,
    ledger_commit_pb2,
    record_registration_pb2,
    transaction_pb2,
)
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger.core.errors import rpc_error_details
from medledger.core.nats_bus import NatsBus
from medledger.records.s3 import S3BlobStorage, S3Config
from medledger.testing.ledger import LocalLedger
from medledger.testing.s3server import S3Endpoint
from tests.integration.records.records_harness import (
    CONSENT_NAME,
    DENIED_PATIENT,
    MIB,
    PERMITTED_PATIENT,
    AuditReader,
    ConsentResponder,
    RunningRecords,
    download,
    header,
    running_records,
    upload_messages,
)

pytestmark = pytest.mark.integration
CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))


async def upload(running: RunningRecords, data: bytes, **fields: object) -> pb.Record:
    return await running.stub.UploadRecord(
        upload_messages(header(**fields), data),  # type: ignore[arg-type]
        metadata=running.auth(),
    )


async def test_dicom_studies_round_trip_with_consent_audit_and_ledger(
    tmp_path: Path,
    nats_url: str,
    nats_bus: NatsBus,
    ledger_network: LocalLedger,
    consent_responder: ConsentResponder,
) -> None:
    chain = ledger_network.genesis.chain_id
    async with running_records(tmp_path, nats_url, chain) as running:
        audit = AuditReader(nats_bus, running.org)
        await audit.start()
        ct, mr = await asyncio.to_thread(CT.read_bytes), await asyncio.to_thread(MR.read_bytes)
        ct_record = await upload(running, ct, expected_sha256=hashlib.sha256(ct).digest())
        mr_record = await upload(running, mr)
        # Consent may not have applied the registration block yet: the read waits for it.
        consent_responder.lagging_answers = 2
        for record, data, modality in ((ct_record, ct, "CT"), (mr_record, mr, "MR")):
            assert record.state == pb.RECORD_STATE_AVAILABLE
            assert record.ledger_commit.state == ledger_commit_pb2.COMMIT_STATE_FINAL
            assert record.imaging.modality == modality
            assert record.imaging.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.")
            assert record.study.startswith("studies/study-")
            first, content = await download(running, record.name)
            assert content == data
            assert (first.offset, first.length, first.record.name) == (0, len(data), record.name)

        # No DICOM identifier reaches plaintext: not the API, not the ledger.
        dataset = pydicom.dcmread(CT)
        listed = await running.stub.ListRecords(
            pb.ListRecordsRequest(
                purpose=access_pb2.PURPOSE_OF_USE_TREAT, patient_pseudonym=PERMITTED_PATIENT
            ),
            metadata=running.auth(),
        )
        assert {r.name for r in listed.records} == {ct_record.name, mr_record.name}
        receipt = await ledger_network.client(nats_bus).receipt(ct_record.ledger_commit.tx_id)
        assert receipt is not None
        body = transaction_pb2.TransactionBody.FromString(receipt.transaction.body)
        registration = body.record_registration
        assert registration.record == ct_record.name
        assert registration.ciphertext_sha256 == ct_record.ciphertext_sha256
        assert registration.plaintext_commitment == ct_record.plaintext_commitment
        assert registration.size_bytes == len(ct)
        assert registration.custodian == f"organisations/{running.org}"
        assert registration.data_class.category == access_pb2.RECORD_CATEGORY_IMAGING
        for uid in (dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID):
            assert uid.encode() not in listed.SerializeToString()
            assert uid.encode() not in receipt.SerializeToString()

        # The two files are different studies; each study lists its instance.
        study = await running.stub.GetStudy(
            pb.GetStudyRequest(name=ct_record.study, purpose=access_pb2.PURPOSE_OF_USE_TREAT),
            metadata=running.auth(),
        )
        assert [i.record for i in study.instances] == [ct_record.name]
        assert list(study.modalities) == ["CT"]

        # A byte range decrypts only what it touches and returns exactly those bytes.
        first, part = await download(running, ct_record.name, offset=10_000, length=20_000)
        assert part == ct[10_000:30_000] and first.length == 20_000

        verified = await running.stub.VerifyRecord(
            pb.VerifyRecordRequest(name=ct_record.name), metadata=running.auth("admin")
        )
        assert verified.result == pb.VERIFICATION_RESULT_VERIFIED
        assert verified.registration_height == ct_record.ledger_commit.height > 0
        assert verified.registered_ciphertext_sha256 == ct_record.ciphertext_sha256

        events = await audit.drain(at_least=9)
        reads = [e for e in events if e.action == access_pb2.ACCESS_ACTION_READ and e.record]
        permitted = [e for e in reads if e.decision == access_pb2.DECISION_PERMIT]
        assert permitted and all(
            (e.consent.consent, e.consent.version) == (CONSENT_NAME, 3)
            for e in permitted
            if e.policy_rule != "records.verify"
        )
        creates = [e for e in events if e.action == access_pb2.ACCESS_ACTION_CREATE]
        assert {e.record for e in creates} == {ct_record.name, mr_record.name}
        assert all(e.service == "records" and e.actor.principal.endswith("/dr-a") for e in creates)
        questions = [q for q in consent_responder.questions if q.record == ct_record.name]
        assert len(questions) >= 4  # two lagging answers, the read, the range read
        assert all(
            q.action == access_pb2.ACCESS_ACTION_READ
            and q.actor.principal == f"organisations/{running.org}/principals/dr-a"
            for q in questions
        )


async def test_denied_read_erasure_and_errors(
    tmp_path: Path,
    nats_url: str,
    nats_bus: NatsBus,
    ledger_network: LocalLedger,
    consent_responder: ConsentResponder,
) -> None:
    chain = ledger_network.genesis.chain_id
    async with running_records(tmp_path, nats_url, chain) as running:
        audit = AuditReader(nats_bus, running.org)
        await audit.start()
        secret = os.urandom(300_000)
        record = await upload(
            running,
            secret,
            patient=DENIED_PATIENT,
            category=access_pb2.RECORD_CATEGORY_CLINICAL_NOTE,
            content_type="application/pdf",
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await download(running, record.name)
        details = rpc_error_details(denied.value)
        assert details.code == grpc.StatusCode.PERMISSION_DENIED
        assert details.reason == "ACCESS_DENIED"
        assert details.metadata["consent_reason"] == "NO_MATCHING_CONSENT"
        events = await audit.drain(at_least=2)
        [deny] = [e for e in events if e.decision == access_pb2.DECISION_DENY]
        assert (deny.record, deny.decision_reason, deny.policy_rule) == (
            record.name,
            "NO_MATCHING_CONSENT",
            "base.deny_by_default",
        )

        # Roles and organisation gate the custodian's own operations.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await running.stub.DeleteRecord(
                pb.DeleteRecordRequest(
                    name=record.name,
                    reason=record_registration_pb2.RECORD_ERASURE_REASON_PATIENT_REQUEST,
                ),
                metadata=running.auth("clinician"),
            )
        assert rpc_error_details(refused.value).reason == "ROLE_NOT_ALLOWED"
        with pytest.raises(grpc.aio.AioRpcError) as outsider:
            await running.stub.UploadRecord(
                upload_messages(header(), b"x"),
                metadata=running.auth("outsider"),
            )
        assert rpc_error_details(outsider.value).reason == "NOT_CUSTODIAN"

        erased = await running.stub.DeleteRecord(
            pb.DeleteRecordRequest(
                name=record.name,
                reason=record_registration_pb2.RECORD_ERASURE_REASON_PATIENT_REQUEST,
            ),
            metadata=running.auth("admin"),
        )
        assert erased.state == pb.RECORD_STATE_ERASED and erased.ledger_commit.tx_id
        receipt = await ledger_network.client(nats_bus).wait_receipt(
            erased.ledger_commit.tx_id, timeout=15
        )
        body = transaction_pb2.TransactionBody.FromString(receipt.transaction.body)
        assert body.record_erasure.record == record.name
        verified = await running.stub.VerifyRecord(
            pb.VerifyRecordRequest(name=record.name), metadata=running.auth("admin")
        )
        assert verified.result == pb.VERIFICATION_RESULT_ERASED
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await download(running, record.name)
        assert rpc_error_details(gone.value).reason == "RECORD_ERASED"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await running.stub.UploadRecord(
                upload_messages(pb.UploadRecordRequest(chunk=b"no header"), b""),
                metadata=running.auth(),
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        actions = {(e.action, e.decision) for e in await audit.drain(at_least=6)}
        assert (access_pb2.ACCESS_ACTION_DELETE, access_pb2.DECISION_PERMIT) in actions


async def test_upload_cut_off_midway_leaves_no_record_and_no_multipart_upload(
    tmp_path: Path,
    nats_url: str,
    ledger_network: LocalLedger,
    consent_responder: ConsentResponder,
    s3_server: S3Endpoint,
) -> None:
    bucket = f"records-cut-{uuid.uuid4().hex[:8]}"
    chain = ledger_network.genesis.chain_id
    async with running_records(
        tmp_path,
        nats_url,
        chain,
        storage_backend="s3",
        s3_endpoint=s3_server.url,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_region=s3_server.region,
        s3_bucket=bucket,
    ) as running:
        sent = asyncio.Event()

        async def cut_off() -> AsyncIterator[pb.UploadRecordRequest]:
            yield header(content_type="application/octet-stream")
            for _ in range(20):  # 20 MiB: several multipart parts are already in S3
                yield pb.UploadRecordRequest(chunk=os.urandom(MIB))
            sent.set()
            await asyncio.sleep(3600)

        call = running.stub.UploadRecord(cut_off(), metadata=running.auth())
        await sent.wait()
        storage = await S3BlobStorage.open(
            S3Config(
                s3_server.url,
                bucket,
                s3_server.access_key,
                s3_server.secret_key,
                region=s3_server.region,
            )
        )
        try:
            for _ in range(100):
                if await storage.incomplete_uploads():
                    break
                await asyncio.sleep(0.05)
            assert await storage.incomplete_uploads(), "the upload should be under way"
            call.cancel()
            for _ in range(100):
                if not await storage.incomplete_uploads():
                    break
                await asyncio.sleep(0.05)
            assert await storage.incomplete_uploads() == []
            listed = await running.stub.ListRecords(
                pb.ListRecordsRequest(
                    purpose=access_pb2.PURPOSE_OF_USE_RECORDMGT, show_erased=True
                ),
                metadata=running.auth("admin"),
            )
            assert list(listed.records) == []
            objects = await asyncio.to_thread(
                lambda: list(storage.client.list_objects(bucket, recursive=True))
            )
            assert objects == []
            # The same service still takes a whole upload afterwards.
            record = await upload(running, b"after the cut", content_type="text/plain")
            assert (await download(running, record.name))[1] == b"after the cut"
        finally:
            await storage.close()
