"""`medledger admin bootstrap` makes NATS and a shared PostgreSQL database ready,
and running it twice changes nothing."""

from __future__ import annotations

import psycopg
import pytest

from medledger.cli.main import main
from medledger.core.nats_bus import NatsBus


async def _stream_subjects(nats_url: str) -> list[str]:
    bus = await NatsBus.connect(nats_url, name="check")
    try:
        info = await bus.client.jetstream().stream_info("AUDIT")
        return list(info.config.subjects or [])
    finally:
        await bus.close()


def test_bootstrap_is_idempotent(
    nats_url: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    monkeypatch.setenv("MEDLEDGER_ORG_ID", "org-a")
    monkeypatch.setenv("MEDLEDGER_NATS_URL", nats_url)
    monkeypatch.setenv("MEDLEDGER_DATABASE_URL", pg_dsn)
    for _ in range(2):
        assert main(["admin", "bootstrap", "--wait", "10"]) == 0
    out = capsys.readouterr().out
    assert "database schemas ready: identity, consent, records, audit" in out
    assert asyncio.run(_stream_subjects(nats_url))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_schema, count(*) FROM information_schema.tables"
            " WHERE table_schema IN ('identity', 'consent', 'records', 'audit')"
            " GROUP BY table_schema ORDER BY table_schema"
        ).fetchall()
        assert [schema for schema, count in rows if count > 0] == [
            "audit",
            "consent",
            "identity",
            "records",
        ]
        for schema in ("identity", "consent", "records", "audit"):
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
