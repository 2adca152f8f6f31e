"""The consensus wire codec round-trips every message kind and refuses garbage."""

from __future__ import annotations

import pytest

from medledger.ledger import codec
from medledger.ledger.consensus.types import (
    Block,
    BlockHeader,
    BlockRequest,
    BlockResponse,
    CertifiedBlock,
    FinalityCertificate,
    FinalityVote,
    Message,
    Proposal,
    QuorumCertificate,
    SafetyState,
    SyncInfo,
    SyncRequest,
    SyncResponse,
    Timeout,
    TimeoutCertificate,
    TimeoutSignature,
    TransactionBatch,
    ValidatorSignature,
    Vote,
)

H = bytes(range(32))
SIG = bytes(64)
QC = QuorumCertificate(H, 3, 4, (ValidatorSignature(1, SIG), ValidatorSignature(2, SIG)))
TC = TimeoutCertificate(5, (TimeoutSignature(0, 4, SIG),), QC)
HEADER = BlockHeader("c", 4, 5, H, H, H, H, 2, 1_700_000_000_000)
BLOCK = Block(HEADER, (b"tx1", b"tx2"), QC)
CERT = FinalityCertificate("c", 4, HEADER.hash, (ValidatorSignature(0, SIG),))

MESSAGES: list[Message] = [
    Proposal(BLOCK, TC, SIG),
    Proposal(BLOCK, None, SIG),
    Vote(H, 4, 5, 1, SIG),
    Timeout(6, QC, TC, 3, SIG),
    Timeout(6, QC, None, 3, SIG),
    SyncInfo(QC, TC),
    FinalityVote(4, H, 2, SIG),
    CERT,
    TransactionBatch((b"a", b"b")),
    BlockRequest(H, 4),
    BlockResponse(BLOCK),
    SyncRequest(7),
    SyncResponse((CertifiedBlock(BLOCK, CERT),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    chain, sender, decoded = codec.decode_message(codec.encode_message("c", 2, message))
    assert (chain, sender) == ("c", 2)
    assert decoded == message


def test_block_certificate_and_safety_state_round_trip() -> None:
    assert codec.decode_block(codec.encode_block(BLOCK)) == BLOCK
    assert codec.decode_block(codec.encode_block(BLOCK)).hash == BLOCK.hash
    assert codec.decode_certificate(codec.encode_certificate(CERT)) == CERT
    state = SafetyState(5, 6, QC, TC)
    assert codec.decode_safety_state(codec.encode_safety_state(state)) == state


@pytest.mark.parametrize("data", [b"\xff\xff", b"", b"\x0a\x01c\x10\x02"])
def test_garbage_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode_message(data)


def test_missing_required_parts_are_refused() -> None:
    from medledger._gen.ledger.v1 import consensus_pb2 as pb

    env = pb.ConsensusEnvelope(chain_id="c", sender=1, proposal=pb.Proposal(signature=SIG))
    with pytest.raises(codec.DecodeError, match="block"):
        codec.decode_message(env.SerializeToString())


def test_oversized_batches_are_split_to_fit_the_bus() -> None:
    from medledger.ledger.node import _encode_within

    batch = TransactionBatch(tuple(bytes([i]) * 1000 for i in range(100)))
    pieces = _encode_within("c", 1, batch, 10_000)
    assert len(pieces) > 1
    assert all(len(p) <= 10_000 for p in pieces)
    decoded = [codec.decode_message(p)[2] for p in pieces]
    assert all(isinstance(d, TransactionBatch) for d in decoded)
    rebuilt = [tx for d in decoded if isinstance(d, TransactionBatch) for tx in d.transactions]
    assert tuple(rebuilt) == batch.transactions

    sync = SyncResponse(tuple(CertifiedBlock(BLOCK, CERT) for _ in range(50)))
    pieces = _encode_within("c", 1, sync, 2_000)
    assert all(len(p) <= 2_000 for p in pieces)
    synced = [codec.decode_message(p)[2] for p in pieces]
    assert sum(len(d.blocks) for d in synced if isinstance(d, SyncResponse)) == 50

    # A single block that cannot fit is not sent at all (and logged), never truncated.
    assert _encode_within("c", 1, BlockResponse(BLOCK), 10) == []
