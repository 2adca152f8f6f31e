"""Verification of QCs, TCs and finality certificates against a validator set.

`verify_finality_certificate` is what light clients and audit reports rely on. The
replica verifies through a `SignatureVerifier`, which remembers signatures it already
checked so a QC seen in many messages costs its Ed25519 checks once.
"""

from __future__ import annotations

from medledger.crypto import SigningContext
from medledger.ledger.consensus.encoding import finality_payload, timeout_payload, vote_payload
from medledger.ledger.consensus.errors import VerificationError
from medledger.ledger.consensus.types import (
    FinalityCertificate,
    QuorumCertificate,
    TimeoutCertificate,
    ValidatorSet,
    ValidatorSignature,
)

_CACHE_LIMIT = 50_000


class SignatureVerifier:
    """Ed25519 checks against one validator set, remembering the ones that passed."""

    __slots__ = ("_ok", "validators")

    def __init__(self, validators: ValidatorSet) -> None:
        self.validators = validators
        self._ok: set[bytes] = set()

    def is_valid(
        self, signer: int, context: SigningContext, payload: bytes, signature: bytes
    ) -> bool:
        if not 0 <= signer < self.validators.size:
            return False
        memo = self._memo(signer, context, payload, signature)
        if memo in self._ok:
            return True
        if not self.validators.key(signer).is_valid(context, payload, signature):
            return False
        self._remember(memo)
        return True

    def remember_own(
        self, signer: int, context: SigningContext, payload: bytes, signature: bytes
    ) -> None:
        """Record a signature this process just made with `signer`'s key, unchecked."""
        self._remember(self._memo(signer, context, payload, signature))

    @staticmethod
    def _memo(signer: int, context: SigningContext, payload: bytes, signature: bytes) -> bytes:
        return b"%d|%s|" % (signer, context.value.encode()) + signature + payload

    def _remember(self, memo: bytes) -> None:
        if len(self._ok) >= _CACHE_LIMIT:
            self._ok.clear()
        self._ok.add(memo)


def _check_quorum(validators: ValidatorSet, signers: list[int], what: str) -> None:
    if len(set(signers)) != len(signers):
        raise VerificationError("DUPLICATE_SIGNER", f"{what} names a signer twice")
    if any(not 0 <= s < validators.size for s in signers):
        raise VerificationError("UNKNOWN_SIGNER", f"{what} names a signer outside the set")
    if validators.power_of(signers) < validators.quorum:
        raise VerificationError(
            "NO_QUORUM",
            f"{what} has power {validators.power_of(signers)}, needs {validators.quorum}",
        )


def verify_quorum_certificate(
    qc: QuorumCertificate,
    chain_id: str,
    verifier: SignatureVerifier,
    genesis: QuorumCertificate,
) -> None:
    """Raise VerificationError unless `qc` is the genesis QC or a quorum's valid votes."""
    if qc == genesis:
        return
    if qc.round == 0 or qc.height == 0:
        raise VerificationError("BAD_QC", "only the genesis QC may certify round 0")
    _check_quorum(verifier.validators, [s.signer for s in qc.signatures], "QC")
    payload = vote_payload(chain_id, qc.block_hash, qc.height, qc.round)
    for sig in qc.signatures:
        if not verifier.is_valid(sig.signer, SigningContext.VOTE, payload, sig.signature):
            raise VerificationError("BAD_SIGNATURE", f"QC vote of validator {sig.signer}")


def verify_timeout_certificate(
    tc: TimeoutCertificate,
    chain_id: str,
    verifier: SignatureVerifier,
    genesis: QuorumCertificate,
) -> None:
    """Raise VerificationError unless `tc` holds a quorum's timeouts for its round and
    its high QC is valid and is the highest any of them reported."""
    _check_quorum(verifier.validators, [s.signer for s in tc.signatures], "TC")
    if tc.high_qc.round != max(s.high_qc_round for s in tc.signatures):
        raise VerificationError("BAD_TC", "TC high QC is not the highest reported")
    if tc.high_qc.round >= tc.round:
        raise VerificationError("BAD_TC", "TC high QC is not below the TC round")
    for sig in tc.signatures:
        payload = timeout_payload(chain_id, tc.round, sig.high_qc_round)
        if not verifier.is_valid(sig.signer, SigningContext.TIMEOUT, payload, sig.signature):
            raise VerificationError("BAD_SIGNATURE", f"TC timeout of validator {sig.signer}")
    verify_quorum_certificate(tc.high_qc, chain_id, verifier, genesis)


def verify_finality_certificate(
    certificate: FinalityCertificate,
    validators: ValidatorSet,
    chain_id: str,
    verifier: SignatureVerifier | None = None,
) -> None:
    """Raise VerificationError unless a quorum of `validators` signed FINALITY over the
    certificate's (chain id, height, block hash). Needs nothing but the public keys."""
    if certificate.chain_id != chain_id:
        raise VerificationError(
            "WRONG_CHAIN", f"certificate is for chain {certificate.chain_id!r}, not {chain_id!r}"
        )
    check = verifier if verifier is not None else SignatureVerifier(validators)
    if check.validators is not validators and check.validators != validators:
        raise VerificationError("WRONG_VALIDATOR_SET", "verifier is for another validator set")
    _check_quorum(validators, [s.signer for s in certificate.signatures], "certificate")
    payload = finality_payload(chain_id, certificate.height, certificate.block_hash)
    for sig in certificate.signatures:
        if not check.is_valid(sig.signer, SigningContext.FINALITY, payload, sig.signature):
            raise VerificationError(
                "BAD_SIGNATURE", f"finality signature of validator {sig.signer}"
            )


def sorted_signatures(signatures: dict[int, bytes]) -> tuple[ValidatorSignature, ...]:
    """Signatures in signer order, so equal certificates are equal values."""
    return tuple(ValidatorSignature(s, signatures[s]) for s in sorted(signatures))
