"""Safety and liveness checks over what honest validators commit and certify."""

from __future__ import annotations

from medledger.ledger.consensus import (
    Block,
    FinalityCertificate,
    SignatureVerifier,
    TransactionRules,
    ValidatorSet,
    VerificationError,
    verify_finality_certificate,
)


class SafetyViolationError(Exception):
    """An honest validator's output broke agreement, validity or certificate validity."""

    reason = "SAFETY_VIOLATION"


class StateChecker:
    """Sees every block and certificate an honest validator outputs, as it happens."""

    def __init__(
        self,
        honest: set[int],
        rules: TransactionRules,
        validators: ValidatorSet,
        chain_id: str,
    ) -> None:
        self._honest = honest
        self._rules = rules
        self._chain_id = chain_id
        self.submitted: dict[bytes, bytes] = {}
        """tx id -> bytes of every transaction a client sent (valid or not)."""
        self.valid_ids: set[bytes] = set()
        self.canonical: dict[int, bytes] = {}
        self.heights: dict[int, int] = {}
        self.final_ids: dict[int, dict[bytes, int]] = {}
        self.hashes: dict[int, dict[int, bytes]] = {}
        self.certified: dict[int, set[int]] = {}
        self._validity: dict[bytes, str | None] = {}
        # Validator sets by the first height they certify: the genesis set, then each
        # committed reconfiguration's.
        self._epochs: list[tuple[int, ValidatorSet, SignatureVerifier]] = [
            (1, validators, SignatureVerifier(validators))
        ]

    def on_committed(self, node: int, blocks: tuple[Block, ...]) -> None:
        if node not in self._honest:
            return
        height = self.heights.get(node, 0)
        final = self.final_ids.setdefault(node, {})
        hashes = self.hashes.setdefault(node, {})
        for block in blocks:
            if block.height != height + 1:
                raise SafetyViolationError(
                    f"validator {node} committed height {block.height} after {height}"
                )
            height = block.height
            known = self.canonical.setdefault(height, block.hash)
            if known != block.hash:
                raise SafetyViolationError(
                    f"agreement: validator {node} finalized {block.hash.hex()[:16]} at height"
                    f" {height}, another honest validator {known.hex()[:16]}"
                )
            hashes[height] = block.hash
            self._note_reconfiguration(block)
            for tx in block.transactions:
                tx_id = self._rules.tx_id(tx)
                if self.submitted.get(tx_id) != tx:
                    raise SafetyViolationError(f"validity: height {height} has a tx no client sent")
                if tx_id not in self._validity:
                    self._validity[tx_id] = self._rules.validate(tx)
                if self._validity[tx_id] is not None:
                    raise SafetyViolationError(f"validity: height {height} has an invalid tx")
                if tx_id in final:
                    raise SafetyViolationError(
                        f"validity: tx {tx_id.hex()[:16]} final twice at validator {node}"
                        f" (heights {final[tx_id]} and {height})"
                    )
                final[tx_id] = height
        self.heights[node] = height

    def _note_reconfiguration(self, block: Block) -> None:
        header = block.header
        if header.next_validator_set_hash == header.validator_set_hash:
            return
        if any(first == block.height + 1 for first, _, _ in self._epochs):
            return
        change = next(
            (c for tx in block.transactions if (c := self._rules.validator_set_change(tx))), None
        )
        if change is None or change.validators.hash != header.next_validator_set_hash:
            raise SafetyViolationError(f"height {block.height} announces a set it does not carry")
        validators = change.validators
        self._epochs.append((block.height + 1, validators, SignatureVerifier(validators)))

    def on_certificates(self, node: int, certificates: tuple[FinalityCertificate, ...]) -> None:
        if node not in self._honest:
            return
        hashes = self.hashes.get(node, {})
        for certificate in certificates:
            _, validators, verifier = max(
                (e for e in self._epochs if e[0] <= certificate.height), key=lambda e: e[0]
            )
            try:
                verify_finality_certificate(certificate, validators, self._chain_id, verifier)
            except VerificationError as bad:
                raise SafetyViolationError(
                    f"validator {node} output a bad certificate: {bad}"
                ) from bad
            if hashes.get(certificate.height) != certificate.block_hash:
                raise SafetyViolationError(
                    f"validator {node} certified height {certificate.height} for a block"
                    " it did not commit"
                )
            self.certified.setdefault(node, set()).add(certificate.height)

    def missing(self, node: int) -> tuple[int, int]:
        """(valid txs not final at `node`, heights up to its last tx block not certified)."""
        final = self.final_ids.get(node, {})
        not_final = sum(1 for tx_id in self.valid_ids if tx_id not in final)
        top = max((final[tx_id] for tx_id in self.valid_ids if tx_id in final), default=0)
        certified = self.certified.get(node, set())
        uncertified = sum(1 for h in range(1, top + 1) if h not in certified)
        return not_final, uncertified

    def live(self, nodes: list[int]) -> bool:
        return all(self.missing(node) == (0, 0) for node in nodes)
