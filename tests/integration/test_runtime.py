"""The service runtime in a real process: health over gRPC, SIGTERM drains in-flight calls."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.core.grpc_channel import create_channel

FIXTURE = Path(__file__).with_name("runtime_fixture_service.py")
SLEEP = "/medledger.testing.v1.SlowService/Sleep"
TOKEN = "fixture-token"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

pytestmark = pytest.mark.integration


class RunningService:
    """The fixture service process and the JSON log lines it has written so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self.port = 0

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            text = raw.decode(errors="replace").rstrip()
            self.raw.append(text)
            try:
                line = json.loads(text)
            except ValueError:
                continue
            async with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    async def wait_for_event(self, event: str, within: float = 20.0) -> dict[str, Any]:
        async def found() -> dict[str, Any]:
            async with self._changed:
                while True:
                    for line in self.lines:
                        if line.get("event") == event:
                            return line
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(found(), within)
        except TimeoutError:
            raise AssertionError(
                f"no {event!r} log line; output:\n" + "\n".join(self.raw)
            ) from None

    def events(self) -> list[str]:
        return [str(line.get("event")) for line in self.lines]

    async def finish(self) -> None:
        await asyncio.wait_for(self._reader, 10)


async def _start(grace_seconds: float) -> RunningService:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MEDLEDGER_")},
        "MEDLEDGER_ORG_ID": "org-a",
        "MEDLEDGER_GRPC_PORT": "0",
        "MEDLEDGER_LOG_FORMAT": "json",
        "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": str(grace_seconds),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FIXTURE),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    service = RunningService(process)
    started = await service.wait_for_event("grpc server started")
    service.port = int(started["port"])
    return service


@pytest.fixture
async def service_factory() -> AsyncIterator[Any]:
    started: list[RunningService] = []

    async def start(grace_seconds: float) -> RunningService:
        service = await _start(grace_seconds)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.returncode is None:
            service.process.kill()
            await service.process.wait()


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


def _sleep_call(channel: grpc.aio.Channel, seconds: float) -> Any:
    call = channel.unary_unary(
        SLEEP,
        request_serializer=wrappers_pb2.DoubleValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
    return call(wrappers_pb2.DoubleValue(value=seconds), timeout=30)


async def test_sigterm_drains_in_flight_call_and_exits_zero(service_factory: Any) -> None:
    grace = 5.0
    service: RunningService = await service_factory(grace)
    loop = asyncio.get_running_loop()
    async with create_channel(f"127.0.0.1:{service.port}", token=TOKEN) as channel:
        assert await _health(channel) == SERVING
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=30
        )
        assert (await watch.read()).status == SERVING

        slow = asyncio.ensure_future(_sleep_call(channel, 1.5))
        await service.wait_for_event("sleep started")
        service.process.send_signal(signal.SIGTERM)
        signalled_at = loop.time()

        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        reply = await asyncio.wait_for(slow, grace)
        assert reply.value == "slept 1.5"

    exit_code = await asyncio.wait_for(service.process.wait(), grace + 5)
    elapsed = loop.time() - signalled_at
    await service.finish()
    assert exit_code == 0, "\n".join(service.raw)
    assert elapsed < grace, f"took {elapsed:.1f}s to exit"
    events = service.events()
    assert events.index("sleep finished") < events.index("grpc server stopped")
    assert events.index("grpc server stopped") < events.index("fixture shutdown hook ran")
    assert events.index("fixture shutdown hook ran") < events.index("fixture bus closed")
    calls = [line for line in service.lines if line.get("method") == SLEEP]
    assert [(c["code"], c["principal_id"]) for c in calls] == [("OK", "prn-tester")]


async def test_call_longer_than_grace_is_cut_off_and_process_still_exits_zero(
    service_factory: Any,
) -> None:
    grace = 1.0
    service: RunningService = await service_factory(grace)
    loop = asyncio.get_running_loop()
    async with create_channel(f"127.0.0.1:{service.port}", token=TOKEN) as channel:
        slow = asyncio.ensure_future(_sleep_call(channel, 20))
        await service.wait_for_event("sleep started")
        service.process.send_signal(signal.SIGTERM)
        signalled_at = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(slow, grace + 5)
        assert raised.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    exit_code = await asyncio.wait_for(service.process.wait(), grace + 5)
    elapsed = loop.time() - signalled_at
    await service.finish()
    assert exit_code == 0, "\n".join(service.raw)
    assert elapsed < grace + 2, f"took {elapsed:.1f}s to exit"
    assert "sleep finished" not in service.events()


async def test_unauthenticated_call_is_refused_by_the_running_service(
    service_factory: Any,
) -> None:
    service: RunningService = await service_factory(2.0)
    async with create_channel(f"127.0.0.1:{service.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _sleep_call(channel, 0)
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    service.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(service.process.wait(), 10) == 0
    await service.finish()


async def test_second_signal_stops_without_waiting_for_the_drain(service_factory: Any) -> None:
    grace = 20.0
    service: RunningService = await service_factory(grace)
    loop = asyncio.get_running_loop()
    async with create_channel(f"127.0.0.1:{service.port}", token=TOKEN) as channel:
        slow = asyncio.ensure_future(_sleep_call(channel, 30))
        await service.wait_for_event("sleep started")
        service.process.send_signal(signal.SIGTERM)
        await service.wait_for_event("grpc server draining")
        service.process.send_signal(signal.SIGINT)
        signalled_at = loop.time()
        exit_code = await asyncio.wait_for(service.process.wait(), 10)
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
    await service.finish()
    assert exit_code == 1
    assert loop.time() - signalled_at < 5
