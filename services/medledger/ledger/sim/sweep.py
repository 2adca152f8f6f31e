"""Many seeded simulations, with their fault counters aggregated."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from medledger.ledger.sim.simulator import Outcome, SimulationResult, simulate

_SEVERITY = (Outcome.SAFETY, Outcome.CRASH, Outcome.LIVENESS)


@dataclass(slots=True)
class SweepReport:
    runs: int = 0
    failures: list[SimulationResult] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    runs_with_fault: Counter[str] = field(default_factory=Counter)

    def add(self, result: SimulationResult) -> None:
        self.runs += 1
        self.outcomes[result.outcome.name] += 1
        self.faults.update(result.faults)
        self.events.update(result.events)
        self.dropped.update(result.dropped)
        self.runs_with_fault.update(kind for kind, count in result.faults.items() if count)
        if result.outcome is not Outcome.OK:
            self.failures.append(result)

    @property
    def exit_code(self) -> int:
        """The most severe outcome: safety, then crash, then liveness."""
        found = {result.outcome for result in self.failures}
        for outcome in _SEVERITY:
            if outcome in found:
                return int(outcome)
        return int(Outcome.OK)


def _run(job: tuple[int, int, int | None, bool]) -> SimulationResult:
    seed, validators, byzantine, reconfigure = job
    return simulate(seed, validators, byzantine, reconfigure)


def sweep(
    seeds: Iterable[int],
    validators: int = 4,
    byzantine: int | None = None,
    jobs: int = 1,
    on_result: Callable[[SimulationResult], None] | None = None,
    stop_on: Outcome | None = None,
    reconfigure: bool = False,
) -> SweepReport:
    """Run one simulation per seed (in `jobs` processes) and aggregate the results.

    With `stop_on`, the sweep ends at the first run with that outcome (a search for a
    counterexample rather than a full sweep). With `reconfigure`, every run changes its
    validator set through governance (see Simulation)."""
    report = SweepReport()
    work = [(seed, validators, byzantine, reconfigure) for seed in seeds]
    if jobs <= 1:
        for result in map(_run, work):
            report.add(result)
            if on_result is not None:
                on_result(result)
            if result.outcome is stop_on:
                break
        return report
    # Spawn, never fork: a forked child of a process that has run gRPC (tests, the CLI
    # beside services) inherits its threads' state and can crash in garbage collection.
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        for result in pool.map(_run, work, chunksize=4 if stop_on else 8):
            report.add(result)
            if on_result is not None:
                on_result(result)
            if result.outcome is stop_on:
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return report
