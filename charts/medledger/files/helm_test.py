"""`helm test` check: every medledger component is SERVING and answers a real RPC.

The RPC is one of the component's own API: identity's public GetJwks must succeed; every
other component must refuse an unauthenticated read with UNAUTHENTICATED, which shows the
API is routed and deny-by-default authentication is in force.

Runs inside the medledger image (grpcio, grpcio-health-checking and grpcio-reflection
are dependencies of the package). Targets come from MEDLEDGER_TEST_TARGETS as
`component=host:port` pairs separated by commas.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

TIMEOUT_SECONDS = 10.0

# component -> (full method name, whether it must succeed without a token)
PROBES = {
    "identity": ("/medledger.identity.v1.IdentityService/GetJwks", True),
    "ledger": ("/medledger.ledger.v1.LedgerService/GetLatestBlock", False),
    "consent": ("/medledger.consent.v1.ConsentService/ListConsents", False),
    "records": ("/medledger.records.v1.RecordsService/ListRecords", False),
    "audit": ("/medledger.audit.v1.AuditService/GetLatestCheckpoint", False),
}


class ComponentCheckError(Exception):
    """A component is unreachable, not serving, or does not expose its API."""

    def __init__(self, component: str, reason: str, detail: str) -> None:
        super().__init__(f"{component}: {reason}: {detail}")
        self.reason = reason


def _channel(target: str) -> grpc.Channel:
    ca_file = os.environ.get("MEDLEDGER_TEST_CA_FILE", "")
    if not ca_file:
        return grpc.insecure_channel(target)
    cert_file = os.environ.get("MEDLEDGER_TEST_CERT_FILE", "")
    key_file = os.environ.get("MEDLEDGER_TEST_KEY_FILE", "")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes(),
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )
    return grpc.secure_channel(target, credentials)


def check_component(component: str, target: str) -> list[str]:
    """Health must be SERVING and reflection must list the component's own API."""
    with _channel(target) as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            raise ComponentCheckError(component, "UNREACHABLE", str(error.code())) from error
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
            raise ComponentCheckError(component, "NOT_SERVING", status)
        request = reflection_pb2.ServerReflectionRequest(list_services="*")
        try:
            responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([request]), timeout=TIMEOUT_SECONDS
            )
            names = [
                service.name
                for response in responses
                for service in response.list_services_response.service
            ]
        except grpc.RpcError as error:
            raise ComponentCheckError(component, "NO_REFLECTION", str(error.code())) from error
        api = [name for name in names if name.startswith(f"medledger.{component}.")]
        if not api:
            raise ComponentCheckError(component, "API_MISSING", f"services listed: {names}")
        probe_api(component, channel)
    return api


def probe_api(component: str, channel: grpc.Channel) -> None:
    """Call the component's probe RPC with an empty request and no token."""
    probe = PROBES.get(component)
    if probe is None:
        return
    method, public = probe
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(b"", timeout=TIMEOUT_SECONDS)
    except grpc.RpcError as error:
        code = error.code()
        if not public and code == grpc.StatusCode.UNAUTHENTICATED:
            return
        raise ComponentCheckError(component, "RPC_FAILED", f"{method}: {code}") from error
    if not public:
        raise ComponentCheckError(
            component, "NOT_AUTHENTICATED", f"{method} answered without a token"
        )


def main() -> int:
    targets = [
        pair.split("=", 1)
        for pair in os.environ.get("MEDLEDGER_TEST_TARGETS", "").split(",")
        if pair
    ]
    if not targets:
        print("MEDLEDGER_TEST_TARGETS is empty", file=sys.stderr)
        return 2
    failures = 0
    for component, target in targets:
        try:
            api = check_component(component, target)
        except ComponentCheckError as failure:
            failures += 1
            print(f"FAIL {failure}", file=sys.stderr)
        else:
            print(
                f"ok   {component} at {target}: SERVING, exposes {', '.join(api)}, "
                f"{PROBES.get(component, ('no probe',))[0]} answered as expected"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
