"""A client of the ledger over NATS: submit signed transactions, wait for their
receipts, and follow final blocks, verifying each one like a light client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from medledger._gen.ledger.v1 import ledger_bus_pb2, ledger_service_pb2
from medledger.core.nats_bus import BusError, BusNoResponders, BusTimeout, NatsBus, RemoteError
from medledger.ledgerclient import subjects
from medledger.ledgerclient.lightclient import LightClientError, verify_block, verify_receipt

_RETRY_REASONS = {"TX_NOT_FINAL", "TX_NOT_CERTIFIED", "BLOCK_NOT_FOUND"}


class LedgerClientError(Exception):
    """The ledger refused a request or could not be reached; `reason` says which."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LedgerClient:
    """Talks to any validator of `chain_id` through NATS."""

    def __init__(
        self,
        bus: NatsBus,
        chain_id: str,
        *,
        request_timeout: float = 5.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._bus = bus
        self._chain = chain_id
        self._timeout = request_timeout
        self._poll = poll_interval
        self._validators: ledger_service_pb2.ValidatorSet | None = None

    @property
    def chain_id(self) -> str:
        return self._chain

    async def submit(self, tx: bytes) -> str:
        """Offer a signed transaction (serialized Transaction); returns its tx id (hex)."""
        request = ledger_service_pb2.SubmitTransactionRequest()
        request.transaction.ParseFromString(tx)
        try:
            response = await self._bus.request(
                subjects.submit(self._chain),
                request,
                ledger_service_pb2.SubmitTransactionResponse,
                timeout=self._timeout,
            )
        except RemoteError as exc:
            raise LedgerClientError(exc.reason, str(exc)) from exc
        except (BusNoResponders, BusTimeout) as exc:
            raise LedgerClientError("LEDGER_UNAVAILABLE", str(exc)) from exc
        return response.tx_id

    async def receipt(self, tx_id_hex: str) -> ledger_service_pb2.TransactionReceipt | None:
        """The verified receipt of a final transaction, or None while it is not final."""
        try:
            receipt = await self._bus.request(
                subjects.receipt(self._chain),
                ledger_service_pb2.GetTransactionReceiptRequest(tx_id=tx_id_hex),
                ledger_service_pb2.TransactionReceipt,
                timeout=self._timeout,
            )
        except RemoteError as exc:
            if exc.reason in _RETRY_REASONS:
                return None
            raise LedgerClientError(exc.reason, str(exc)) from exc
        except (BusNoResponders, BusTimeout):
            return None
        try:
            verify_receipt(receipt, await self.validator_set())
        except LightClientError as exc:
            raise LedgerClientError(exc.reason, f"receipt failed verification: {exc}") from exc
        return receipt

    async def wait_receipt(
        self,
        tx_id_hex: str,
        timeout: float = 10.0,  # noqa: ASYNC109 -- a ledger deadline, not an I/O timeout
    ) -> ledger_service_pb2.TransactionReceipt:
        """Wait until the transaction is in a final, certified block; its verified receipt."""
        deadline = asyncio.get_running_loop().time() + timeout
        delay = self._poll
        while True:
            found = await self.receipt(tx_id_hex)
            if found is not None:
                return found
            if asyncio.get_running_loop().time() >= deadline:
                raise LedgerClientError(
                    "TX_NOT_FINAL", f"transaction {tx_id_hex} not final within {timeout:g}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def submit_and_wait(
        self,
        tx: bytes,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> ledger_service_pb2.TransactionReceipt:
        tx_id = await self.submit(tx)
        return await self.wait_receipt(tx_id, timeout)

    async def validator_set(self) -> ledger_service_pb2.ValidatorSet:
        """The validator set (cached: it changes only by governance)."""
        if self._validators is None:
            try:
                self._validators = await self._bus.request(
                    subjects.validator_set(self._chain),
                    ledger_service_pb2.GetValidatorSetRequest(),
                    ledger_service_pb2.ValidatorSet,
                    timeout=self._timeout,
                )
            except BusError as exc:
                raise LedgerClientError("LEDGER_UNAVAILABLE", str(exc)) from exc
        return self._validators

    async def block_batch(self, start_height: int) -> ledger_bus_pb2.BlockBatch:
        """Final certified blocks from `start_height`, verified; possibly empty."""
        try:
            batch = await self._bus.request(
                subjects.blocks(self._chain),
                ledger_service_pb2.StreamBlocksRequest(start_height=start_height),
                ledger_bus_pb2.BlockBatch,
                timeout=self._timeout,
            )
        except RemoteError as exc:
            raise LedgerClientError(exc.reason, str(exc)) from exc
        except BusError as exc:
            raise LedgerClientError("LEDGER_UNAVAILABLE", str(exc)) from exc
        validators = await self.validator_set()
        expected = start_height
        for block in batch.blocks:
            if block.header.height != expected:
                raise LedgerClientError("BLOCK_GAP", f"expected height {expected}")
            if expected > 0:
                try:
                    verify_block(block, validators)
                except LightClientError as exc:
                    raise LedgerClientError(exc.reason, str(exc)) from exc
            expected += 1
        return batch

    async def block(self, height: int) -> ledger_service_pb2.Block:
        batch = await self.block_batch(height)
        if not batch.blocks:
            raise LedgerClientError("BLOCK_NOT_FOUND", f"no final block at height {height} yet")
        return batch.blocks[0]

    async def blocks(self, start_height: int = 0) -> AsyncIterator[ledger_service_pb2.Block]:
        """Every final block from `start_height` on, verified and in order, forever.

        Also checks each block's previous hash links to the block before it.
        """
        height = start_height
        previous_hash: bytes | None = None
        delay = self._poll
        while True:
            try:
                batch = await self.block_batch(height)
            except LedgerClientError as exc:
                if exc.reason != "LEDGER_UNAVAILABLE":
                    raise
                batch = ledger_bus_pb2.BlockBatch()
            if not batch.blocks:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.5)
                continue
            delay = self._poll
            for block in batch.blocks:
                if previous_hash is not None and block.header.previous_hash != previous_hash:
                    raise LedgerClientError("CHAIN_BROKEN", f"block {height} does not link")
                previous_hash = block.hash
                height += 1
                yield block
