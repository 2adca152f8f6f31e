"""Errors raised by the consensus core and the light client.

ConsensusError                 reason
├── ConfigurationError         BAD_CONFIGURATION   config, key or genesis inconsistent
├── IllegalCallError           ILLEGAL_CALL        a local call the replica's state forbids
└── VerificationError          VERIFICATION_FAILED a certificate, header or chain does not verify
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Base of every error raised by medledger.ledger.consensus."""

    reason = "CONSENSUS_ERROR"


class ConfigurationError(ConsensusError):
    """The replica's configuration, key or genesis is inconsistent."""

    reason = "BAD_CONFIGURATION"


class IllegalCallError(ConsensusError):
    """A local call the replica's state forbids; the state is left unchanged."""

    reason = "ILLEGAL_CALL"


class VerificationError(ConsensusError):
    """A certificate, header or chain of headers does not verify.

    `reason` is refined per instance (e.g. BAD_SIGNATURE, NO_QUORUM, BROKEN_CHAIN).
    """

    reason = "VERIFICATION_FAILED"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
