"""Pytest plugin with the real backing services tests use: an embedded NATS server or cluster,
a fresh PostgreSQL schema per test, and an S3 endpoint (moto server or an external MinIO)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from medledger.core.embedded_nats import EmbeddedNats, EmbeddedNatsCluster
from medledger.core.nats_bus import NatsBus
from medledger.testing.ledger import LocalLedger
from medledger.testing.processes import tcp_port_open
from medledger.testing.s3server import ENDPOINT_ENV, MotoS3Server, S3Endpoint, endpoint_from_env

PG_DSN_ENV = "MEDLEDGER_TEST_PG_DSN"


# --- NATS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One JetStream-enabled nats-server shared by a test module; use unique stream names."""
    server = EmbeddedNats(work_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """URL of the module's nats-server, restarted first if an earlier test stopped it."""
    if not nats_server.running:
        nats_server.start()
    return nats_server.url


@pytest_asyncio.fixture
async def nats_bus(nats_url: str) -> AsyncIterator[NatsBus]:
    """A NatsBus connected to the module's server, closed after the test."""
    bus = await NatsBus.connect(nats_url, name="medledger-test")
    yield bus
    await bus.close()


@pytest.fixture(scope="module")
def _nats_cluster_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EmbeddedNatsCluster]:
    cluster = EmbeddedNatsCluster(size=3, work_dir=tmp_path_factory.mktemp("nats-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def nats_cluster(_nats_cluster_module: EmbeddedNatsCluster) -> EmbeddedNatsCluster:
    """A 3-node JetStream cluster; nodes a test killed are restarted before the next test."""
    cluster = _nats_cluster_module
    if not all(node.running for node in cluster.nodes):
        cluster.start()
    return cluster


# --- PostgreSQL ----------------------------------------------------------------------------


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def dsn_with_search_path(dsn: str, schema: str) -> str:
    """`dsn` whose sessions use `schema` first, in the same form (URL or key=value) as given."""
    option = f"-csearch_path={schema}"
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        query["options"] = f"{query['options']} {option}" if "options" in query else option
        return urlunsplit(parts._replace(query=urlencode(query)))
    params = conninfo_to_dict(dsn)
    existing = params.get("options")
    params["options"] = f"{existing} {option}" if existing else option
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A DSN for PostgreSQL (from MEDLEDGER_TEST_PG_DSN) whose search_path is a fresh schema,
    dropped after the test. Skips when the variable is unset; fails when it is set but the
    server does not answer."""
    base = os.environ.get(PG_DSN_ENV)
    if not base:
        pytest.skip(
            f"set {PG_DSN_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test) "
            "to run PostgreSQL tests"
        )
    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(base, connect_timeout=5, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"{PG_DSN_ENV} is set but PostgreSQL at {redact_dsn(base)} is unreachable: "
            f"{str(exc).strip()}",
            pytrace=False,
        )
    try:
        yield dsn_with_search_path(base, schema)
    finally:
        with psycopg.connect(base, connect_timeout=5, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# --- S3 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """An S3 endpoint for a test module: a moto server process, or the external one named by
    MEDLEDGER_TEST_S3_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY). Use unique bucket names."""
    external = endpoint_from_env()
    if external is not None:
        parts = urlsplit(external.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not tcp_port_open(port, parts.hostname or "", timeout=3.0):
            pytest.fail(
                f"{ENDPOINT_ENV} is set but nothing answers at {external.url}", pytrace=False
            )
        yield external
        return
    server = MotoS3Server(log_dir=tmp_path_factory.mktemp("moto"))
    endpoint = server.start()
    yield endpoint
    server.stop()


# --- ledger --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def ledger_network(
    nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalLedger]:
    """Four validators of a fresh chain, in-process, over the module's nats-server."""
    ledger = LocalLedger(nats_url, tmp_path_factory.mktemp("ledger"))
    await ledger.start()
    yield ledger
    await ledger.stop()
