"""Child processes for local servers (NATS, S3, ...): free loopback ports, readiness waits, and a
subprocess whose output goes to a log file that errors can point at."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ProcessError(Exception):
    """A local server process could not be started or did not become ready."""

    reason = "PROCESS_FAILED"


class PortInUseError(ProcessError):
    """The port a server was told to listen on is taken by another process."""

    reason = "PORT_IN_USE"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct free ports (all held open while choosing, so none repeats)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on the port (lingering TIME_WAIT connections do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tcp_port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LoggedProcess:
    """A child process with stdout and stderr appended to `log_path`."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            raise ProcessError(f"{self.argv[0]} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                # Its own process group, so a Ctrl-C aimed at the test run reaches us first and
                # we stop the server in order.
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush anything."""
        if self._proc is None or self._proc.poll() is not None:
            return
        os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def wait_until(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        interval: float = 0.05,
    ) -> None:
        """Poll `ready` until true; fail naming the log file if the process exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return
            if not self.running:
                raise ProcessError(
                    f"{what} exited with code {self.returncode} before it was ready; "
                    f"see {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{what} was not ready after {timeout:g}s; see {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(interval)


def wait_for_tcp_port(
    port: int,
    host: str = LOOPBACK,
    *,
    timeout: float = 10.0,
    process: LoggedProcess | None = None,
    what: str = "server",
) -> None:
    """Wait until something accepts connections on host:port (and `process`, if given, is alive)."""
    if process is not None:
        process.wait_until(lambda: tcp_port_open(port, host), timeout=timeout, what=what)
        return
    deadline = time.monotonic() + timeout
    while not tcp_port_open(port, host):
        if time.monotonic() > deadline:
            raise ProcessError(f"nothing listens on {host}:{port} after {timeout:g}s")
        time.sleep(0.05)


def python_module_argv(module: str, args: Sequence[str] = ()) -> list[str]:
    """argv running `python -m module` with this interpreter."""
    return [sys.executable, "-m", module, *args]
