"""Process settings shared by every service, read from MEDLEDGER_* variables and a settings file.

Each service subclasses CommonSettings (giving its own ``service_name`` and default
``grpc_port``) and loads it with ``load_settings``, which turns validation errors into
one readable SettingsError naming each bad variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from medledger.core.database import PostgresLocation, parse_database_url
from medledger.core.errors import SettingsError

ENV_PREFIX = "MEDLEDGER_"
SETTINGS_FILE_VARIABLE = "MEDLEDGER_SETTINGS_FILE"
MIB = 1024 * 1024
# 4 MiB plus room for the envelope around a full 4 MiB payload; a 1 MiB record
# chunk with its framing passes with a wide margin.
DEFAULT_MAX_MESSAGE_BYTES = 4 * MIB + 64 * 1024

SERVICE_PORTS: dict[str, int] = {
    "identity": 50051,
    "consent": 50052,
    "records": 50053,
    "ledger": 50054,
    "audit": 50055,
}

_NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "console"]


class CommonSettings(BaseSettings):
    """Settings every medledger service reads; env names are MEDLEDGER_<FIELD>."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    service_name: ClassVar[str] = "medledger"

    org_id: str = Field(description="Id of the organisation (hospital) this process belongs to.")
    data_dir: Path = Path("./.medledger/data")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50050
    metrics_port: int = 0
    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds_file: Path | None = None
    nats_tls_ca_file: Path | None = None
    database_url: SecretStr | None = None
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"
    otlp_endpoint: str | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    grpc_max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=64 * 1024, le=1 << 30)
    shutdown_grace_seconds: float = Field(default=10.0, gt=0, le=3600)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then the environment, then the settings file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file = os.environ.get(SETTINGS_FILE_VARIABLE)
        if settings_file:
            path = Path(settings_file)
            if not path.is_file():
                raise SettingsError(
                    "SETTINGS_FILE_NOT_FOUND",
                    f"{SETTINGS_FILE_VARIABLE}: no such file {settings_file!r}",
                )
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(DotEnvSettingsSource(settings_cls, env_file=path))
        sources.append(file_secret_settings)
        return tuple(sources)

    @field_validator("org_id")
    @classmethod
    def _org_id_is_an_id(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if not all(c.isalnum() or c in "-_." for c in value) or len(value) > 64:
            raise ValueError("must be at most 64 letters, digits, '-', '_' or '.'")
        return value

    @field_validator("grpc_port", "metrics_port")
    @classmethod
    def _port_in_range(cls, value: int) -> int:
        # A validator rather than Field bounds so subclasses that only change the
        # default port keep the check.
        if not 0 <= value <= 65535:
            raise ValueError("must be a TCP port between 0 and 65535")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_upper(cls, value: Any) -> Any:
        if isinstance(value, str):
            upper = value.strip().upper()
            if upper not in _LOG_LEVELS:
                raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
            return upper
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("nats_url")
    @classmethod
    def _nats_urls(cls, value: str) -> str:
        servers = [part.strip() for part in value.split(",") if part.strip()]
        if not servers:
            raise ValueError("must list at least one server")
        for server in servers:
            parts = urlsplit(server)
            if parts.scheme not in _NATS_SCHEMES or not parts.hostname:
                raise ValueError(
                    f"{server!r} is not a NATS URL (expected {'|'.join(_NATS_SCHEMES)}://host:port)"
                )
        return ",".join(servers)

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL of an OTLP gRPC collector")
        return value.strip()

    @field_validator(
        "nats_creds_file",
        "nats_tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
    )
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file {str(value)!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError(
                f"scheme {scheme!r} is not supported (use sqlite:///path or postgresql://…)"
            )
        return value

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> CommonSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "MEDLEDGER_TLS_CERT_FILE and MEDLEDGER_TLS_KEY_FILE must be set together"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "MEDLEDGER_TLS_CLIENT_CA_FILE (mTLS) needs MEDLEDGER_TLS_CERT_FILE and "
                "MEDLEDGER_TLS_KEY_FILE"
            )
        return self

    @property
    def nats_servers(self) -> list[str]:
        """The NATS server URLs, in the order given."""
        return self.nats_url.split(",")

    @property
    def database_dsn(self) -> str:
        """The database URL; by default a SQLite file for this service under the data dir.

        A PostgreSQL database may be shared by the services of one organisation: each
        then works in a schema named after the service (created by `prepare_database`).
        """
        if self.database_url is None:
            return f"sqlite:///{(self.data_dir / f'{self.service_name}.sqlite3').as_posix()}"
        url = self.database_url.get_secret_value()
        location = parse_database_url(url)
        if isinstance(location, PostgresLocation):
            return location.in_schema(self.service_name).conninfo
        return url

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def mtls_required(self) -> bool:
        return self.tls_client_ca_file is not None

    @property
    def grpc_address(self) -> str:
        host = f"[{self.grpc_host}]" if ":" in self.grpc_host else self.grpc_host
        return f"{host}:{self.grpc_port}"


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Read and validate ``cls`` from the environment (and settings file).

    Raises SettingsError whose message has one line per bad variable, e.g.
    ``MEDLEDGER_GRPC_PORT: must be at most 65535 (got '70000')``.
    """
    try:
        return cls(**overrides)
    except ValidationError as error:
        lines = [_describe(cls, detail) for detail in error.errors(include_url=False)]
        raise SettingsError(
            "INVALID_SETTINGS",
            "invalid settings:\n  " + "\n  ".join(lines),
        ) from None


def env_name(field_path: tuple[int | str, ...]) -> str:
    """The environment variable of a (possibly nested) settings field."""
    return ENV_PREFIX + "__".join(str(part) for part in field_path).upper()


def _describe(cls: type[CommonSettings], detail: Any) -> str:
    location: tuple[int | str, ...] = tuple(detail.get("loc", ()))
    message = str(detail.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    kind = detail.get("type", "")
    if not location:
        return message
    name = env_name(location)
    if kind == "missing":
        return f"{name}: is required but not set"
    field = cls.model_fields.get(str(location[0]))
    secret = field is not None and "SecretStr" in repr(field.annotation)
    given = detail.get("input")
    if secret or isinstance(given, dict) or given is None or str(given) in message:
        return f"{name}: {_lower_first(message)}"
    return f"{name}: {_lower_first(message)} (got {str(given)!r})"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
