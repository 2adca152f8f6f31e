"""Report renderings: CSV and JSON stream entry by entry; the PDF is laid out at the end.

Each renderer turns the context, the entries and the summary into bytes in three steps
(`begin`, `entry`, `end`), so the exporter can send content as it is produced.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, ClassVar, Protocol

from medledger.audit.reports import accounting
from medledger.audit.reports.content import (
    KIND_TITLES,
    REPORT_FORMAT_VERSION,
    ReportContext,
    ReportEntry,
    ReportSummary,
    anchor_fields,
    checkpoint_fields,
    disclosure_fields,
    entry_fields,
    event_time_ms,
    iso_ms,
    validator_fields,
)


class Renderer(Protocol):
    content_type: ClassVar[str]
    extension: ClassVar[str]

    def begin(self, context: ReportContext) -> bytes: ...

    def entry(self, entry: ReportEntry) -> bytes: ...

    def end(self, summary: ReportSummary) -> bytes: ...


def _basis(entry: ReportEntry) -> str:
    event = entry.event
    if event.HasField("consent"):
        return f"{event.consent.consent} v{event.consent.version}"
    if event.HasField("break_glass"):
        return event.break_glass.session
    return event.policy_rule


def _safe_cell(value: str) -> str:
    # A cell starting with a formula character would run as a formula in a spreadsheet.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


_CSV_COLUMNS = (
    "leaf_index",
    "event_id",
    "time",
    "principal",
    "organisation",
    "roles",
    "action",
    "resource",
    "record",
    "patient_pseudonym",
    "purpose",
    "decision",
    "decision_reason",
    "basis",
    "service",
    "trace_id",
)
_ACCOUNTING_COLUMNS = ("date", "recipient", "description", "purpose", "event_id", "leaf_index")


class CsvReport:
    """RFC 4180 CSV with a header row; one row per entry."""

    content_type: ClassVar[str] = "text/csv"
    extension: ClassVar[str] = "csv"

    def __init__(self) -> None:
        self._accounting = False
        self._break_glass = False

    def _row(self, values: list[str]) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerow([_safe_cell(v) for v in values])
        return out.getvalue().encode("utf-8")

    def begin(self, context: ReportContext) -> bytes:
        self._accounting = context.spec.accounting
        self._break_glass = context.spec.kind == "BREAK_GLASS_REVIEW"
        if self._accounting:
            return self._row(list(_ACCOUNTING_COLUMNS))
        columns = list(_CSV_COLUMNS)
        if self._break_glass:
            columns.append("justification")
        return self._row(columns)

    def entry(self, entry: ReportEntry) -> bytes:
        event = entry.event
        if self._accounting:
            d = disclosure_fields(event)
            return self._row(
                [
                    d["date"],
                    d["recipient"],
                    d["description"],
                    d["purpose"],
                    event.event_id,
                    str(entry.row.leaf_index),
                ]
            )
        values = [
            str(entry.row.leaf_index),
            event.event_id,
            iso_ms(event_time_ms(event)),
            event.actor.principal,
            event.actor.organisation,
            " ".join(event.actor.roles),
            accounting.action_code(event.action),
            event.resource,
            event.record,
            event.patient_pseudonym,
            accounting.purpose_code(event.purpose),
            accounting.decision_code(event.decision),
            event.decision_reason,
            _basis(entry),
            event.service,
            event.trace_id,
        ]
        if self._break_glass:
            values.append(event.break_glass.justification)
        return self._row(values)

    def end(self, summary: ReportSummary) -> bytes:
        return b""


class JsonReport:
    """The self-verifying report: entries with proofs, the checkpoint, its anchor, validators."""

    content_type: ClassVar[str] = "application/json"
    extension: ClassVar[str] = "json"

    def __init__(self) -> None:
        self._accounting = False
        self._first = True

    def begin(self, context: ReportContext) -> bytes:
        self._accounting = context.spec.accounting
        head: dict[str, Any] = {
            "format": REPORT_FORMAT_VERSION,
            "kind": context.spec.kind,
            "generated_at": iso_ms(context.generated_ms),
            "parameters": context.spec.parameters(),
            "checkpoint": checkpoint_fields(context.checkpoint),
            "anchor": anchor_fields(context),
            "validator_set": validator_fields(context.validators),
        }
        text = json.dumps(head, indent=1, sort_keys=False)
        # Open the entries array inside the object: everything up to the closing brace.
        return (text[: text.rstrip().rfind("}")].rstrip() + ',\n "entries": [\n').encode()

    def entry(self, entry: ReportEntry) -> bytes:
        prefix = "" if self._first else ",\n"
        self._first = False
        return (prefix + json.dumps(entry_fields(entry, self._accounting))).encode()

    def end(self, summary: ReportSummary) -> bytes:
        tail = {
            "entry_count": summary.entry_count,
            "entries_examined": summary.examined,
            "excluded": summary.excluded,
        }
        return ('\n ],\n "summary": ' + json.dumps(tail) + "\n}\n").encode()


class PdfReport:
    """A readable PDF: a summary page, the entries, and a verification appendix."""

    content_type: ClassVar[str] = "application/pdf"
    extension: ClassVar[str] = "pdf"

    def __init__(self) -> None:
        self._context: ReportContext | None = None
        self._entries: list[ReportEntry] = []

    def begin(self, context: ReportContext) -> bytes:
        self._context = context
        return b""

    def entry(self, entry: ReportEntry) -> bytes:
        self._entries.append(entry)
        return b""

    def end(self, summary: ReportSummary) -> bytes:
        from medledger.audit.reports.pdf import render_pdf

        if self._context is None:
            raise RuntimeError("end() before begin()")
        return render_pdf(self._context, self._entries, summary)


def renderer_for(format_name: str) -> Renderer:
    renderers: dict[str, type[Renderer]] = {"CSV": CsvReport, "JSON": JsonReport, "PDF": PdfReport}
    return renderers[format_name]()


def title_of(kind: str) -> str:
    return KIND_TITLES.get(kind, kind)
