"""End to end with a real ledger: events flow in over JetStream, checkpoints are anchored in
final blocks, callers see what their kind allows, and exported reports verify offline — and
fail, naming the part, when any part is tampered with."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import re
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from medledger._gen.audit.v1 import audit_service_pb2 as pb
from medledger._gen.audit.v1 import audit_service_pb2_grpc as pb_grpc
from medledger._gen.common.v1 import access_pb2, audit_event_pb2, ledger_commit_pb2
from medledger.audit.main import Settings, build
from medledger.audit.reports.verify import (
    ReportVerificationError,
    trusted_validators_from_genesis,
    verify_report,
)
from medledger.cli.main import main as medledger_main
from medledger.core.errors import rpc_error_details
from medledger.core.grpc_channel import create_channel
from medledger.core.nats_bus import NatsBus
from medledger.core.service import serve
from medledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from medledger.testing.ledger import LocalLedger
from medledger.testing.processes import free_port
from tests.integration.audit.audit_helpers import (
    AUDITOR_TOKEN,
    OTHER_PATIENT_TOKEN,
    PATIENT_TOKEN,
    PRACTITIONER_TOKEN,
    audit_event,
    publish_burst,
    purge_audit_stream,
    write_tokens,
)

pytestmark = pytest.mark.integration

NOW_MS = 1_700_000_100_000


def scenario_events() -> list[audit_event_pb2.AuditEvent]:
    """Accesses to patient p-1 of every kind the reports tell apart, plus other patients."""
    events = [audit_event(i) for i in range(40)]  # patients p-0..p-39 by org-b researchers
    p1 = [audit_event(100 + i, patient="patients/p-1") for i in range(6)]
    p1[1].purpose = access_pb2.PURPOSE_OF_USE_TREAT  # treatment: left out of the accounting
    p1[2].actor.organisation = "organisations/org-a"  # a use inside the custodian
    p1[2].actor.principal = "organisations/org-a/principals/nurse-1"
    p1[3].decision = access_pb2.DECISION_DENY  # nothing disclosed
    p1[3].decision_reason = "NO_MATCHING_CONSENT"
    p1[4].purpose = access_pb2.PURPOSE_OF_USE_BTG
    p1[4].break_glass.session = "breakGlassSessions/bg-1"
    p1[4].break_glass.justification = "unresponsive in ED"
    p1[5].action = access_pb2.ACCESS_ACTION_DISCLOSE
    p1[5].purpose = access_pb2.PURPOSE_OF_USE_PUBHLTH
    return events + p1


@dataclass
class RunningAudit:
    target: str
    ledger: LocalLedger
    events: list[audit_event_pb2.AuditEvent]

    def channel(self, token: str) -> grpc.aio.Channel:
        return create_channel(self.target, token=token)


@pytest_asyncio.fixture
async def running_audit(
    ledger_network: LocalLedger, nats_url: str, tmp_path: Path
) -> AsyncIterator[RunningAudit]:
    settings = Settings(
        org_id="org-a",
        data_dir=tmp_path,
        grpc_port=free_port(),
        nats_url=nats_url,
        chain_id=ledger_network.genesis.chain_id,
        api_tokens_file=write_tokens(tmp_path / "tokens.json"),
        checkpoint_interval_seconds=0.3,
        log_format="console",
        shutdown_grace_seconds=2,
    )
    app = build(settings)
    shutdown = asyncio.Event()
    started = asyncio.Event()
    server = asyncio.create_task(serve(app, shutdown=shutdown, started=lambda _: started.set()))
    bus = await NatsBus.connect(nats_url, name="audit-e2e-publisher")
    try:
        await asyncio.wait_for(started.wait(), 30)
        events = scenario_events()
        await publish_burst(bus, events)
        running = RunningAudit(f"127.0.0.1:{settings.grpc_port}", ledger_network, events)
        await wait_anchored(running, len(events))
        yield running
    finally:
        await purge_audit_stream(bus)
        await bus.close()
        shutdown.set()
        assert await asyncio.wait_for(server, 30) == 0


async def wait_anchored(running: RunningAudit, size: int) -> pb.Checkpoint:
    async with running.channel(AUDITOR_TOKEN) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        for _ in range(300):
            try:
                checkpoint = await stub.GetLatestCheckpoint(
                    pb.GetLatestCheckpointRequest(require_anchored=True)
                )
            except grpc.aio.AioRpcError as exc:
                if rpc_error_details(exc).reason != "NO_CHECKPOINT":
                    raise
            else:
                if checkpoint.tree_size >= size:
                    return checkpoint
            await asyncio.sleep(0.1)
    raise AssertionError(f"no anchored checkpoint of {size} entries within 30 s")


async def export(
    running: RunningAudit, token: str, request: pb.ExportReportRequest
) -> tuple[bytes, pb.ReportHeader]:
    async with running.channel(token) as channel:
        parts = [p async for p in pb_grpc.AuditServiceStub(channel).ExportReport(request)]
    assert parts[0].WhichOneof("part") == "header"
    assert parts[-1].WhichOneof("part") == "trailer"
    content = b"".join(p.chunk for p in parts[1:-1])
    trailer = parts[-1].trailer
    assert trailer.content_sha256 == hashlib.sha256(content).digest()
    assert trailer.size_bytes == len(content)
    processed = [p.progress.entries_processed for p in parts]
    assert processed == sorted(processed) and processed[-1] == parts[-1].progress.entries_total
    return content, parts[0].header


def accounting_request(
    fmt: pb.ReportFormat.ValueType, patient: str = "patients/p-1"
) -> pb.ExportReportRequest:
    return pb.ExportReportRequest(
        kind=pb.REPORT_KIND_ACCOUNTING_OF_DISCLOSURES,
        format=fmt,
        patient_pseudonym=patient,
    )


async def test_checkpoints_are_anchored_in_final_blocks_and_proofs_verify(
    running_audit: RunningAudit,
) -> None:
    async with running_audit.channel(AUDITOR_TOKEN) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        latest = await stub.GetLatestCheckpoint(
            pb.GetLatestCheckpointRequest(require_anchored=True)
        )
        assert latest.anchor.state == ledger_commit_pb2.COMMIT_STATE_FINAL
        receipt = latest.anchor_receipt
        assert receipt.height == latest.anchor.height > 0
        assert receipt.transaction.body  # the anchoring transaction, proven into the block
        event = running_audit.events[7]
        proof = await stub.GetInclusionProof(pb.GetInclusionProofRequest(event_id=event.event_id))
        assert proof.leaf_hash == leaf_hash(event.SerializeToString())
        verify_inclusion(
            proof.leaf_hash, proof.leaf_index, proof.tree_size, list(proof.hashes), latest.root_hash
        )
        listed = await stub.ListCheckpoints(pb.ListCheckpointsRequest(page_size=1000))
        oldest = listed.checkpoints[-1]
        if oldest.tree_size < latest.tree_size:
            consistency = await stub.GetConsistencyProof(
                pb.GetConsistencyProofRequest(first_tree_size=oldest.tree_size)
            )
            verify_consistency(
                oldest.tree_size,
                latest.tree_size,
                list(consistency.hashes),
                oldest.root_hash,
                latest.root_hash,
            )


async def test_patients_see_only_their_own_history_and_others_are_refused(
    running_audit: RunningAudit,
) -> None:
    async with running_audit.channel(PATIENT_TOKEN) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        mine = await stub.QueryEvents(pb.QueryEventsRequest(page_size=1000))
        assert {e.event.patient_pseudonym for e in mine.entries} == {"patients/p-1"}
        assert len(mine.entries) >= 7  # p-1 among the 40 plus the six scenario events
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.QueryEvents(pb.QueryEventsRequest(patient_pseudonym="patients/p-2"))
        assert rpc_error_details(refused.value).reason == "OUTSIDE_PATIENT_SCOPE"
        with pytest.raises(grpc.aio.AioRpcError) as no_export:
            await export(
                running_audit,
                PATIENT_TOKEN,
                pb.ExportReportRequest(
                    kind=pb.REPORT_KIND_DENIED_ACCESSES, format=pb.REPORT_FORMAT_CSV
                ),
            )
        assert no_export.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with running_audit.channel(PRACTITIONER_TOKEN) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await pb_grpc.AuditServiceStub(channel).QueryEvents(pb.QueryEventsRequest())
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A patient's own accounting, pinned to their pseudonym even when none is named.
    content, _ = await export(
        running_audit, OTHER_PATIENT_TOKEN, accounting_request(pb.REPORT_FORMAT_JSON, "")
    )
    report = json.loads(content)
    assert report["parameters"]["patient_pseudonym"] == "patients/p-2"
    assert {e["event"]["patient_pseudonym"] for e in report["entries"]} <= {"patients/p-2"}


async def test_auditor_queries_filter_and_page(running_audit: RunningAudit) -> None:
    async with running_audit.channel(AUDITOR_TOKEN) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        request = pb.QueryEventsRequest(page_size=7)
        seen: list[int] = []
        while True:
            page = await stub.QueryEvents(request)
            seen.extend(e.leaf_index for e in page.entries)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        assert seen[: len(running_audit.events)] == list(range(len(running_audit.events)))
        denied = await stub.QueryEvents(
            pb.QueryEventsRequest(
                decision=access_pb2.DECISION_DENY, patient_pseudonym="patients/p-1"
            )
        )
        assert [e.event.event_id for e in denied.entries] == [running_audit.events[43].event_id]


async def test_accounting_report_lists_disclosures_only_and_verifies_offline(
    running_audit: RunningAudit, tmp_path: Path
) -> None:
    content, header = await export(
        running_audit, AUDITOR_TOKEN, accounting_request(pb.REPORT_FORMAT_JSON)
    )
    assert header.content_type == "application/json"
    assert "p-1" not in header.file_name
    report = json.loads(content)
    trusted, chain_id = trusted_validators_from_genesis(running_audit.ledger.genesis_path)
    result = verify_report(report, trusted, chain_id)
    p1 = running_audit.events[40:]
    listed = {e["event"]["event_id"] for e in report["entries"]}
    # p-1 by researchers of org-b (from the first 40, index 1) and scenario events 0 and 5.
    expected = {running_audit.events[1].event_id, p1[0].event_id, p1[5].event_id}
    assert listed == expected and result.entry_count == 3
    assert report["summary"]["excluded"] == {
        "TREATMENT_PAYMENT_OPERATIONS": 2,
        "USE_WITHIN_ENTITY": 1,
        "NOT_PERMITTED": 1,
    }
    disclosure = next(e for e in report["entries"] if e["event"]["event_id"] == p1[5].event_id)
    assert disclosure["disclosure"]["purpose"] == "PUBHLTH"
    assert disclosure["disclosure"]["recipient"].startswith("organisations/org-b/principals/")

    path = tmp_path / "report.json"
    path.write_bytes(content)
    genesis = str(running_audit.ledger.genesis_path)
    assert medledger_main(["audit", "verify", str(path), "--genesis", genesis]) == 0


Tamper = Callable[[dict[str, Any]], None]


def _b64_flip(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _hex_flip(value: str) -> str:
    raw = bytearray(bytes.fromhex(value))
    raw[0] ^= 0x01
    return raw.hex()


def _set(path: list[Any], change: Callable[[Any], Any]) -> Tamper:
    def tamper(report: dict[str, Any]) -> None:
        node: Any = report
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = change(node[path[-1]])

    return tamper


TAMPERINGS: dict[str, tuple[Tamper, str]] = {
    "entry bytes": (_set(["entries", 0, "leaf_data"], _b64_flip), "ENTRY_TAMPERED"),
    "entry shown fields": (
        _set(["entries", 0, "event", "decision_reason"], lambda _: "SOMETHING_ELSE"),
        "ENTRY_TAMPERED",
    ),
    "disclosure purpose": (
        _set(["entries", 0, "disclosure", "purpose"], lambda _: "TREAT"),
        "ENTRY_TAMPERED",
    ),
    "inclusion proof": (
        _set(["entries", 0, "inclusion_proof", 0], _hex_flip),
        "BAD_INCLUSION_PROOF",
    ),
    "leaf index": (_set(["entries", 0, "leaf_index"], lambda i: i + 1), "BAD_INCLUSION_PROOF"),
    "dropped entry count": (
        _set(["summary", "entry_count"], lambda n: n + 1),
        "ENTRY_COUNT_MISMATCH",
    ),
    "checkpoint root": (_set(["checkpoint", "root_hash"], _hex_flip), "BAD_CHECKPOINT_SIGNATURE"),
    "checkpoint signature": (
        _set(["checkpoint", "signature"], _hex_flip),
        "BAD_CHECKPOINT_SIGNATURE",
    ),
    "unanchored": (_set(["anchor", "state"], lambda _: "PENDING"), "UNANCHORED_CHECKPOINT"),
    "anchor transaction": (
        _set(["anchor", "receipt", "transaction", "body"], _b64_flip),
        "ANCHOR_NOT_IN_BLOCK",
    ),
    "block header": (
        _set(["anchor", "receipt", "header", "timestamp_unix_ms"], lambda t: str(int(t) + 1)),
        "BLOCK_HEADER_TAMPERED",
    ),
    "finality certificate": (
        _set(
            ["anchor", "receipt", "finality_certificate", "signatures", 0, "signature"], _b64_flip
        ),
        "BAD_FINALITY_CERTIFICATE",
    ),
    "certificate quorum": (
        _set(["anchor", "receipt", "finality_certificate", "signatures"], lambda s: s[:1]),
        "BAD_FINALITY_CERTIFICATE",
    ),
    "validator set": (
        _set(["validator_set", "validators", 0, "public_key"], _b64_flip),
        "UNTRUSTED_VALIDATOR_SET",
    ),
}


async def test_every_tampered_part_is_caught_and_named(
    running_audit: RunningAudit, tmp_path: Path
) -> None:
    content, _ = await export(
        running_audit, AUDITOR_TOKEN, accounting_request(pb.REPORT_FORMAT_JSON)
    )
    original = json.loads(content)
    trusted, chain_id = trusted_validators_from_genesis(running_audit.ledger.genesis_path)
    genesis = str(running_audit.ledger.genesis_path)
    for name, (tamper, reason) in TAMPERINGS.items():
        report = copy.deepcopy(original)
        tamper(report)
        with pytest.raises(ReportVerificationError) as failure:
            verify_report(report, trusted, chain_id)
        assert failure.value.reason == reason, name
        path = tmp_path / f"{name.replace(' ', '-')}.json"
        path.write_text(json.dumps(report))
        assert medledger_main(["audit", "verify", str(path), "--genesis", genesis]) == 1, name
    # Another consortium's genesis: the certificate's signers are not trusted.
    other = LocalLedger(running_audit.ledger.nats_url, tmp_path / "other", chain_id="other")
    untrusted, other_chain = trusted_validators_from_genesis(other.genesis_path)
    with pytest.raises(ReportVerificationError) as failure:
        verify_report(original, untrusted, other_chain)
    assert failure.value.reason == "UNTRUSTED_VALIDATOR_SET"


async def test_csv_and_pdf_exports(running_audit: RunningAudit) -> None:
    csv_bytes, header = await export(
        running_audit,
        AUDITOR_TOKEN,
        pb.ExportReportRequest(kind=pb.REPORT_KIND_BREAK_GLASS_REVIEW, format=pb.REPORT_FORMAT_CSV),
    )
    assert header.content_type == "text/csv"
    lines = csv_bytes.decode().splitlines()
    assert lines[0].startswith("leaf_index,event_id,time,principal")
    assert lines[0].endswith(",justification")
    assert len(lines) == 2 and "breakGlassSessions/bg-1" in lines[1]
    assert "unresponsive in ED" in lines[1]

    pdf, header = await export(
        running_audit, AUDITOR_TOKEN, accounting_request(pb.REPORT_FORMAT_PDF)
    )
    assert header.content_type == "application/pdf"
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pages = re.findall(rb"/Type\s*/Page\b", pdf)
    assert len(pages) >= 2  # summary page and verification appendix
    text = pdf_text(pdf)
    assert "Accounting of disclosures" in text
    assert "Verification appendix" in text
    assert "PUBHLTH" in text
    checkpoint = json.loads(
        (await export(running_audit, AUDITOR_TOKEN, accounting_request(pb.REPORT_FORMAT_JSON)))[0]
    )["checkpoint"]
    assert checkpoint["root_hash"] in text


def pdf_text(pdf: bytes) -> str:
    """The text shown by the PDF's content streams (fpdf2 writes literal strings in Tj)."""
    shown: list[str] = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        data = match.group(1)
        with contextlib.suppress(zlib.error):  # an uncompressed stream
            data = zlib.decompress(data)
        for literal in re.findall(rb"\((.*?)(?<!\\)\)\s*Tj", data, re.S):
            shown.append(literal.replace(rb"\(", b"(").replace(rb"\)", b")").decode("latin-1"))
    return " ".join(shown)


