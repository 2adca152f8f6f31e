"""Audit ingest benchmark: a sustained stream of audit events, end to end (published to
JetStream → durably appended → in the Merkle log) with SQLite and with PostgreSQL, against the
raw JetStream publish rate measured in the same run; then anchoring latency (event published →
covered by a checkpoint that is final on the ledger), p50 and p99.

    .venv/bin/python benchmarks/audit_ingest.py [--duration 10] [--pg-dsn DSN | --no-pg]

The audit service runs as its own process (`medledger serve audit`), as in production; the
publisher, NATS and (for the anchoring phase) four in-process validators share the machine.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from medledger._gen.common.v1 import access_pb2, actor_pb2, audit_event_pb2
from medledger.audit.service import AuditLog, LogIdentity
from medledger.audit.store import open_store
from medledger.core.audit_events import AUDIT_STREAM, audit_subject, ensure_audit_stream
from medledger.core.embedded_nats import EmbeddedNats
from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.testing.fixtures import dsn_with_search_path
from medledger.testing.ledger import LocalLedger
from medledger.testing.processes import LoggedProcess, free_port

SQLITE_TARGET = 20_000
POSTGRES_TARGET = 10_000
ANCHOR_P99_TARGET_S = 2.0


def event_bytes(index: int, org: str) -> tuple[str, bytes]:
    event = audit_event_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        actor=actor_pb2.Actor(
            principal=f"organisations/org-b/principals/p{index % 97}",
            organisation="organisations/org-b",
            roles=["physician"],
        ),
        action=access_pb2.ACCESS_ACTION_READ,
        resource=f"records/r-{index}",
        record=f"records/r-{index}",
        patient_pseudonym=f"patients/p-{index % 5000}",
        purpose=access_pb2.PURPOSE_OF_USE_TREAT,
        decision=access_pb2.DECISION_PERMIT,
        decision_reason="CONSENT_PERMIT",
        service="records",
        organisation=f"organisations/{org}",
        trace_id=uuid.uuid4().hex,
    )
    event.time.FromNanoseconds(time.time_ns())
    return event.event_id, event.SerializeToString()


def _recorder(acked: dict[str, float], event_id: str) -> Callable[[Any], None]:
    def record(_future: Any) -> None:
        acked[event_id] = time.time()

    return record


async def publish_for(
    bus: NatsBus, org: str, seconds: float, rate: float | None = None
) -> tuple[int, float, dict[str, float]]:
    """Publish (JetStream, acked, pipelined) for `seconds`; returns count, elapsed, ack times."""
    js = bus.client.jetstream(publish_async_max_pending=4000)
    subject = audit_subject(org)
    acked: dict[str, float] = {}
    start = time.perf_counter()
    sent = 0
    pending: list[Any] = []
    while time.perf_counter() - start < seconds:
        if rate is not None and sent >= rate * (time.perf_counter() - start):
            await asyncio.sleep(0.002)
            continue
        event_id, data = event_bytes(sent, org)
        future = await js.publish_async(subject, data, headers={"Nats-Msg-Id": event_id})
        if rate is not None:
            future.add_done_callback(_recorder(acked, event_id))
        pending.append(future)
        sent += 1
        if len(pending) >= 8192:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return sent, time.perf_counter() - start, acked


class AuditService:
    def __init__(self, work: Path, nats_url: str, database_url: str, chain_id: str = "") -> None:
        self.work = work
        env = dict(os.environ)
        env.update(
            {
                "MEDLEDGER_ORG_ID": "bench",
                "MEDLEDGER_DATA_DIR": str(work),
                "MEDLEDGER_GRPC_PORT": str(free_port()),
                "MEDLEDGER_NATS_URL": nats_url,
                "MEDLEDGER_DATABASE_URL": database_url,
                "MEDLEDGER_LOG_LEVEL": "WARNING",
                "MEDLEDGER_API_TOKENS_FILE": str(self._tokens()),
                "MEDLEDGER_CHAIN_ID": chain_id,
            }
        )
        self.process = LoggedProcess(
            [sys.executable, "-m", "medledger.cli.main", "serve", "audit"],
            work / "audit.log",
            env=env,
        )

    def _tokens(self) -> Path:
        path = self.work / "tokens.json"
        path.write_text(json.dumps({"bench": {"principal": "x", "org": "bench"}}))
        path.chmod(0o600)
        return path


def count_rows(database_url: str, query: str) -> Any:
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        if not Path(path).exists():
            return None
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                return conn.execute(query).fetchall()
        except sqlite3.OperationalError:
            return None
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            return conn.execute(query.encode()).fetchall()
    except psycopg.Error:
        return None


async def wait_until(check: Callable[[], bool], limit: float, process: LoggedProcess) -> float:
    deadline = time.perf_counter() + limit
    while not check():
        if not process.running:
            raise RuntimeError(f"audit service died; see {process.log_path}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out; see {process.log_path}")
        await asyncio.sleep(0.02)
    return time.perf_counter()


def entry_count(database_url: str) -> int:
    rows = count_rows(database_url, "SELECT COUNT(*) FROM audit_entries")
    return int(rows[0][0]) if rows else 0


async def ingest_phase(
    bus: NatsBus, nats_url: str, work: Path, database_url: str, seconds: float
) -> dict[str, float]:
    await purge(bus)
    service = AuditService(work, nats_url, database_url)
    service.process.start()
    try:
        await wait_until(
            lambda: count_rows(database_url, "SELECT 1 FROM audit_entries LIMIT 1") is not None,
            60,
            service.process,
        )
        await asyncio.sleep(1.0)  # consumer created
        start = time.perf_counter()
        sent, publish_elapsed, _ = await publish_for(bus, "bench", seconds)
        done = await wait_until(lambda: entry_count(database_url) >= sent, 300, service.process)
        return {
            "events": sent,
            "publish_rate": sent / publish_elapsed,
            "end_to_end_rate": sent / (done - start),
            "drain_after_publish_s": done - start - publish_elapsed,
        }
    finally:
        service.process.stop()


async def anchoring_phase(
    bus: NatsBus, nats_url: str, work: Path, seconds: float, rate: float
) -> dict[str, float]:
    await purge(bus)
    ledger = LocalLedger(nats_url, work / "ledger")
    await ledger.start()
    database_url = f"sqlite:///{work / 'anchor.sqlite3'}"
    service = AuditService(work, nats_url, database_url, chain_id=ledger.genesis.chain_id)
    service.process.start()
    final_seen: dict[int, float] = {}
    stop_polling = asyncio.Event()

    async def poll_checkpoints() -> None:
        while not stop_polling.is_set():
            rows = count_rows(
                database_url, "SELECT tree_size FROM audit_checkpoints WHERE anchor_state = 2"
            )
            now = time.time()
            for (size,) in rows or []:
                final_seen.setdefault(int(size), now)
            await asyncio.sleep(0.01)

    try:
        await wait_until(
            lambda: count_rows(database_url, "SELECT 1 FROM audit_entries LIMIT 1") is not None,
            60,
            service.process,
        )
        await asyncio.sleep(1.0)
        poller = asyncio.create_task(poll_checkpoints())
        sent, _, acked = await publish_for(bus, "bench", seconds, rate=rate)
        await wait_until(lambda: bool(final_seen) and max(final_seen) >= sent, 60, service.process)
        stop_polling.set()
        await poller
        rows = count_rows(database_url, "SELECT event_id, leaf_index FROM audit_entries") or []
        sizes = sorted(final_seen)
        latencies = []
        for event_id, leaf_index in rows:
            published = acked.get(str(event_id))
            if published is None:
                continue
            position = bisect.bisect_right(sizes, int(leaf_index))
            covering = min(final_seen[s] for s in sizes[position:])
            latencies.append(covering - published)
        latencies.sort()
        return {
            "events": len(latencies),
            "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "max_s": latencies[-1],
            "checkpoints_anchored": len(sizes),
        }
    finally:
        service.process.stop()
        await ledger.stop()


async def purge(bus: NatsBus) -> None:
    with contextlib.suppress(Exception):  # absent already
        await bus.client.jetstream().delete_stream(AUDIT_STREAM)
    await ensure_audit_stream(bus)


async def append_phase(database_url: str, events: int = 60_000, batch: int = 2000) -> float:
    """The log's own append capacity (parse, hash, durable store), without the bus."""
    log = AuditLog(open_store(database_url), LogIdentity("bench/audit", "s", SigningKey.generate()))
    await log.open()
    data = [event_bytes(i, "bench")[1] for i in range(events)]
    try:
        start = time.perf_counter()
        for offset in range(0, events, batch):
            await log.append(data[offset : offset + batch], offset + batch)
        return events / (time.perf_counter() - start)
    finally:
        await log.close()


