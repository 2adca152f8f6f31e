"""The shared fixtures give real, isolated backing services: S3 (moto server), PostgreSQL."""

from __future__ import annotations

import io
import os
import uuid

import psycopg
import pytest
from minio import Minio

from medledger.testing.fixtures import PG_DSN_ENV, dsn_with_search_path, redact_dsn
from medledger.testing.processes import free_port
from medledger.testing.s3server import S3Endpoint, endpoint_from_env

pytestmark = pytest.mark.integration


def test_s3_server_stores_and_returns_an_object(s3_server: S3Endpoint) -> None:
    client = Minio(
        s3_server.host,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
        secure=s3_server.secure,
    )
    bucket = f"records-{uuid.uuid4().hex[:12]}"
    blob = os.urandom(64 * 1024)

    client.make_bucket(bucket)
    client.put_object(bucket, "blobs/r1", io.BytesIO(blob), len(blob))
    response = client.get_object(bucket, "blobs/r1")
    try:
        assert response.read() == blob
    finally:
        response.close()
        response.release_conn()
    assert client.bucket_exists(bucket)
    assert not client.bucket_exists(f"missing-{uuid.uuid4().hex[:12]}")


def test_s3_endpoint_from_env_switches_to_external_server() -> None:
    env = {
        "MEDLEDGER_TEST_S3_ENDPOINT": "minio.local:9000",
        "MEDLEDGER_TEST_S3_ACCESS_KEY": "ak",
        "MEDLEDGER_TEST_S3_SECRET_KEY": "sk",
    }
    endpoint = endpoint_from_env(env)
    assert endpoint == S3Endpoint("http://minio.local:9000", "ak", "sk", "us-east-1")
    assert endpoint.host == "minio.local:9000"
    assert "sk" not in repr(endpoint)
    assert endpoint_from_env({}) is None


async def test_pg_dsn_gives_a_fresh_isolated_schema(pg_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        schema = (await (await conn.execute("SELECT current_schema()")).fetchone() or [""])[0]
        await conn.execute("CREATE TABLE audit_entry (id bigint PRIMARY KEY)")
        await conn.execute("INSERT INTO audit_entry VALUES (1)")
        rows = await (await conn.execute("SELECT id FROM audit_entry")).fetchall()
        where = await (
            await conn.execute(
                "SELECT table_schema FROM information_schema.tables"
                " WHERE table_name = 'audit_entry'"
            )
        ).fetchall()

    assert schema.startswith("test_")
    assert rows == [(1,)]
    # Only this test's schema holds the table: nothing leaked into public or another test.
    assert where == [(schema,)]


def test_dsn_with_search_path_keeps_the_dsn_form() -> None:
    url = dsn_with_search_path("postgresql://u:pw@h:5432/db?sslmode=require", "s1")
    assert url == "postgresql://u:pw@h:5432/db?sslmode=require&options=-csearch_path%3Ds1"
    keywords = dsn_with_search_path("host=h dbname=db", "s1")
    assert "options=-csearch_path=s1" in keywords
    assert "host=h" in keywords
    assert "pw" not in redact_dsn("postgresql://u:pw@h:5432/db")


INNER_ARGS = (
    "-p",
    "medledger.testing.fixtures",
    "-p",
    "no:cacheprovider",
    "-o",
    "asyncio_default_fixture_loop_scope=function",
)

PG_PROBE = """
import psycopg

def test_probe(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
    with open("schema.txt", "w") as out:
        out.write(schema)
"""


def test_pg_schema_is_dropped_after_the_test(pytester: pytest.Pytester) -> None:
    base = os.environ.get(PG_DSN_ENV)
    if not base:
        pytest.skip(f"set {PG_DSN_ENV} to run PostgreSQL tests")
    pytester.makepyfile(test_probe=PG_PROBE)
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(passed=1)

    schema = (pytester.path / "schema.txt").read_text()
    with psycopg.connect(base) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    assert schema.startswith("test_")
    assert found == (0,)


def test_pg_dsn_skips_with_advice_when_unset(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PG_DSN_ENV, raising=False)
    pytester.makepyfile(test_probe=PG_PROBE)
    result = pytester.runpytest(*INNER_ARGS, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*set {PG_DSN_ENV}*"])


def test_pg_dsn_fails_clearly_when_set_but_unreachable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv(PG_DSN_ENV, f"postgresql://postgres:hunter2@127.0.0.1:{port}/test")
    pytester.makepyfile(test_probe=PG_PROBE)
    result = pytester.runpytest(*INNER_ARGS)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*{PG_DSN_ENV} is set but PostgreSQL at *{port}* is unreachable*"]
    )
    assert "hunter2" not in result.stdout.str()
