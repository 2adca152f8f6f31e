"""What the replica needs from its host: a read-only view of final blocks and the
transaction rules of the application."""

from __future__ import annotations

from typing import Protocol

from medledger.ledger.consensus.types import Block, FinalityCertificate, ValidatorSetChange


class LedgerView(Protocol):
    """Read-only access to this validator's final blocks.

    The adapter applies every `Output.committed` block and `Output.certificates` entry to
    the store behind this view before it calls into the replica again.
    """

    def committed_height(self) -> int:
        """Height of the newest final block; 0 when only the genesis is known."""
        ...

    def block_at(self, height: int) -> Block | None:
        """The final block at `height` (1..committed_height), else None."""
        ...

    def certificate_at(self, height: int) -> FinalityCertificate | None:
        """The finality certificate of the final block at `height`, if known yet."""
        ...

    def contains_tx(self, tx_id: bytes) -> bool:
        """True when a transaction with this id is in a final block."""
        ...


class TransactionRules(Protocol):
    """The application's view of a transaction; the core treats transactions as bytes."""

    def tx_id(self, tx: bytes) -> bytes:
        """The id under which `tx` is final at most once. Must not raise."""
        ...

    def validate(self, tx: bytes) -> str | None:
        """None when `tx` is valid (signature, well-formedness), else a reason. Must not raise."""
        ...

    def validator_set_change(self, tx: bytes) -> ValidatorSetChange | None:
        """The validator-set change a governance transaction asks for, else None.

        Only parsing: the core checks the approvals against the current set."""
        ...
