"""Seeded simulations of the real consensus core: a bounded sweep, replays, exit codes."""

from __future__ import annotations

import argparse
import io

import pytest

from medledger.ledger import cli
from medledger.ledger.consensus import replica as replica_module
from medledger.ledger.consensus.mempool import Mempool, Verdict
from medledger.ledger.sim import Outcome, simulate
from medledger.ledger.sim.campaign import CampaignKind
from medledger.ledger.sim.sweep import SweepReport, sweep

FAULT_KINDS = {
    "loss",
    "delay",
    "duplicate",
    "reorder",
    "partition",
    "crash",
    "restart",
    "equivocation",
    "double_vote",
    "bad_signature",
    "replay",
    "withheld",
    "garbage",
    "mempool_full",
    "invalid_tx_rejected",
    # The coalition of Byzantine validators and its targeted campaigns (campaign.py).
    "fork",
    "coalition_qc",
    "qc_withheld",
    "qc_revealed",
    "timeout_equivocation",
    "campaign_drop",
    "partition_leader",
    "crash_after_vote",
    *(f"campaign_{kind.value}_played_out" for kind in CampaignKind),
}


def assert_clean(report: SweepReport) -> None:
    failures = [(r.seed, r.outcome.name, r.detail[-500:]) for r in report.failures]
    assert failures == []
    assert report.exit_code == 0


def test_sweep_of_500_seeds_with_four_validators_passes_and_injects_every_fault() -> None:
    report = sweep(range(500), validators=4, jobs=2)
    assert_clean(report)
    assert report.runs == 500
    missing = {kind for kind in FAULT_KINDS if report.runs_with_fault[kind] == 0}
    assert missing == set()
    # Honest replicas saw the Byzantine traffic and dropped it.
    for reason in ("BAD_SIGNATURE", "DOUBLE_VOTE", "SENDER_MISMATCH", "UNKNOWN_MESSAGE"):
        assert report.dropped[reason] > 0, reason
    assert report.events["tcs_formed"] > 0 and report.events["blocks_synced"] > 0


def test_sweep_with_seven_validators_passes() -> None:
    report = sweep(range(40), validators=7, jobs=2)
    assert_clean(report)
    assert report.runs_with_fault["crash"] > 0 and report.runs_with_fault["equivocation"] > 0


def test_two_byzantine_of_seven() -> None:
    report = sweep(range(100, 110), validators=7, byzantine=2, jobs=2)
    assert_clean(report)


def test_validator_set_changes_mid_run_without_losing_agreement_or_liveness() -> None:
    # Each run removes a genesis validator and adds one that joins from the genesis: the
    # change commits, the chain goes on under the new set (the joiner syncs, then
    # votes), and every transaction becomes final at every member of the new set.
    report = sweep(range(300, 312), validators=4, jobs=2, reconfigure=True)
    assert_clean(report)
    assert report.runs_with_fault["validator_set_change"] == report.runs
    assert report.runs_with_fault["not_a_member_dropped"] > 0
    assert report.events["epochs"] >= 3 * report.runs
    report = sweep(range(400, 403), validators=7, jobs=2, reconfigure=True)
    assert_clean(report)
    assert report.events["epochs"] >= 6 * report.runs


def test_a_seed_replays_exactly() -> None:
    first, second = simulate(12345), simulate(12345)
    assert first.outcome is Outcome.OK
    assert (first.faults, first.events, first.final_height, first.simulated_seconds) == (
        second.faults,
        second.events,
        second.final_height,
        second.simulated_seconds,
    )


def test_an_admission_bug_is_reported_as_a_safety_violation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_check = Mempool.check

    def lenient(self: Mempool, tx: bytes) -> Verdict:
        verdict = real_check(self, tx)
        return Verdict(verdict.tx_id, None, "") if verdict.tx_id is not None else verdict

    monkeypatch.setattr(Mempool, "check", lenient)
    report = sweep(range(20), stop_on=Outcome.SAFETY)
    assert report.exit_code == int(Outcome.SAFETY)
    assert "invalid" in report.failures[-1].detail


def test_a_leader_that_never_proposes_is_a_liveness_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica_module.Replica, "_maybe_propose", lambda self, now: None)
    result = simulate(5, byzantine=0)
    assert result.outcome is Outcome.LIVENESS
    assert "not final" in result.detail


def test_an_exception_in_the_core_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: replica_module.Replica, now: float) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(replica_module.Replica, "_on_round_timeout", explode)
    result = simulate(9)
    assert result.outcome is Outcome.CRASH
    assert "boom" in result.detail


def _args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medledger")
    cli.register(parser.add_subparsers(dest="command"))
    argv = ["ledger", "simulate"]
    for key, value in overrides.items():
        if value is True:
            argv.append(f"--{key}")
        else:
            argv += [f"--{key}", str(value)]
    return parser.parse_args(argv)


def test_cli_simulate_runs_seeds_and_prints_fault_counters() -> None:
    out = io.StringIO()
    args = _args(seed=40, count=3, verbose=True)
    assert args.func is cli.run_simulate
    assert cli.run_simulate(args, out) == 0
    text = out.getvalue()
    assert "seed 40: OK" in text and "seed 42: OK" in text
    assert "3 runs, n=4" in text and "faults injected" in text


def test_cli_simulate_refuses_more_byzantine_than_f() -> None:
    out = io.StringIO()
    assert cli.run_simulate(_args(byzantine=2), out) == cli.EXIT_USAGE
    assert "0..1" in out.getvalue()


def test_cli_failure_prints_seed_replay_command_and_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica_module.Replica, "_maybe_propose", lambda self, now: None)
    out = io.StringIO()
    code = cli.run_simulate(_args(seed=5, byzantine=0), out)
    assert code == int(Outcome.LIVENESS) == 3
    text = out.getvalue()
    assert "FAILED seed 5: LIVENESS" in text
    assert "replay: medledger ledger simulate --seed 5 --count 1 --validators 4" in text


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_soak_many_seeds(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a soak of thousands of seeds: select it with -m slow")
    assert_clean(sweep(range(10_000, 13_000), validators=4, jobs=2))
    assert_clean(sweep(range(20_000, 20_500), validators=7, jobs=2))
