"""Database URLs every service accepts, parsed in one place.

``sqlite:///relative/path``, ``sqlite:////absolute/path`` and ``sqlite:///:memory:``
(SQLAlchemy's spelling), or PostgreSQL as a ``postgresql://`` / ``postgres://`` /
``postgresql+psycopg://`` URL or a libpq ``key=value`` string. Services that share one
PostgreSQL database keep their tables apart in a schema each (``in_schema``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class DatabaseUrlError(ValueError):
    """A database URL medledger cannot use; the message never repeats a password."""

    reason = "BAD_DATABASE_URL"


@dataclass(frozen=True, slots=True)
class SqliteLocation:
    """A SQLite database file (or ``:memory:``)."""

    path: str


@dataclass(frozen=True, slots=True)
class PostgresLocation:
    """A PostgreSQL database, as a libpq connection string."""

    conninfo: str

    def in_schema(self, schema: str) -> PostgresLocation:
        """The same database with ``schema`` first on the search path (tables go there)."""
        if not _SCHEMA_NAME.match(schema):
            raise DatabaseUrlError(f"{schema!r} is not a plain lowercase schema name")
        params = conninfo_to_dict(self.conninfo)
        options = str(params.get("options") or "")
        params["options"] = f"{options} -c search_path={schema}".strip()
        return PostgresLocation(make_conninfo(**params))  # type: ignore[arg-type]


DatabaseLocation = SqliteLocation | PostgresLocation


def parse_database_url(url: str) -> DatabaseLocation:
    """Where ``url`` points; DatabaseUrlError for anything else."""
    if url.startswith("sqlite:"):
        rest = url.removeprefix("sqlite:")
        if not rest.startswith("///"):
            raise DatabaseUrlError("a SQLite URL is sqlite:///relative/path or sqlite:////abs/path")
        path = rest.removeprefix("///")
        return SqliteLocation(path or ":memory:")
    scheme = urlsplit(url).scheme
    if scheme in _POSTGRES_SCHEMES:
        return PostgresLocation(url.replace("postgresql+psycopg://", "postgresql://", 1))
    if not scheme and "=" in url:
        try:
            conninfo_to_dict(url)
        except Exception as exc:
            raise DatabaseUrlError("not a valid libpq connection string") from exc
        return PostgresLocation(url)
    raise DatabaseUrlError(
        f"unsupported database URL scheme {scheme or '(none)'!r}: use sqlite:/// or postgresql://"
    )


def ensure_schema(location: PostgresLocation, schema: str) -> None:
    """Create ``schema`` in the database if it is missing (idempotent, blocking)."""
    import psycopg
    from psycopg import sql

    location.in_schema(schema)  # validates the name
    with psycopg.connect(location.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))


def prepare_database(database_url: str | None, service_name: str) -> None:
    """Make a shared PostgreSQL database ready for ``service_name`` (its schema exists);
    nothing to do for SQLite, whose file each store creates."""
    if database_url is None:
        return
    location = parse_database_url(database_url)
    if isinstance(location, PostgresLocation):
        ensure_schema(location, service_name)
