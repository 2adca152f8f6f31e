"""Pending transactions of one validator, in arrival order, bounded in count.

Validity is checked once per distinct transaction bytes (Ed25519 checks are the
expensive part of admission) and remembered in a bounded cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from medledger.crypto import sha256
from medledger.ledger.consensus.protocols import TransactionRules

_VALIDITY_CACHE_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking one transaction's bytes."""

    tx_id: bytes | None
    reason: str | None
    detail: str


class Mempool:
    """Admitted, not yet final transactions keyed by tx id (insertion-ordered)."""

    def __init__(self, rules: TransactionRules, capacity: int, max_tx_bytes: int) -> None:
        self._rules = rules
        self.capacity = capacity
        self._max_tx_bytes = max_tx_bytes
        self._pending: dict[bytes, bytes] = {}
        self._verdicts: dict[bytes, Verdict] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._pending

    def check(self, tx: bytes) -> Verdict:
        """Size, id and rules.validate for `tx`, computed once per distinct bytes."""
        if type(tx) is not bytes or not 0 < len(tx) <= self._max_tx_bytes:
            return Verdict(None, "TOO_LARGE", f"a transaction is 1..{self._max_tx_bytes} bytes")
        key = sha256(tx)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(tx)
            if len(self._verdicts) >= _VALIDITY_CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def _judge(self, tx: bytes) -> Verdict:
        tx_id = self._rules.tx_id(tx)
        problem = self._rules.validate(tx)
        if problem is not None:
            return Verdict(tx_id, "INVALID_TRANSACTION", problem)
        return Verdict(tx_id, None, "")

    def add(self, tx_id: bytes, tx: bytes) -> bool:
        """Admit a checked transaction; False when the pool is full."""
        if len(self._pending) >= self.capacity:
            return False
        self._pending[tx_id] = tx
        return True

    def remove(self, tx_ids: Iterable[bytes]) -> None:
        for tx_id in tx_ids:
            self._pending.pop(tx_id, None)

    def select(
        self,
        excluded: Callable[[bytes], bool],
        max_txs: int,
        max_bytes: int,
    ) -> list[bytes]:
        """Oldest admitted transactions not `excluded`, up to the block limits."""
        chosen: list[bytes] = []
        size = 0
        for tx_id, tx in self._pending.items():
            if len(chosen) >= max_txs:
                break
            if excluded(tx_id) or size + len(tx) > max_bytes:
                continue
            chosen.append(tx)
            size += len(tx)
        return chosen

    def has_any(self, excluded: Callable[[bytes], bool]) -> bool:
        return any(not excluded(tx_id) for tx_id in self._pending)
