"""The `medledger ledger` command group; this module provides `simulate`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO, cast

from medledger.ledger.sim.simulator import Outcome, SimulationResult
from medledger.ledger.sim.sweep import sweep

EXIT_USAGE = 64


def register(subparsers: Any) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add the `ledger` group to a top-level parser's subparsers; returns the group's
    own subparsers so other ledger commands can be added beside `simulate`."""
    ledger = subparsers.add_parser("ledger", help="the BFT ledger: simulation and verification")
    commands = ledger.add_subparsers(dest="ledger_command", required=True)
    simulate = commands.add_parser(
        "simulate",
        help="run seeded deterministic simulations of the consensus core under faults",
        description=(
            "Runs K simulations (seeds S..S+K-1) of the real consensus replica over a"
            " simulated network with loss, delay, duplication, reordering, partitions,"
            " crashes and Byzantine validators, and checks agreement, validity,"
            " certificates and liveness. Exit codes: 0 ok, 2 safety violation,"
            " 3 liveness failure, 4 crash or exception."
        ),
    )
    simulate.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    simulate.add_argument("--count", type=int, default=1, help="number of seeds (default 1)")
    simulate.add_argument("--validators", type=int, default=4, help="n validators (default 4)")
    simulate.add_argument(
        "--byzantine",
        type=int,
        default=None,
        help="Byzantine validators per run, at most f (default: drawn per seed from 0..f)",
    )
    simulate.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    simulate.add_argument("--verbose", action="store_true", help="one line per seed")
    simulate.set_defaults(func=run_simulate)
    from medledger.ledger import cli_tools

    cli_tools.register(commands)
    return cast("argparse._SubParsersAction[argparse.ArgumentParser]", commands)


def run_simulate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The `ledger simulate` command; returns the process exit code."""
    stream = out if out is not None else sys.stdout
    validators: int = args.validators
    f = (validators - 1) // 3
    if validators < 1 or args.count < 1 or args.jobs < 1:
        print("error: --validators, --count and --jobs must be positive", file=stream)
        return EXIT_USAGE
    if args.byzantine is not None and not 0 <= args.byzantine <= f:
        print(f"error: --byzantine must be in 0..{f} for {validators} validators", file=stream)
        return EXIT_USAGE

    def report_one(result: SimulationResult) -> None:
        if args.verbose:
            print(
                f"seed {result.seed}: {result.outcome.name} height={result.final_height}"
                f" byzantine={list(result.byzantine)}"
                f" simulated={result.simulated_seconds:.1f}s"
                f" faults={dict(sorted(result.faults.items()))}",
                file=stream,
            )
        if result.outcome is not Outcome.OK:
            print(f"FAILED seed {result.seed}: {result.outcome.name}", file=stream)
            print(result.detail.rstrip(), file=stream)
            print(f"replay: {result.replay_command()}", file=stream)

    started = time.perf_counter()
    seeds = range(args.seed, args.seed + args.count)
    report = sweep(seeds, validators, args.byzantine, args.jobs, report_one)
    elapsed = time.perf_counter() - started
    print(
        f"{report.runs} runs, n={validators}: {dict(sorted(report.outcomes.items()))}"
        f" in {elapsed:.1f}s ({elapsed / report.runs:.3f}s per seed)",
        file=stream,
    )
    print("faults injected (total / runs with it):", file=stream)
    for kind in sorted(report.faults):
        print(f"  {kind}: {report.faults[kind]} / {report.runs_with_fault[kind]}", file=stream)
    if report.failures:
        print(f"failing seeds: {[r.seed for r in report.failures]}", file=stream)
    return report.exit_code
