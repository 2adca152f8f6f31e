"""Wire codec between the consensus core's values and the protobuf messages that
carry them over NATS (protos/medledger/ledger/v1/consensus.proto).

Decoding never trusts its input: anything that does not parse, or parses into
the wrong shape, raises `DecodeError`; the core then checks every field again
(`consensus.wellformed`) and every signature before acting.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError as ProtobufDecodeError

from medledger._gen.ledger.v1 import consensus_pb2 as pb
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

MAX_ENVELOPE_BYTES = 64 * 1024 * 1024


class DecodeError(Exception):
    """Bytes that are not a well-formed consensus message."""

    reason = "MALFORMED_MESSAGE"


# -- encode ---------------------------------------------------------------------------------


def _sigs(signatures: tuple[ValidatorSignature, ...]) -> list[pb.ConsensusSignature]:
    return [pb.ConsensusSignature(signer=s.signer, signature=s.signature) for s in signatures]


def header_to_pb(header: BlockHeader) -> pb.ConsensusBlockHeader:
    return pb.ConsensusBlockHeader(
        chain_id=header.chain_id,
        height=header.height,
        round=header.round,
        parent_hash=header.parent_hash,
        tx_root=header.tx_root,
        validator_set_hash=header.validator_set_hash,
        next_validator_set_hash=header.next_validator_set_hash,
        proposer=header.proposer,
        timestamp_unix_ms=header.timestamp_unix_ms,
    )


def qc_to_pb(qc: QuorumCertificate) -> pb.QuorumCertificate:
    return pb.QuorumCertificate(
        block_hash=qc.block_hash, height=qc.height, round=qc.round, signatures=_sigs(qc.signatures)
    )


def tc_to_pb(tc: TimeoutCertificate) -> pb.TimeoutCertificate:
    return pb.TimeoutCertificate(
        round=tc.round,
        signatures=[
            pb.TimeoutSignature(
                signer=s.signer, high_qc_round=s.high_qc_round, signature=s.signature
            )
            for s in tc.signatures
        ],
        high_qc=qc_to_pb(tc.high_qc),
    )


def block_to_pb(block: Block) -> pb.ConsensusBlock:
    return pb.ConsensusBlock(
        header=header_to_pb(block.header),
        transactions=list(block.transactions),
        justify=qc_to_pb(block.justify),
    )


def certificate_to_pb(cert: FinalityCertificate) -> pb.ConsensusFinalityCertificate:
    return pb.ConsensusFinalityCertificate(
        chain_id=cert.chain_id,
        height=cert.height,
        block_hash=cert.block_hash,
        signatures=_sigs(cert.signatures),
    )


def encode_block(block: Block) -> bytes:
    return block_to_pb(block).SerializeToString(deterministic=True)


def encode_certificate(cert: FinalityCertificate) -> bytes:
    return certificate_to_pb(cert).SerializeToString(deterministic=True)


def encode_message(chain_id: str, sender: int, message: Message) -> bytes:
    """The ConsensusEnvelope bytes for `message` sent by validator `sender`."""
    env = pb.ConsensusEnvelope(chain_id=chain_id, sender=sender)
    match message:
        case Proposal():
            env.proposal.CopyFrom(
                pb.Proposal(
                    block=block_to_pb(message.block),
                    timeout_certificate=(
                        tc_to_pb(message.timeout_certificate)
                        if message.timeout_certificate
                        else None
                    ),
                    signature=message.signature,
                )
            )
        case Vote():
            env.vote.CopyFrom(
                pb.Vote(
                    block_hash=message.block_hash,
                    height=message.height,
                    round=message.round,
                    signer=message.signer,
                    signature=message.signature,
                )
            )
        case Timeout():
            env.timeout.CopyFrom(
                pb.Timeout(
                    round=message.round,
                    high_qc=qc_to_pb(message.high_qc),
                    last_tc=tc_to_pb(message.last_tc) if message.last_tc else None,
                    signer=message.signer,
                    signature=message.signature,
                )
            )
        case SyncInfo():
            env.sync_info.CopyFrom(
                pb.SyncInfo(
                    high_qc=qc_to_pb(message.high_qc),
                    last_tc=tc_to_pb(message.last_tc) if message.last_tc else None,
                )
            )
        case FinalityVote():
            env.finality_vote.CopyFrom(
                pb.FinalityVote(
                    height=message.height,
                    block_hash=message.block_hash,
                    signer=message.signer,
                    signature=message.signature,
                )
            )
        case FinalityCertificate():
            env.finality_certificate.CopyFrom(certificate_to_pb(message))
        case TransactionBatch():
            env.transaction_batch.CopyFrom(
                pb.TransactionBatch(transactions=list(message.transactions))
            )
        case BlockRequest():
            env.block_request.CopyFrom(
                pb.BlockRequest(block_hash=message.block_hash, height=message.height)
            )
        case BlockResponse():
            env.block_response.CopyFrom(pb.BlockResponse(block=block_to_pb(message.block)))
        case SyncRequest():
            env.sync_request.CopyFrom(pb.SyncRequest(from_height=message.from_height))
        case SyncResponse():
            env.sync_response.CopyFrom(
                pb.SyncResponse(
                    blocks=[
                        pb.CertifiedBlock(
                            block=block_to_pb(c.block), certificate=certificate_to_pb(c.certificate)
                        )
                        for c in message.blocks
                    ]
                )
            )
    return env.SerializeToString(deterministic=True)


# -- decode ---------------------------------------------------------------------------------


def _require(message: object, field: str) -> None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        raise DecodeError(f"missing required field {field}")


def _sigs_from(items: object) -> tuple[ValidatorSignature, ...]:
    return tuple(
        ValidatorSignature(signer=s.signer, signature=bytes(s.signature))
        for s in items  # type: ignore[attr-defined]
    )


def header_from_pb(h: pb.ConsensusBlockHeader) -> BlockHeader:
    return BlockHeader(
        chain_id=h.chain_id,
        height=h.height,
        round=h.round,
        parent_hash=bytes(h.parent_hash),
        tx_root=bytes(h.tx_root),
        validator_set_hash=bytes(h.validator_set_hash),
        next_validator_set_hash=bytes(h.next_validator_set_hash),
        proposer=h.proposer,
        timestamp_unix_ms=h.timestamp_unix_ms,
    )


def qc_from_pb(qc: pb.QuorumCertificate) -> QuorumCertificate:
    return QuorumCertificate(
        block_hash=bytes(qc.block_hash),
        height=qc.height,
        round=qc.round,
        signatures=_sigs_from(qc.signatures),
    )


def tc_from_pb(tc: pb.TimeoutCertificate) -> TimeoutCertificate:
    _require(tc, "high_qc")
    return TimeoutCertificate(
        round=tc.round,
        signatures=tuple(
            TimeoutSignature(
                signer=s.signer, high_qc_round=s.high_qc_round, signature=bytes(s.signature)
            )
            for s in tc.signatures
        ),
        high_qc=qc_from_pb(tc.high_qc),
    )


def block_from_pb(b: pb.ConsensusBlock) -> Block:
    _require(b, "header")
    _require(b, "justify")
    return Block(
        header=header_from_pb(b.header),
        transactions=tuple(bytes(t) for t in b.transactions),
        justify=qc_from_pb(b.justify),
    )


def certificate_from_pb(c: pb.ConsensusFinalityCertificate) -> FinalityCertificate:
    return FinalityCertificate(
        chain_id=c.chain_id,
        height=c.height,
        block_hash=bytes(c.block_hash),
        signatures=_sigs_from(c.signatures),
    )


def decode_block(data: bytes) -> Block:
    msg = pb.ConsensusBlock()
    try:
        msg.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"not a block: {exc}") from exc
    return block_from_pb(msg)


def decode_certificate(data: bytes) -> FinalityCertificate:
    msg = pb.ConsensusFinalityCertificate()
    try:
        msg.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"not a finality certificate: {exc}") from exc
    return certificate_from_pb(msg)


def decode_message(data: bytes) -> tuple[str, int, Message]:
    """(chain id, sender index, message) from ConsensusEnvelope bytes."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    env = pb.ConsensusEnvelope()
    try:
        env.ParseFromString(data)
    except (ProtobufDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"not a consensus envelope: {exc}") from exc
    kind = env.WhichOneof("message")
    message: Message
    if kind == "proposal":
        p = env.proposal
        _require(p, "block")
        message = Proposal(
            block=block_from_pb(p.block),
            timeout_certificate=(
                tc_from_pb(p.timeout_certificate) if p.HasField("timeout_certificate") else None
            ),
            signature=bytes(p.signature),
        )
    elif kind == "vote":
        v = env.vote
        message = Vote(
            block_hash=bytes(v.block_hash),
            height=v.height,
            round=v.round,
            signer=v.signer,
            signature=bytes(v.signature),
        )
    elif kind == "timeout":
        t = env.timeout
        _require(t, "high_qc")
        message = Timeout(
            round=t.round,
            high_qc=qc_from_pb(t.high_qc),
            last_tc=tc_from_pb(t.last_tc) if t.HasField("last_tc") else None,
            signer=t.signer,
            signature=bytes(t.signature),
        )
    elif kind == "sync_info":
        s = env.sync_info
        _require(s, "high_qc")
        message = SyncInfo(
            high_qc=qc_from_pb(s.high_qc),
            last_tc=tc_from_pb(s.last_tc) if s.HasField("last_tc") else None,
        )
    elif kind == "finality_vote":
        f = env.finality_vote
        message = FinalityVote(
            height=f.height,
            block_hash=bytes(f.block_hash),
            signer=f.signer,
            signature=bytes(f.signature),
        )
    elif kind == "finality_certificate":
        message = certificate_from_pb(env.finality_certificate)
    elif kind == "transaction_batch":
        message = TransactionBatch(
            transactions=tuple(bytes(t) for t in env.transaction_batch.transactions)
        )
    elif kind == "block_request":
        message = BlockRequest(
            block_hash=bytes(env.block_request.block_hash), height=env.block_request.height
        )
    elif kind == "block_response":
        _require(env.block_response, "block")
        message = BlockResponse(block=block_from_pb(env.block_response.block))
    elif kind == "sync_request":
        message = SyncRequest(from_height=env.sync_request.from_height)
    elif kind == "sync_response":
        blocks = []
        for c in env.sync_response.blocks:
            _require(c, "block")
            _require(c, "certificate")
            blocks.append(
                CertifiedBlock(
                    block=block_from_pb(c.block), certificate=certificate_from_pb(c.certificate)
                )
            )
        message = SyncResponse(blocks=tuple(blocks))
    else:
        raise DecodeError("envelope carries no message")
    return env.chain_id, env.sender, message


def encode_safety_state(state: SafetyState) -> bytes:
    msg = pb.SafetyState(
        highest_voted_round=state.highest_voted_round,
        highest_timeout_round=state.highest_timeout_round,
        high_qc=qc_to_pb(state.high_qc),
        last_tc=tc_to_pb(state.last_tc) if state.last_tc else None,
    )
    return msg.SerializeToString(deterministic=True)


def decode_safety_state(data: bytes) -> SafetyState:
    msg = pb.SafetyState()
    try:
        msg.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"not a safety state: {exc}") from exc
    _require(msg, "high_qc")
    return SafetyState(
        highest_voted_round=msg.highest_voted_round,
        highest_timeout_round=msg.highest_timeout_round,
        high_qc=qc_from_pb(msg.high_qc),
        last_tc=tc_from_pb(msg.last_tc) if msg.HasField("last_tc") else None,
    )
