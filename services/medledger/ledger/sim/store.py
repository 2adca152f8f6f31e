"""An in-memory block store: the simulator's LedgerView, and what survives a crash."""

from __future__ import annotations

from medledger.ledger.consensus import Block, FinalityCertificate, Output, TransactionRules


class MemoryLedgerStore:
    """Final blocks, their certificates and the final transaction ids of one validator."""

    def __init__(self, rules: TransactionRules) -> None:
        self._rules = rules
        self._blocks: list[Block] = []
        self._certificates: dict[int, FinalityCertificate] = {}
        self._tx_ids: set[bytes] = set()

    # LedgerView
    def committed_height(self) -> int:
        return len(self._blocks)

    def block_at(self, height: int) -> Block | None:
        if 1 <= height <= len(self._blocks):
            return self._blocks[height - 1]
        return None

    def certificate_at(self, height: int) -> FinalityCertificate | None:
        return self._certificates.get(height)

    def contains_tx(self, tx_id: bytes) -> bool:
        return tx_id in self._tx_ids

    # what the adapter does with an Output
    def apply(self, output: Output) -> None:
        for block in output.committed:
            if block.height != len(self._blocks) + 1:
                raise AssertionError(
                    f"store at height {len(self._blocks)} got block {block.height}"
                )
            self._blocks.append(block)
            self._tx_ids.update(self._rules.tx_id(tx) for tx in block.transactions)
        for certificate in output.certificates:
            self._certificates[certificate.height] = certificate

    @property
    def certified_heights(self) -> set[int]:
        return set(self._certificates)
