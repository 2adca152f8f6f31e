"""Finality certificates and the light client, including tampered inputs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from consensus_harness import CHAIN, Forge, make_genesis, make_keys, make_validator_set

from medledger.ledger.consensus import (
    Block,
    BlockHeader,
    FinalityCertificate,
    ValidatorSignature,
    VerificationError,
    verify_finality_certificate,
)
from medledger.ledger.lightclient import (
    verify_header_chain,
    verify_transaction_inclusion,
)
from medledger.merkle import inclusion_proof


@pytest.fixture
def forge() -> Forge:
    return Forge(make_keys(4), make_genesis(make_keys(4)))


def chain_of(forge: Forge, length: int) -> list[Block]:
    blocks = [forge.root]
    for i in range(1, length + 1):
        blocks.append(forge.block(blocks[-1], i, (b"ok:%d" % i, b"ok:x%d" % i)))
    return blocks[1:]


def reason_of(certificate: FinalityCertificate, forge: Forge, chain_id: str = CHAIN) -> str:
    with pytest.raises(VerificationError) as raised:
        verify_finality_certificate(certificate, forge.genesis.validators, chain_id)
    return raised.value.reason


def test_a_quorum_certificate_verifies_and_tampering_is_caught(forge: Forge) -> None:
    block = chain_of(forge, 1)[0]
    good = forge.certificate(block)
    verify_finality_certificate(good, forge.genesis.validators, CHAIN)

    sigs = good.signatures
    flipped = replace(sigs[0], signature=bytes([sigs[0].signature[0] ^ 1]) + sigs[0].signature[1:])
    assert reason_of(replace(good, block_hash=b"\x07" * 32), forge) == "BAD_SIGNATURE"
    assert reason_of(replace(good, height=good.height + 1), forge) == "BAD_SIGNATURE"
    assert reason_of(replace(good, signatures=(flipped, *sigs[1:])), forge) == "BAD_SIGNATURE"
    assert reason_of(replace(good, signatures=sigs[:2]), forge) == "NO_QUORUM"
    assert reason_of(replace(good, signatures=(sigs[0], sigs[0], sigs[1])), forge) == (
        "DUPLICATE_SIGNER"
    )
    assert (
        reason_of(
            replace(good, signatures=(*sigs[:2], ValidatorSignature(9, sigs[2].signature))), forge
        )
        == "UNKNOWN_SIGNER"
    )
    # Relabelled signer: validator 3 did not sign what validator 2 signed.
    relabelled = (*sigs[:2], ValidatorSignature(3, sigs[2].signature))
    assert reason_of(replace(good, signatures=relabelled), forge) == "BAD_SIGNATURE"
    assert reason_of(good, forge, chain_id="other") == "WRONG_CHAIN"
    # Signed for another chain id, relabelled to ours.
    foreign = forge.certificate(block, chain_id="other")
    assert reason_of(replace(foreign, chain_id=CHAIN), forge) == "BAD_SIGNATURE"
    # A different validator set (other keys) rejects it.
    strangers = make_validator_set(make_keys(4, b"strangers"))
    with pytest.raises(VerificationError):
        verify_finality_certificate(good, strangers, CHAIN)


def test_light_client_verifies_a_chain_of_certified_headers(forge: Forge) -> None:
    blocks = chain_of(forge, 5)
    chain = [(b.header, forge.certificate(b)) for b in blocks]
    last = verify_header_chain(
        forge.genesis.validators, CHAIN, chain, trusted_header=forge.root.header
    )
    assert last == blocks[-1].header
    # and a transaction's inclusion under the verified header
    txs = list(blocks[2].transactions)
    proof = inclusion_proof(txs, 1)
    verify_transaction_inclusion(blocks[2].header, txs[1], 1, len(txs), proof)
    with pytest.raises(VerificationError) as raised:
        verify_transaction_inclusion(blocks[2].header, b"ok:forged", 1, len(txs), proof)
    assert raised.value.reason == "BAD_INCLUSION_PROOF"


def test_light_client_rejects_broken_chains(forge: Forge) -> None:
    validators = forge.genesis.validators
    blocks = chain_of(forge, 4)
    chain = [(b.header, forge.certificate(b)) for b in blocks]

    def reason(bad: list[tuple[BlockHeader, FinalityCertificate]]) -> str:
        with pytest.raises(VerificationError) as raised:
            verify_header_chain(
                validators,
                CHAIN,
                bad,
                trusted_header=forge.root.header,
            )
        return raised.value.reason

    # A header altered after certification no longer matches its certificate.
    tampered = replace(blocks[1].header, timestamp_unix_ms=blocks[1].header.timestamp_unix_ms + 5)
    assert reason([chain[0], (tampered, chain[1][1]), *chain[2:]]) == "CERTIFICATE_MISMATCH"
    assert reason([chain[0], chain[2], chain[3]]) == "BROKEN_CHAIN"  # a gap
    assert reason([chain[1], chain[0]]) == "BROKEN_CHAIN"
    # A certified block on a fork does not link to the trusted chain.
    fork = forge.block(blocks[0], 7, (b"ok:fork",))
    fork_entry = (fork.header, forge.certificate(fork))
    assert reason([chain[0], fork_entry, chain[2]]) == "BROKEN_CHAIN"
    # Certificates swapped between heights.
    assert reason([(chain[0][0], chain[1][1]), chain[1]]) == "CERTIFICATE_MISMATCH"
    too_few = replace(chain[0][1], signatures=chain[0][1].signatures[:2])
    assert reason([(chain[0][0], too_few)]) == "NO_QUORUM"
    with pytest.raises(VerificationError):
        verify_header_chain(validators, CHAIN, [])


def test_light_client_follows_a_validator_set_change(forge: Forge) -> None:
    new_keys = make_keys(4, b"next-epoch")
    new_set = make_validator_set(new_keys)
    b1 = chain_of(forge, 1)[0]
    handover = replace(b1.header, next_validator_set_hash=new_set.hash)
    b1 = Block(handover, b1.transactions, b1.justify)
    next_forge = Forge(new_keys, replace(forge.genesis, validators=new_set))
    b2_header = replace(
        next_forge.block(b1, 2, (b"ok:2",)).header,
        validator_set_hash=new_set.hash,
        next_validator_set_hash=new_set.hash,
    )
    b2 = Block(b2_header, (b"ok:2",), forge.qc(b1))
    chain = [(b1.header, forge.certificate(b1)), (b2.header, next_forge.certificate(b2))]

    last = verify_header_chain(
        forge.genesis.validators,
        CHAIN,
        chain,
        validator_sets={new_set.hash: new_set},
        trusted_header=forge.root.header,
    )
    assert last == b2.header
    with pytest.raises(VerificationError) as raised:
        verify_header_chain(forge.genesis.validators, CHAIN, chain)
    assert raised.value.reason == "UNKNOWN_NEXT_VALIDATOR_SET"
    # The old validators cannot certify a block after they handed over.
    stale = [chain[0], (b2.header, forge.certificate(b2))]
    with pytest.raises(VerificationError):
        verify_header_chain(
            forge.genesis.validators, CHAIN, stale, validator_sets={new_set.hash: new_set}
        )
