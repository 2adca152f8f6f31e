"""The runtime of one medledger service: start-up hooks, the gRPC server, signals and a clean drain.

A service's ``main.build(settings)`` returns a ``ServiceApp``; ``run_service`` runs it
until SIGTERM/SIGINT, announces NOT_SERVING, drains in-flight calls for the grace period,
runs the shutdown hooks and returns the process exit code.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from medledger.core.auth import Authenticator
from medledger.core.grpc_server import GrpcServer, GrpcService, ReadinessCheck
from medledger.core.logging import configure_logging, get_logger
from medledger.core.settings import CommonSettings
from medledger.core.telemetry import Telemetry, configure_telemetry

EXIT_OK = 0
EXIT_FAILED = 1

_log = get_logger("medledger.service")

Hook = Callable[[], Awaitable[None]]


class BusConnection(Protocol):
    """What the runtime needs of a message-bus connection: is it up, and closing it."""

    @property
    def is_connected(self) -> bool: ...

    async def close(self) -> None: ...


@dataclass
class ServiceApp:
    """Everything the runtime needs to run one service.

    ``bus`` may be given connected, or be set by a start-up hook (``build`` is synchronous,
    connecting is not); once set, readiness includes ``bus.is_connected`` and the bus is
    closed after the shutdown hooks. Shutdown hooks run, in reverse order, even when
    start-up failed part way, so each must cope with what it tears down not being up.
    """

    name: str
    settings: CommonSettings
    services: Sequence[GrpcService] = ()
    authenticator: Authenticator | None = None
    readiness_checks: Sequence[ReadinessCheck] = ()
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    bus: BusConnection | None = None
    readiness_interval_seconds: float = 2.0
    telemetry: Telemetry | None = field(default=None, repr=False)


async def serve(
    app: ServiceApp,
    *,
    shutdown: asyncio.Event | None = None,
    started: Callable[[GrpcServer], None] | None = None,
) -> int:
    """Run ``app`` until ``shutdown`` is set; return the exit code.

    For embedding (tests, the local stack running several services in one loop);
    ``run_service`` is the process entry point around it.
    """
    shutdown = shutdown or asyncio.Event()
    settings = app.settings
    if app.telemetry is None:
        app.telemetry = configure_telemetry(
            app.name,
            settings.otlp_endpoint,
            settings.metrics_port,
            metrics_host=settings.grpc_host,
        )
    started_hooks = 0
    server: GrpcServer | None = None
    exit_code = EXIT_OK
    try:
        for hook in app.on_startup:
            await hook()
            started_hooks += 1
        server = GrpcServer(
            service_name=app.name,
            settings=settings,
            services=app.services,
            authenticator=app.authenticator,
            readiness_checks=[*app.readiness_checks, *_bus_readiness(app)],
            telemetry=app.telemetry,
            readiness_interval_seconds=app.readiness_interval_seconds,
        )
        await server.start()
        if started is not None:
            started(server)
        await shutdown.wait()
        _log.info("shutdown requested", service=app.name)
    except Exception as exc:
        _log.error("service failed", service=app.name, error=str(exc), exc_info=exc)
        exit_code = EXIT_FAILED
    finally:
        if server is not None:
            await server.stop(settings.shutdown_grace_seconds)
        exit_code = await _run_shutdown_hooks(app, exit_code)
        if app.telemetry is not None:
            app.telemetry.shutdown()
    _log.info("service stopped", service=app.name, exit_code=exit_code)
    return exit_code


def _bus_readiness(app: ServiceApp) -> list[ReadinessCheck]:
    if app.bus is None:
        return []
    return [ReadinessCheck("bus", lambda: app.bus is not None and app.bus.is_connected)]


async def _run_shutdown_hooks(app: ServiceApp, exit_code: int) -> int:
    for hook in reversed(app.on_shutdown):
        try:
            await hook()
        except Exception as exc:
            _log.error("shutdown hook failed", service=app.name, error=str(exc), exc_info=exc)
            exit_code = EXIT_FAILED
    if app.bus is not None:
        try:
            await app.bus.close()
        except Exception as exc:
            _log.error("closing the bus failed", service=app.name, error=str(exc))
            exit_code = EXIT_FAILED
    return exit_code


async def _serve_until_signalled(app: ServiceApp) -> int:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal(signum: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            _log.info("signal received, draining", signal=signum.name)
            shutdown.set()
        elif main_task is not None:
            # A second signal means the operator will not wait for the drain.
            _log.warning("second signal, stopping now", signal=signum.name)
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await serve(app, shutdown=shutdown)
    except asyncio.CancelledError:
        return EXIT_FAILED
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run_service(app: ServiceApp) -> int:
    """Process entry point: configure logging, run ``app`` until signalled, return the exit code."""
    configure_logging(app.settings.log_level, app.settings.log_format)
    return asyncio.run(_serve_until_signalled(app))


def run_services(apps: Sequence[ServiceApp]) -> int:
    """Run several services in one process (the local stack); 0 only if all stop cleanly."""
    if not apps:
        return EXIT_OK
    configure_logging(apps[0].settings.log_level, apps[0].settings.log_format)

    async def run_all() -> int:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shutdown.set)

        async def run_one(app: ServiceApp) -> int:
            code = await serve(app, shutdown=shutdown)
            if code != EXIT_OK:
                shutdown.set()  # one failed service takes the whole stack down
            return code

        return max(await asyncio.gather(*(run_one(app) for app in apps)))

    return asyncio.run(run_all())
