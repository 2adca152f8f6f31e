"""The chart's `helm test` script, run against real gRPC servers on loopback."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from medledger.testing.processes import free_port
from tests.charts.chart_rendering import CHART_DIR

SCRIPT = CHART_DIR / "files" / "helm_test.py"


if TYPE_CHECKING:
    _GenericHandler = grpc.GenericRpcHandler[bytes, bytes]
else:
    _GenericHandler = grpc.GenericRpcHandler


def _probe_handler(answer: grpc.StatusCode | None) -> grpc.GenericRpcHandler[bytes, bytes]:
    """Answers every unary call: OK with an empty message, or aborts with `answer`."""

    async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if answer is not None:
            await context.abort(answer, "probe")
        return b""

    class Handler(_GenericHandler):
        def service(
            self, handler_call_details: grpc.HandlerCallDetails
        ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
            if handler_call_details.method.startswith("/grpc."):
                return None
            return grpc.unary_unary_rpc_method_handler(handle)

    return Handler()


class Component:
    """A gRPC server exposing health and reflection the way a medledger service does, and
    answering API calls as a deny-by-default service (or as told)."""

    def __init__(
        self,
        services: list[str],
        status: int,
        answer: grpc.StatusCode | None = grpc.StatusCode.UNAUTHENTICATED,
    ) -> None:
        self.server = grpc.aio.server()
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], self.server)
        self.server.add_generic_rpc_handlers([_probe_handler(answer)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.status = status

    async def __aenter__(self) -> Component:
        await self.server.start()
        await self.health.set("", self.status)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.server.stop(grace=None)


async def _run_script(targets: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        env={**os.environ, "MEDLEDGER_TEST_TARGETS": targets},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
async def identity() -> AsyncIterator[Component]:
    serving = health_pb2.HealthCheckResponse.SERVING
    identity_api = ["medledger.identity.v1.IdentityService"]
    async with Component(identity_api, serving, answer=None) as component:
        yield component


async def test_a_serving_component_with_its_api_passes(identity: Component) -> None:
    code, stdout, stderr = await _run_script(f"identity=127.0.0.1:{identity.port}")
    assert code == 0, stderr
    assert "identity at 127.0.0.1" in stdout
    assert "medledger.identity.v1.IdentityService" in stdout


async def test_a_component_that_is_not_serving_fails() -> None:
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    async with Component(["medledger.audit.v1.AuditService"], not_serving) as audit:
        code, _, stderr = await _run_script(f"audit=127.0.0.1:{audit.port}")
    assert code == 1
    assert "audit: NOT_SERVING" in stderr


async def test_a_server_without_the_component_api_fails(identity: Component) -> None:
    # The identity server answers health, but it is not the consent service.
    code, _, stderr = await _run_script(f"consent=127.0.0.1:{identity.port}")
    assert code == 1
    assert "consent: API_MISSING" in stderr


async def test_an_unreachable_component_fails_and_the_others_are_still_checked(
    identity: Component,
) -> None:
    dead_port = free_port()
    targets = f"ledger=127.0.0.1:{dead_port},identity=127.0.0.1:{identity.port}"
    code, stdout, stderr = await _run_script(targets)
    assert code == 1
    assert "ledger: UNREACHABLE" in stderr
    assert "ok   identity" in stdout


async def test_no_targets_is_a_usage_error() -> None:
    code, _, stderr = await _run_script("")
    assert code == 2
    assert "MEDLEDGER_TEST_TARGETS is empty" in stderr


async def test_an_api_that_answers_without_a_token_fails() -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    async with Component(["medledger.ledger.v1.LedgerService"], serving, answer=None) as ledger:
        code, _, stderr = await _run_script(f"ledger=127.0.0.1:{ledger.port}")
    assert code == 1
    assert "ledger: NOT_AUTHENTICATED" in stderr


async def test_a_deny_by_default_api_passes_and_a_broken_one_fails() -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    async with Component(["medledger.audit.v1.AuditService"], serving) as audit:
        code, stdout, stderr = await _run_script(f"audit=127.0.0.1:{audit.port}")
    assert code == 0, stderr
    assert "GetLatestCheckpoint answered as expected" in stdout
    broken = grpc.StatusCode.INTERNAL
    async with Component(["medledger.audit.v1.AuditService"], serving, answer=broken) as audit:
        code, _, stderr = await _run_script(f"audit=127.0.0.1:{audit.port}")
    assert code == 1
    assert "audit: RPC_FAILED" in stderr
