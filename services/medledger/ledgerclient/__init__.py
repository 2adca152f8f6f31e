"""The ledger's public library: its signed formats, offline verification, and a
NATS client. Every service uses this package, never the validator's internals."""

from medledger.ledgerclient.client import LedgerClient, LedgerClientError
from medledger.ledgerclient.lightclient import (
    LightClientError,
    header_hash,
    validator_set_hash,
    verify_block,
    verify_certificate,
    verify_header_chain,
    verify_receipt,
)
from medledger.ledgerclient.transactions import (
    CheckedTransaction,
    TransactionError,
    check_transaction,
    sign_transaction,
    transaction_id,
)

__all__ = [
    "CheckedTransaction",
    "LedgerClient",
    "LedgerClientError",
    "LightClientError",
    "TransactionError",
    "check_transaction",
    "header_hash",
    "sign_transaction",
    "transaction_id",
    "validator_set_hash",
    "verify_block",
    "verify_certificate",
    "verify_header_chain",
    "verify_receipt",
]
