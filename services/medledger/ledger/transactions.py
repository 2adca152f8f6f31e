"""The consensus core's transaction rules for medledger's signed envelope.

The ledger checks what every validator can check alone and deterministically
(medledger.ledgerclient.transactions.check_transaction): the envelope parses
canonically, the signature verifies over the carried body bytes, the body names
this chain, its type matches its payload, and sizes are bounded. Replay
protection is by transaction id, final at most once. Whether a signer may make
a change (an administrator of that organisation? the patient?) is decided by
the services' views, which replay final blocks deterministically and record a
refusal for a change that was not allowed.
"""

from __future__ import annotations

from medledger._gen.common.v1 import transaction_pb2
from medledger.crypto import sha256
from medledger.ledger.consensus.types import ValidatorSetChange
from medledger.ledgerclient.transactions import (
    TransactionError,
    check_transaction,
    parse_envelope,
    transaction_id,
)


class LedgerTransactionRules:
    """TransactionRules (see consensus.protocols) for the Transaction envelope."""

    def __init__(self, chain_id: str, max_tx_bytes: int) -> None:
        self._chain_id = chain_id
        self._max_tx_bytes = max_tx_bytes

    def tx_id(self, tx: bytes) -> bytes:
        try:
            envelope = parse_envelope(tx)
        except TransactionError:
            # An unparseable transaction still needs a stable id so it is refused once.
            return sha256(b"unparseable:", tx)
        return transaction_id(envelope.body)

    def validate(self, tx: bytes) -> str | None:
        try:
            checked = check_transaction(tx, self._chain_id, self._max_tx_bytes)
        except TransactionError as exc:
            return exc.reason
        if checked.body.type == transaction_pb2.TRANSACTION_TYPE_GOVERNANCE_CHANGE:
            # Validator-set changes need approvals of a quorum of current validators and
            # an epoch change in consensus; refuse rather than accept them unchecked.
            return "GOVERNANCE_NOT_SUPPORTED"
        return None

    def validator_set_change(self, tx: bytes) -> ValidatorSetChange | None:
        return None
