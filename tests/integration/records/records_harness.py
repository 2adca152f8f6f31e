"""Helpers for the records service over gRPC: a consent responder answering `consent.check`
on the real nats-server with the consent protobufs, a reader of the AUDIT JetStream stream,
API token files, and the service itself built by records.main and served in this loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from medledger._gen.common.v1 import access_pb2, audit_event_pb2
from medledger._gen.consent.v1 import consent_service_pb2 as consent_pb
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger._gen.records.v1 import records_service_pb2_grpc as pb_grpc
from medledger.core.audit_events import AUDIT_STREAM, audit_subject, ensure_audit_stream
from medledger.core.grpc_server import GrpcServer
from medledger.core.nats_bus import BusSubscription, NatsBus
from medledger.core.service import ServiceApp, serve
from medledger.records.main import Settings, build

Metadata = tuple[tuple[str, str | bytes], ...]
PERMITTED_PATIENT = "pp-permitted"
DENIED_PATIENT = "pp-denied"
CONSENT_NAME = "consents/c-records-test"
MIB = 1024 * 1024


@dataclass
class ConsentResponder:
    """Answers consent.check like the consent service: permit for one patient, deny otherwise."""

    questions: list[consent_pb.CheckAccessRequest] = field(default_factory=list)
    subscription: BusSubscription | None = None
    # Like a consent service whose view lags the ledger: the next N questions about a record
    # get RECORD_UNKNOWN.
    lagging_answers: int = 0

    async def answer(
        self, question: consent_pb.CheckAccessRequest
    ) -> consent_pb.CheckAccessResponse:
        self.questions.append(question)
        if question.record and self.lagging_answers > 0:
            self.lagging_answers -= 1
            return consent_pb.CheckAccessResponse(
                decision=access_pb2.DECISION_DENY,
                reason="RECORD_UNKNOWN",
                policy_rule="base.record_unavailable",
            )
        if question.patient_pseudonym == PERMITTED_PATIENT:
            return consent_pb.CheckAccessResponse(
                decision=access_pb2.DECISION_PERMIT,
                reason="CONSENT_PERMIT",
                consent=audit_event_pb2.ConsentReference(consent=CONSENT_NAME, version=3),
                ledger_height=7,
            )
        return consent_pb.CheckAccessResponse(
            decision=access_pb2.DECISION_DENY,
            reason="NO_MATCHING_CONSENT",
            policy_rule="base.deny_by_default",
            ledger_height=7,
        )


class AuditReader:
    """Reads one organisation's events from the AUDIT stream through a durable consumer."""

    def __init__(self, bus: NatsBus, org: str) -> None:
        self._bus = bus
        self._org = org
        self._durable = f"records-test-{uuid.uuid4().hex[:8]}"
        self.events: list[audit_event_pb2.AuditEvent] = []

    async def start(self) -> None:
        await ensure_audit_stream(self._bus)
        await self._bus.ensure_durable_consumer(
            AUDIT_STREAM, self._durable, filter_subject=audit_subject(self._org)
        )

    async def drain(
        self, at_least: int = 0, wait_seconds: float = 5.0
    ) -> list[audit_event_pb2.AuditEvent]:
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while True:
            for delivery in await self._bus.fetch(
                AUDIT_STREAM, self._durable, audit_event_pb2.AuditEvent, batch=100, timeout=0.2
            ):
                self.events.append(delivery.message)
                await delivery.ack.ack()
            if len(self.events) >= at_least or asyncio.get_running_loop().time() > deadline:
                return self.events


def write_tokens(path: Path, org: str) -> dict[str, str]:
    """Tokens for a clinician and a records administrator of `org`, and a clinician elsewhere."""
    tokens = {
        "clinician": {
            "principal": f"organisations/{org}/principals/dr-a",
            "org": org,
            "roles": ["physician"],
            "kind": "PRACTITIONER",
        },
        "admin": {
            "principal": f"organisations/{org}/principals/admin",
            "org": org,
            "roles": ["records_admin", "auditor"],
            "kind": "ADMINISTRATOR",
        },
        "outsider": {
            "principal": "organisations/elsewhere/principals/dr-x",
            "org": "elsewhere",
            "roles": ["physician"],
            "kind": "PRACTITIONER",
        },
    }
    secret = {name: f"tok-{name}-{uuid.uuid4().hex}" for name in tokens}
    path.write_text(json.dumps({secret[name]: entry for name, entry in tokens.items()}))
    return secret


