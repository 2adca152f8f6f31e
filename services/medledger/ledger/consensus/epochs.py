"""Epochs: which validator set runs consensus, and how a governance change hands over.

An epoch is a run of heights under one validator set. The first epoch starts at the
genesis; a *reconfiguration block* (its header's next validator-set hash differs from its
validator-set hash) ends its epoch once committed, and the next epoch starts right above
it with the set the block's change transaction installs. Rounds keep counting across
epochs, and proposals, votes and timeouts of a later epoch are signed under a chain id
qualified by the epoch's root block, so no signature of one epoch counts in another.
"""

from __future__ import annotations

from dataclasses import dataclass

from medledger.crypto import SigningContext, VerifyKey
from medledger.ledger.consensus.certificates import SignatureVerifier
from medledger.ledger.consensus.genesis import genesis_block
from medledger.ledger.consensus.protocols import LedgerView, TransactionRules
from medledger.ledger.consensus.types import (
    Block,
    Genesis,
    QuorumCertificate,
    ValidatorSet,
    ValidatorSetChange,
)
from medledger.ledgerclient.encoding import lp, text

APPROVAL_TAG = b"medledger.ledger.validator-set-change.v1"


def approval_payload(chain_id: str, current: ValidatorSet, new: ValidatorSet) -> bytes:
    """What each approving validator signs (TRANSACTION context) for a set change."""
    return lp(APPROVAL_TAG) + text(chain_id) + lp(current.hash) + lp(new.hash)


def approving_power(change: ValidatorSetChange, current: ValidatorSet, chain_id: str) -> int:
    """Voting power of the distinct current validators whose approval verifies."""
    payload = approval_payload(chain_id, current, change.validators)
    by_key = {v.public_key: i for i, v in enumerate(current.validators)}
    approvers: set[int] = set()
    for approval in change.approvals:
        index = by_key.get(approval.public_key)
        if index is None or index in approvers:
            continue
        if VerifyKey(approval.public_key).is_valid(
            SigningContext.TRANSACTION, payload, approval.signature
        ):
            approvers.add(index)
    return current.power_of(sorted(approvers))


def is_approved(change: ValidatorSetChange, current: ValidatorSet, chain_id: str) -> bool:
    """A quorum of the current set's voting power approved exactly this change."""
    return approving_power(change, current, chain_id) >= current.quorum


def is_reconfiguration(block: Block) -> bool:
    header = block.header
    return header.next_validator_set_hash != header.validator_set_hash


@dataclass(frozen=True, slots=True)
class Epoch:
    """One validator set's stretch of the chain, from the block above `root`."""

    validators: ValidatorSet
    root: Block
    signing_chain_id: str
    """The chain id in this epoch's proposal, vote and timeout payloads."""
    verifier: SignatureVerifier

    @property
    def first_height(self) -> int:
        return self.root.height + 1

    @property
    def root_qc(self) -> QuorumCertificate:
        """The QC the epoch starts from: its root, with no signatures (like the genesis QC)."""
        if self.root.height == 0:
            return self.root.justify
        return QuorumCertificate(self.root.hash, self.root.height, self.root.round, ())

    def index_of(self, key: VerifyKey) -> int | None:
        for i, validator in enumerate(self.validators.validators):
            if validator.public_key == key.raw:
                return i
        return None


def first_epoch(genesis: Genesis) -> Epoch:
    validators = genesis.validators
    return Epoch(
        validators, genesis_block(genesis), genesis.chain_id, SignatureVerifier(validators)
    )


def next_epoch(chain_id: str, root: Block, validators: ValidatorSet) -> Epoch:
    """The epoch a committed reconfiguration block `root` starts."""
    signing_chain_id = f"{chain_id}@{root.hash.hex()[:16]}"
    return Epoch(validators, root, signing_chain_id, SignatureVerifier(validators))


def change_in(block: Block, rules: TransactionRules) -> ValidatorSetChange | None:
    """The validator-set change a block carries (at most one is valid in a block)."""
    for tx in block.transactions:
        change = rules.validator_set_change(tx)
        if change is not None:
            return change
    return None


def epochs_of(
    genesis: Genesis, view: LedgerView, rules: TransactionRules
) -> tuple[Epoch, Epoch | None]:
    """The current epoch of a store's final chain, and the one before it.

    Walks back from the tip to the two newest reconfiguration blocks (a store is
    trusted: its blocks were final when written)."""
    roots: list[Block] = []
    height = view.committed_height()
    while height > 0 and len(roots) < 2:
        block = view.block_at(height)
        if block is None:
            break
        if is_reconfiguration(block):
            roots.append(block)
        height -= 1
    epochs = [first_epoch(genesis)]
    for root in reversed(roots):
        change = change_in(root, rules)
        if change is None or change.validators.hash != root.header.next_validator_set_hash:
            raise ValueError(f"reconfiguration block {root.height} carries no matching change")
        epochs.append(next_epoch(genesis.chain_id, root, change.validators))
    if len(roots) == 2:
        # The epoch before the newest one started at the older root; older ones are
        # not needed (certificates below it are already stored).
        return epochs[-1], epochs[-2]
    return epochs[-1], (epochs[-2] if len(epochs) > 1 else None)
