"""`medledger admin bootstrap`: make an organisation's NATS and database ready,
idempotently — the Helm chart runs it as a post-install/upgrade hook.

It creates the AUDIT JetStream stream and, for a shared PostgreSQL database, one
schema per service with that service's tables; SQLite stores create themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from pydantic import Field

from medledger.core.audit_events import ensure_audit_stream
from medledger.core.database import PostgresLocation, ensure_schema, parse_database_url
from medledger.core.nats_bus import BusUnavailable, NatsBus
from medledger.core.settings import CommonSettings, load_settings

SERVICES = ("identity", "consent", "records", "audit")


class BootstrapSettings(CommonSettings):
    """MEDLEDGER_* settings the bootstrap reads (the same names the services use)."""

    service_name = "bootstrap"
    audit_stream_replicas: int = Field(default=1, ge=1, le=5)


def register(subparsers: Any) -> None:
    admin = subparsers.add_parser("admin", help="operator commands for one organisation")
    commands = admin.add_subparsers(dest="admin_command", required=True)
    bootstrap = commands.add_parser(
        "bootstrap",
        help="create the NATS streams and database schemas (idempotent)",
        description=__doc__,
    )
    bootstrap.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for NATS (default 120)"
    )
    bootstrap.set_defaults(func=run_bootstrap)


def migrate(database_url: str) -> list[str]:
    """Create each service's schema and tables in a shared PostgreSQL database."""
    location = parse_database_url(database_url)
    if not isinstance(location, PostgresLocation):
        return []
    done = []
    for service in SERVICES:
        ensure_schema(location, service)
        _create_tables(service, location.in_schema(service).conninfo)
        done.append(service)
    return done


def _create_tables(service: str, conninfo: str) -> None:
    # Each store creates its own tables when opened; opening is the migration.
    if service == "identity":
        from medledger.identity.store import IdentityStore

        IdentityStore(conninfo).close()
    elif service == "consent":
        from medledger.consent.index import ConsentIndex, open_database

        ConsentIndex(open_database(conninfo)).close()
    else:
        asyncio.run(_create_async_tables(service, conninfo))


async def _create_async_tables(service: str, conninfo: str) -> None:
    if service == "audit":
        from medledger.audit.store import open_store

        audit = open_store(conninfo)
        await audit.open()
        await audit.close()
    elif service == "records":
        from medledger.records.store import open_metadata_store

        records = await open_metadata_store(conninfo)
        await records.close()


async def _streams(settings: BootstrapSettings, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            bus = await NatsBus.connect(
                settings.nats_servers,
                name="medledger-bootstrap",
                creds_file=str(settings.nats_creds_file) if settings.nats_creds_file else None,
                tls_ca_file=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None,
            )
            break
        except BusUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(2)
    try:
        await ensure_audit_stream(bus, replicas=settings.audit_stream_replicas)
    finally:
        await bus.close()


def run_bootstrap(args: argparse.Namespace) -> int:
    settings = load_settings(BootstrapSettings)
    asyncio.run(_streams(settings, args.wait))
    print(f"stream AUDIT ready (replicas={settings.audit_stream_replicas})")
    if settings.database_url is not None:
        migrated = migrate(settings.database_url.get_secret_value())
        if migrated:
            print("database schemas ready: " + ", ".join(migrated))
    else:
        print("SQLite stores: each service creates its own file")
    sys.stdout.flush()
    return 0
