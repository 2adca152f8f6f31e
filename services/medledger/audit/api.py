"""The AuditService gRPC servicer: translate requests, apply the access rules, delegate to the log.

Every authenticated caller reaches the methods (the authorisation table admits all); who may
see what depends on the caller's principal kind and is decided in medledger.audit.access.
Queries and exports are themselves audited.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from medledger._gen.audit.v1 import audit_service_pb2 as pb
from medledger._gen.audit.v1 import audit_service_pb2_grpc
from medledger._gen.common.v1 import (
    access_pb2,
    actor_pb2,
    audit_event_pb2,
    ledger_commit_pb2,
)
from medledger._gen.ledger.v1 import ledger_service_pb2
from medledger.audit import access
from medledger.audit.errors import BadReportRequest
from medledger.audit.model import CheckpointRow, EntryRow, EventFilter
from medledger.audit.reports.content import KIND_NAMES, spec_from_request
from medledger.audit.reports.export import ReportExport
from medledger.audit.service import AuditLog
from medledger.core.audit_events import AuditPublisher
from medledger.core.auth import (
    ANY_AUTHENTICATED,
    AuthorisationTable,
    CallerIdentity,
    current_caller,
)
from medledger.core.grpc_server import GrpcService
from medledger.core.logging import get_logger

SERVICE_NAME = "medledger.audit.v1.AuditService"
_METHODS = (
    "QueryEvents",
    "ExportReport",
    "GetInclusionProof",
    "GetConsistencyProof",
    "GetLatestCheckpoint",
    "ListCheckpoints",
)
AUTHORISATION = AuthorisationTable.of(
    {f"/{SERVICE_NAME}/{method}": [ANY_AUTHENTICATED] for method in _METHODS}
)
_FORMATS = {
    pb.REPORT_FORMAT_CSV: "CSV",
    pb.REPORT_FORMAT_JSON: "JSON",
    pb.REPORT_FORMAT_PDF: "PDF",
}

_log = get_logger("medledger.audit.api")

ValidatorSource = Callable[[], Awaitable[ledger_service_pb2.ValidatorSet | None]]


def _ms(stamp: timestamp_pb2.Timestamp) -> int:
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def checkpoint_message(row: CheckpointRow) -> pb.Checkpoint:
    message = pb.Checkpoint(
        name=f"checkpoints/{row.tree_size}",
        log_id=row.log_id,
        tree_size=row.tree_size,
        root_hash=row.root_hash,
        time=_timestamp(row.time_ms),
        signer=row.signer,
        signer_key_id=row.signer_key_id,
        signer_public_key=row.signer_public_key,
        signature=row.signature,
        anchor=ledger_commit_pb2.LedgerCommit(
            tx_id=row.anchor.tx_id,
            state=row.anchor.state,  # type: ignore[arg-type]
            height=row.anchor.height,
        ),
    )
    if row.anchor.receipt:
        message.anchor_receipt.ParseFromString(row.anchor.receipt)
    return message


def entry_message(row: EntryRow) -> pb.LogEntry:
    return pb.LogEntry(
        leaf_index=row.leaf_index,
        event=row.event(),
        leaf_hash=row.leaf_hash,
        append_time=_timestamp(row.append_time_ms),
        leaf_data=row.leaf_data,
    )


def filter_from_request(request: pb.QueryEventsRequest) -> EventFilter:
    return EventFilter(
        patient_pseudonym=request.patient_pseudonym,
        principal=request.principal,
        organisation=request.organisation,
        action=request.action,
        decision=request.decision,
        purpose=request.purpose,
        record=request.record,
        start_ms=_ms(request.start_time) if request.HasField("start_time") else None,
        end_ms=_ms(request.end_time) if request.HasField("end_time") else None,
    )


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(
        self,
        log: AuditLog,
        organisation: str,
        *,
        validators: ValidatorSource | None = None,
        publisher: AuditPublisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self._organisation = "organisations/" + organisation.removeprefix("organisations/")
        self._validators = validators
        self._publisher = publisher
        self._clock = clock

    @property
    def publisher(self) -> AuditPublisher | None:
        return self._publisher

    @publisher.setter
    def publisher(self, value: AuditPublisher | None) -> None:
        self._publisher = value

    async def _audit_access(
        self, caller: CallerIdentity, action: int, patient: str, reason: str
    ) -> None:
        if self._publisher is None:
            return
        kind = access.caller_kind(caller)
        event = audit_event_pb2.AuditEvent(
            actor=actor_pb2.Actor(
                principal=caller.principal_id,
                organisation="organisations/" + caller.org_id.removeprefix("organisations/"),
                roles=sorted(caller.roles),
                token_id=caller.token_id,
            ),
            action=action,  # type: ignore[arg-type]
            resource=f"auditLogs/{self._organisation.removeprefix('organisations/')}",
            patient_pseudonym=patient,
            purpose=(
                access_pb2.PURPOSE_OF_USE_PATRQT
                if kind == access.PATIENT
                else access_pb2.PURPOSE_OF_USE_HCOMPL
            ),
            decision=access_pb2.DECISION_PERMIT,
            decision_reason=reason,
            policy_rule="audit.read_scope",
        )
        try:
            await self._publisher.publish(event)
        except Exception as exc:
            # The caller still gets an answer; the missing event is visible in the logs.
            _log.warning("audit.self_audit_failed", error=type(exc).__name__)

    async def QueryEvents(  # noqa: N802 -- the gRPC method name
        self, request: pb.QueryEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.QueryEventsResponse:
        caller = current_caller()
        where = access.scope_query(caller, filter_from_request(request), self._organisation)
        rows, token = await self._log.query(where, request.page_size, request.page_token)
        await self._audit_access(
            caller, access_pb2.ACCESS_ACTION_SEARCH, where.patient_pseudonym, "AUDIT_QUERY"
        )
        return pb.QueryEventsResponse(
            entries=[entry_message(row) for row in rows], next_page_token=token
        )

    async def ExportReport(  # noqa: N802 -- the gRPC method name
        self, request: pb.ExportReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExportReportResponse]:
        caller = current_caller()
        kind = KIND_NAMES.get(request.kind)
        format_name = _FORMATS.get(request.format)
        if kind is None or format_name is None:
            raise BadReportRequest("BAD_REPORT_REQUEST", "kind and format are required")
        accounting = kind == "ACCOUNTING_OF_DISCLOSURES"
        patient = access.scope_export(
            caller, request.patient_pseudonym, self._organisation, accounting
        )
        if accounting and not patient:
            raise BadReportRequest("BAD_REPORT_REQUEST", "an accounting needs patient_pseudonym")
        if kind == "ACCESS_BY_PRINCIPAL" and not request.principal:
            raise BadReportRequest("BAD_REPORT_REQUEST", "access by principal needs principal")
        now_ms = int(self._clock() * 1000)
        scoped = pb.ExportReportRequest()
        scoped.CopyFrom(request)
        scoped.patient_pseudonym = patient
        spec = spec_from_request(scoped, now_ms)
        if spec.start_ms >= spec.end_ms:
            raise BadReportRequest("BAD_REPORT_REQUEST", "start_time must be before end_time")
        validators = await self._validators() if self._validators is not None else None
        export = ReportExport(self._log, spec, format_name, validators, now_ms)
        report_context = await export.start()
        await self._audit_access(caller, access_pb2.ACCESS_ACTION_EXPORT, patient, "AUDIT_EXPORT")
        total = report_context.checkpoint.tree_size
        yield pb.ExportReportResponse(
            header=pb.ReportHeader(
                kind=request.kind,
                format=request.format,
                content_type=export.content_type,
                file_name=export.file_name,
                checkpoint=checkpoint_message(report_context.checkpoint),
                generate_time=_timestamp(now_ms),
            ),
            progress=pb.ReportProgress(entries_total=total),
        )
        async for chunk, progress in export.content():
            yield pb.ExportReportResponse(
                chunk=chunk,
                progress=pb.ReportProgress(
                    entries_processed=progress.processed,
                    entries_total=progress.total,
                    entries_matched=progress.matched,
                ),
            )
        yield pb.ExportReportResponse(
            trailer=pb.ReportTrailer(
                entry_count=export.summary.entry_count,
                size_bytes=export.size,
                content_sha256=export.sha256,
            ),
            progress=pb.ReportProgress(
                entries_processed=total,
                entries_total=total,
                entries_matched=export.summary.entry_count,
            ),
        )

    async def GetInclusionProof(  # noqa: N802 -- the gRPC method name
        self, request: pb.GetInclusionProofRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InclusionProof:
        which = request.WhichOneof("entry")
        if which is None:
            raise BadReportRequest("BAD_REPORT_REQUEST", "give leaf_index or event_id")
        result = await self._log.inclusion(
            leaf_index=request.leaf_index if which == "leaf_index" else None,
            event_id=request.event_id if which == "event_id" else None,
            tree_size=request.tree_size,
        )
        caller = current_caller()
        if access.caller_kind(caller) == access.PATIENT:
            # A proof names the event; a patient may only learn about their own.
            access.scope_query(
                caller,
                EventFilter(patient_pseudonym=result.entry.indexed.patient_pseudonym),
                self._organisation,
            )
        message = pb.InclusionProof(
            leaf_index=result.entry.leaf_index,
            tree_size=result.tree_size,
            leaf_hash=result.entry.leaf_hash,
            hashes=result.hashes,
        )
        if result.checkpoint is not None:
            message.checkpoint.CopyFrom(checkpoint_message(result.checkpoint))
        return message

    async def GetConsistencyProof(  # noqa: N802 -- the gRPC method name
        self, request: pb.GetConsistencyProofRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ConsistencyProof:
        second = request.second_tree_size
        if second == 0:
            second = (await self._log.latest_checkpoint()).tree_size
        hashes = await self._log.consistency_hashes(request.first_tree_size, second)
        return pb.ConsistencyProof(
            first_tree_size=request.first_tree_size, second_tree_size=second, hashes=hashes
        )

    async def GetLatestCheckpoint(  # noqa: N802 -- the gRPC method name
        self, request: pb.GetLatestCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Checkpoint:
        return checkpoint_message(await self._log.latest_checkpoint(request.require_anchored))

    async def ListCheckpoints(  # noqa: N802 -- the gRPC method name
        self, request: pb.ListCheckpointsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListCheckpointsResponse:
        rows, token = await self._log.list_checkpoints(
            request.page_size,
            request.page_token,
            _ms(request.start_time) if request.HasField("start_time") else None,
            _ms(request.end_time) if request.HasField("end_time") else None,
        )
        return pb.ListCheckpointsResponse(
            checkpoints=[checkpoint_message(row) for row in rows], next_page_token=token
        )


def audit_grpc_service(servicer: AuditServicer) -> GrpcService:
    return GrpcService.from_servicer(
        SERVICE_NAME,
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server,
        servicer,
        AUTHORISATION,
    )
