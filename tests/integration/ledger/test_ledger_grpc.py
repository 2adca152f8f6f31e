"""LedgerService over gRPC against a live local ledger: blocks, receipts, the
stream of final blocks, idempotent submission and errors with reasons."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from medledger._gen.common.v1 import transaction_pb2
from medledger._gen.ledger.v1 import ledger_service_pb2 as pb
from medledger._gen.ledger.v1 import ledger_service_pb2_grpc as pb_grpc
from medledger.core.auth import CallerIdentity, StaticTokens
from medledger.core.errors import rpc_error_details
from medledger.core.grpc_server import GrpcServer
from medledger.core.settings import CommonSettings
from medledger.crypto import SigningKey
from medledger.ledger.api import ledger_grpc_service
from medledger.ledgerclient import verify_block, verify_receipt
from medledger.testing.ledger import LocalLedger, record_tx

TOKEN = "test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture
async def stub(ledger_network: LocalLedger) -> AsyncIterator[pb_grpc.LedgerServiceAsyncStub]:
    validator = ledger_network.running()[0]
    server = GrpcServer(
        service_name="ledger",
        settings=CommonSettings(org_id="org-a", grpc_port=0, shutdown_grace_seconds=1),
        services=[ledger_grpc_service(validator)],
        authenticator=StaticTokens({TOKEN: CallerIdentity("principals/p", "org-a")}),
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.LedgerServiceStub(channel)
    await server.stop(0)


async def test_submit_receipt_blocks_and_stream(
    stub: pb_grpc.LedgerServiceAsyncStub, ledger_network: LocalLedger
) -> None:
    tx = transaction_pb2.Transaction.FromString(
        record_tx(ledger_network.genesis.chain_id, SigningKey.generate(), 1)
    )
    submitted = await stub.SubmitTransaction(
        pb.SubmitTransactionRequest(transaction=tx), metadata=AUTH
    )
    assert submitted.status == pb.TRANSACTION_STATUS_PENDING
    receipt = None
    codes = set()
    for _ in range(200):
        try:
            receipt = await stub.GetTransactionReceipt(
                pb.GetTransactionReceiptRequest(tx_id=submitted.tx_id), metadata=AUTH
            )
            break
        except grpc.aio.AioRpcError as exc:
            codes.add(exc.code())
            await asyncio.sleep(0.05)
    assert receipt is not None
    assert codes <= {grpc.StatusCode.NOT_FOUND}
    validators = await stub.GetValidatorSet(pb.GetValidatorSetRequest(), metadata=AUTH)
    verify_receipt(receipt, validators)
    again = await stub.SubmitTransaction(pb.SubmitTransactionRequest(transaction=tx), metadata=AUTH)
    assert (again.tx_id, again.status) == (submitted.tx_id, pb.TRANSACTION_STATUS_FINAL)

    block = await stub.GetBlock(pb.GetBlockRequest(height=receipt.height), metadata=AUTH)
    verify_block(block, validators)
    by_hash = await stub.GetBlock(pb.GetBlockRequest(hash=block.hash), metadata=AUTH)
    assert by_hash == block
    latest = await stub.GetLatestBlock(pb.GetLatestBlockRequest(header_only=True), metadata=AUTH)
    assert latest.header.height >= receipt.height
    assert not latest.transactions

    stream = stub.StreamBlocks(pb.StreamBlocksRequest(start_height=1), metadata=AUTH)
    heights = []
    async for streamed in stream:
        verify_block(streamed, validators)
        heights.append(streamed.header.height)
        if streamed.header.height >= receipt.height + 1:
            break
    stream.cancel()
    assert heights == list(range(1, receipt.height + 2))


async def test_errors_carry_reasons(
    stub: pb_grpc.LedgerServiceAsyncStub, ledger_network: LocalLedger
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetBlock(pb.GetBlockRequest(height=10**9), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error_details(info.value).reason == "BLOCK_NOT_FOUND"

    tx = transaction_pb2.Transaction.FromString(
        record_tx(ledger_network.genesis.chain_id, SigningKey.generate(), 1)
    )
    tx.signature = bytes(64)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitTransaction(pb.SubmitTransactionRequest(transaction=tx), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error_details(info.value).reason == "TX_BAD_SIGNATURE"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetLatestBlock(pb.GetLatestBlockRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
