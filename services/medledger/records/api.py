"""RecordsService over gRPC: translate, authorise, delegate to the domain service.

Roles gate methods (AUTHORISATION); consent gates each read of a patient's data (service.py);
organisation membership gates the custodian's own operations (upload, erase).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc

from medledger._gen.common.v1 import ledger_commit_pb2
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger._gen.records.v1 import records_service_pb2_grpc as pb_grpc
from medledger.core.auth import ANY_AUTHENTICATED, AuthorisationTable, current_caller
from medledger.core.errors import PermissionDenied
from medledger.core.grpc_server import GrpcService
from medledger.records.codes import (
    category_code,
    data_class,
    erasure_code,
    label_codes,
    purpose_code,
)
from medledger.records.errors import InvalidRecordRequest, StorageUnavailable
from medledger.records.service import (
    Caller,
    RecordsService,
    StudyView,
    UploadRequest,
    VerificationResult,
)
from medledger.records.store import RecordFilter, RecordMetadata

SERVICE_NAME = "medledger.records.v1.RecordsService"
MAX_CHUNK_BYTES = 1024 * 1024
RECORDS_ADMIN = "records_admin"
ADMINISTRATOR = "administrator"
AUDITOR = "auditor"
# Listing across patients reveals who has records here: only for the custodian's staff roles.
_ALL_PATIENT_ROLES = frozenset({RECORDS_ADMIN, ADMINISTRATOR, AUDITOR})
_RECORD_NAME = re.compile(r"^records/([0-9a-f-]{36})$")
_STUDY_NAME = re.compile(r"^studies/([A-Za-z0-9][A-Za-z0-9._:-]{0,127})$")
_VERIFICATION = {
    VerificationResult.VERIFIED: pb.VERIFICATION_RESULT_VERIFIED,
    VerificationResult.HASH_MISMATCH: pb.VERIFICATION_RESULT_HASH_MISMATCH,
    VerificationResult.NOT_REGISTERED: pb.VERIFICATION_RESULT_NOT_REGISTERED,
    VerificationResult.ERASED: pb.VERIFICATION_RESULT_ERASED,
    VerificationResult.CONTENT_MISSING: pb.VERIFICATION_RESULT_CONTENT_MISSING,
}

Context = grpc.aio.ServicerContext[Any, Any]


def _method(name: str) -> str:
    return f"/{SERVICE_NAME}/{name}"


AUTHORISATION = AuthorisationTable.of(
    {
        # Uploads: any principal of the custodian organisation (checked per call).
        _method("UploadRecord"): [ANY_AUTHENTICATED],
        # Reads of content and metadata: whoever consent permits, of any organisation.
        _method("DownloadRecord"): [ANY_AUTHENTICATED],
        _method("GetRecord"): [ANY_AUTHENTICATED],
        _method("ListRecords"): [ANY_AUTHENTICATED],
        _method("GetStudy"): [ANY_AUTHENTICATED],
        # Erasure destroys data for good: records administrators of the custodian only.
        _method("DeleteRecord"): [RECORDS_ADMIN, ADMINISTRATOR],
        _method("VerifyRecord"): [AUDITOR, RECORDS_ADMIN, ADMINISTRATOR],
    }
)


class NotCustodian(PermissionDenied):
    reason = "NOT_CUSTODIAN"


def caller() -> Caller:
    """The authenticated caller of this call, in the domain's terms."""
    identity = current_caller()
    return Caller(
        principal=identity.principal_id,
        organisation="organisations/" + identity.org_id.removeprefix("organisations/"),
        roles=tuple(sorted(identity.roles)),
        token_id=identity.token_id,
        kind=identity.kind,
    )


def record_id_of(name: str) -> str:
    match = _RECORD_NAME.match(name)
    if match is None:
        raise InvalidRecordRequest("a record name is records/{uuid}")
    return match.group(1)


