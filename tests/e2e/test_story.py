"""The whole HIPAA story end to end, on a stack of real processes (NATS, four validators, two
hospitals' services with PostgreSQL stores and records in an S3 server): every access decision,
every audit entry, the accounting of disclosures and its offline verification; a validator and
the audit service are killed and restarted during the story; and afterwards no log line and no
ledger block holds the patient's name, MRN or date of birth."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from minio import Minio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from medledger._gen.audit.v1 import audit_service_pb2 as audit_pb
from medledger._gen.audit.v1 import audit_service_pb2_grpc as audit_grpc
from medledger._gen.common.v1 import access_pb2, audit_event_pb2
from medledger.core.grpc_channel import create_channel
from medledger.ledger.store import BlockStore
from medledger.stack.catalog import discover_services
from medledger.stack.story import Story, StoryResult
from medledger.stack.storydata import StoryPatient
from medledger.stack.supervisor import Stack
from medledger.stack.topology import (
    APP_SERVICES,
    CHAIN_ID,
    HOSPITALS,
    ORGANISATIONS,
    StackOptions,
    Topology,
)
from medledger.testing.fixtures import PG_DSN_ENV
from medledger.testing.s3server import S3Endpoint
from tests.e2e.stack_helpers import stack_options

MISSING = discover_services(APP_SERVICES).missing
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
HOSPITAL_A = HOSPITALS[0]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason="the story needs every hospital service; missing: "
    + "; ".join(f"{name} ({why})" for name, why in MISSING.items()),
)

# Each read of the story: (step, permitted).
EXPECTED_DECISIONS = [
    ("b-denied", False),
    ("b-reads-ct", True),
    ("b-reads-fhir", True),
    ("b-note-denied", False),
    ("research-read", True),
    ("break-glass-read", True),
    ("b-denied-again", False),
]
# Crashes during the story: before the step named, kill or restart a process.
CRASHES = {
    "grant": ("kill", "hospital-c/ledger"),
    "research": ("restart", "hospital-c/ledger"),
    "b-note-denied": ("kill", f"{HOSPITAL_A}/audit"),
    "revoke": ("restart", f"{HOSPITAL_A}/audit"),
}


@pytest.fixture
def postgres_databases() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database for each hospital service (two hospitals' services of one
    kind must not share tables), or none (SQLite) when no server answers."""
    base = os.environ.get(PG_DSN_ENV, DEFAULT_PG_DSN)
    names = {
        f"{org}/{service}": f"story_{uuid.uuid4().hex[:12]}"
        for org in HOSPITALS
        for service in APP_SERVICES
    }
    try:
        with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
            for database in names.values():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.OperationalError:
        if PG_DSN_ENV in os.environ:
            raise
        yield {}
        return
    urls = {process: _with_database(base, database) for process, database in names.items()}
    # As a platform team's database bootstrap would: the schema each service works in.
    for process, url in urls.items():
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            service = process.rsplit("/", 1)[1]
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(service)))
    yield urls
    with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
        for database in names.values():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


