"""A small service run through the real runtime by test_runtime.py: health plus a slow RPC.

Run as a script it behaves like ``medledger serve <name>``: settings from MEDLEDGER_*,
logs as JSON on stderr, drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from google.protobuf import wrappers_pb2

from medledger.core.auth import AuthorisationTable, CallerIdentity, StaticTokens
from medledger.core.grpc_server import GrpcService, ReadinessCheck
from medledger.core.logging import get_logger
from medledger.core.service import ServiceApp, run_service
from medledger.core.settings import CommonSettings, load_settings

SERVICE = "medledger.testing.v1.SlowService"
SLEEP = f"/{SERVICE}/Sleep"
TOKEN = "fixture-token"
TESTER = CallerIdentity("prn-tester", "org-a", frozenset({"tester"}))

_log = get_logger("fixture")


class FixtureSettings(CommonSettings):
    service_name = "fixture"
    grpc_port: int = 0


class FixtureBus:
    """Stands in for the NATS bus: connected after start-up, closed after the drain."""

    def __init__(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        _log.info("fixture bus closed")


async def _sleep(request: wrappers_pb2.DoubleValue, context: Any) -> wrappers_pb2.StringValue:
    _log.info("sleep started", seconds=request.value)
    await asyncio.sleep(request.value)
    _log.info("sleep finished", seconds=request.value)
    return wrappers_pb2.StringValue(value=f"slept {request.value}")


def _register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _sleep, wrappers_pb2.DoubleValue.FromString, wrappers_pb2.StringValue.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Sleep": handler}),)
    )


def build(settings: FixtureSettings) -> ServiceApp:
    bus = FixtureBus()
    app = ServiceApp(
        name="fixture",
        settings=settings,
        services=[GrpcService(SERVICE, _register, AuthorisationTable.of({SLEEP: {"tester"}}))],
        authenticator=StaticTokens(
            {TOKEN: CallerIdentity("prn-tester", "org-a", frozenset({"tester"}))}
        ),
        readiness_checks=[ReadinessCheck("store", lambda: True)],
        readiness_interval_seconds=0.2,
    )

    async def connect_bus() -> None:
        await bus.connect()
        app.bus = bus

    async def say_goodbye() -> None:
        _log.info("fixture shutdown hook ran")

    app.on_startup = [connect_bus]
    app.on_shutdown = [say_goodbye]
    return app


if __name__ == "__main__":
    sys.exit(run_service(build(load_settings(FixtureSettings))))