async def test_cli_exports_with_progress_and_queries(
    running_audit: RunningAudit, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "accounting.json"
    common = ["--target", running_audit.target, "--token", AUDITOR_TOKEN]
    code = await asyncio.to_thread(
        medledger_main,
        [
            "audit",
            "export",
            "--kind",
            "accounting",
            "--patient",
            "patients/p-1",
            "--out",
            str(out),
            *common,
        ],
    )
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "exporting: 100%" in captured.err
    genesis = str(running_audit.ledger.genesis_path)
    assert (
        await asyncio.to_thread(medledger_main, ["audit", "verify", str(out), "--genesis", genesis])
        == 0
    )
    assert "OK: 3 entries" in capfd.readouterr().out
    code = await asyncio.to_thread(
        medledger_main,
        ["audit", "query", "--patient", "patients/p-1", "--decision", "deny", *common],
    )
    # The in-process service logs to the same stdout; the command prints JSON lines.
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0 and len(lines) == 1
    assert json.loads(lines[0])["event"]["decision_reason"] == "NO_MATCHING_CONSENT"
    code = await asyncio.to_thread(
        medledger_main,
        ["audit", "query", "--target", running_audit.target, "--token", PRACTITIONER_TOKEN],
    )
    assert code == 1 and "AUDIT_ACCESS_DENIED" in capfd.readouterr().err
