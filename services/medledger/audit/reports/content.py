"""What a report is about and what it contains, independent of its format.

The same functions build an entry's readable fields for the export and recompute them in the
verifier, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from medledger._gen.audit.v1 import audit_service_pb2 as audit_pb
from medledger._gen.common.v1 import access_pb2, audit_event_pb2, ledger_commit_pb2
from medledger._gen.ledger.v1 import ledger_service_pb2
from medledger.audit.model import CheckpointRow, EntryRow, EventFilter
from medledger.audit.reports import accounting

REPORT_FORMAT_VERSION = "medledger.audit.report.v1"

KIND_NAMES = {
    audit_pb.REPORT_KIND_ACCOUNTING_OF_DISCLOSURES: "ACCOUNTING_OF_DISCLOSURES",
    audit_pb.REPORT_KIND_ACCESS_BY_PRINCIPAL: "ACCESS_BY_PRINCIPAL",
    audit_pb.REPORT_KIND_BREAK_GLASS_REVIEW: "BREAK_GLASS_REVIEW",
    audit_pb.REPORT_KIND_DENIED_ACCESSES: "DENIED_ACCESSES",
}
KIND_TITLES = {
    "ACCOUNTING_OF_DISCLOSURES": "Accounting of disclosures",
    "ACCESS_BY_PRINCIPAL": "Access by principal",
    "BREAK_GLASS_REVIEW": "Break-glass review",
    "DENIED_ACCESSES": "Denied accesses",
}


@dataclass(frozen=True)
class ReportSpec:
    """Which report, for whom, over which period (end exclusive, Unix ms)."""

    kind: str
    start_ms: int
    end_ms: int
    patient_pseudonym: str = ""
    principal: str = ""
    organisation: str = ""

    @property
    def accounting(self) -> bool:
        return self.kind == "ACCOUNTING_OF_DISCLOSURES"

    def event_filter(self) -> EventFilter:
        return EventFilter(
            patient_pseudonym=self.patient_pseudonym,
            principal=self.principal,
            organisation=self.organisation,
            decision=access_pb2.DECISION_DENY if self.kind == "DENIED_ACCESSES" else 0,
            break_glass_only=self.kind == "BREAK_GLASS_REVIEW",
            start_ms=self.start_ms,
            end_ms=self.end_ms,
        )

    def parameters(self) -> dict[str, Any]:
        return {
            "patient_pseudonym": self.patient_pseudonym,
            "principal": self.principal,
            "organisation": self.organisation,
            "start": iso_ms(self.start_ms),
            "end": iso_ms(self.end_ms),
        }


def six_years_before(end_ms: int) -> int:
    """The accounting lookback start: the same calendar instant six years earlier."""
    end = dt.datetime.fromtimestamp(end_ms / 1000, tz=dt.UTC)
    try:
        start = end.replace(year=end.year - accounting.LOOKBACK_YEARS)
    except ValueError:  # 29 February with no counterpart: take 28 February
        start = end.replace(year=end.year - accounting.LOOKBACK_YEARS, day=28)
    return int(start.timestamp() * 1000)


def iso_ms(value: int) -> str:
    moment = dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_time_ms(event: audit_event_pb2.AuditEvent) -> int:
    return event.time.seconds * 1000 + event.time.nanos // 1_000_000


@dataclass
class ReportEntry:
    """One log entry in a report, with its inclusion proof when the format carries proofs."""

    row: EntryRow
    event: audit_event_pb2.AuditEvent
    proof: list[bytes] = field(default_factory=list)


@dataclass
class ReportContext:
    """Everything around the entries: the spec, the checkpoint and its anchor."""

    spec: ReportSpec
    checkpoint: CheckpointRow
    generated_ms: int
    validators: ledger_service_pb2.ValidatorSet | None

    @property
    def receipt(self) -> ledger_service_pb2.TransactionReceipt | None:
        if not self.checkpoint.anchor.receipt:
            return None
        return ledger_service_pb2.TransactionReceipt.FromString(self.checkpoint.anchor.receipt)


@dataclass
class ReportSummary:
    entry_count: int = 0
    examined: int = 0
    excluded: dict[str, int] = field(default_factory=dict)


def event_fields(event: audit_event_pb2.AuditEvent) -> dict[str, Any]:
    """The event as readable JSON (proto field names, enum names)."""
    return json_format.MessageToDict(event, preserving_proto_field_name=True)


def disclosure_fields(event: audit_event_pb2.AuditEvent) -> dict[str, str]:
    """The four elements 164.528(b)(2) requires for each disclosure."""
    return {
        "date": iso_ms(event_time_ms(event)),
        "recipient": accounting.recipient(event),
        "description": accounting.description(event),
        "purpose": accounting.purpose_code(event.purpose),
    }


def checkpoint_fields(checkpoint: CheckpointRow) -> dict[str, Any]:
    return {
        "log_id": checkpoint.log_id,
        "tree_size": checkpoint.tree_size,
        "root_hash": checkpoint.root_hash.hex(),
        "time_unix_ms": checkpoint.time_ms,
        "signer": checkpoint.signer,
        "signer_key_id": checkpoint.signer_key_id,
        "signer_public_key": checkpoint.signer_public_key.hex(),
        "signature": checkpoint.signature.hex(),
    }


def entry_fields(entry: ReportEntry, accounting_report: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "leaf_index": entry.row.leaf_index,
        "leaf_hash": entry.row.leaf_hash.hex(),
        "leaf_data": base64.b64encode(entry.row.leaf_data).decode("ascii"),
        "inclusion_proof": [value.hex() for value in entry.proof],
        "event": event_fields(entry.event),
    }
    if accounting_report:
        fields["disclosure"] = disclosure_fields(entry.event)
    return fields


def anchor_fields(context: ReportContext) -> dict[str, Any]:
    anchor = context.checkpoint.anchor
    receipt = context.receipt
    state = ledger_commit_pb2.CommitState.Name(anchor.state).removeprefix("COMMIT_STATE_")  # type: ignore[arg-type]
    fields: dict[str, Any] = {"state": state, "tx_id": anchor.tx_id, "height": anchor.height}
    if receipt is not None:
        fields["receipt"] = json_format.MessageToDict(receipt, preserving_proto_field_name=True)
    return fields


def validator_fields(validators: ledger_service_pb2.ValidatorSet | None) -> dict[str, Any] | None:
    if validators is None:
        return None
    return json_format.MessageToDict(validators, preserving_proto_field_name=True)


def spec_from_request(request: audit_pb.ExportReportRequest, now_ms: int) -> ReportSpec:
    """Fill the request's defaults (period) in; validation of required fields is the caller's."""
    kind = KIND_NAMES.get(request.kind, "")
    end_ms = (
        request.end_time.seconds * 1000 + request.end_time.nanos // 1_000_000
        if request.HasField("end_time")
        else now_ms
    )
    if request.HasField("start_time"):
        start_ms = request.start_time.seconds * 1000 + request.start_time.nanos // 1_000_000
    elif kind == "ACCOUNTING_OF_DISCLOSURES":
        start_ms = six_years_before(end_ms)
    else:
        start_ms = 0
    return ReportSpec(
        kind=kind,
        start_ms=start_ms,
        end_ms=end_ms,
        patient_pseudonym=request.patient_pseudonym,
        principal=request.principal,
        organisation=request.organisation,
    )
