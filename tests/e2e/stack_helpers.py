"""Helpers of the end-to-end tests: free ports for a whole stack, and `medledger up` run as a
subprocess whose output is collected line by line."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from medledger.stack.topology import StackOptions, Topology
from medledger.testing.processes import free_ports, port_is_free


def stack_options(data_dir: Path, attempts: int = 50) -> StackOptions:
    """Options whose every port (NATS and all gRPC ports) is free right now."""
    nats_port, monitoring_port = free_ports(2)
    rng = random.Random()
    for _ in range(attempts):
        options = StackOptions(
            data_dir=data_dir,
            base_port=rng.randrange(20_000, 30_000, 100),
            nats_port=nats_port,
            nats_monitoring_port=monitoring_port,
            start_timeout=90.0,
        )
        if all(port_is_free(port) for port, _ in Topology(options).ports()):
            return options
    raise RuntimeError("no free range of ports for a stack")


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, exited but not reaped, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class UpCommand:
    """`medledger up` in a subprocess; `lines` collects its output as it comes."""

    options: StackOptions
    extra_args: tuple[str, ...] = ()
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "medledger.cli.main",
            "up",
            "--data-dir",
            str(self.options.data_dir),
            "--base-port",
            str(self.options.base_port),
            "--nats-port",
            str(self.options.nats_port),
            "--nats-monitoring-port",
            str(self.options.nats_monitoring_port),
            "--start-timeout",
            f"{self.options.start_timeout:g}",
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLEDGER_")}
        self._proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line (from now or already seen) containing `text`."""
        for seen in self.lines:
            if text in seen:
                return seen
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} after {timeout:g}s:\n{self.output}")
            try:
                line: str | None = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"`medledger up` ended before {text!r}:\n{self.output}")
            self.lines.append(line)
            if text in line:
                return line

    def interrupt(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has ended and all its output is read."""
        assert self._proc is not None
        code = self._proc.wait(timeout)
        while True:
            line = self._queue.get(timeout=10)
            if line is None:
                return code
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL `up` and every process it had started (they run in their own sessions)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for entry in running_processes(self.options):
            if process_alive(entry["pid"]):
                os.kill(entry["pid"], signal.SIGKILL)


def running_processes(options: StackOptions) -> list[dict[str, Any]]:
    """What `up` says it runs (empty once it has stopped)."""
    path = Topology(options).layout.processes_file
    try:
        entries: list[dict[str, Any]] = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return entries


@pytest.fixture
def up_commands() -> Iterator[list[UpCommand]]:
    """Every `medledger up` a test starts is killed after it, whatever happened."""
    commands: list[UpCommand] = []
    yield commands
    for command in commands:
        command.kill()
