"""The validator: the sans-I/O consensus replica wired to NATS, a clock and the
block store. It owns time, sockets and persistence, and nothing else.

Every call into the replica is synchronous, so on one event loop the calls are
atomic; each Output is applied in the order the core demands: safety state
durably written, committed blocks and certificates stored, then messages sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from medledger._gen.ledger.v1 import ledger_bus_pb2
from medledger._gen.ledger.v1 import ledger_service_pb2 as lpb
from medledger.core.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from medledger.core.nats_bus import BusSubscription, NatsBus
from medledger.crypto import SigningKey
from medledger.ledger import codec
from medledger.ledger.consensus.config import ReplicaConfig
from medledger.ledger.consensus.genesis import genesis_block
from medledger.ledger.consensus.replica import Replica
from medledger.ledger.consensus.types import (
    Block,
    FinalityCertificate,
    Genesis,
    Message,
    Output,
    Proposal,
    Rejection,
    SyncResponse,
    TransactionBatch,
)
from medledger.ledger.reads import LedgerReads
from medledger.ledger.store import BlockStore, TransactionLocation
from medledger.ledger.transactions import LedgerTransactionRules
from medledger.ledgerclient import subjects

_log = structlog.get_logger("medledger.ledger.node")

_DECODED_CACHE = 512


class StoreLedgerView:
    """The replica's LedgerView over the SQLite block store, with a small decode cache."""

    def __init__(self, store: BlockStore) -> None:
        self._store = store
        self._blocks: OrderedDict[int, Block] = OrderedDict()

    def committed_height(self) -> int:
        return max(self._store.height, 0)

    def block_at(self, height: int) -> Block | None:
        cached = self._blocks.get(height)
        if cached is not None:
            return cached
        stored = self._store.block(height)
        if stored is None:
            return None
        block = codec.decode_block(stored.block)
        self._remember(height, block)
        return block

    def certificate_at(self, height: int) -> FinalityCertificate | None:
        raw = self._store.certificate(height)
        return None if raw is None else codec.decode_certificate(raw)

    def contains_tx(self, tx_id: bytes) -> bool:
        return self._store.contains_transaction(tx_id)

    def _remember(self, height: int, block: Block) -> None:
        self._blocks[height] = block
        while len(self._blocks) > _DECODED_CACHE:
            self._blocks.popitem(last=False)


_REJECTION_ERRORS: dict[str, type[InvalidArgument | PermissionDenied | ResourceExhausted]] = {
    "MEMPOOL_FULL": ResourceExhausted,
    "TX_BAD_SIGNATURE": PermissionDenied,
    "TX_BAD_SIGNER_KEY": PermissionDenied,
}
_ENVELOPE_HEADROOM = 4096

