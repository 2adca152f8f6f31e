"""Producing a report from the log: pick the checkpoint, scan matching entries page by page,
attach proofs, render, and hand out content in chunks with progress and a final digest."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from medledger._gen.ledger.v1 import ledger_service_pb2
from medledger.audit.model import CheckpointRow
from medledger.audit.reports import accounting
from medledger.audit.reports.content import ReportContext, ReportEntry, ReportSpec, ReportSummary
from medledger.audit.reports.formats import Renderer, renderer_for
from medledger.audit.service import AuditLog

MAX_CHUNK = 1024 * 1024
_FLUSH_AT = 256 * 1024
_PAGE = 500


@dataclass(frozen=True)
class Progress:
    processed: int
    total: int
    matched: int


class ReportExport:
    """One export; `start` fixes the checkpoint, `content` streams the bytes."""

    def __init__(
        self,
        log: AuditLog,
        spec: ReportSpec,
        format_name: str,
        validators: ledger_service_pb2.ValidatorSet | None,
        now_ms: int,
    ) -> None:
        self._log = log
        self._spec = spec
        self._renderer: Renderer = renderer_for(format_name)
        self._validators = validators
        self._now_ms = now_ms
        self._proofs = format_name == "JSON"
        self.context: ReportContext | None = None
        self.summary = ReportSummary()
        self.size = 0
        self._position = 0
        self._digest = hashlib.sha256()

    @property
    def content_type(self) -> str:
        return self._renderer.content_type

    @property
    def file_name(self) -> str:
        # No patient data in the name: kind, log size and time only.
        kind = self._spec.kind.lower().replace("_", "-")
        size = self.context.checkpoint.tree_size if self.context else 0
        return f"audit-{kind}-{size}-{self._now_ms}.{self._renderer.extension}"

    @property
    def sha256(self) -> bytes:
        return self._digest.digest()

    async def start(self) -> ReportContext:
        checkpoint: CheckpointRow | None = await self._log.store.latest_checkpoint(True)
        if checkpoint is None:
            checkpoint = await self._log.latest_checkpoint()
        self.context = ReportContext(self._spec, checkpoint, self._now_ms, self._validators)
        return self.context

    async def content(self) -> AsyncIterator[tuple[bytes, Progress]]:
        context = self.context or await self.start()
        tree_size = context.checkpoint.tree_size
        where = self._spec.event_filter()
        pending = bytearray(self._renderer.begin(context))
        after = -1
        while True:
            rows = await self._log.store.query(where, after, _PAGE, below_index=tree_size)
            if not rows:
                break
            after = rows[-1].leaf_index
            self._position = after + 1
            self.summary.examined += len(rows)
            kept: list[ReportEntry] = []
            for row in rows:
                event = row.event()
                if self._spec.accounting:
                    rule = accounting.exclusion(event)
                    if rule is not None:
                        self.summary.excluded[rule] = self.summary.excluded.get(rule, 0) + 1
                        continue
                kept.append(ReportEntry(row, event))
            if self._proofs and kept:
                proofs = await self._log.inclusion_hashes_many(
                    [e.row.leaf_index for e in kept], tree_size
                )
                for entry in kept:
                    entry.proof = proofs[entry.row.leaf_index]
            for entry in kept:
                pending += self._renderer.entry(entry)
            self.summary.entry_count += len(kept)
            if len(pending) >= _FLUSH_AT:
                for piece in self._take(pending):
                    yield piece, self._progress(tree_size)
                pending = bytearray()
        self._position = tree_size
        pending += self._renderer.end(self.summary)
        for piece in self._take(pending):
            yield piece, self._progress(tree_size)

    def _take(self, data: bytearray) -> list[bytes]:
        pieces = [bytes(data[i : i + MAX_CHUNK]) for i in range(0, len(data), MAX_CHUNK)]
        for piece in pieces:
            self._digest.update(piece)
            self.size += len(piece)
        return pieces

    def _progress(self, total: int) -> Progress:
        return Progress(self._position, total, self.summary.entry_count)
