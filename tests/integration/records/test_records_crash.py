"""A SIGKILLed `medledger serve records` loses no acknowledged record: uploads acknowledged while
the ledger was down are registered by the outbox after a restart, and an upload cut off by the
kill leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger._gen.common.v1 import access_pb2
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger._gen.records.v1 import records_service_pb2_grpc as pb_grpc
from medledger.testing.ledger import LocalLedger
from medledger.testing.processes import LoggedProcess, free_port
from tests.integration.records.records_harness import (
    MIB,
    PERMITTED_PATIENT,
    ConsentResponder,
    Metadata,
    download,
    header,
    upload_messages,
    write_tokens,
)

pytestmark = pytest.mark.integration


class RecordsProcess:
    def __init__(self, tmp_path: Path, nats_url: str, chain_id: str) -> None:
        self.org = "h-crash"
        self.tokens = write_tokens(tmp_path / "tokens.json", self.org)
        self.port = free_port()
        self.data_dir = tmp_path / "records"
        env = dict(os.environ)
        env.update(
            {
                "MEDLEDGER_ORG_ID": self.org,
                "MEDLEDGER_DATA_DIR": str(self.data_dir),
                "MEDLEDGER_GRPC_PORT": str(self.port),
                "MEDLEDGER_NATS_URL": nats_url,
                "MEDLEDGER_CHAIN_ID": chain_id,
                "MEDLEDGER_API_TOKENS_FILE": str(tmp_path / "tokens.json"),
                "MEDLEDGER_REGISTRATION_WAIT_SECONDS": "0",
                "MEDLEDGER_INCOMPLETE_UPLOAD_TTL_SECONDS": "0",
                "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": "2",
                "MEDLEDGER_LOG_FORMAT": "console",
            }
        )
        self.process = LoggedProcess(
            [sys.executable, "-m", "medledger.cli.main", "serve", "records"],
            tmp_path / "records.log",
            env=env,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serving(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def start(self) -> None:
        self.process.start()
        await asyncio.to_thread(
            self.process.wait_until, self.serving, timeout=30, what="records service"
        )

    def auth(self, who: str = "clinician") -> Metadata:
        return (("authorization", f"Bearer {self.tokens[who]}"),)


async def test_sigkill_loses_no_acknowledged_record(
    tmp_path: Path, nats_url: str, consent_responder: ConsentResponder
) -> None:
    # The ledger is not up yet: uploads are acknowledged PENDING, their registrations queued.
    ledger = LocalLedger(nats_url, tmp_path / "ledger", chain_id=f"crash-{uuid.uuid4().hex[:8]}")
    service = RecordsProcess(tmp_path, nats_url, ledger.genesis.chain_id)
    await service.start()
    try:
        contents = [os.urandom(n) for n in (1, 70_000, 3 * MIB + 17, 512, 2 * MIB)]
        acknowledged: dict[str, bytes] = {}
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = pb_grpc.RecordsServiceStub(channel)
            for data in contents:
                record = await stub.UploadRecord(
                    upload_messages(header(content_type="application/octet-stream"), data),
                    metadata=service.auth(),
                )
                assert record.state == pb.RECORD_STATE_PENDING
                acknowledged[record.name] = data

            sent = asyncio.Event()

            async def endless() -> AsyncIterator[pb.UploadRecordRequest]:
                yield header(content_type="application/octet-stream")
                for _ in range(6):
                    yield pb.UploadRecordRequest(chunk=os.urandom(MIB))
                sent.set()
                await asyncio.sleep(3600)

            cut = stub.UploadRecord(endless(), metadata=service.auth())
            await sent.wait()
            await asyncio.sleep(0.3)
            service.process.kill()
            with pytest.raises(grpc.aio.AioRpcError):
                await cut
        incoming = service.data_dir / "blobs" / ".incoming"
        assert list(incoming.iterdir()), "the cut-off upload left a temporary file"

        await ledger.start()
        await service.start()
        assert not list(incoming.iterdir()), "restart cleans unfinished writes"
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = pb_grpc.RecordsServiceStub(channel)
            for name in acknowledged:
                for _ in range(300):
                    got = await stub.GetRecord(
                        pb.GetRecordRequest(name=name, purpose=access_pb2.PURPOSE_OF_USE_TREAT),
                        metadata=service.auth(),
                    )
                    if got.state == pb.RECORD_STATE_AVAILABLE:
                        break
                    await asyncio.sleep(0.1)
                assert got.state == pb.RECORD_STATE_AVAILABLE, name
            listed = await stub.ListRecords(
                pb.ListRecordsRequest(
                    purpose=access_pb2.PURPOSE_OF_USE_TREAT,
                    patient_pseudonym=PERMITTED_PATIENT,
                    page_size=100,
                ),
                metadata=service.auth(),
            )
            assert {r.name for r in listed.records} == set(acknowledged)

            class Running:
                stub = pb_grpc.RecordsServiceStub(channel)

                @staticmethod
                def auth(who: str = "clinician") -> Metadata:
                    return service.auth(who)

            for name, data in acknowledged.items():
                assert (await download(Running, name))[1] == data  # type: ignore[arg-type]
    finally:
        service.process.stop()
        # All at once: a validator's stop can wait on requests to a peer already stopped.
        await asyncio.wait_for(
            asyncio.gather(*(ledger.stop_validator(i) for i in range(ledger.size))), 30
        )
