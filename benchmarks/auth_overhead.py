"""Latency a verified identity token adds to an RPC: the same unary call through the real gRPC
server with authentication off (public method) and on (JwtAuthenticator), in one run.
Prints p50/p99 of both and the difference; the last line is JSON. Target: < 0.2 ms p99 added."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Mapping
from typing import Any

import grpc

from medledger._gen.identity.v1 import identity_service_pb2 as identity_pb
from medledger.core.auth import AuthorisationTable
from medledger.core.grpc_channel import create_channel
from medledger.core.grpc_server import GrpcServer, GrpcService
from medledger.core.jwt_auth import JwtAuthenticator, KeyWindow, PrincipalStatus
from medledger.core.settings import CommonSettings
from medledger.core.tokens import TokenIssuer
from medledger.crypto import SigningKey, VerifyKey

SERVICE = "medledger.bench.v1.EchoService"
ORG = "organisations/org-a"
KEY = SigningKey.generate()
CALLS = 3000


class Directory:
    async def jwks(self, organisation: str, *, refresh: bool = False) -> Mapping[str, VerifyKey]:
        return {KEY.public_key.key_id: KEY.public_key}

    async def principal(self, name: str) -> PrincipalStatus:
        return PrincipalStatus(True, True, {"k": KeyWindow(identity_pb.KEY_STATE_ACTIVE, 0, 0)})


def _register(server: grpc.aio.Server) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handlers = {name: grpc.unary_unary_rpc_method_handler(echo) for name in ("Open", "Guarded")}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


async def _measure(channel: grpc.aio.Channel, method: str, metadata: Any) -> list[float]:
    call = channel.unary_unary(
        f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None
    )
    for _ in range(200):
        await call(b"x", metadata=metadata)
    samples = []
    for _ in range(CALLS):
        start = time.perf_counter()
        await call(b"x", metadata=metadata)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _p(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


async def main() -> None:
    table = AuthorisationTable.of(
        {f"/{SERVICE}/Guarded": ["physician"]}, public=[f"/{SERVICE}/Open"]
    )
    server = GrpcServer(
        service_name="bench",
        settings=CommonSettings(org_id="org-a", grpc_port=0, metrics_port=0, log_level="WARNING"),
        services=[GrpcService(SERVICE, _register, table)],
        authenticator=JwtAuthenticator(Directory()),
    )
    await server.start()
    token, _ = TokenIssuer(ORG, KEY).issue(
        subject=f"{ORG}/principals/p-1",
        roles=["physician"],
        kind="PRACTITIONER",
        principal_key_id="k",
        now=int(time.time()),
    )
    try:
        async with create_channel(f"127.0.0.1:{server.port}") as channel:
            # Interleave so both see the same machine load.
            off, on = [], []
            for _ in range(3):
                off += await _measure(channel, "Open", None)
                on += await _measure(channel, "Guarded", (("authorization", f"Bearer {token}"),))
    finally:
        await server.stop(0)
    result: dict[str, object] = {
        "benchmark": "auth_overhead",
        "calls_each": len(off),
        "off_p50_ms": round(_p(off, 50), 4),
        "off_p99_ms": round(_p(off, 99), 4),
        "on_p50_ms": round(_p(on, 50), 4),
        "on_p99_ms": round(_p(on, 99), 4),
        "added_p50_ms": round(_p(on, 50) - _p(off, 50), 4),
        "added_p99_ms": round(_p(on, 99) - _p(off, 99), 4),
        "target_added_p99_ms": 0.2,
    }
    result["within_target"] = _p(on, 99) - _p(off, 99) < 0.2
    print(f"auth off: p50 {result['off_p50_ms']} ms  p99 {result['off_p99_ms']} ms")
    print(f"auth on:  p50 {result['on_p50_ms']} ms  p99 {result['on_p99_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
