"""Finality certificates, including tampered inputs (light client: test_lightclient.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medledger.ledger.consensus import (
    Block,
    FinalityCertificate,
    ValidatorSignature,
    VerificationError,
    verify_finality_certificate,
)
from tests.unit.ledger.consensus.consensus_harness import (
    CHAIN,
    Forge,
    make_genesis,
    make_keys,
    make_validator_set,
)


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
