"""Helpers of the audit integration tests: the audit service as a real process, a fast JetStream
publisher of audit events, and static tokens for each kind of caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medledger._gen.common.v1 import access_pb2, actor_pb2, audit_event_pb2
from medledger.core.audit_events import AUDIT_STREAM, audit_subject
from medledger.core.nats_bus import NatsBus
from medledger.testing.processes import LoggedProcess, free_port

AUDITOR_TOKEN = "auditor-token"
PATIENT_TOKEN = "patient-token"
OTHER_PATIENT_TOKEN = "other-patient-token"
PRACTITIONER_TOKEN = "practitioner-token"


def audit_event(index: int, org: str = "org-a", patient: str = "") -> audit_event_pb2.AuditEvent:
    event = audit_event_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        actor=actor_pb2.Actor(
            principal=f"organisations/org-b/principals/p{index % 17}",
            organisation="organisations/org-b",
            roles=["physician"],
        ),
        action=access_pb2.ACCESS_ACTION_READ,
        resource=f"records/r-{index}",
        record=f"records/r-{index}",
        patient_pseudonym=patient or f"patients/p-{index % 50}",
        purpose=access_pb2.PURPOSE_OF_USE_HRESCH,
        decision=access_pb2.DECISION_PERMIT,
        decision_reason="CONSENT_PERMIT",
        service="records",
        organisation=f"organisations/{org}",
    )
    event.time.FromMilliseconds(1_700_000_000_000 + index)
    return event


async def publish_burst(
    bus: NatsBus,
    events: list[audit_event_pb2.AuditEvent],
    org: str = "org-a",
    window: int = 256,
    msg_id_suffix: str = "",
) -> None:
    """Publish with JetStream acks, `window` publishes in flight at a time."""
    js = bus.client.jetstream()
    subject = audit_subject(org)
    for start in range(0, len(events), window):
        chunk = events[start : start + window]
        await asyncio.gather(
            *(
                js.publish(
                    subject,
                    e.SerializeToString(),
                    headers={"Nats-Msg-Id": e.event_id + msg_id_suffix},
                )
                for e in chunk
            )
        )


def write_tokens(path: Path, org: str = "org-a") -> Path:
    tokens = {
        AUDITOR_TOKEN: {
            "principal": f"organisations/{org}/principals/auditor-1",
            "org": org,
            "kind": "AUDITOR",
        },
        PATIENT_TOKEN: {
            "principal": "organisations/org-a/principals/patient-1",
            "org": "org-a",
            "kind": "PATIENT",
            "claims": {"patient_pseudonym": "patients/p-1"},
        },
        OTHER_PATIENT_TOKEN: {
            "principal": "organisations/org-a/principals/patient-2",
            "org": "org-a",
            "kind": "PATIENT",
            "claims": {"patient_pseudonym": "patients/p-2"},
        },
        PRACTITIONER_TOKEN: {
            "principal": "organisations/org-a/principals/dr-1",
            "org": "org-a",
            "kind": "PRACTITIONER",
        },
    }
    path.write_text(json.dumps(tokens), encoding="utf-8")
    path.chmod(0o600)
    return path


class AuditProcess:
    """`medledger serve audit` in its own process."""

    def __init__(self, data_dir: Path, nats_url: str, extra_env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.grpc_port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "MEDLEDGER_ORG_ID": "org-a",
                "MEDLEDGER_DATA_DIR": str(data_dir),
                "MEDLEDGER_GRPC_PORT": str(self.grpc_port),
                "MEDLEDGER_NATS_URL": nats_url,
                "MEDLEDGER_API_TOKENS_FILE": str(write_tokens(data_dir / "tokens.json")),
                "MEDLEDGER_LOG_LEVEL": "WARNING",
                "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": "3",
            }
        )
        env.update(extra_env or {})
        self.process = LoggedProcess(
            [sys.executable, "-m", "medledger.cli.main", "serve", "audit"],
            data_dir / "audit-service.log",
            env=env,
        )

    @property
    def database(self) -> Path:
        return self.data_dir / "audit.sqlite3"

    def entry_count(self) -> int:
        if not self.database.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0])

    async def wait_for(self, predicate: Callable[[], bool], limit: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"{what} not reached in {limit}s; see {self.process.log_path}")
            if not self.process.running:
                raise AssertionError(f"audit service died; see {self.process.log_path}")
            await asyncio.sleep(0.05)


@pytest.fixture
def audit_process(tmp_path: Path, nats_url: str) -> Iterator[AuditProcess]:
    process = AuditProcess(tmp_path, nats_url)
    yield process
    process.process.stop()


async def purge_audit_stream(bus: NatsBus) -> None:
    with contextlib.suppress(Exception):  # absent is fine
        await bus.client.jetstream().delete_stream(AUDIT_STREAM)
