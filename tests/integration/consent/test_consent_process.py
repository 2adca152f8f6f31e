"""`medledger serve consent` as production runs it: its own process, configured by MEDLEDGER_*
variables, against a real nats-server and a running ledger; healthy over gRPC, answering
``consent.check`` over NATS, and exiting 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import actor_pb2
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger._gen.consent.v1 import consent_service_pb2_grpc as pb_grpc
from medledger.core.nats_bus import NatsBus
from medledger.testing.ledger import LocalLedger
from medledger.testing.processes import LoggedProcess, free_port

pytestmark = pytest.mark.integration

DOCTOR_B = "organisations/org-b/principals/dr-b"


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=0.5
            )
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
    status: int = reply.status
    return status


def _question() -> pb.CheckAccessRequest:
    return pb.CheckAccessRequest(
        actor=actor_pb2.Actor(
            principal=DOCTOR_B,
            organisation="organisations/org-b",
            roles=["physician"],
            kind=actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
        ),
        patient_pseudonym="p-1",
        data_class=acc.DataClass(category=acc.RECORD_CATEGORY_LABORATORY),
        action=acc.ACCESS_ACTION_READ,
        purpose=acc.PURPOSE_OF_USE_TREAT,
    )


def _grpc_check(address: str) -> pb.CheckAccessResponse:
    with grpc.insecure_channel(address) as channel:
        reply: pb.CheckAccessResponse = pb_grpc.ConsentServiceStub(channel).CheckAccess(
            _question(), metadata=(("authorization", "Bearer doctor-token"),), timeout=5
        )
        return reply


async def test_serve_consent_in_its_own_process(
    ledger_network: LocalLedger, nats_url: str, nats_bus: NatsBus, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "doctor-token": {
                    "principal": DOCTOR_B,
                    "org": "org-b",
                    "roles": ["physician"],
                    "kind": "PRACTITIONER",
                }
            }
        )
    )
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        {
            "MEDLEDGER_ORG_ID": "org-a",
            "MEDLEDGER_DATA_DIR": str(tmp_path / "data"),
            "MEDLEDGER_GRPC_PORT": str(port),
            "MEDLEDGER_NATS_URL": nats_url,
            "MEDLEDGER_CHAIN_ID": ledger_network.genesis.chain_id,
            "MEDLEDGER_API_TOKENS_FILE": str(tokens),
            "MEDLEDGER_LOG_LEVEL": "INFO",
            "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": "3",
            # Every line reaches the log even if the process has to be killed.
            "PYTHONUNBUFFERED": "1",
        }
    )
    process = LoggedProcess(
        [sys.executable, "-m", "medledger.cli.main", "serve", "consent"],
        tmp_path / "consent.log",
        env=env,
    )
    process.start()
    try:
        # The ledger runs on this event loop, so every blocking wait goes to a thread.
        await asyncio.to_thread(
            process.wait_until,
            lambda: _health(address) == health_pb2.HealthCheckResponse.SERVING,
            timeout=60,
            what="consent service",
        )
        reply = await nats_bus.request("consent.check", _question(), pb.CheckAccessResponse)
        assert (reply.decision, reply.policy_rule) == (
            acc.DECISION_DENY,
            "base.other_organisation_requires_consent",
        )
        assert reply.ledger_height >= 0
        over_grpc = await asyncio.to_thread(_grpc_check, address)
        assert over_grpc.reason == "OTHER_ORGANISATION_REQUIRES_CONSENT"
        await asyncio.to_thread(process.stop, 20)
        log = (tmp_path / "consent.log").read_text()
        assert process.returncode == 0, f"exit code {process.returncode}:\n{log[-3000:]}"
    finally:
        await asyncio.to_thread(process.kill)
