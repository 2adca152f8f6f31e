"""The PDF layout of a report (fpdf2): summary page, entry table, verification appendix."""

from __future__ import annotations

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from medledger.audit.reports import accounting
from medledger.audit.reports.content import (
    KIND_TITLES,
    ReportContext,
    ReportEntry,
    ReportSummary,
    disclosure_fields,
    event_time_ms,
    iso_ms,
)
from medledger.ledgerclient import header_hash


def _latin1(text: str) -> str:
    # The built-in PDF fonts cover Latin-1 only.
    return text.encode("latin-1", "replace").decode("latin-1")


class _Document(FPDF):
    def __init__(self, title: str) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self._title = title
        self.set_auto_page_break(auto=True, margin=15)
        self.set_title(title)
        self.set_creator("medledger audit")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        self.cell(0, 8, _latin1(f"{self._title} - page {self.page_no()}"), align="C")

    def line_text(self, text: str, size: float = 10, bold: bool = False) -> None:
        self.set_font("Helvetica", style="B" if bold else "", size=size)
        self.multi_cell(0, size * 0.5, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def pair(self, label: str, value: str) -> None:
        self.set_font("Helvetica", style="B", size=9)
        self.cell(55, 5, _latin1(label))
        self.set_font("Courier", size=8)
        self.multi_cell(0, 5, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _table(doc: _Document, header: list[str], widths: list[float], rows: list[list[str]]) -> None:
    doc.set_font("Helvetica", style="B", size=8)
    for title, width in zip(header, widths, strict=True):
        doc.cell(width, 6, _latin1(title), border=1)
    doc.ln()
    doc.set_font("Helvetica", size=7)
    for row in rows:
        if doc.will_page_break(6):
            doc.add_page()
        for value, width in zip(row, widths, strict=True):
            text = value
            while text and doc.get_string_width(_latin1(text)) > width - 2:
                text = text[:-2] + "~"
            doc.cell(width, 5, _latin1(text), border=1)
        doc.ln()


def render_pdf(context: ReportContext, entries: list[ReportEntry], summary: ReportSummary) -> bytes:
    spec = context.spec
    title = KIND_TITLES.get(spec.kind, spec.kind)
    doc = _Document(f"medledger audit report: {title}")
    doc.add_page()
    doc.line_text(title, size=18, bold=True)
    doc.ln(2)
    doc.pair("Log", context.checkpoint.log_id)
    doc.pair("Generated", iso_ms(context.generated_ms))
    doc.pair("Period", f"{iso_ms(spec.start_ms)} to {iso_ms(spec.end_ms)} (end exclusive)")
    if spec.patient_pseudonym:
        doc.pair("Patient pseudonym", spec.patient_pseudonym)
    if spec.principal:
        doc.pair("Principal", spec.principal)
    if spec.organisation:
        doc.pair("Organisation", spec.organisation)
    doc.pair("Entries in report", str(summary.entry_count))
    doc.pair("Log entries examined", str(summary.examined))
    doc.pair("Proven against", f"checkpoint of {context.checkpoint.tree_size} entries")
    if spec.accounting:
        doc.ln(3)
        doc.line_text("Left out under 45 CFR 164.528(a):", size=10, bold=True)
        if not summary.excluded:
            doc.line_text("nothing", size=9)
        for rule, count in sorted(summary.excluded.items()):
            doc.line_text(f"{count} - {accounting.EXCLUSION_RULES.get(rule, rule)}", size=9)
    doc.ln(4)
    if spec.accounting:
        rows = []
        for entry in entries:
            d = disclosure_fields(entry.event)
            rows.append([d["date"], d["recipient"], d["description"], d["purpose"]])
        _table(doc, ["Date", "Recipient", "Description", "Purpose"], [45, 110, 90, 25], rows)
    else:
        rows = [
            [
                iso_ms(event_time_ms(e.event)),
                e.event.actor.principal,
                accounting.action_code(e.event.action),
                e.event.record or e.event.resource,
                e.event.patient_pseudonym,
                accounting.purpose_code(e.event.purpose),
                accounting.decision_code(e.event.decision),
                e.event.decision_reason,
            ]
            for e in entries
        ]
        _table(
            doc,
            ["Time", "Principal", "Action", "Resource", "Patient", "Purpose", "Decision", "Reason"],
            [40, 65, 22, 40, 35, 20, 18, 37],
            rows,
        )
    _appendix(doc, context)
    return bytes(doc.output())


def _appendix(doc: _Document, context: ReportContext) -> None:
    checkpoint = context.checkpoint
    doc.add_page()
    doc.line_text("Verification appendix", size=14, bold=True)
    doc.line_text(
        "Every entry of this report is in the organisation's append-only Merkle log (RFC 9162). "
        "The log's signed checkpoint below is anchored in a block of the consortium ledger that "
        "a quorum of validators finalized. The JSON export of this report carries each entry's "
        "inclusion proof; check it offline with: medledger audit verify REPORT.json --genesis "
        "genesis.json",
        size=9,
    )
    doc.ln(2)
    doc.line_text("Checkpoint", size=11, bold=True)
    doc.pair("Log id", checkpoint.log_id)
    doc.pair("Tree size", str(checkpoint.tree_size))
    doc.pair("Root hash", checkpoint.root_hash.hex())
    doc.pair("Signed at", iso_ms(checkpoint.time_ms))
    doc.pair("Signer", checkpoint.signer)
    doc.pair("Signer key id", checkpoint.signer_key_id)
    doc.pair("Signature", checkpoint.signature.hex())
    doc.ln(2)
    doc.line_text("Ledger anchor", size=11, bold=True)
    receipt = context.receipt
    if receipt is None:
        doc.line_text("Not yet anchored on the ledger.", size=9)
    else:
        doc.pair("Transaction id", receipt.tx_id)
        doc.pair("Block height", str(receipt.height))
        doc.pair("Block hash", header_hash(receipt.header).hex())
        doc.pair("Block time", iso_ms(receipt.header.timestamp_unix_ms))
        doc.pair("Chain", receipt.header.chain_id)
        signers = ", ".join(s.validator for s in receipt.finality_certificate.signatures)
        doc.pair("Finality signed by", signers)
    if context.validators is not None:
        doc.ln(2)
        doc.line_text("Validator set", size=11, bold=True)
        doc.pair("Set hash", context.validators.hash.hex())
        for validator in context.validators.validators:
            doc.pair(validator.name, validator.public_key.hex())
