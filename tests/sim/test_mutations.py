"""Mutation tests: the simulator must catch a replica that breaks one safety rule.

Each mutant subclasses the real `Replica` and undoes one step of the safety argument in
docs/ledger.md; the simulator runs it in place of the real one. A bounded sweep must
then report a safety violation (exit code 2). The unmodified core passes the same seeds:
they are part of the 500-seed sweep in test_simulation.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from medledger.crypto import SigningKey
from medledger.ledger.consensus import (
    LedgerView,
    Proposal,
    QuorumCertificate,
    Replica,
    ReplicaConfig,
    SafetyState,
    TransactionRules,
)
from medledger.ledger.sim import Outcome, simulator
from medledger.ledger.sim.campaign import CampaignKind
from medledger.ledger.sim.sweep import sweep

MUTANT_SEEDS = range(200)


class ForgetsSafetyStateOnRestart(Replica):
    """Restarts as if it had never voted: the persisted safety state is ignored."""

    def __init__(
        self,
        config: ReplicaConfig,
        signing_key: SigningKey,
        view: LedgerView,
        rules: TransactionRules,
        restored: SafetyState | None = None,
    ) -> None:
        super().__init__(config, signing_key, view, rules, None)


class IgnoresTheTimeoutCertificatesHighQc(Replica):
    """Votes for a block justified by a TC even when the block extends a QC older than
    the highest one the TC reports."""

    def _maybe_vote(self, proposal: Proposal, now: float) -> None:
        tc = proposal.timeout_certificate
        justify = proposal.block.justify
        if tc is not None and justify.round < tc.high_qc.round:
            proposal = replace(proposal, timeout_certificate=replace(tc, high_qc=justify))
        super()._maybe_vote(proposal, now)


class CommitsWithoutConsecutiveRounds(Replica):
    """Commits a QC'd block's parent even when the two are not from consecutive rounds."""

    def _try_commit(self, qc: QuorumCertificate, now: float) -> None:
        certified = self._tree.get(qc.block_hash)
        if certified is None or certified.hash == self._tree.root.hash:
            return
        parent = self._tree.get(certified.parent_hash)
        if parent is None or parent.height <= self.committed_height:
            return
        for block in self._tree.branch(parent.hash):
            self._commit(block, None, now)


@pytest.mark.parametrize(
    "mutant",
    [
        ForgetsSafetyStateOnRestart,
        IgnoresTheTimeoutCertificatesHighQc,
        CommitsWithoutConsecutiveRounds,
    ],
)
def test_a_bounded_sweep_reports_a_mutant_as_a_safety_violation(
    mutant: type[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulator, "Replica", mutant)
    # In this process: sweep workers are spawned and would not see the patched module.
    report = sweep(MUTANT_SEEDS, validators=4, jobs=1, stop_on=Outcome.SAFETY)
    assert report.exit_code == int(Outcome.SAFETY) == 2
    found = [r for r in report.failures if r.outcome is Outcome.SAFETY]
    assert found and "agreement" in found[0].detail
    # The counterexample replays: the same seed fails the same way on its own.
    again = simulator.simulate(found[0].seed)
    assert again.outcome is Outcome.SAFETY and again.detail == found[0].detail


@pytest.mark.parametrize("kind", list(CampaignKind))
def test_every_campaign_plays_out_against_the_real_core_without_harm(kind: CampaignKind) -> None:
    for seed in range(3):
        run = simulator.Simulation(seed, validators=4, byzantine=1, campaign=kind)
        result = run.run()
        assert result.outcome is Outcome.OK, result.detail
        assert run.campaign is not None and run.campaign.reached_end
        assert result.faults[f"campaign_{kind.value}"] == 1