def _with_database(dsn: str, database: str) -> str:
    """`dsn` (URL or key=value) as a postgresql:// URL of `database` on the same server."""
    if "://" not in dsn:
        params = conninfo_to_dict(dsn)
        user = quote(str(params.get("user", "postgres")))
        password = params.get("password")
        auth = f"{user}:{quote(str(password))}" if password else user
        dsn = f"postgresql://{auth}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/"
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def test_the_story_survives_crashes_and_leaks_no_phi(
    tmp_path: Path,
    s3_server: S3Endpoint,
    postgres_databases: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDLEDGER_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("MEDLEDGER_S3_SECRET_KEY", s3_server.secret_key)
    monkeypatch.setenv("MEDLEDGER_S3_REGION", s3_server.region)
    base = stack_options(tmp_path / "stack")
    options = StackOptions(
        data_dir=base.data_dir,
        base_port=base.base_port,
        nats_port=base.nats_port,
        nats_monitoring_port=base.nats_monitoring_port,
        records_backend="s3",
        s3_endpoint=s3_server.url,
        s3_bucket=f"story-{uuid.uuid4().hex[:12]}",
        database_urls=postgres_databases,
        start_timeout=120.0,
    )
    topology = Topology(options, APP_SERVICES)
    crashes_done: list[str] = []

    with (tmp_path / "up.out").open("w") as terminal:
        stack = Stack(topology, out=terminal)

        async def before_step(step: str) -> None:
            if step in CRASHES:
                action, process = CRASHES[step]
                await asyncio.to_thread(getattr(stack, action), process)
                crashes_done.append(f"{action} {process}")

        narration: list[str] = []
        story = Story(topology, tmp_path / "demo", narration.append, before_step)
        try:
            stack.start()
            result = asyncio.run(story.run())
            events = asyncio.run(_records_events(story, result))
            example = _run_the_integration_example(topology, tmp_path)
        finally:
            stack.stop()
            terminal.flush()
    assert len(crashes_done) == len(CRASHES), "every crash and restart happened"
    assert stack.failed == [], f"processes failed: {stack.failed}"

    assert example.returncode == 0, example.stdout + example.stderr
    assert "uploaded and read back records/" in example.stdout
    assert "DECISION_PERMIT" in example.stdout
    _assert_stores_were_used(options, s3_server)
    _assert_decisions(result)
    _assert_audit_entries(result, events)
    _assert_report(result)
    _assert_no_phi(topology, result.patient)
    assert len(narration) >= 12, "every step was narrated"


def _run_the_integration_example(
    topology: Topology, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """The Python client of docs/integrating.md, run as a hospital developer would."""
    guide = (Path(__file__).resolve().parents[2] / "docs" / "integrating.md").read_text()
    code = guide.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "first_calls.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLEDGER_")}
    env["MEDLEDGER_STACK_DIR"] = str(topology.layout.root)
    env["MEDLEDGER_BASE_PORT"] = str(topology.options.base_port)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def _assert_stores_were_used(options: StackOptions, s3_server: S3Endpoint) -> None:
    """The services kept their state in PostgreSQL and the blobs in the S3 server."""
    for process, dsn in options.database_urls.items():
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchone()
        assert row is not None and row[0] > 0, f"{process} made no tables in PostgreSQL"
    client = Minio(
        s3_server.host,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=s3_server.secure,
        region=s3_server.region,
    )
    objects = list(client.list_objects(options.s3_bucket, recursive=True))
    assert len(objects) >= 5, "the five uploads are in the bucket"


def _assert_decisions(result: StoryResult) -> None:
    assert [(a.step, a.permitted) for a in result.accesses] == EXPECTED_DECISIONS
    for access in result.accesses:
        if not access.permitted:
            assert access.reason, f"{access.step}: a denial names its reason"
    # A grant and a revocation are final within seconds, even with a validator down.
    assert result.consent_final_seconds < 15
    assert result.revocation_final_seconds < 15
    assert result.break_glass_session


async def _records_events(story: Story, result: StoryResult) -> list[audit_event_pb2.AuditEvent]:
    """What hospital A's audit log holds about the patient's records, read as A's admin once
    the log has taken an event for every read (or after a deadline)."""
    admin = await story.admin(HOSPITAL_A)
    address = story.topology.spec(HOSPITAL_A, "audit").address
    deadline = time.monotonic() + 30
    async with create_channel(address, token=admin.token) as channel:
        stub = audit_grpc.AuditServiceStub(channel)
        while True:
            events = await _query_all(stub, result.patient.pseudonym)
            reads = [e for e in events if e.action == access_pb2.ACCESS_ACTION_READ]
            if len(reads) >= len(result.accesses) or time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.5)


