"""ServiceApp and serve(): hooks, bus readiness, exit codes, in one event loop."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.core.grpc_channel import create_channel
from medledger.core.grpc_server import GrpcServer
from medledger.core.service import EXIT_FAILED, EXIT_OK, ServiceApp, serve
from medledger.core.settings import CommonSettings


class FlakyBus:
    def __init__(self) -> None:
        self.connected = True
        self.closed = False

    @property
    def is_connected(self) -> bool:
        return self.connected

    async def close(self) -> None:
        self.closed = True


def _settings() -> CommonSettings:
    return CommonSettings(org_id="org-a", grpc_port=0, shutdown_grace_seconds=1)


async def test_bus_readiness_drives_health_and_bus_is_closed_last() -> None:
    bus = FlakyBus()
    order: list[str] = []
    app = ServiceApp(name="probe", settings=_settings(), bus=bus, readiness_interval_seconds=0.05)

    async def on_shutdown() -> None:
        order.append(f"hook (bus closed={bus.closed})")

    app.on_shutdown = [on_shutdown]
    shutdown = asyncio.Event()
    servers: list[GrpcServer] = []
    up = asyncio.Event()

    def started(server: GrpcServer) -> None:
        servers.append(server)
        up.set()

    running = asyncio.create_task(serve(app, shutdown=shutdown, started=started))
    await asyncio.wait_for(up.wait(), 10)
    async with create_channel(f"127.0.0.1:{servers[0].port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            return int(reply.status)

        assert await status() == health_pb2.HealthCheckResponse.SERVING
        bus.connected = False
        for _ in range(100):
            if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
    shutdown.set()
    assert await asyncio.wait_for(running, 10) == EXIT_OK
    assert order == ["hook (bus closed=False)"]
    assert bus.closed


async def test_failed_startup_exits_1_and_still_runs_shutdown_hooks() -> None:
    ran: list[str] = []

    async def broken_start() -> None:
        raise ConnectionRefusedError("nats down")

    async def cleanup() -> None:
        ran.append("cleanup")

    app = ServiceApp(
        name="probe", settings=_settings(), on_startup=[broken_start], on_shutdown=[cleanup]
    )
    assert await asyncio.wait_for(serve(app), 10) == EXIT_FAILED
    assert ran == ["cleanup"]
