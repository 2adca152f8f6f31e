"""The light client (medledger.ledgerclient) on chains forged by the consensus test
harness: chains of certified headers, broken chains, and validator-set handover."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medledger._gen.ledger.v1 import ledger_service_pb2 as pb
from medledger.ledger.consensus import Block, BlockHeader, FinalityCertificate, ValidatorSet
from medledger.ledger.reads import certificate_pb, header_pb, validator_set_pb
from medledger.ledgerclient import LightClientError, verify_header_chain
from tests.unit.ledger.consensus.consensus_harness import (
    Forge,
    make_genesis,
    make_keys,
    make_validator_set,
)

Entry = tuple[BlockHeader, FinalityCertificate]


@pytest.fixture
def forge() -> Forge:
    return Forge(make_keys(4), make_genesis(make_keys(4)))


def chain_of(forge: Forge, length: int) -> list[Block]:
    blocks = [forge.root]
    for i in range(1, length + 1):
        blocks.append(forge.block(blocks[-1], i, (b"ok:%d" % i,)))
    return blocks[1:]


def blocks_pb(entries: list[Entry], validators: ValidatorSet) -> list[pb.Block]:
    out = []
    for header, cert in entries:
        message = pb.Block(finality_certificate=certificate_pb(cert, validators))
        message.header.CopyFrom(header_pb(header))
        out.append(message)
    return out


def reason(
    forge: Forge, entries: list[Entry], sets: dict[bytes, pb.ValidatorSet] | None = None
) -> str:
    validators = forge.genesis.validators
    with pytest.raises(LightClientError) as raised:
        verify_header_chain(
            validator_set_pb(validators),
            blocks_pb(entries, validators),
            sets,
            trusted_header=header_pb(forge.root.header),
        )
    return raised.value.reason


def test_a_chain_of_certified_headers_verifies(forge: Forge) -> None:
    validators = forge.genesis.validators
    blocks = chain_of(forge, 5)
    entries = [(b.header, forge.certificate(b)) for b in blocks]
    last = verify_header_chain(
        validator_set_pb(validators),
        blocks_pb(entries, validators),
        trusted_header=header_pb(forge.root.header),
    )
    assert last == header_pb(blocks[-1].header)


def test_broken_chains_are_rejected(forge: Forge) -> None:
    blocks = chain_of(forge, 4)
    chain = [(b.header, forge.certificate(b)) for b in blocks]
    # A header altered after certification no longer matches its certificate.
    tampered = replace(blocks[1].header, timestamp_unix_ms=blocks[1].header.timestamp_unix_ms + 5)
    assert reason(forge, [chain[0], (tampered, chain[1][1]), *chain[2:]]) == (
        "HEADER_HASH_MISMATCH"
    )
    assert reason(forge, [chain[0], chain[2], chain[3]]) == "BROKEN_CHAIN"
    assert reason(forge, [chain[1], chain[0]]) == "BROKEN_CHAIN"
    fork = forge.block(blocks[0], 7, (b"ok:fork",))
    assert reason(forge, [chain[0], (fork.header, forge.certificate(fork)), chain[2]]) == (
        "BROKEN_CHAIN"
    )
    assert reason(forge, [(chain[0][0], chain[1][1]), chain[1]]) == "WRONG_HEIGHT"
    too_few = replace(chain[0][1], signatures=chain[0][1].signatures[:2])
    assert reason(forge, [(chain[0][0], too_few)]) == "NO_QUORUM"
    assert reason(forge, []) == "EMPTY_CHAIN"


def test_follows_a_validator_set_change(forge: Forge) -> None:
    new_keys = make_keys(4, b"next-epoch")
    new_set = make_validator_set(new_keys)
    b1 = chain_of(forge, 1)[0]
    b1 = Block(
        replace(b1.header, next_validator_set_hash=new_set.hash), b1.transactions, b1.justify
    )
    next_forge = Forge(new_keys, replace(forge.genesis, validators=new_set))
    b2_header = replace(
        next_forge.block(b1, 2, (b"ok:2",)).header,
        validator_set_hash=new_set.hash,
        next_validator_set_hash=new_set.hash,
    )
    b2 = Block(b2_header, (b"ok:2",), forge.qc(b1))
    first = blocks_pb([(b1.header, forge.certificate(b1))], forge.genesis.validators)
    second = blocks_pb([(b2.header, next_forge.certificate(b2))], new_set)
    sets = {new_set.hash: validator_set_pb(new_set)}
    last = verify_header_chain(
        validator_set_pb(forge.genesis.validators),
        [*first, *second],
        sets,
        trusted_header=header_pb(forge.root.header),
    )
    assert last.height == 2
    with pytest.raises(LightClientError) as raised:
        verify_header_chain(validator_set_pb(forge.genesis.validators), [*first, *second])
    assert raised.value.reason == "UNKNOWN_NEXT_VALIDATOR_SET"
    # The old validators cannot certify a block after they handed over.
    stale = blocks_pb([(b2.header, forge.certificate(b2))], forge.genesis.validators)
    with pytest.raises(LightClientError):
        verify_header_chain(validator_set_pb(forge.genesis.validators), [*first, *stale], sets)