_ALREADY_KNOWN = {"DUPLICATE", "ALREADY_PENDING", "ALREADY_FINAL", "DUPLICATE_TRANSACTION"}


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What happened to each submitted transaction."""

    accepted: tuple[bytes, ...]
    rejected: tuple[Rejection, ...]


class Validator:
    """One validator of the chain, running on an asyncio loop."""

    def __init__(
        self,
        genesis: Genesis,
        index: int,
        key: SigningKey,
        store: BlockStore,
        config: ReplicaConfig,
        rules: LedgerTransactionRules,
    ) -> None:
        if genesis.validators.key(index) != key.public_key:
            raise ValueError(f"this key is not validator {index}'s key in the genesis")
        self.genesis = genesis
        self.index = index
        self.store = store
        self.rules = rules
        self.reads = LedgerReads(store, genesis.validators)
        self._view = StoreLedgerView(store)
        if store.height < 0:
            block0 = genesis_block(genesis)
            store.append(0, block0.hash, codec.encode_block(block0), [])
        restored_raw = store.safety_state()
        restored = None if restored_raw is None else codec.decode_safety_state(restored_raw)
        self.replica = Replica(config, key, self._view, rules, restored)
        self._bus: NatsBus | None = None
        self._subs: list[Subscription] = []
        self._bus_subs: list[BusSubscription] = []
        self._wake = asyncio.Event()
        self._deadline: float | None = None
        self._timer: asyncio.Task[None] | None = None
        self._waiters: dict[bytes, list[asyncio.Future[TransactionLocation]]] = {}
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped_messages = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, bus: NatsBus) -> None:
        """Join consensus on `bus` and serve the ledger's NATS API."""
        self._bus = bus
        nc = bus.client
        chain = self.genesis.chain_id
        self._subs.append(
            await nc.subscribe(subjects.consensus(chain, self.index), cb=self._on_consensus)
        )
        queue = subjects.VALIDATORS_QUEUE
        self._bus_subs += [
            await bus.subscribe(
                subjects.submit(chain), lpb.SubmitTransactionRequest, self._bus_submit, queue
            ),
            await bus.subscribe(
                subjects.receipt(chain),
                lpb.GetTransactionReceiptRequest,
                self._bus_receipt,
                queue,
            ),
            await bus.subscribe(
                subjects.blocks(chain), lpb.StreamBlocksRequest, self._bus_blocks, queue
            ),
            await bus.subscribe(
                subjects.validator_set(chain),
                lpb.GetValidatorSetRequest,
                self._bus_validator_set,
                queue,
            ),
        ]
        await nc.flush()
        self._apply(self.replica.start(self._now()))
        self._replay_proposals()
        self._timer = asyncio.create_task(self._run_timer(), name=f"validator-{self.index}-timer")
        _log.info("validator started", index=self.index, height=self.store.height)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None
        for sub in self._subs:
            await sub.unsubscribe()
        for bus_sub in self._bus_subs:
            await bus_sub.unsubscribe()
        self._subs.clear()
        self._bus_subs.clear()
        if self._tasks:
            # Sends in flight get a moment to go out; a stalled connection must not
            # hold up shutdown (consensus tolerates the loss).
            _, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for waiters in self._waiters.values():
            for fut in waiters:
                fut.cancel()
        self._waiters.clear()

    @staticmethod
    def _now() -> float:
        # Wall-clock seconds: block timestamps are Unix time; timers tolerate small jumps.
        return time.time()

    # -- inputs --------------------------------------------------------------------------

    async def _on_consensus(self, msg: Msg) -> None:
        try:
            chain, sender, message = codec.decode_message(msg.data)
        except codec.DecodeError:
            self.dropped_messages += 1
            return
        if chain != self.genesis.chain_id or not 0 <= sender < self.genesis.validators.size:
            self.dropped_messages += 1
            return
        if isinstance(message, Proposal):
            self._keep_proposal(message, msg.data)
        self._apply(self.replica.receive(sender, message, self._now()))

    def _keep_proposal(self, proposal: Proposal, data: bytes) -> None:
        # Written before the replica may vote for it: a vote for a block nobody kept
        # would leave the chain waiting forever after all validators restart.
        if proposal.block.height > self.store.height:
            self.store.save_proposal(proposal.block.height, proposal.block.hash, data)

    def _replay_proposals(self) -> None:
        """Feed proposals kept before a restart back in, rebuilding the uncommitted tree."""
        for data in self.store.pending_proposals():
            try:
                _, sender, message = codec.decode_message(data)
            except codec.DecodeError:
                continue
            if isinstance(message, Proposal):
                self._apply(self.replica.receive(sender, message, self._now()))

    def submit(self, txs: Sequence[bytes]) -> SubmitResult:
        """Offer client transactions to the mempool; the result says which were taken."""
        output = self.replica.submit(list(txs), self._now())
        self._apply(output)
        return SubmitResult(accepted=output.accepted, rejected=output.rejected)

    def submit_one(self, tx: bytes) -> lpb.SubmitTransactionResponse:
        """Submit one transaction; idempotent; raises a core error when refused."""
        tx_id = self.rules.tx_id(tx)
        if self.store.contains_transaction(tx_id):
            return lpb.SubmitTransactionResponse(
                tx_id=tx_id.hex(), status=lpb.TRANSACTION_STATUS_FINAL
            )
        for rejection in self.submit([tx]).rejected:
            if rejection.reason in _ALREADY_KNOWN:
                break
            # The core reports a rule failure as INVALID_TRANSACTION with the rule's reason.
            reason = rejection.reason
            if reason == "INVALID_TRANSACTION" and rejection.detail.isupper():
                reason = rejection.detail
            error = _REJECTION_ERRORS.get(reason, InvalidArgument)
            raise error(reason, f"transaction refused: {reason}")
        return lpb.SubmitTransactionResponse(
            tx_id=tx_id.hex(), status=lpb.TRANSACTION_STATUS_PENDING
        )

    async def _bus_submit(
        self, request: lpb.SubmitTransactionRequest
    ) -> lpb.SubmitTransactionResponse:
        return self.submit_one(request.transaction.SerializeToString(deterministic=True))

    async def _bus_receipt(
        self, request: lpb.GetTransactionReceiptRequest
    ) -> lpb.TransactionReceipt:
        return self.reads.receipt(request.tx_id)

    async def _bus_blocks(self, request: lpb.StreamBlocksRequest) -> ledger_bus_pb2.BlockBatch:
        return self.reads.block_batch(request.start_height, request.header_only)

    async def _bus_validator_set(self, request: lpb.GetValidatorSetRequest) -> lpb.ValidatorSet:
        return self.reads.validator_set()

    async def wait_final(self, tx_id: bytes, timeout: float) -> TransactionLocation:  # noqa: ASYNC109
        """Wait until `tx_id` is in a final block; TimeoutError otherwise."""
        location = self.store.transaction(tx_id)
        if location is not None:
            return location
        fut: asyncio.Future[TransactionLocation] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_id, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._waiters.get(tx_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[tx_id]

    async def wait_height(self, height: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until a block at `height` is final and certified here."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(
                lambda: self.store.height >= height and self.reads.is_certified(height)
            )

    @property
    def changed(self) -> asyncio.Condition:
        """Notified whenever a block is committed or certified."""
        return self._changed

    # -- outputs -------------------------------------------------------------------------

    def _apply(self, output: Output) -> None:
        # Order matters: safety state on disk before any vote leaves, blocks stored
        # before anyone is told they are final.
        if output.safety_state is not None:
            self.store.save_safety_state(codec.encode_safety_state(output.safety_state))
        changed = False
        if output.committed:
            entries = [
                (
                    block.height,
                    block.hash,
                    codec.encode_block(block),
                    [self.rules.tx_id(tx) for tx in block.transactions],
                    None,
                )
                for block in output.committed
            ]
            self.store.append_many(entries)
            self.store.prune_proposals()
            changed = True
            for block, entry in zip(output.committed, entries, strict=True):
                for index, tx_id in enumerate(entry[3]):
                    for fut in self._waiters.pop(tx_id, []):
                        if not fut.done():
                            fut.set_result(TransactionLocation(block.height, index))
        certified: list[int] = []
        for cert in output.certificates:
            if cert.height <= self.store.height and self.store.certificate(cert.height) is None:
                self.store.set_certificate(cert.height, codec.encode_certificate(cert))
                certified.append(cert.height)
                changed = True
        if output.messages and self._bus is not None:
            self._send(output)
        if output.next_deadline is not None and output.next_deadline != self._deadline:
            self._deadline = output.next_deadline
            self._wake.set()
        if changed:
            self._spawn(self._notify(certified))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, output: Output) -> None:
        assert self._bus is not None
        chain = self.genesis.chain_id
        # NATS refuses payloads over the server's max_payload (1 MiB by default), so
        # batches that may grow past it are split; a block alone is bounded by the genesis.
        limit = self._bus.client.max_payload - _ENVELOPE_HEADROOM
        for outbound in output.messages:
            if isinstance(outbound.message, Proposal):
                self._keep_proposal(
                    outbound.message, codec.encode_message(chain, self.index, outbound.message)
                )
            for data in _encode_within(chain, self.index, outbound.message, limit):
                targets = (
                    [i for i in range(self.genesis.validators.size) if i != self.index]
                    if outbound.to is None
                    else [outbound.to]
                )
                for target in targets:
                    self._spawn(self._publish(subjects.consensus(chain, target), data))

    async def _publish(self, subject: str, data: bytes) -> None:
        assert self._bus is not None
        try:
            await self._bus.client.publish(subject, data)
        except Exception as exc:
            _log.warning("consensus publish failed", subject=subject, error=type(exc).__name__)

    async def _notify(self, certified: list[int]) -> None:
        async with self._changed:
            self._changed.notify_all()
        if self._bus is None:
            return
        for height in certified:
            try:
                await self._bus.publish(
                    subjects.finalized(self.genesis.chain_id), self.reads.block(height, True)
                )
            except Exception as exc:
                _log.warning("finalized notice failed", error=type(exc).__name__)

    async def _run_timer(self) -> None:
        while True:
            self._wake.clear()
            deadline = self._deadline
            delay = None if deadline is None else max(0.0, deadline - self._now())
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
                continue
            except TimeoutError:
                pass
            self._deadline = None
            self._apply(self.replica.tick(self._now()))


def _encode_within(chain: str, sender: int, message: Message, limit: int) -> list[bytes]:
    """Encodings of `message`, split into several messages of the same kind when a
    transaction batch or sync response would exceed `limit` bytes."""
    data = codec.encode_message(chain, sender, message)
    if len(data) <= limit:
        return [data]
    if isinstance(message, TransactionBatch) and len(message.transactions) > 1:
        half = len(message.transactions) // 2
        parts: list[Message] = [
            TransactionBatch(message.transactions[:half]),
            TransactionBatch(message.transactions[half:]),
        ]
    elif isinstance(message, SyncResponse) and len(message.blocks) > 1:
        half = len(message.blocks) // 2
        parts = [SyncResponse(message.blocks[:half]), SyncResponse(message.blocks[half:])]
    else:
        _log.error(
            "consensus message too large to send",
            kind=type(message).__name__,
            size=len(data),
            limit=limit,
        )
        return []
    return [d for part in parts for d in _encode_within(chain, sender, part, limit)]
