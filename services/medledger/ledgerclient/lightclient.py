"""Offline verification of ledger blocks and transaction receipts with only the
validators' public keys: what audit reports and services rely on.

A block is accepted when its header hashes to the certificate's block hash and
validators holding a quorum (more than two thirds) of the set's power signed
FINALITY over (chain id, height, block hash) — docs/ledger.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medledger._gen.ledger.v1 import ledger_service_pb2 as pb
from medledger.crypto import KeyFormatError, SigningContext, VerifyKey, sha256
from medledger.ledgerclient.encoding import finality_payload, header_bytes, validator_set_digest
from medledger.merkle import ProofError, leaf_hash, verify_inclusion


class LightClientError(Exception):
    """Verification failed; `reason` names the first check that failed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def header_hash(header: pb.BlockHeader) -> bytes:
    """The block hash: SHA-256 of the header's canonical encoding."""
    return sha256(
        header_bytes(
            chain_id=header.chain_id,
            height=header.height,
            round_=header.round,
            parent_hash=header.previous_hash,
            tx_root=header.tx_root,
            validator_set_hash=header.validator_set_hash,
            next_validator_set_hash=header.next_validator_set_hash,
            proposer=header.proposer,
            timestamp_unix_ms=header.timestamp_unix_ms,
        )
    )


def validator_set_hash(validators: pb.ValidatorSet) -> bytes:
    """Hash of a validator set as carried in block headers."""
    return validator_set_digest(
        (v.name, v.organisation.removeprefix("organisations/"), v.public_key, v.power)
        for v in validators.validators
    )


def quorum_power(total_power: int) -> int:
    """Power of a quorum: total - f with f = (total - 1) // 3, i.e. 2f + 1 at 3f + 1."""
    return total_power - (total_power - 1) // 3


def verify_certificate(
    header: pb.BlockHeader, certificate: pb.FinalityCertificate, validators: pb.ValidatorSet
) -> bytes:
    """Check `certificate` finalizes `header` under `validators`; returns the block hash."""
    block_hash = header_hash(header)
    if header.validator_set_hash != validator_set_hash(validators):
        raise LightClientError(
            "WRONG_VALIDATOR_SET", f"block {header.height} is signed by another validator set"
        )
    if certificate.chain_id != header.chain_id:
        raise LightClientError("WRONG_CHAIN", "certificate is for another chain")
    if certificate.height != header.height:
        raise LightClientError("WRONG_HEIGHT", "certificate is for another height")
    if certificate.block_hash != block_hash:
        raise LightClientError(
            "HEADER_HASH_MISMATCH", f"block {header.height} header does not match its certificate"
        )
    payload = finality_payload(header.chain_id, header.height, block_hash)
    members = list(validators.validators)
    total = sum(v.power for v in members)
    signed: set[int] = set()
    power = 0
    for sig in certificate.signatures:
        index = sig.validator_index
        if index >= len(members) or index in signed:
            raise LightClientError("BAD_SIGNER", f"signer index {index} unknown or repeated")
        member = members[index]
        try:
            key = VerifyKey(member.public_key)
        except KeyFormatError as exc:
            raise LightClientError("BAD_VALIDATOR_KEY", str(exc)) from exc
        if not key.is_valid(SigningContext.FINALITY, payload, sig.signature):
            raise LightClientError(
                "BAD_SIGNATURE", f"finality signature of {member.name} does not verify"
            )
        signed.add(index)
        power += member.power
    if power < quorum_power(total):
        raise LightClientError(
            "NO_QUORUM", f"signers hold {power} of {total} power; {quorum_power(total)} needed"
        )
    return block_hash


def verify_block(block: pb.Block, validators: pb.ValidatorSet) -> None:
    """Check a final block: certificate, header hash and (when present) its transactions."""
    if not block.HasField("header") or not block.HasField("finality_certificate"):
        raise LightClientError("INCOMPLETE_BLOCK", "block lacks a header or certificate")
    block_hash = verify_certificate(block.header, block.finality_certificate, validators)
    if block.hash and block.hash != block_hash:
        raise LightClientError("HEADER_HASH_MISMATCH", "block hash field does not match header")
    if block.transactions:
        from medledger.merkle import root_hash

        leaves = [tx.SerializeToString(deterministic=True) for tx in block.transactions]
        if root_hash(leaves) != block.header.tx_root:
            raise LightClientError("TX_ROOT_MISMATCH", "transactions do not match tx_root")


def verify_receipt(receipt: pb.TransactionReceipt, validators: pb.ValidatorSet) -> None:
    """Check a transaction receipt: the block is final and the transaction is in it."""
    verify_certificate(receipt.header, receipt.finality_certificate, validators)
    tx_bytes = receipt.transaction.SerializeToString(deterministic=True)
    if sha256(receipt.transaction.body).hex() != receipt.tx_id:
        raise LightClientError("TX_ID_MISMATCH", "receipt's transaction does not have its tx id")
    try:
        verify_inclusion(
            leaf_hash(tx_bytes),
            receipt.index,
            receipt.tx_count,
            list(receipt.inclusion_proof),
            receipt.header.tx_root,
        )
    except ProofError as exc:
        raise LightClientError("BAD_INCLUSION_PROOF", str(exc)) from exc


def verify_header_chain(
    trusted: pb.ValidatorSet,
    chain: Sequence[pb.Block],
    validator_sets: Mapping[bytes, pb.ValidatorSet] | None = None,
    trusted_header: pb.BlockHeader | None = None,
) -> pb.BlockHeader:
    """Verify consecutive certified blocks starting under the `trusted` validator set.

    Each block must carry its finality certificate; transactions may be omitted
    (header-only). `trusted_header`, if given (e.g. the genesis block's), is the header
    the first block must directly extend. A header whose next_validator_set_hash names
    another set hands over to it: `validator_sets` supplies such sets by hash. Returns
    the last verified header; raises LightClientError naming the first failure.
    """
    if not chain:
        raise LightClientError("EMPTY_CHAIN", "no blocks to verify")
    sets = dict(validator_sets or {})
    current = trusted
    current_hash = validator_set_hash(current)
    previous = trusted_header
    previous_hash = None if previous is None else header_hash(previous)
    for block in chain:
        header = block.header
        if previous is not None:
            if header.height != previous.height + 1:
                raise LightClientError(
                    "BROKEN_CHAIN", f"height {header.height} does not follow {previous.height}"
                )
            if header.previous_hash != previous_hash:
                raise LightClientError(
                    "BROKEN_CHAIN", f"block {header.height} does not link to its parent"
                )
            if header.timestamp_unix_ms <= previous.timestamp_unix_ms:
                raise LightClientError(
                    "BAD_TIMESTAMP", f"block {header.height} is not after its parent"
                )
        verify_block(block, current)
        if header.next_validator_set_hash != current_hash:
            following = sets.get(header.next_validator_set_hash)
            if following is None or validator_set_hash(following) != header.next_validator_set_hash:
                raise LightClientError(
                    "UNKNOWN_NEXT_VALIDATOR_SET",
                    f"block {header.height} hands over to a validator set not supplied",
                )
            current, current_hash = following, header.next_validator_set_hash
        previous, previous_hash = header, header_hash(header)
    assert previous is not None
    return previous
