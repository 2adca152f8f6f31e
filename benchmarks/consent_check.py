"""CheckAccess latency with a large decision index: in-process and over NATS request/reply at
a steady rate, with the raw NATS request/reply round trip as reference. Last line is JSON.

    .venv/bin/python benchmarks/consent_check.py [--consents 1000000] [--rate 5000]

The index is filled by bulk load (already-validated grants, as when restoring a snapshot);
signing and verifying a million Ed25519 transactions would measure the crypto, not the index.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from google.protobuf import empty_pb2

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import actor_pb2, audit_event_pb2
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger.consent.bus_api import ConsentBusApi
from medledger.consent.index import ConsentIndex, open_database
from medledger.consent.policy import DecisionEngine
from medledger.consent.service import ConsentService
from medledger.core.embedded_nats import EmbeddedNats
from medledger.core.nats_bus import NatsBus

ORGS = [f"organisations/org-{c}" for c in "abcd"]


class CountingSink:
    """Audit events are counted, not published: the benchmark measures the decision."""

    def __init__(self) -> None:
        self.events = 0

    def record(self, event: audit_event_pb2.AuditEvent) -> None:
        self.events += 1

    async def announce_break_glass(self, session: pb.BreakGlassSession) -> None:
        return None


def terms_for(patient: int, rng: random.Random) -> ct.ConsentTerms:
    provision = ct.Provision(
        type=ct.PROVISION_TYPE_PERMIT,
        actions=[acc.ACCESS_ACTION_READ],
        purposes=[acc.PURPOSE_OF_USE_TREAT],
        provisions=[
            ct.Provision(
                type=ct.PROVISION_TYPE_DENY, sensitivity_labels=[acc.SENSITIVITY_LABEL_PSY]
            )
        ],
    )
    return ct.ConsentTerms(
        patient_pseudonym=f"p{patient}",
        grantor=f"{ORGS[0]}/principals/consent",
        grantor_capacity=ct.GRANTOR_CAPACITY_CUSTODIAN_ON_BEHALF,
        grantor_evidence=ct.GrantorEvidence(
            kind=ct.EVIDENCE_KIND_SIGNED_FORM, document_sha256=bytes(32), captured_at_unix_ms=1
        ),
        grantee=ct.Party(organisation=rng.choice(ORGS[1:])),
        provision=provision,
        scope=ct.CONSENT_SCOPE_PATIENT_PRIVACY,
    )


def question(rng: random.Random, patients: int) -> pb.CheckAccessRequest:
    org = rng.choice(ORGS)
    return pb.CheckAccessRequest(
        actor=actor_pb2.Actor(
            principal=f"{org}/principals/dr-{rng.randrange(100)}",
            organisation=org,
            roles=["physician"],
            kind=actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
        ),
        patient_pseudonym=f"p{rng.randrange(patients)}",
        data_class=acc.DataClass(category=acc.RECORD_CATEGORY_LABORATORY),
        action=acc.ACCESS_ACTION_READ,
        purpose=acc.PURPOSE_OF_USE_TREAT,
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def steady(send: object, rate: int, seconds: float) -> list[float]:
    """Fire requests at a fixed rate (open loop) and collect their latencies."""
    latencies: list[float] = []
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        begun = time.perf_counter()
        await send()  # type: ignore[operator]
        latencies.append(time.perf_counter() - begun)

    for n in range(int(rate * seconds)):
        delay = start + n * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consents", type=int, default=1_000_000)
    parser.add_argument("--checks", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    rng = random.Random(7)
    patients = args.consents // 2
    work = Path(tempfile.mkdtemp(prefix="consent-bench-"))
    index = ConsentIndex(open_database(f"sqlite:///{work / 'index.sqlite3'}"), cache_size=200_000)
    began = time.perf_counter()
    loaded = index.bulk_load(
        (
            (f"consents/c{n}", 1, terms_for(n % patients, rng), f"{n:064x}")
            for n in range(args.consents)
        ),
        {f"p{n}": [ORGS[n % 4]] for n in range(patients)},
    )
    build_seconds = time.perf_counter() - began
    print(f"indexed {loaded} consents in {build_seconds:.1f}s")
    sink = CountingSink()
    service = ConsentService(index, DecisionEngine(), sink)

    questions = [question(rng, patients) for _ in range(args.checks)]
    for q in questions[:2000]:
        service.check_access(q)
    in_process: list[float] = []
    for q in questions:
        begun = time.perf_counter()
        service.check_access(q)
        in_process.append(time.perf_counter() - begun)

    nats = EmbeddedNats(work_dir=work / "nats")
    nats.start()
    try:
        server_bus = await NatsBus.connect(nats.url, name="consent-bench-server")
        client_bus = await NatsBus.connect(nats.url, name="consent-bench-client")
        api = ConsentBusApi(service, server_bus)
        await api.start()

        async def echo(_: empty_pb2.Empty) -> empty_pb2.Empty:
            return empty_pb2.Empty()

        await server_bus.subscribe("bench.echo", empty_pb2.Empty, echo)
        nats_questions = [question(rng, patients) for _ in range(1000)]

        async def raw() -> None:
            await client_bus.request("bench.echo", empty_pb2.Empty(), empty_pb2.Empty)

        async def check() -> None:
            await client_bus.request(
                "consent.check", rng.choice(nats_questions), pb.CheckAccessResponse
            )

        reference = await steady(raw, args.rate, args.seconds)
        over_nats = await steady(check, args.rate, args.seconds)
        await api.stop()
        await client_bus.close()
        await server_bus.close()
    finally:
        nats.stop()
        index.close()

    ms = 1000.0
    result = {
        "benchmark": "consent_check",
        "consents": loaded,
        "index_build_seconds": round(build_seconds, 1),
        "in_process_checks": len(in_process),
        "in_process_p50_ms": round(percentile(in_process, 0.50) * ms, 4),
        "in_process_p99_ms": round(percentile(in_process, 0.99) * ms, 4),
        "nats_rate_per_s": args.rate,
        "nats_p50_ms": round(percentile(over_nats, 0.50) * ms, 3),
        "nats_p99_ms": round(percentile(over_nats, 0.99) * ms, 3),
        "raw_nats_p50_ms": round(percentile(reference, 0.50) * ms, 3),
        "raw_nats_p99_ms": round(percentile(reference, 0.99) * ms, 3),
        "audit_events": sink.events,
        "targets": {"in_process_p99_ms": 0.1, "nats_p99_ms": 2.0},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
