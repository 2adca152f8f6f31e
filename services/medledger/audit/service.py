"""The audit log's domain logic: exactly-once appends, signed checkpoints proven consistent with
their predecessors, anchoring, proofs and paged queries. No gRPC or NATS types here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from medledger._gen.common.v1 import ledger_commit_pb2, transaction_pb2
from medledger._gen.ledger.v1 import ledger_service_pb2
from medledger.audit import merkle_log
from medledger.audit.checkpoints import anchor_transaction, sign_checkpoint
from medledger.audit.errors import (
    BadAuditEvent,
    BadPageToken,
    CheckpointNotFound,
    EntryNotFound,
    InconsistentLog,
    LogWriterConflict,
    NoCheckpoint,
    TreeSizeOutOfRange,
)
from medledger.audit.merkle_log import TreeFrontier
from medledger.audit.model import (
    AnchorState,
    CheckpointRow,
    EntryRow,
    EventFilter,
    IndexedEvent,
    index_event,
    parse_event,
)
from medledger.audit.store import AuditStore
from medledger.core.logging import get_logger
from medledger.crypto import SigningKey, sha256
from medledger.ledgerclient import LedgerClientError
from medledger.merkle import ProofError, verify_consistency

_log = get_logger("medledger.audit")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class Ledger(Protocol):
    """What anchoring needs of the ledger (medledger.ledgerclient.LedgerClient provides it)."""

    @property
    def chain_id(self) -> str: ...

    async def submit_and_wait(
        self,
        tx: bytes,
        timeout: float = 10.0,  # noqa: ASYNC109 -- the ledger client's own deadline
    ) -> ledger_service_pb2.TransactionReceipt: ...


@dataclass(frozen=True)
class AppendResult:
    """How a batch of delivered events was handled."""

    appended: int
    duplicates: int
    rejected: int
    tree_size: int


@dataclass(frozen=True)
class InclusionResult:
    entry: EntryRow
    tree_size: int
    hashes: list[bytes]
    checkpoint: CheckpointRow | None


@dataclass(frozen=True)
class LogIdentity:
    """Which log this is and who signs its checkpoints."""

    log_id: str
    signer: str
    key: SigningKey


class AuditLog:
    """One organisation's append-only audit log."""

    def __init__(
        self,
        store: AuditStore,
        identity: LogIdentity,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._identity = identity
        self._clock = clock
        self._frontier = TreeFrontier()
        self._append_lock = asyncio.Lock()
        self._checkpoint_lock = asyncio.Lock()
        self._open = False

    @property
    def store(self) -> AuditStore:
        return self._store

    @property
    def identity(self) -> LogIdentity:
        return self._identity

    @property
    def tree_size(self) -> int:
        """Entries durably appended so far."""
        return self._frontier.size

    @property
    def is_open(self) -> bool:
        return self._open

    async def open(self) -> None:
        await self._store.open()
        await self._reload_frontier()
        self._open = True

    async def close(self) -> None:
        self._open = False
        await self._store.close()

    async def stream_position(self) -> int:
        return await self._store.stream_position()

    async def _reload_frontier(self) -> None:
        size = await self._store.tree_size()
        peaks = merkle_log.peak_nodes(size)
        stored = await self._store.nodes(set(peaks))
        self._frontier = TreeFrontier(size, [stored[node] for node in peaks])

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- ingest ----------------------------------------------------------------------------

    async def append(self, payloads: Sequence[bytes], stream_position: int = 0) -> AppendResult:
        """Append serialized AuditEvents in order, each event id at most once, durably.

        `stream_position` is the highest stream sequence among them; it is stored in the same
        transaction, so ingest resumes exactly after what is durable.
        """
        fresh: list[tuple[bytes, IndexedEvent]] = []
        seen: set[str] = set()
        rejected = duplicates = 0
        for data in payloads:
            try:
                indexed = index_event(parse_event(data))
            except BadAuditEvent:
                rejected += 1
                continue
            if indexed.event_id in seen:
                duplicates += 1
                continue
            seen.add(indexed.event_id)
            fresh.append((data, indexed))
        async with self._append_lock:
            known = await self._store.known_event_ids([ix.event_id for _, ix in fresh])
            frontier = self._frontier.copy()
            now_ms = self._now_ms()
            rows: list[EntryRow] = []
            for data, indexed in fresh:
                if indexed.event_id in known:
                    duplicates += 1
                    continue
                leaf = frontier.append(data)
                rows.append(
                    EntryRow(leaf.leaf_index, now_ms, leaf.leaf_hash, leaf.completed, data, indexed)
                )
            try:
                await self._store.append(rows, stream_position)
            except LogWriterConflict:
                await self._reload_frontier()
                raise
            self._frontier = frontier
            return AppendResult(len(rows), duplicates, rejected, frontier.size)

    # --- checkpoints -----------------------------------------------------------------------

    async def checkpoint(self, chain_id: str | None = None) -> CheckpointRow | None:
        """Sign a checkpoint of everything appended, if anything is new since the last one.

        The new head is first proven consistent with the previous checkpoint from the stored
        nodes, so a store altered under the service is detected rather than signed.
        """
        async with self._checkpoint_lock:
            frontier = self._frontier.copy()
            size = frontier.size
            previous = await self._store.latest_checkpoint()
            if size == 0 or (previous is not None and previous.tree_size >= size):
                return None
            root = frontier.root()
            stored_root = merkle_log.root_at(
                size, await self._store.nodes(merkle_log.nodes_for_root(size))
            )
            if stored_root != root:
                raise InconsistentLog("INCONSISTENT_LOG", "stored nodes disagree with the log head")
            time_ms = self._now_ms()
            if previous is not None:
                proof = await self.consistency_hashes(previous.tree_size, size)
                try:
                    verify_consistency(previous.tree_size, size, proof, previous.root_hash, root)
                except ProofError as exc:
                    raise InconsistentLog(
                        "INCONSISTENT_LOG",
                        f"log at {size} does not extend checkpoint {previous.tree_size}",
                    ) from exc
                time_ms = max(time_ms, previous.time_ms)
            identity = self._identity
            signature = sign_checkpoint(identity.key, identity.log_id, size, root, time_ms)
            row = CheckpointRow(
                tree_size=size,
                log_id=identity.log_id,
                root_hash=root,
                time_ms=time_ms,
                signer=identity.signer,
                signer_key_id=identity.key.public_key.key_id,
                signer_public_key=identity.key.public_key.raw,
                signature=signature,
                accumulator=frontier.accumulator_bytes(),
                anchor_tx=b"",
            )
            if chain_id is not None:
                tx = anchor_transaction(row, chain_id, identity.key)
                row = _with_anchor_tx(row, tx)
            await self._store.add_checkpoint(row)
            return row

    async def anchor(
        self,
        ledger: Ledger,
        row: CheckpointRow,
        timeout: float = 10.0,  # noqa: ASYNC109 -- passed on to the ledger client
    ) -> None:
        """Submit `row`'s anchoring transaction and record its receipt once final."""
        if not row.anchor_tx or row.anchor.state == ledger_commit_pb2.COMMIT_STATE_REJECTED:
            row = _with_anchor_tx(row, anchor_transaction(row, ledger.chain_id, self._identity.key))
            await self._store.set_anchor(row.tree_size, row.anchor, row.anchor_tx)
        try:
            receipt = await ledger.submit_and_wait(row.anchor_tx, timeout=timeout)
        except LedgerClientError as exc:
            if exc.reason.startswith("TX_"):
                # Refused for good: a fresh transaction (new nonce) is tried next round.
                await self._store.set_anchor(
                    row.tree_size,
                    AnchorState(row.anchor.tx_id, ledger_commit_pb2.COMMIT_STATE_REJECTED),
                )
            raise
        await self._store.set_anchor(
            row.tree_size,
            AnchorState(
                tx_id=receipt.tx_id,
                state=ledger_commit_pb2.COMMIT_STATE_FINAL,
                height=receipt.height,
                receipt=receipt.SerializeToString(),
            ),
        )

    async def latest_checkpoint(self, anchored_only: bool = False) -> CheckpointRow:
        row = await self._store.latest_checkpoint(anchored_only)
        if row is None:
            raise NoCheckpoint(
                "NO_CHECKPOINT",
                "no anchored checkpoint yet" if anchored_only else "no checkpoint yet",
            )
        return row

    async def checkpoint_at(self, tree_size: int) -> CheckpointRow:
        row = await self._store.checkpoint(tree_size)
        if row is None:
            raise CheckpointNotFound(
                "CHECKPOINT_NOT_FOUND",
                "no checkpoint at that tree size",
                {"tree_size": str(tree_size)},
            )
        return row

    # --- proofs ----------------------------------------------------------------------------

    async def consistency_hashes(self, old_size: int, new_size: int) -> list[bytes]:
        if not 0 < old_size <= new_size <= self._frontier.size:
            raise TreeSizeOutOfRange(
                "TREE_SIZE_OUT_OF_RANGE",
                f"need 0 < first <= second <= {self._frontier.size}",
            )
        wanted = merkle_log.nodes_for_consistency(old_size, new_size)
        return merkle_log.consistency_path(old_size, new_size, await self._store.nodes(wanted))

    async def inclusion_hashes(self, leaf_index: int, tree_size: int) -> list[bytes]:
        wanted = merkle_log.nodes_for_inclusion(leaf_index, tree_size)
        return merkle_log.inclusion_path(leaf_index, tree_size, await self._store.nodes(wanted))

    async def inclusion_hashes_many(
        self, leaf_indexes: Sequence[int], tree_size: int
    ) -> dict[int, list[bytes]]:
        """Inclusion proofs of several leaves at one size, with one read of the store."""
        wanted: set[merkle_log.NodeId] = set()
        for index in leaf_indexes:
            wanted |= merkle_log.nodes_for_inclusion(index, tree_size)
        nodes = await self._store.nodes(wanted)
        return {i: merkle_log.inclusion_path(i, tree_size, nodes) for i in leaf_indexes}

    async def inclusion(
        self, *, leaf_index: int | None = None, event_id: str | None = None, tree_size: int = 0
    ) -> InclusionResult:
        """The entry and its proof at `tree_size` (0: the latest checkpoint's)."""
        checkpoint: CheckpointRow | None
        if tree_size == 0:
            checkpoint = await self.latest_checkpoint()
            tree_size = checkpoint.tree_size
        else:
            if tree_size > self._frontier.size:
                raise TreeSizeOutOfRange(
                    "TREE_SIZE_OUT_OF_RANGE", f"the log has {self._frontier.size} entries"
                )
            checkpoint = await self._store.checkpoint(tree_size)
        if event_id is not None:
            entry = await self._store.entry_by_event_id(event_id)
        elif leaf_index is not None:
            entry = await self._store.entry_at(leaf_index)
        else:
            entry = None
        if entry is None or entry.leaf_index >= tree_size:
            raise EntryNotFound("ENTRY_NOT_FOUND", "no such entry at that tree size")
        hashes = await self.inclusion_hashes(entry.leaf_index, tree_size)
        return InclusionResult(entry, tree_size, hashes, checkpoint)

    # --- queries ---------------------------------------------------------------------------

    async def query(
        self, where: EventFilter, page_size: int, page_token: str
    ) -> tuple[list[EntryRow], str]:
        """One page of entries matching `where`, and the token of the next page ('' at the end)."""
        limit = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        after = decode_page_token(page_token, where) if page_token else -1
        rows = await self._store.query(where, after, limit + 1)
        if len(rows) > limit:
            rows = rows[:limit]
            return rows, encode_page_token(rows[-1].leaf_index, where)
        return rows, ""

    async def list_checkpoints(
        self, page_size: int, page_token: str, start_ms: int | None, end_ms: int | None
    ) -> tuple[list[CheckpointRow], str]:
        limit = 50 if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        scope = EventFilter(start_ms=start_ms, end_ms=end_ms)
        below = decode_page_token(page_token, scope) if page_token else None
        rows = await self._store.list_checkpoints(below, limit + 1, start_ms, end_ms)
        if len(rows) > limit:
            rows = rows[:limit]
            return rows, encode_page_token(rows[-1].tree_size, scope)
        return rows, ""


def _with_anchor_tx(row: CheckpointRow, tx: bytes) -> CheckpointRow:
    body = transaction_pb2.Transaction.FromString(tx).body
    anchor = AnchorState(tx_id=sha256(body).hex(), state=ledger_commit_pb2.COMMIT_STATE_PENDING)
    return replace(row, anchor_tx=tx, anchor=anchor)


def _filter_digest(where: EventFilter) -> str:
    return hashlib.sha256(where.canonical().encode()).hexdigest()[:16]


def encode_page_token(position: int, where: EventFilter) -> str:
    raw = json.dumps({"p": position, "f": _filter_digest(where)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, where: EventFilter) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position = data["p"]
        digest = data["f"]
    except (ValueError, KeyError, TypeError):
        raise BadPageToken("BAD_PAGE_TOKEN", "page token is not one this service issued") from None
    if not isinstance(position, int) or digest != _filter_digest(where):
        raise BadPageToken(
            "BAD_PAGE_TOKEN", "page token does not belong to this query (filters changed?)"
        )
    return position
