"""Validator-set changes: approvals by a quorum of the current set, and the handover."""

from __future__ import annotations

import random

from medledger.crypto import SigningContext, SigningKey
from medledger.ledger.consensus import (
    Approval,
    Replica,
    ReplicaConfig,
    ValidatorSet,
    ValidatorSetChange,
)
from medledger.ledger.consensus.epochs import approval_payload, approving_power, is_approved
from medledger.ledger.sim.store import MemoryLedgerStore
from medledger.ledger.sim.workload import SimTransactionRules, Workload
from tests.unit.ledger.consensus.consensus_harness import (
    CHAIN,
    T0,
    make_genesis,
    make_keys,
    make_validator_set,
)


def _change(
    current: ValidatorSet, new: ValidatorSet, approvers: list[SigningKey], chain: str = CHAIN
) -> ValidatorSetChange:
    payload = approval_payload(chain, current, new)
    return ValidatorSetChange(
        new,
        tuple(
            Approval(k.public_key.raw, k.sign(SigningContext.TRANSACTION, payload))
            for k in approvers
        ),
    )


def test_a_change_needs_approvals_of_a_quorum_of_the_current_set() -> None:
    keys = make_keys(5)
    current, new = make_validator_set(keys[:4]), make_validator_set(keys[1:])
    assert is_approved(_change(current, new, keys[:3]), current, CHAIN)
    assert not is_approved(_change(current, new, keys[:2]), current, CHAIN)
    # The same approver twice, an outsider, or approvals for another chain do not count.
    assert approving_power(_change(current, new, [keys[0], keys[0], keys[4]]), current, CHAIN) == 1
    assert not is_approved(_change(current, new, keys[:4], chain="other"), current, CHAIN)
    # Approvals name the set they replace: they are worthless once it is gone.
    assert not is_approved(_change(current, new, keys[:4]), new, CHAIN)


def test_a_replica_refuses_an_unapproved_change_and_forwards_an_approved_one() -> None:
    keys = make_keys(5)
    genesis = make_genesis(keys[:4])
    client = SigningKey.from_seed(b"\x07" * 32)
    rules = SimTransactionRules(client.public_key)
    workload = Workload(random.Random(1), client)
    replica = Replica(ReplicaConfig(genesis, 0), keys[0], MemoryLedgerStore(rules), rules, None)
    replica.start(T0)
    new = make_validator_set(keys[1:])
    weak = workload.governance(_change(genesis.validators, new, keys[:2]), rules)
    out = replica.submit([weak], T0)
    assert [r.reason for r in out.rejected] == ["UNAPPROVED_VALIDATOR_SET_CHANGE"]
    strong = workload.governance(_change(genesis.validators, new, keys[:3]), rules)
    out = replica.submit([strong], T0)
    assert out.accepted == (rules.tx_id(strong),) and out.rejected == ()
    assert any(getattr(o.message, "transactions", ()) == (strong,) for o in out.messages)


def test_a_validator_outside_the_genesis_starts_as_an_observer() -> None:
    keys = make_keys(5)
    genesis = make_genesis(keys[:4])
    rules = SimTransactionRules(keys[4].public_key)
    joiner = Replica(ReplicaConfig(genesis, None), keys[4], MemoryLedgerStore(rules), rules)
    joiner.start(T0)
    assert joiner.index is None and joiner.validators == genesis.validators
    # It signs nothing: no proposal, vote or timeout, even when its round times out.
    out = joiner.tick(T0 + 60)
    assert out.messages == () and out.safety_state is None
