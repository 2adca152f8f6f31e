"""`medledger demo`: the consent and audit story, narrated step by step, against a stack that
`medledger up` is running."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

import grpc

from medledger.core.errors import rpc_error_details
from medledger.stack.catalog import discover_services
from medledger.stack.errors import DemoStepFailed
from medledger.stack.story import Story, StoryResult
from medledger.stack.topology import APP_SERVICES, StackOptions, Topology


class Narrator:
    """Numbers and prints each step of the story as it completes."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._step = 0

    def __call__(self, text: str) -> None:
        self._step += 1
        first, *rest = text.splitlines()
        self._out.write(f"\n{self._step:>2}. {first}\n")
        for line in rest:
            self._out.write(f"    {line}\n")
        self._out.flush()


def run_demo_command(options: StackOptions, out_dir: Path | None, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    topology = Topology(options, discover_services(APP_SERVICES).available)
    directory = out_dir or topology.layout.root / "demo" / time.strftime("%Y%m%d-%H%M%S")
    story = Story(topology, directory, Narrator(stream))
    try:
        result = asyncio.run(story.run())
    except grpc.aio.AioRpcError as error:
        details = rpc_error_details(error)
        raise DemoStepFailed(
            f"a call failed: {details.code.name} {details.reason} {details.message}"
        ) from None
    _summary(result, stream)
    return 0


def _summary(result: StoryResult, out: TextIO) -> None:
    permitted = sum(1 for a in result.accesses if a.permitted)
    out.write(
        f"\nThe story is complete: {len(result.accesses)} access decisions ({permitted} "
        f"permitted, {len(result.accesses) - permitted} denied), every one in the audit log.\n"
        f"Reports: {result.report_json}  {result.report_pdf}\n"
    )
    out.flush()
