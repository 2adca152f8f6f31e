"""NATS subjects of the ledger, shared by validators and their clients."""

from __future__ import annotations

VALIDATORS_QUEUE = "validators"


def consensus(chain_id: str, index: int) -> str:
    """Where validator `index` receives consensus messages."""
    return f"medledger.ledger.{chain_id}.consensus.{index}"


def submit(chain_id: str) -> str:
    """Request/reply: SubmitTransactionRequest → SubmitTransactionResponse (any validator)."""
    return f"medledger.ledger.{chain_id}.submit"


def receipt(chain_id: str) -> str:
    """Request/reply: GetTransactionReceiptRequest → TransactionReceipt."""
    return f"medledger.ledger.{chain_id}.receipt"


def blocks(chain_id: str) -> str:
    """Request/reply: StreamBlocksRequest → BlockBatch (final, certified blocks from a height)."""
    return f"medledger.ledger.{chain_id}.blocks"


def validator_set(chain_id: str) -> str:
    """Request/reply: GetValidatorSetRequest → ValidatorSet."""
    return f"medledger.ledger.{chain_id}.validator-set"


def finalized(chain_id: str) -> str:
    """Publish: the header-only Block of each newly certified block (a hint to fetch)."""
    return f"medledger.ledger.{chain_id}.finalized"
