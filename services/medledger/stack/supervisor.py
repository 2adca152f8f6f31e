"""Runs the local stack: NATS, then the validators, then the hospital services, each its own
process. `Stack` starts, kills, restarts and stops them (tests drive it directly);
`run_until_signalled` is `medledger up`: it streams their logs, reports a process that dies,
and stops everything in reverse order on Ctrl-C or SIGTERM (a second signal kills at once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from medledger.core.embedded_nats import EmbeddedNats
from medledger.core.logging import configure_logging
from medledger.stack.bootstrap import bootstrap_hospitals, pending_registrations
from medledger.stack.datadir import (
    DataDirLock,
    PreparedData,
    prepare_data_dir,
    refuse_foreign_directory,
)
from medledger.stack.errors import Interrupted, PortTaken, ProcessFailed, StackError
from medledger.stack.health import is_serving
from medledger.stack.logstream import LogStream, LogTail
from medledger.stack.topology import HOSPITALS, ProcessSpec, Topology
from medledger.testing.processes import LoggedProcess, log_tail, port_is_free

EXIT_OK = 0
EXIT_FAILED = 1
READY_LINE = "medledger is up"
POLL_SECONDS = 0.1
# The extra time a process gets beyond its own drain period before it is killed.
STOP_MARGIN_SECONDS = 5.0


def _nats_notable(line: str) -> bool:
    # nats-server's start-up banner is noise next to the services' logs; its warnings are not.
    return "[INF]" not in line


@dataclass
class StackProcess:
    """One started process of the stack and what the supervisor knows about it."""

    spec: ProcessSpec
    process: LoggedProcess
    stopping: bool = False
    exit_reported: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.process.running

    def healthy(self) -> bool:
        return is_serving(self.spec.address)


@dataclass
class Stack:
    """The processes of one topology. `start()` brings them up in order and returns once every
    one answers gRPC health with SERVING; `stop()` takes them down in reverse order."""

    topology: Topology
    reset: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    interrupted: Callable[[], bool] = lambda: False
    processes: list[StackProcess] = field(default_factory=list, init=False)
    failed: list[str] = field(default_factory=list, init=False)
    prepared: PreparedData | None = field(default=None, init=False)
    logs: LogStream = field(init=False)
    _nats: EmbeddedNats | None = field(default=None, init=False)
    _lock: DataDirLock | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.logs = LogStream(self.out)

    # --- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        layout = self.topology.layout
        refuse_foreign_directory(layout)
        self.check_ports()
        self._lock = DataDirLock(layout)
        self._lock.acquire()
        self.prepared = prepare_data_dir(layout, reset=self.reset)
        self._announce_data(self.prepared)
        self._start_nats()
        self.start_group(self.topology.validators())
        # The hospital services start while the first run registers the hospitals on the
        # ledger: both take seconds, and the services follow the chain as it is written.
        services = self.launch_group(self.topology.hospital_services())
        self._bootstrap()
        self.wait_healthy(services)

    def check_ports(self) -> None:
        """PortTaken naming the first port something else already listens on."""
        for port, role in self.topology.ports():
            if not port_is_free(port):
                raise PortTaken(
                    f"port {port} ({role}) on 127.0.0.1 is already in use; stop what listens "
                    "there (another `medledger up`?) or move the stack with --base-port, "
                    "--nats-port and --nats-monitoring-port"
                )

    def _announce_data(self, prepared: PreparedData) -> None:
        layout = self.topology.layout
        how = "created a new consortium in" if prepared.created else "reusing the data in"
        self.say(
            f"{how} {layout.root} (chain {prepared.genesis.chain_id}, "
            f"{len(prepared.genesis.validators)} validators)"
        )

    def _start_nats(self) -> None:
        options = self.topology.options
        self._nats = EmbeddedNats(
            work_dir=self.topology.layout.nats_dir,
            port=options.nats_port,
            monitoring_port=options.nats_monitoring_port,
            server_name="medledger-local",
        )
        self.logs.follow(LogTail(self._nats.log_path, "nats", keep=_nats_notable))
        self.say(f"starting NATS with JetStream on {self.topology.nats_url}")
        self._nats.start()

    def start_group(self, specs: Sequence[ProcessSpec]) -> list[StackProcess]:
        """Start every process of a group at once, then wait until each is SERVING."""
        group = self.launch_group(specs)
        self.wait_healthy(group)
        return group

    def launch_group(self, specs: Sequence[ProcessSpec]) -> list[StackProcess]:
        """Start every process of a group at once, without waiting for them."""
        if specs:
            self.say("starting " + ", ".join(spec.name for spec in specs))
        return [self._launch(spec) for spec in specs]

    def wait_healthy(self, group: Sequence[StackProcess]) -> None:
        timeout = self.topology.options.start_timeout
        waiting = {member.name: member for member in group}
        deadline = time.monotonic() + timeout
        while waiting:
            if self.interrupted():
                raise Interrupted("interrupted while starting")
            self.logs.pump()
            for name, member in list(waiting.items()):
                if not member.running:
                    member.exit_reported = True
                    raise ProcessFailed(
                        f"{name} exited with code {member.process.returncode} before it was "
                        f"healthy; see {member.spec.log_path}:\n{log_tail(member.spec.log_path)}"
                    )
                if member.healthy():
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                late = ", ".join(f"{n} (log: {m.spec.log_path})" for n, m in waiting.items())
                raise ProcessFailed(f"not healthy after {timeout:g}s: {late}")
            time.sleep(POLL_SECONDS)
        self.logs.pump()

    def _launch(self, spec: ProcessSpec) -> StackProcess:
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.follow(LogTail(spec.log_path, spec.name))
        process = LoggedProcess(spec.argv, spec.log_path, env=spec.environment())
        process.start()
        member = StackProcess(spec, process)
        self.processes.append(member)
        self._write_processes_file()
        return member

    def _bootstrap(self) -> None:
        if "identity" not in self.topology.app_services:
            return
        pending = pending_registrations(self.topology.layout, HOSPITALS, self.topology.app_services)
        if not pending:
            return
        what = "; ".join(f"{org}: {', '.join(items)}" for org, items in pending.items())
        self.say(f"registering on the ledger (first run) {what}")
        started = time.monotonic()
        asyncio.run(bootstrap_hospitals(self.topology.layout, self.topology.nats_url, pending))
        self.say(f"registered in {time.monotonic() - started:.1f}s")

    def _write_processes_file(self) -> None:
        layout = self.topology.layout
        entries: list[dict[str, Any]] = []
        if self._nats is not None and self._nats.pid is not None:
            entries.append(
                {
                    "name": "nats",
                    "service": "nats",
                    "pid": self._nats.pid,
                    "address": self.topology.nats_url,
                    "log": str(self._nats.log_path),
                }
            )
        entries += [
            {
                "name": member.name,
                "organisation": member.spec.organisation,
                "service": member.spec.service,
                "pid": member.process.pid,
                "address": member.spec.address,
                "log": str(member.spec.log_path),
            }
            for member in self.processes
        ]
        layout.run_dir.mkdir(parents=True, exist_ok=True)
        temporary = layout.processes_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
        temporary.replace(layout.processes_file)

    # --- while running -----------------------------------------------------------------------

    def process(self, name: str) -> StackProcess:
        for member in self.processes:
            if member.name == name:
                return member
        raise StackError("NO_SUCH_PROCESS", f"the stack has no process {name!r}")

    def kill(self, name: str) -> None:
        """SIGKILL one process, as a crash would; it is not reported as a failure."""
        member = self.process(name)
        member.stopping = True
        member.process.kill()

    def restart(self, name: str) -> None:
        """Start a stopped or killed process again and wait until it is SERVING."""
        member = self.process(name)
        if member.running:
            raise StackError("STILL_RUNNING", f"{name} is still running")
        member.stopping = False
        member.exit_reported = False
        member.process.start()
        self._write_processes_file()
        self.wait_healthy([member])

    def report_exits(self) -> list[str]:
        """Name, once, each process that exited without being asked to; they count as failed."""
        exited = []
        for member in self.processes:
            if member.stopping or member.exit_reported or member.running:
                continue
            member.exit_reported = True
            self.logs.pump()
            self.failed.append(member.name)
            exited.append(member.name)
            self.say(
                f"{member.name} exited unexpectedly with code {member.process.returncode}; "
                f"see {member.spec.log_path}"
            )
        return exited

    # --- stopping ----------------------------------------------------------------------------

    def stop(self, force: Callable[[], bool] = lambda: False) -> None:
        """Stop the hospital services, then the validators, then NATS; `force()` turning true
        kills whatever is still running at once."""
        try:
            self.report_exits()
            hospital = [p for p in self.processes if p.spec.service != "ledger"]
            validators = [p for p in self.processes if p.spec.service == "ledger"]
            for group in (hospital, validators):
                self._stop_group(group, force)
            if self._nats is not None:
                self._nats.stop()
            self.logs.pump()
        finally:
            self.topology.layout.processes_file.unlink(missing_ok=True)
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _stop_group(self, group: Sequence[StackProcess], force: Callable[[], bool]) -> None:
        running = [member for member in group if member.running]
        if not running:
            return
        self.say("stopping " + ", ".join(member.name for member in running))
        for member in running:
            member.stopping = True
            if member.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.process.pid, signal.SIGTERM)
        grace = self.topology.options.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        deadline = time.monotonic() + grace
        while any(member.running for member in running):
            if time.monotonic() > deadline or force():
                for member in running:
                    if member.running:
                        self.say(f"{member.name} did not stop in time; killing it")
                        member.process.kill()
                break
            self.logs.pump()
            time.sleep(POLL_SECONDS)
        for member in running:
            code = member.process.returncode
            if code != 0:
                self.failed.append(member.name)
                self.say(f"{member.name} stopped with code {code}; see {member.spec.log_path}")

    def say(self, message: str) -> None:
        self.out.write(f"medledger up: {message}\n")
        self.out.flush()


# --- `medledger up` ----------------------------------------------------------------------------


def run_until_signalled(
    topology: Topology,
    *,
    missing_services: dict[str, str] | None = None,
    reset: bool = False,
    out: TextIO | None = None,
) -> int:
    """Start the stack, announce it, stream its logs until SIGINT/SIGTERM, stop it; the exit
    code is 0 only when nothing failed along the way."""
    signals_seen = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1

    stream = out if out is not None else sys.stdout
    stack = Stack(topology, reset=reset, out=stream, interrupted=lambda: signals_seen > 0)
    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    # The supervisor's own NATS client (first-run registration) logs like the services do.
    configure_logging("WARNING", "console", stream=stream)
    try:
        try:
            stack.start()
            for service, why in (missing_services or {}).items():
                stack.say(f"{service}: not available yet, not started ({why})")
            _announce_ready(stack)
            while not signals_seen:
                stack.logs.pump()
                stack.report_exits()
                time.sleep(POLL_SECONDS)
        except Interrupted:
            stack.say("interrupted while starting; stopping what was started")
        except StackError as error:
            stack.say(f"error: {error.message}")
            stack.failed.append("start-up")
        finally:
            stack.stop(force=lambda: signals_seen > 1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stack.failed:
        stack.say(f"stopped; failed: {', '.join(stack.failed)}")
        return EXIT_FAILED
    stack.say("stopped cleanly")
    return EXIT_OK


def _announce_ready(stack: Stack) -> None:
    topology = stack.topology
    layout = topology.layout
    width = max([4, *(len(p.name) for p in stack.processes)])
    lines = [
        f"{READY_LINE}: {len(stack.processes) + 1} processes healthy",
        f"  {'nats':<{width}}  {topology.nats_url}   "
        f"(monitoring http://127.0.0.1:{topology.options.nats_monitoring_port})",
        *(f"  {p.name:<{width}}  {p.spec.address}" for p in stack.processes),
        f"  data: {layout.root}   logs: {layout.logs_dir}",
    ]
    if "identity" in topology.app_services:
        identity = topology.spec(HOSPITALS[0], "identity")
        lines += [
            "get an access token as Hospital A's administrator:",
            f"  medledger identity token --target {identity.address} "
            f"--principal organisations/{HOSPITALS[0]}/principals/admin "
            f"--key {layout.key(HOSPITALS[0], 'admin')}",
            "walk through the whole story in another terminal:  medledger demo"
            + _location_arguments(topology),
        ]
    lines.append("press Ctrl-C to stop")
    for line in lines:
        stack.say(line)


def _location_arguments(topology: Topology) -> str:
    options = topology.options
    defaults = type(options)()
    extra = ""
    if options.data_dir.resolve() != defaults.data_dir.resolve():
        extra += f" --data-dir {options.data_dir}"
    if options.base_port != defaults.base_port:
        extra += f" --base-port {options.base_port}"
    if options.nats_port != defaults.nats_port:
        extra += f" --nats-port {options.nats_port}"
    return extra
