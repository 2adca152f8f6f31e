"""Settings: env names, defaults, settings files, and the messages a bad value produces."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from medledger.core.errors import SettingsError
from medledger.core.settings import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MIB,
    SERVICE_PORTS,
    CommonSettings,
    load_settings,
)


class LedgerSettings(CommonSettings):
    service_name = "ledger"
    grpc_port: int = SERVICE_PORTS["ledger"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MEDLEDGER_"):
            monkeypatch.delenv(name)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_ORG_ID", "org-a")
    settings = load_settings(LedgerSettings)
    assert settings.org_id == "org-a"
    assert settings.grpc_host == "127.0.0.1"
    assert settings.grpc_port == 50054
    assert settings.metrics_port == 0
    assert settings.nats_servers == ["nats://127.0.0.1:4222"]
    assert settings.log_format == "json"
    assert settings.otlp_endpoint is None
    assert settings.database_dsn == "sqlite:///.medledger/data/ledger.sqlite3"
    assert settings.grpc_max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES > 4 * MIB
    assert not settings.tls_enabled and not settings.mtls_required


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("x")
    values = {
        "MEDLEDGER_ORG_ID": "org-b",
        "MEDLEDGER_DATA_DIR": str(tmp_path),
        "MEDLEDGER_GRPC_HOST": "10.1.2.3",
        "MEDLEDGER_GRPC_PORT": "6000",
        "MEDLEDGER_METRICS_PORT": "9100",
        "MEDLEDGER_NATS_URL": "nats://a:4222, nats://b:4222",
        "MEDLEDGER_NATS_CREDS_FILE": str(creds),
        "MEDLEDGER_NATS_TLS_CA_FILE": str(creds),
        "MEDLEDGER_DATABASE_URL": "postgresql://app:pw@db:5432/medledger",
        "MEDLEDGER_LOG_LEVEL": "debug",
        "MEDLEDGER_LOG_FORMAT": "console",
        "MEDLEDGER_OTLP_ENDPOINT": "http://collector:4317",
        "MEDLEDGER_GRPC_MAX_MESSAGE_BYTES": str(8 * MIB),
        "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": "2.5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(LedgerSettings)
    assert settings.data_dir == tmp_path
    assert settings.grpc_address == "10.1.2.3:6000"
    assert settings.metrics_port == 9100
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]
    assert settings.nats_creds_file == creds
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://app:pw@db:5432/medledger"
    # Services sharing one PostgreSQL database each work in their own schema.
    scoped = conninfo_to_dict(settings.database_dsn)
    assert (scoped["host"], scoped["dbname"]) == ("db", "medledger")
    assert scoped["options"] == f"-c search_path={settings.service_name}"
    assert settings.log_level == "DEBUG" and settings.log_format == "console"
    assert settings.otlp_endpoint == "http://collector:4317"
    assert settings.grpc_max_message_bytes == 8 * MIB
    assert settings.shutdown_grace_seconds == 2.5


def test_database_password_never_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_ORG_ID", "org-a")
    monkeypatch.setenv("MEDLEDGER_DATABASE_URL", "postgresql://app:s3cr3t-pw@db/x")
    settings = load_settings(LedgerSettings)
    assert "s3cr3t-pw" not in repr(settings)
    assert "s3cr3t-pw" not in str(settings.model_dump())


def test_bad_values_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_GRPC_PORT", "70000")
    monkeypatch.setenv("MEDLEDGER_METRICS_PORT", "abc")
    monkeypatch.setenv("MEDLEDGER_LOG_LEVEL", "loud")
    monkeypatch.setenv("MEDLEDGER_LOG_FORMAT", "xml")
    monkeypatch.setenv("MEDLEDGER_NATS_URL", "http://bus:4222")
    monkeypatch.setenv("MEDLEDGER_SHUTDOWN_GRACE_SECONDS", "-1")
    with pytest.raises(SettingsError) as raised:
        load_settings(LedgerSettings)
    lines = raised.value.message.splitlines()
    assert lines[0] == "invalid settings:"
    by_variable = {line.strip().split(":")[0]: line for line in lines[1:]}
    assert set(by_variable) == {
        "MEDLEDGER_ORG_ID",
        "MEDLEDGER_GRPC_PORT",
        "MEDLEDGER_METRICS_PORT",
        "MEDLEDGER_LOG_LEVEL",
        "MEDLEDGER_LOG_FORMAT",
        "MEDLEDGER_NATS_URL",
        "MEDLEDGER_SHUTDOWN_GRACE_SECONDS",
    }
    assert "required" in by_variable["MEDLEDGER_ORG_ID"]
    assert (
        "65535" in by_variable["MEDLEDGER_GRPC_PORT"]
        and "70000" in by_variable["MEDLEDGER_GRPC_PORT"]
    )
    assert "'abc'" in by_variable["MEDLEDGER_METRICS_PORT"]
    assert "DEBUG" in by_variable["MEDLEDGER_LOG_LEVEL"]
    assert "not a NATS URL" in by_variable["MEDLEDGER_NATS_URL"]
    assert raised.value.reason == "INVALID_SETTINGS"


def test_secret_values_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_ORG_ID", "org-a")
    monkeypatch.setenv("MEDLEDGER_DATABASE_URL", "mysql://app:topsecret@db/x")
    with pytest.raises(SettingsError) as raised:
        load_settings(LedgerSettings)
    assert "MEDLEDGER_DATABASE_URL" in raised.value.message
    assert "topsecret" not in raised.value.message


def test_tls_files_must_exist_and_come_in_pairs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert = tmp_path / "server.pem"
    cert.write_text("x")
    monkeypatch.setenv("MEDLEDGER_ORG_ID", "org-a")
    monkeypatch.setenv("MEDLEDGER_TLS_CERT_FILE", str(cert))
    with pytest.raises(SettingsError) as raised:
        load_settings(LedgerSettings)
    assert "MEDLEDGER_TLS_CERT_FILE and MEDLEDGER_TLS_KEY_FILE must be set together" in str(
        raised.value
    )
    monkeypatch.setenv("MEDLEDGER_TLS_KEY_FILE", str(tmp_path / "missing-key.pem"))
    with pytest.raises(SettingsError) as raised:
        load_settings(LedgerSettings)
    assert "MEDLEDGER_TLS_KEY_FILE: no such file" in str(raised.value)


def test_toml_settings_file_with_env_taking_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_file = tmp_path / "medledger.toml"
    settings_file.write_text('org_id = "org-toml"\ngrpc_port = 7001\nlog_format = "console"\n')
    monkeypatch.setenv("MEDLEDGER_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("MEDLEDGER_GRPC_PORT", "7002")
    settings = load_settings(LedgerSettings)
    assert settings.org_id == "org-toml"
    assert settings.log_format == "console"
    assert settings.grpc_port == 7002


def test_dotenv_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings_file = tmp_path / "medledger.env"
    settings_file.write_text("MEDLEDGER_ORG_ID=org-env\nMEDLEDGER_METRICS_PORT=9200\n")
    monkeypatch.setenv("MEDLEDGER_SETTINGS_FILE", str(settings_file))
    settings = load_settings(LedgerSettings)
    assert (settings.org_id, settings.metrics_port) == ("org-env", 9200)


def test_missing_settings_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MEDLEDGER_SETTINGS_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError) as raised:
        load_settings(LedgerSettings)
    assert raised.value.reason == "SETTINGS_FILE_NOT_FOUND"
    assert "MEDLEDGER_SETTINGS_FILE" in raised.value.message


def test_subclass_default_port_keeps_range_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_ORG_ID", "org-a")
    monkeypatch.setenv("MEDLEDGER_GRPC_PORT", "-5")
    with pytest.raises(SettingsError, match="MEDLEDGER_GRPC_PORT"):
        load_settings(LedgerSettings)
