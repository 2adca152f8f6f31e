"""The replica wired to peers in memory, time stepped by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from medledger.ledger.consensus import (
    BlockRequest,
    BlockResponse,
    FinalityCertificate,
    FinalityVote,
    IllegalCallError,
    Proposal,
    QuorumCertificate,
    Replica,
    ReplicaConfig,
    SyncInfo,
    Timeout,
    Vote,
    verify_finality_certificate,
)
from medledger.ledger.sim.store import MemoryLedgerStore
from tests.unit.ledger.consensus.consensus_harness import (
    CHAIN,
    T0,
    Cluster,
    Forge,
    Rules,
    make_genesis,
    make_keys,
)


def lone_replica(index: int = 1, **config: float) -> tuple[Replica, Forge, MemoryLedgerStore]:
    keys = make_keys(4)
    genesis = make_genesis(keys)
    store = MemoryLedgerStore(Rules())
    replica = Replica(
        ReplicaConfig(genesis=genesis, index=index, **config),  # type: ignore[arg-type]
        keys[index],
        store,
        Rules(),
        None,
    )
    replica.start(T0)
    return replica, Forge(keys, genesis), store


def votes_in(output_messages: tuple[object, ...]) -> list[Vote]:
    return [m for m in output_messages if isinstance(m, Vote)]


# -- happy path, QC and commit ------------------------------------------------------------


def test_four_replicas_commit_submitted_transactions_in_the_same_order() -> None:
    cluster = Cluster(4)
    cluster.start()
    txs = [b"ok:%d" % i for i in range(10)]
    out = cluster.submit(2, txs)
    assert len(out.accepted) == 10 and not out.rejected

    cluster.run_until(lambda: all(len(cluster.final_txs(i)) == 10 for i in range(4)))

    assert all(cluster.final_txs(i) == cluster.final_txs(0) for i in range(4))
    assert sorted(cluster.final_txs(0)) == sorted(txs)
    heights = [cluster.stores[i].committed_height() for i in range(4)]
    top = min(heights)
    for height in range(1, top + 1):
        blocks = {cluster.stores[i].block_at(height) for i in range(4)}
        assert len(blocks) == 1
    # Every replica forms the finality certificates of what it committed.
    cluster.run(2.0)
    for i in range(4):
        certified = {c.height for c in cluster.certificates[i]}
        assert set(range(1, top + 1)) <= certified
        for certificate in cluster.certificates[i]:
            verify_finality_certificate(certificate, cluster.genesis.validators, CHAIN)


def test_next_leader_forms_a_qc_from_a_quorum_of_votes() -> None:
    cluster = Cluster(4)
    cluster.start()
    cluster.submit(1, [b"ok:a"])
    # Round 1's leader (1) proposed; the votes went to round 2's leader (2), whose
    # proposal carries the QC for round 1.
    proposals = [m for _, _, m in cluster.sent if isinstance(m, Proposal)]
    assert proposals[0].block.round == 1 and proposals[0].block.header.proposer == 1
    second = next(p for p in proposals if p.block.round == 2)
    assert second.block.header.proposer == 2
    assert second.block.justify.block_hash == proposals[0].block.hash
    assert len(second.block.justify.signatures) >= 3
    assert cluster.replica(2).events["qcs_formed"] >= 1
    assert all(to == 2 for src, to, m in cluster.sent if isinstance(m, Vote) and m.round == 1)


def test_commit_rule_needs_a_qc_on_a_child_from_the_next_round() -> None:
    replica, forge, store = lone_replica(index=0)
    b1 = forge.block(forge.root, 1, (b"ok:1",))
    # b2 in round 3 extends b1 after round 2 timed out: b1, b2 are not a 2-chain.
    b2 = forge.block(b1, 3, (), forge.qc(b1))
    replica.receive(1, forge.proposal(b1), T0 + 0.01)
    replica.receive(3, forge.proposal(b2, forge.tc(2, forge.qc(b1))), T0 + 0.02)
    out = replica.receive(2, SyncInfo(forge.qc(b2), None), T0 + 0.03)
    assert out.committed == () and store.committed_height() == 0

    # QC(b3) with b3.round == b2.round + 1 commits b2 and its ancestor b1, in order.
    # b3 is unknown at first: the replica fetches it by hash and commits on arrival.
    b3 = forge.block(b2, 4, (), forge.qc(b2))
    out = replica.receive(2, SyncInfo(forge.qc(b3), None), T0 + 0.04)
    assert out.committed == ()
    requests = [o for o in out.messages if isinstance(o.message, BlockRequest)]
    assert [(o.to, o.message.block_hash) for o in requests] == [(2, b3.hash)]  # type: ignore[union-attr]
    out = replica.receive(2, BlockResponse(b3), T0 + 0.05)
    assert [b.hash for b in out.committed] == [b1.hash, b2.hash]
    store.apply(out)
    # Having committed, it signs and broadcasts its finality votes.
    finality = [o.message for o in out.messages if isinstance(o.message, FinalityVote)]
    assert [(v.height, v.block_hash) for v in finality] == [(1, b1.hash), (2, b2.hash)]


# -- voting rule and restarts --------------------------------------------------------------


def test_replica_votes_once_per_round_even_for_an_equivocating_leader() -> None:
    replica, forge, _ = lone_replica(index=3)
    b1 = forge.block(forge.root, 1, (b"ok:x",))
    twin = forge.block(forge.root, 1, (b"ok:y",))
    first = replica.receive(1, forge.proposal(b1), T0 + 0.01)
    second = replica.receive(1, forge.proposal(twin), T0 + 0.02)
    assert [v.block_hash for v in votes_in(tuple(o.message for o in first.messages))] == [b1.hash]
    assert votes_in(tuple(o.message for o in second.messages)) == []


def test_voting_rule_refuses_a_block_below_the_tc_high_qc() -> None:
    replica, forge, _ = lone_replica(index=3)
    b1 = forge.block(forge.root, 1, (b"ok:1",))
    b2 = forge.block(b1, 2, ())
    replica.receive(1, forge.proposal(b1), T0 + 0.01)
    replica.receive(2, forge.proposal(b2), T0 + 0.02)
    # Round 3 timed out with QC(b2) as the highest; a round-4 block extending only b1
    # (justify round 1 < 2) must not get our vote: b1's sibling could conflict with a
    # block committed through b2.
    tc3 = forge.tc(3, forge.qc(b2))
    fork = forge.block(b1, 4, (b"ok:fork",), forge.qc(b1))
    out = replica.receive(0, forge.proposal(fork, tc3), T0 + 0.03)
    assert votes_in(tuple(o.message for o in out.messages)) == []
    assert replica.dropped["VOTE_REFUSED_UNSAFE"] == 1
    # The same round with a block that extends b2 is fine.
    good = forge.block(b2, 4, (b"ok:good",), forge.qc(b2))
    out = replica.receive(0, forge.proposal(good, tc3), T0 + 0.04)
    assert [v.block_hash for v in votes_in(tuple(o.message for o in out.messages))] == [good.hash]


def test_no_vote_in_a_round_after_timing_out_in_it() -> None:
    replica, forge, _ = lone_replica(index=3, round_timeout=1.0, idle_interval=0.5)
    out = replica.tick(T0 + 1.5)
    assert any(isinstance(o.message, Timeout) for o in out.messages)
    assert out.safety_state is not None and out.safety_state.highest_timeout_round == 1
    late = replica.receive(1, forge.proposal(forge.block(forge.root, 1)), T0 + 1.6)
    assert votes_in(tuple(o.message for o in late.messages)) == []


@pytest.mark.parametrize("restored", [True, False])
def test_restarted_replica_never_double_votes_with_its_restored_safety_state(
    restored: bool,
) -> None:
    keys = make_keys(4)
    genesis = make_genesis(keys)
    forge = Forge(keys, genesis)
    store = MemoryLedgerStore(Rules())
    config = ReplicaConfig(genesis=genesis, index=3)
    before = Replica(config, keys[3], store, Rules(), None)
    before.start(T0)
    b1 = forge.block(forge.root, 1, (b"ok:x",))
    out = before.receive(1, forge.proposal(b1), T0 + 0.01)
    assert votes_in(tuple(o.message for o in out.messages))
    persisted = out.safety_state
    assert persisted is not None and persisted.highest_voted_round == 1

    after = Replica(config, keys[3], store, Rules(), persisted if restored else None)
    after.start(T0 + 0.5)
    twin = forge.block(forge.root, 1, (b"ok:y",))
    out = after.receive(1, forge.proposal(twin), T0 + 0.6)
    double_votes = votes_in(tuple(o.message for o in out.messages))
    # Without the persisted state the replica would sign a conflicting vote: that is
    # exactly what restoring it prevents.
    assert (double_votes == []) is restored


# -- bad input -------------------------------------------------------------------------------


def test_bad_messages_are_dropped_and_counted_without_changing_state() -> None:
    replica, forge, _ = lone_replica(index=3)
    b1 = forge.block(forge.root, 1, (b"ok:x",))
    good = forge.proposal(b1)
    other_chain = forge.block(forge.root, 1, (), chain_id="other-chain")
    before = (replica.round, replica.safety_state)
    bad_inputs: list[tuple[int, object]] = [
        (1, replace(good, signature=bytes(64))),  # bad signature
        (1, replace(good, signature=b"short")),
        (2, good),  # not from the proposer
        (1, forge.proposal(other_chain)),  # another chain
        (1, "not a message"),
        (1, None),
        (1, Vote(b"\x00" * 32, -1, 1, 1, bytes(64))),
        (1, Vote(b"\x00" * 31, 1, 1, 1, bytes(64))),
        (1, Vote(b"\x00" * 32, 1, 2**64, 1, bytes(64))),
        (1, Vote(b"\x00" * 32, 1, 1, 7, bytes(64))),
        (1, Vote(b"\x00" * 32, 1, 1, 1, bytes(64))),  # not for us (leader of 2 is 2)
        (9, good),  # no such validator
        (3, good),  # ourselves
        (1, SyncInfo(QuorumCertificate(b1.hash, 1, 1, ()), None)),  # QC without votes
        (1, replace(good, block=replace(b1, transactions=(b"ok:y",)))),  # wrong tx_root
        (1, replace(good, block=replace(b1, transactions=("text",)))),  # type: ignore[arg-type]
        (1, FinalityCertificate(CHAIN, 1, b"\x01" * 32, ())),
    ]
    for sender, message in bad_inputs:
        out = replica.receive(sender, message, T0 + 0.01)  # type: ignore[arg-type]
        assert votes_in(tuple(o.message for o in out.messages)) == []
    assert (replica.round, replica.safety_state) == before
    assert sum(replica.dropped.values()) >= len(bad_inputs) - 2
    for reason in ("BAD_SIGNATURE", "BAD_SIGNATURE_FORMAT", "SENDER_MISMATCH", "WRONG_CHAIN"):
        assert replica.dropped[reason] >= 1, reason
    assert replica.dropped["UNKNOWN_MESSAGE"] == 2
    assert replica.dropped["BAD_SENDER"] == 2
    # The genuine proposal still gets a vote afterwards.
    out = replica.receive(1, good, T0 + 0.02)
    assert len(votes_in(tuple(o.message for o in out.messages))) == 1


def test_random_garbage_never_raises() -> None:
    import random

    replica, forge, _ = lone_replica(index=2)
    rng = random.Random(7)
    b1 = forge.block(forge.root, 1, (b"ok:x",))
    good = forge.proposal(b1)
    for _ in range(300):
        junk = replace(
            good,
            block=replace(
                b1,
                header=replace(
                    b1.header,
                    height=rng.choice([0, 1, 2, -1, 2**64]),
                    round=rng.choice([0, 1, 5, 2**65]),
                    parent_hash=rng.randbytes(rng.choice([0, 31, 32])),
                    proposer=rng.choice([-1, 0, 1, 4, 99]),
                ),
            ),
            signature=rng.randbytes(rng.choice([0, 64])),
        )
        replica.receive(rng.randrange(4), junk, T0 + 0.01)
    assert replica.round == 1


def test_illegal_local_calls_raise_and_leave_state_unchanged() -> None:
    keys = make_keys(4)
    genesis = make_genesis(keys)
    replica = Replica(
        ReplicaConfig(genesis=genesis, index=0), keys[0], MemoryLedgerStore(Rules()), Rules()
    )
    with pytest.raises(IllegalCallError):
        replica.tick(T0)
    with pytest.raises(IllegalCallError):
        replica.submit([b"ok:1"], T0)
    replica.start(T0)
    with pytest.raises(IllegalCallError):
        replica.start(T0)
    with pytest.raises(IllegalCallError):
        replica.submit(b"ok:1", T0)  # type: ignore[arg-type]
    with pytest.raises(IllegalCallError):
        replica.submit(["ok:1"], T0)  # type: ignore[list-item]
    assert replica.mempool_size == 0


# -- timeouts and TCs ------------------------------------------------------------------------


def test_a_silent_leader_is_replaced_through_a_timeout_certificate() -> None:
    cluster = Cluster(4, config={"round_timeout": 1.0, "idle_interval": 0.5})
    cluster.crash(1)  # leader of round 1
    cluster.start()
    cluster.submit(0, [b"ok:1", b"ok:2"])
    cluster.run_until(lambda: all(len(cluster.final_txs(i)) == 2 for i in (0, 2, 3)))
    assert all(cluster.replica(i).events["tcs_formed"] >= 1 for i in (0, 2, 3))
    with_tc = [
        m
        for _, _, m in cluster.sent
        if isinstance(m, Proposal) and m.timeout_certificate is not None
    ]
    assert with_tc and with_tc[0].timeout_certificate is not None
    assert with_tc[0].timeout_certificate.round == 1


def test_backoff_grows_on_consecutive_timeouts_and_resets_on_progress() -> None:
    replica, _, _ = lone_replica(index=3, round_timeout=1.0, idle_interval=0.5)
    first = replica.tick(T0 + 1.0).next_deadline
    second = replica.tick(T0 + 3.0).next_deadline
    assert first is not None and second is not None
    assert first - (T0 + 1.0) == pytest.approx(2.0)
    assert second - (T0 + 3.0) == pytest.approx(4.0)


# -- mempool ---------------------------------------------------------------------------------


def test_mempool_back_pressure_duplicates_and_invalid_transactions() -> None:
    cluster = Cluster(4, config={"mempool_capacity": 3})
    cluster.start()
    cluster.crash(1)
    cluster.crash(2)  # no quorum: nothing commits while we fill the pool
    out = cluster.submit(0, [b"ok:1", b"ok:2", b"bad:3", b"ok:1", b"ok:4", b"ok:5"])
    reasons = {r.index: r.reason for r in out.rejected}
    assert len(out.accepted) == 3
    assert reasons == {2: "INVALID_TRANSACTION", 3: "DUPLICATE", 5: "MEMPOOL_FULL"}
    # Each distinct transaction was validated once, however often it was seen.
    validations = cluster.rules.validations
    cluster.submit(0, [b"ok:1", b"bad:3"])
    assert cluster.rules.validations == validations


def test_forwarded_transactions_reach_every_mempool_and_final_ones_are_refused() -> None:
    cluster = Cluster(4)
    cluster.start()
    cluster.submit(3, [b"ok:a"])
    cluster.run_until(lambda: all(cluster.stores[i].committed_height() >= 1 for i in range(4)))
    cluster.run_until(lambda: all(b"ok:a" in cluster.final_txs(i) for i in range(4)))
    out = cluster.submit(0, [b"ok:a"])
    assert [r.reason for r in out.rejected] == ["ALREADY_FINAL"]


# -- sync ------------------------------------------------------------------------------------


def test_a_replica_far_behind_catches_up_from_certified_blocks() -> None:
    cluster = Cluster(4, config={"round_timeout": 1.0, "idle_interval": 0.2})
    cluster.start()
    cluster.crash(3)
    for k in range(6):
        cluster.submit(k % 3, [b"ok:%d" % k])
        cluster.run(0.5)
    # With validator 3 down, rounds it leads (and the ones before, whose votes go to
    # it) time out; progress continues through the others.
    cluster.run_until(lambda: cluster.stores[0].committed_height() >= 8, seconds=120)
    cluster.stores[3] = MemoryLedgerStore(cluster.rules)  # lost everything but keys
    cluster.safety[3] = None
    cluster.restart(3)
    cluster.run_until(
        lambda: (
            cluster.stores[3].committed_height() >= cluster.stores[0].committed_height() - 1
            and len(cluster.final_txs(3)) == 6
        )
    )
    assert cluster.replica(3).events["blocks_synced"] >= 1
    for height in range(1, cluster.stores[3].committed_height() + 1):
        assert cluster.stores[3].block_at(height) == cluster.stores[0].block_at(height)