def study_id_of(name: str) -> str:
    match = _STUDY_NAME.match(name)
    if match is None:
        raise InvalidRecordRequest("a study name is studies/{id}")
    return match.group(1)


def _set_time(target: Any, moment: datetime) -> None:
    target.FromDatetime(moment)


def record_message(record: RecordMetadata) -> pb.Record:
    if record.erased:
        state = pb.RECORD_STATE_ERASED
    elif record.registered:
        state = pb.RECORD_STATE_AVAILABLE
    else:
        state = pb.RECORD_STATE_PENDING
    message = pb.Record(
        name=f"records/{record.record_id}",
        patient_pseudonym=record.patient_pseudonym,
        data_class=data_class(record.data_class, record.sensitivity_labels),
        content_type=record.content_type,
        custodian=record.custodian,
        size_bytes=record.size_bytes,
        ciphertext_sha256=record.ciphertext_sha256,
        plaintext_commitment=record.plaintext_commitment,
        study=f"studies/{record.study_id}" if record.study_id else "",
        state=state,
    )
    if record.modality or record.sop_class_uid:
        message.imaging.modality = record.modality or ""
        message.imaging.sop_class_uid = record.sop_class_uid or ""
    _set_time(message.create_time, record.created_at)
    if record.erased_at is not None:
        _set_time(message.erase_time, record.erased_at)
    if record.erased and record.erasure_tx_id:
        tx_id, height = record.erasure_tx_id, record.erasure_height
    else:
        tx_id, height = record.registration_tx_id, record.registration_height
    if tx_id:
        message.ledger_commit.tx_id = tx_id
        message.ledger_commit.height = height
        message.ledger_commit.state = (
            ledger_commit_pb2.COMMIT_STATE_FINAL
            if height
            else ledger_commit_pb2.COMMIT_STATE_PENDING
        )
    return message


def study_message(study: StudyView) -> pb.Study:
    message = pb.Study(
        name=f"studies/{study.study_id}",
        patient_pseudonym=study.patient_pseudonym,
        modalities=sorted({r.modality for r in study.instances if r.modality}),
    )
    for record in study.instances:
        instance = message.instances.add(
            record=f"records/{record.record_id}", size_bytes=record.size_bytes
        )
        instance.imaging.modality = record.modality or ""
        instance.imaging.sop_class_uid = record.sop_class_uid or ""
    return message