@dataclass
class RunningRecords:
    app: ServiceApp
    port: int
    tokens: Mapping[str, str]
    channel: grpc.aio.Channel
    org: str

    @property
    def stub(self) -> pb_grpc.RecordsServiceAsyncStub:
        return pb_grpc.RecordsServiceStub(self.channel)

    def auth(self, who: str = "clinician") -> Metadata:
        return (("authorization", f"Bearer {self.tokens[who]}"),)


@contextlib.asynccontextmanager
async def running_records(
    tmp_path: Path, nats_url: str, chain_id: str, **overrides: Any
) -> AsyncIterator[RunningRecords]:
    org = f"h-{uuid.uuid4().hex[:8]}"
    tokens = write_tokens(tmp_path / "tokens.json", org)
    options: dict[str, Any] = {
        "org_id": org,
        "data_dir": tmp_path / "records",
        "grpc_port": 0,
        "nats_url": nats_url,
        "chain_id": chain_id,
        "api_tokens_file": tmp_path / "tokens.json",
        "log_format": "console",
        "shutdown_grace_seconds": 2.0,
        "chunk_size_bytes": 16 * 1024,
        "registration_wait_seconds": 10.0,
        "malloc_tuning": False,
    }
    options.update(overrides)
    app = build(Settings(**options))
    shutdown = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def started(server: GrpcServer) -> None:
        ready.set_result(server.port)

    task = asyncio.create_task(serve(app, shutdown=shutdown, started=started))
    done, _ = await asyncio.wait([ready, task], timeout=30, return_when="FIRST_COMPLETED")
    if ready not in done:
        shutdown.set()
        raise RuntimeError(
            f"records service did not start: {task.exception() if task.done() else 'timeout'}"
        )
    port = ready.result()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 8 * MIB),
            ("grpc.max_send_message_length", 8 * MIB),
        ],
    )
    try:
        yield RunningRecords(app, port, tokens, channel, org)
    finally:
        await channel.close(None)
        shutdown.set()
        assert await task == 0


def header(
    patient: str = PERMITTED_PATIENT,
    category: int = access_pb2.RECORD_CATEGORY_IMAGING,
    content_type: str = "application/dicom",
    **fields: Any,
) -> pb.UploadRecordRequest:
    return pb.UploadRecordRequest(
        header=pb.RecordHeader(
            patient_pseudonym=patient,
            data_class=access_pb2.DataClass(category=category),  # type: ignore[arg-type]
            content_type=content_type,
            purpose=access_pb2.PURPOSE_OF_USE_TREAT,
            **fields,
        )
    )


async def upload_messages(
    first: pb.UploadRecordRequest, data: bytes, piece: int = MIB
) -> AsyncIterator[pb.UploadRecordRequest]:
    yield first
    for at in range(0, len(data), piece):
        yield pb.UploadRecordRequest(chunk=data[at : at + piece])


async def download(
    running: RunningRecords, name: str, who: str = "clinician", **fields: Any
) -> tuple[pb.DownloadHeader, bytes]:
    call = running.stub.DownloadRecord(
        pb.DownloadRecordRequest(name=name, purpose=access_pb2.PURPOSE_OF_USE_TREAT, **fields),
        metadata=running.auth(who),
    )
    first: pb.DownloadHeader | None = None
    content = bytearray()
    async for message in call:
        if message.WhichOneof("part") == "header":
            first = message.header
        else:
            assert first is not None, "content before the header"
            assert len(message.chunk) <= MIB
            content += message.chunk
    assert first is not None
    return first, bytes(content)
