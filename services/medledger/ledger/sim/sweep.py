"""Many seeded simulations, with their fault counters aggregated."""

from __future__ import annotations

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


def _run(job: tuple[int, int, int | None]) -> SimulationResult:
    seed, validators, byzantine = job
    return simulate(seed, validators, byzantine)


def sweep(
    seeds: Iterable[int],
    validators: int = 4,
    byzantine: int | None = None,
    jobs: int = 1,
    on_result: Callable[[SimulationResult], None] | None = None,
) -> SweepReport:
    """Run one simulation per seed (in `jobs` processes) and aggregate the results."""
    report = SweepReport()
    work = [(seed, validators, byzantine) for seed in seeds]
    if jobs <= 1:
        results: Iterable[SimulationResult] = map(_run, work)
        for result in results:
            report.add(result)
            if on_result is not None:
                on_result(result)
        return report
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(_run, work, chunksize=8):
            report.add(result)
            if on_result is not None:
                on_result(result)
    return report
