"""LedgerService over gRPC: translate, authorise, delegate to the validator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from medledger._gen.ledger.v1 import ledger_service_pb2 as pb
from medledger._gen.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from medledger.core.auth import ANY_AUTHENTICATED, AuthorisationTable
from medledger.core.errors import InvalidArgument
from medledger.core.grpc_server import GrpcService
from medledger.ledger.node import Validator

SERVICE_NAME = "medledger.ledger.v1.LedgerService"

# Blocks hold no PHI and every change is signed, so any authenticated principal of
# the consortium may read the chain and submit; the views decide what a change may do.
AUTHORISATION = AuthorisationTable.of(
    {
        f"/{SERVICE_NAME}/{method}": [ANY_AUTHENTICATED]
        for method in (
            "SubmitTransaction",
            "GetBlock",
            "GetLatestBlock",
            "StreamBlocks",
            "GetTransactionReceipt",
            "GetValidatorSet",
        )
    }
)

Context = grpc.aio.ServicerContext[object, object]


class LedgerApi(pb_grpc.LedgerServiceServicer):
    """The gRPC face of one validator."""

    def __init__(self, validator: Validator) -> None:
        self._validator = validator
        self._reads = validator.reads

    async def SubmitTransaction(  # noqa: N802 -- gRPC method name
        self, request: pb.SubmitTransactionRequest, context: Context
    ) -> pb.SubmitTransactionResponse:
        if not request.HasField("transaction"):
            raise InvalidArgument("TX_MISSING", "transaction is required")
        return self._validator.submit_one(request.transaction.SerializeToString(deterministic=True))

    async def GetBlock(  # noqa: N802
        self, request: pb.GetBlockRequest, context: Context
    ) -> pb.Block:
        which = request.WhichOneof("block")
        if which == "height":
            return self._reads.block(request.height, request.header_only)
        if which == "hash":
            return self._reads.block_by_hash(request.hash, request.header_only)
        raise InvalidArgument("BLOCK_SELECTOR_MISSING", "give a height or a hash")

    async def GetLatestBlock(  # noqa: N802
        self, request: pb.GetLatestBlockRequest, context: Context
    ) -> pb.Block:
        return self._reads.block(self._reads.latest_height, request.header_only)

    async def StreamBlocks(  # noqa: N802
        self, request: pb.StreamBlocksRequest, context: Context
    ) -> AsyncIterator[pb.Block]:
        height = request.start_height
        changed = self._validator.changed
        while True:
            # A block streams once its finality certificate is stored, so the
            # receiver can verify every streamed block on its own.
            if height <= self._reads.latest_height and self._reads.is_certified(height):
                yield self._reads.block(height, request.header_only)
                height += 1
                continue
            async with changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=1.0)

    async def GetTransactionReceipt(  # noqa: N802
        self, request: pb.GetTransactionReceiptRequest, context: Context
    ) -> pb.TransactionReceipt:
        return self._reads.receipt(request.tx_id)

    async def GetValidatorSet(  # noqa: N802
        self, request: pb.GetValidatorSetRequest, context: Context
    ) -> pb.ValidatorSet:
        return self._reads.validator_set()


def ledger_grpc_service(validator: Validator) -> GrpcService:
    return GrpcService.from_servicer(
        SERVICE_NAME,
        pb_grpc.add_LedgerServiceServicer_to_server,
        LedgerApi(validator),
        AUTHORISATION,
    )