async def _query_all(
    stub: audit_grpc.AuditServiceAsyncStub, patient: str
) -> list[audit_event_pb2.AuditEvent]:
    events: list[audit_event_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await stub.QueryEvents(
            audit_pb.QueryEventsRequest(patient_pseudonym=patient, page_size=200, page_token=token),
            timeout=30,
        )
        events += [entry.event for entry in page.entries]
        token = page.next_page_token
        if not token:
            return [e for e in events if e.service == "records"]


def _assert_audit_entries(result: StoryResult, events: list[audit_event_pb2.AuditEvent]) -> None:
    ids = [event.event_id for event in events]
    assert len(ids) == len(set(ids)), "an event was logged twice across the audit restart"
    uploads = [e for e in events if e.action == access_pb2.ACCESS_ACTION_CREATE]
    assert len(uploads) == 5, "three CT slices, the FHIR document and the note"
    reads = [e for e in events if e.action == access_pb2.ACCESS_ACTION_READ]
    assert len(reads) == len(result.accesses), "every read, permitted or denied, is audited"
    for access, event in zip(result.accesses, reads, strict=True):
        assert event.actor.principal == access.actor, access.step
        assert event.record == access.record, access.step
        expected = access_pb2.DECISION_PERMIT if access.permitted else access_pb2.DECISION_DENY
        assert event.decision == expected, access.step
    decided = {access.step: event for access, event in zip(result.accesses, reads, strict=True)}
    assert decided["b-reads-ct"].consent.consent == result.consent
    assert decided["research-read"].purpose == access_pb2.PURPOSE_OF_USE_HRESCH
    assert decided["break-glass-read"].WhichOneof("basis") == "break_glass"
    assert decided["break-glass-read"].purpose == access_pb2.PURPOSE_OF_USE_ETREAT


def _assert_report(result: StoryResult) -> None:
    assert result.report_json is not None and result.report_pdf is not None
    report = json.loads(result.report_json.read_text())
    assert report["kind"] == "ACCOUNTING_OF_DISCLOSURES"
    assert report["parameters"]["patient_pseudonym"] == result.patient.pseudonym
    # Treatment disclosures are exempt (164.528(a)(1)(i)); the research disclosure is listed,
    # by the records service that served it (and possibly by the consent decision behind it).
    entries = report["entries"]
    assert entries, "the research disclosure is listed"
    research = result.outcome("research-read")
    for entry in entries:
        event = entry["event"]
        assert event["actor"]["principal"] == research.actor
        assert event["record"] == result.records["fhir"]
        assert event["purpose"] == "PURPOSE_OF_USE_HRESCH"
    assert "records" in {entry["event"]["service"] for entry in entries}
    assert result.report_pdf.read_bytes().startswith(b"%PDF")
    assert result.verification_output.startswith(f"OK: {len(entries)} ")
    assert "verification FAILED" in result.tamper_output
    assert f"entry {result.tampered_entry}" in result.tamper_output


def _assert_no_phi(topology: Topology, patient: StoryPatient) -> None:
    layout = topology.layout
    needles = [text.encode() for text in patient.identifying_strings()]
    logs = [*layout.logs_dir.glob("*.log"), *layout.nats_dir.glob("*.log")]
    assert len(logs) >= len(topology.processes())
    for log in logs:
        content = log.read_bytes()
        for needle in needles:
            assert needle not in content, f"{log.name} holds the patient's {needle!r}"
    blocks = 0
    for index, organisation in enumerate(ORGANISATIONS):
        path = layout.service_dir(organisation, "ledger") / f"ledger-{CHAIN_ID}-{index}.db"
        store = BlockStore(path)
        try:
            for height in range(1, store.height + 1):
                stored = store.block(height)
                assert stored is not None
                blocks += 1
                for needle in needles:
                    assert needle not in stored.block, f"block {height} holds {needle!r}"
        finally:
            store.close()
    assert blocks > 0