class RecordsApi(pb_grpc.RecordsServiceServicer):
    """The gRPC face of the records service; `service` is attached once storage is open."""

    def __init__(self, service: RecordsService | None = None) -> None:
        self.service = service

    def _service(self) -> RecordsService:
        if self.service is None:
            raise StorageUnavailable("the records service is starting")
        return self.service

    def _custodian_only(self, who: Caller) -> None:
        if who.organisation != self._service().custodian:
            raise NotCustodian(
                "NOT_CUSTODIAN", "only principals of the custodian organisation may do this"
            )

    async def UploadRecord(  # noqa: N802 -- gRPC method name
        self, request_iterator: AsyncIterator[pb.UploadRecordRequest], context: Context
    ) -> pb.Record:
        who = caller()
        service = self._service()
        self._custodian_only(who)
        messages = aiter(request_iterator)
        try:
            first = await anext(messages)
        except StopAsyncIteration:
            raise InvalidRecordRequest("an upload starts with a header") from None
        if first.WhichOneof("part") != "header":
            raise InvalidRecordRequest("an upload starts with a header")
        header = first.header
        if header.expected_sha256 and len(header.expected_sha256) != 32:
            raise InvalidRecordRequest("expected_sha256 is 32 bytes")
        study_id = study_id_of(header.study) if header.study else None

        async def content() -> AsyncIterator[bytes]:
            async for message in messages:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidRecordRequest("only content chunks follow the header")
                if len(message.chunk) > MAX_CHUNK_BYTES:
                    raise InvalidRecordRequest("a content chunk is at most 1 MiB")
                if message.chunk:
                    yield message.chunk

        record = await service.upload(
            UploadRequest(
                caller=who,
                patient_pseudonym=header.patient_pseudonym,
                data_class=category_code(header.data_class.category),
                content_type=header.content_type,
                purpose=purpose_code(header.purpose),
                record_id=header.record_id or None,
                sensitivity_labels=label_codes(list(header.data_class.sensitivity_labels)),
                expected_size=(
                    header.expected_size_bytes if header.HasField("expected_size_bytes") else None
                ),
                expected_sha256=header.expected_sha256 or None,
                study_id=study_id,
                request_id=header.request_id or None,
            ),
            content(),
        )
        return record_message(record)

    async def DownloadRecord(  # noqa: N802
        self, request: pb.DownloadRecordRequest, context: Context
    ) -> AsyncIterator[pb.DownloadRecordResponse]:
        download = await self._service().download(
            record_id_of(request.name),
            caller(),
            purpose_code(request.purpose),
            offset=request.offset,
            length=request.length if request.HasField("length") else None,
            break_glass_justification=request.break_glass_justification,
        )
        yield pb.DownloadRecordResponse(
            header=pb.DownloadHeader(
                record=record_message(download.record),
                offset=download.offset,
                length=download.length,
            )
        )
        async for piece in download.content:
            for at in range(0, len(piece), MAX_CHUNK_BYTES):
                yield pb.DownloadRecordResponse(chunk=piece[at : at + MAX_CHUNK_BYTES])

    async def GetRecord(  # noqa: N802
        self, request: pb.GetRecordRequest, context: Context
    ) -> pb.Record:
        record = await self._service().get(
            record_id_of(request.name), caller(), purpose_code(request.purpose)
        )
        return record_message(record)

    async def ListRecords(  # noqa: N802
        self, request: pb.ListRecordsRequest, context: Context
    ) -> pb.ListRecordsResponse:
        who = caller()
        service = self._service()
        purpose = purpose_code(request.purpose)
        if not request.patient_pseudonym:
            self._custodian_only(who)
            if _ALL_PATIENT_ROLES.isdisjoint(who.roles):
                raise InvalidRecordRequest("name a patient_pseudonym to list records")
        where = RecordFilter(
            patient_pseudonym=request.patient_pseudonym or None,
            data_class=category_code(request.category) if request.category else None,
            study_id=study_id_of(request.study) if request.study else None,
            include_erased=request.show_erased,
        )
        page = await service.list_records(
            where, who, purpose, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListRecordsResponse(
            records=[record_message(record) for record in page.records],
            next_page_token=page.next_page_token,
        )

    async def DeleteRecord(  # noqa: N802
        self, request: pb.DeleteRecordRequest, context: Context
    ) -> pb.Record:
        who = caller()
        self._custodian_only(who)
        erased = await self._service().delete(
            record_id_of(request.name), who, erasure_code(request.reason)
        )
        return record_message(erased)

    async def VerifyRecord(  # noqa: N802
        self, request: pb.VerifyRecordRequest, context: Context
    ) -> pb.VerifyRecordResponse:
        verification = await self._service().verify(record_id_of(request.name), caller())
        return pb.VerifyRecordResponse(
            result=_VERIFICATION[verification.result],
            computed_ciphertext_sha256=verification.computed_ciphertext_sha256,
            registered_ciphertext_sha256=verification.registered_ciphertext_sha256,
            registration_tx_id=verification.registration_tx_id,
            registration_height=verification.registration_height,
        )

    async def GetStudy(  # noqa: N802
        self, request: pb.GetStudyRequest, context: Context
    ) -> pb.Study:
        study = await self._service().study(
            study_id_of(request.name), caller(), purpose_code(request.purpose)
        )
        return study_message(study)


def records_grpc_service(api: RecordsApi) -> GrpcService:
    return GrpcService.from_servicer(
        SERVICE_NAME, pb_grpc.add_RecordsServiceServicer_to_server, api, AUTHORISATION
    )
