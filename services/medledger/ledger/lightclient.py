"""Offline verification of ledger blocks with nothing but validator public keys.

Given a trusted validator set (from the genesis) and a chain of headers with their
finality certificates, check each certificate, the hash links and the validator set
each header names, following `next_validator_set_hash` across set changes; then a
transaction's inclusion proof against a verified header's tx_root. This is what
`medledger ledger verify-block` and audit reports rely on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medledger.ledger.consensus.certificates import (
    SignatureVerifier,
    verify_finality_certificate,
)
from medledger.ledger.consensus.errors import VerificationError
from medledger.ledger.consensus.types import BlockHeader, FinalityCertificate, ValidatorSet
from medledger.merkle import ProofError, leaf_hash, verify_inclusion

__all__ = [
    "VerificationError",
    "verify_certified_header",
    "verify_finality_certificate",
    "verify_header_chain",
    "verify_transaction_inclusion",
]


def verify_certified_header(
    header: BlockHeader,
    certificate: FinalityCertificate,
    validators: ValidatorSet,
    chain_id: str,
    verifier: SignatureVerifier | None = None,
) -> None:
    """Raise VerificationError unless `certificate` makes `header` final under `validators`."""
    if header.chain_id != chain_id:
        raise VerificationError("WRONG_CHAIN", f"header is for chain {header.chain_id!r}")
    if header.validator_set_hash != validators.hash:
        raise VerificationError(
            "WRONG_VALIDATOR_SET", f"header {header.height} names another validator set"
        )
    if certificate.height != header.height or certificate.block_hash != header.hash:
        raise VerificationError(
            "CERTIFICATE_MISMATCH", f"certificate is not for the header at {header.height}"
        )
    verify_finality_certificate(certificate, validators, chain_id, verifier)


def verify_header_chain(
    trusted: ValidatorSet,
    chain_id: str,
    chain: Sequence[tuple[BlockHeader, FinalityCertificate]],
    validator_sets: Mapping[bytes, ValidatorSet] | None = None,
    trusted_header: BlockHeader | None = None,
) -> BlockHeader:
    """Verify consecutive certified headers starting under the `trusted` validator set.

    `trusted_header`, if given, is a header already trusted (e.g. the genesis block's)
    that the first header must directly extend. `validator_sets` supplies, by hash, any
    set a header announces as next. Returns the last header; raises VerificationError.
    """
    if not chain:
        raise VerificationError("EMPTY_CHAIN", "no headers to verify")
    sets = dict(validator_sets or {})
    current = trusted
    verifier = SignatureVerifier(current)
    previous = trusted_header
    for header, certificate in chain:
        if previous is not None:
            if header.height != previous.height + 1:
                raise VerificationError(
                    "BROKEN_CHAIN", f"height {header.height} does not follow {previous.height}"
                )
            if header.parent_hash != previous.hash:
                raise VerificationError(
                    "BROKEN_CHAIN", f"header {header.height} does not link to its parent"
                )
            if header.timestamp_unix_ms <= previous.timestamp_unix_ms:
                raise VerificationError(
                    "BAD_TIMESTAMP", f"header {header.height} is not after its parent"
                )
        verify_certified_header(header, certificate, current, chain_id, verifier)
        if header.next_validator_set_hash != current.hash:
            following = sets.get(header.next_validator_set_hash)
            if following is None or following.hash != header.next_validator_set_hash:
                raise VerificationError(
                    "UNKNOWN_NEXT_VALIDATOR_SET",
                    f"header {header.height} hands over to a validator set not supplied",
                )
            current = following
            verifier = SignatureVerifier(current)
        previous = header
    assert previous is not None
    return previous


def verify_transaction_inclusion(
    header: BlockHeader,
    tx: bytes,
    index: int,
    tx_count: int,
    proof: Sequence[bytes],
) -> None:
    """Raise VerificationError unless `proof` shows `tx` at `index` under header.tx_root."""
    try:
        verify_inclusion(leaf_hash(tx), index, tx_count, proof, header.tx_root)
    except ProofError as bad:
        raise VerificationError("BAD_INCLUSION_PROOF", str(bad)) from bad
