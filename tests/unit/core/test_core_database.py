"""Database URLs are parsed one way for every service."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from medledger.core.database import (
    DatabaseUrlError,
    PostgresLocation,
    SqliteLocation,
    parse_database_url,
)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative/db.sqlite3", "relative/db.sqlite3"),
        ("sqlite:///./.medledger/x.sqlite3", "./.medledger/x.sqlite3"),
        ("sqlite:////data/audit.sqlite3", "/data/audit.sqlite3"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///", ":memory:"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert parse_database_url(url) == SqliteLocation(path)


def test_postgres_urls_and_schemas() -> None:
    url = "postgresql+psycopg://medledger:secret@db:5432/medledger"
    location = parse_database_url(url)
    assert location == PostgresLocation("postgresql://medledger:secret@db:5432/medledger")
    assert isinstance(location, PostgresLocation)
    scoped = conninfo_to_dict(location.in_schema("consent").conninfo)
    assert scoped["options"] == "-c search_path=consent"
    assert scoped["dbname"] == "medledger"
    assert isinstance(parse_database_url("host=db dbname=x"), PostgresLocation)
    with pytest.raises(DatabaseUrlError):
        location.in_schema("Robert'); DROP TABLE students;--")


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite:relative", "nonsense"])
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(DatabaseUrlError):
        parse_database_url(url)


async def test_schema_keeps_services_apart(pg_dsn: str) -> None:
    import psycopg

    base = parse_database_url(pg_dsn)
    assert isinstance(base, PostgresLocation)
    with psycopg.connect(base.conninfo, autocommit=True) as conn:
        for schema in ("svc_one", "svc_two"):
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for schema, value in (("svc_one", 1), ("svc_two", 2)):
        with psycopg.connect(base.in_schema(schema).conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS things (v int)")
            conn.execute("INSERT INTO things VALUES (%s)", (value,))
    for schema, value in (("svc_one", 1), ("svc_two", 2)):
        with psycopg.connect(base.in_schema(schema).conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT v FROM things").fetchone()
            assert row == (value,)
    with psycopg.connect(base.conninfo, autocommit=True) as conn:
        for schema in ("svc_one", "svc_two"):
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_settings_scope_postgres_to_the_service_schema(pg_dsn: str) -> None:
    import psycopg

    from medledger.core.database import prepare_database
    from medledger.core.settings import CommonSettings

    class ConsentLike(CommonSettings):
        service_name = "consent_like"

    settings = ConsentLike(org_id="org-a", database_url=pg_dsn)
    prepare_database(pg_dsn, settings.service_name)
    with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS principals (id int)")
        row = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'principals'"
            " AND table_schema = 'consent_like'"
        ).fetchone()
        assert row == ("consent_like",)
        conn.execute("DROP SCHEMA consent_like CASCADE")
    assert CommonSettings(org_id="a").database_dsn.startswith("sqlite:///")