async def reference_rate(bus: NatsBus, seconds: float) -> float:
    await purge(bus)
    sent, elapsed, _ = await publish_for(bus, "reference", seconds)
    return sent / elapsed


def postgres_url(base: str) -> str:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return dsn_with_search_path(base, schema)


def drop_schema(base: str, url: str) -> None:
    schema = url.split("search_path%3D")[-1].split("&")[0] if "search_path%3D" in url else ""
    if not schema:
        return
    with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    nats = EmbeddedNats(work_dir=work / "nats")
    nats.start()
    bus = await NatsBus.connect(nats.url, name="audit-bench")
    results: dict[str, Any] = {"duration_s": args.duration}
    try:
        reference = await reference_rate(bus, args.duration)
        results["jetstream_publish_rate"] = reference
        print(f"raw JetStream publish rate: {reference:,.0f} events/s")

        sqlite_url = f"sqlite:///{work / 'sqlite' / 'audit.sqlite3'}"
        (work / "sqlite").mkdir()
        sqlite = await ingest_phase(bus, nats.url, work / "sqlite", sqlite_url, args.duration)
        sqlite["ratio_to_jetstream"] = sqlite["end_to_end_rate"] / reference
        sqlite["log_append_rate"] = await append_phase(f"sqlite:///{work / 'append.sqlite3'}")
        sqlite["target"] = SQLITE_TARGET
        results["sqlite"] = sqlite
        print(
            f"SQLite: {sqlite['end_to_end_rate']:,.0f} events/s end to end "
            f"({sqlite['events']:,.0f} events, {sqlite['ratio_to_jetstream']:.2f} of raw publish; "
            f"target {SQLITE_TARGET:,}); log append alone {sqlite['log_append_rate']:,.0f}/s"
        )

        if args.pg_dsn:
            pg_url = postgres_url(args.pg_dsn)
            (work / "pg").mkdir()
            try:
                pg = await ingest_phase(bus, nats.url, work / "pg", pg_url, args.duration)
            finally:
                drop_schema(args.pg_dsn, pg_url)
            pg["ratio_to_jetstream"] = pg["end_to_end_rate"] / reference
            append_url = postgres_url(args.pg_dsn)
            try:
                pg["log_append_rate"] = await append_phase(append_url)
            finally:
                drop_schema(args.pg_dsn, append_url)
            pg["target"] = POSTGRES_TARGET
            results["postgresql"] = pg
            print(
                f"PostgreSQL: {pg['end_to_end_rate']:,.0f} events/s end to end "
                f"({pg['events']:,.0f} events, {pg['ratio_to_jetstream']:.2f} of raw publish; "
                f"target {POSTGRES_TARGET:,}); log append alone {pg['log_append_rate']:,.0f}/s"
            )

        (work / "anchor").mkdir()
        anchor = await anchoring_phase(
            bus, nats.url, work / "anchor", args.anchor_duration, args.anchor_rate
        )
        anchor["target_p99_s"] = ANCHOR_P99_TARGET_S
        results["anchoring"] = anchor
        print(
            f"anchoring latency (published → in a checkpoint final on the ledger): "
            f"p50 {anchor['p50_s']:.3f} s, p99 {anchor['p99_s']:.3f} s over "
            f"{anchor['events']:,.0f} events at {args.anchor_rate:g}/s (target p99 < 2 s)"
        )
    finally:
        await bus.close()
        nats.stop()
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per ingest phase")
    parser.add_argument("--anchor-duration", type=float, default=10.0)
    parser.add_argument("--anchor-rate", type=float, default=500.0, help="events/s while anchoring")
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get(
            "MEDLEDGER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--no-pg", dest="pg_dsn", action="store_const", const="")
    return parser.parse_args()


if __name__ == "__main__":
    figures = asyncio.run(main(parse_args()))
    print(json.dumps(figures, sort_keys=True))
