"""What the local stack runs and where: organisations, ports, data-dir layout and each process's
MEDLEDGER_* environment. Pure: nothing here starts a process or touches the disk."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ORGANISATIONS = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
# Every organisation runs a validator; the first two also run the hospital services.
HOSPITALS = ORGANISATIONS[:2]
DISPLAY_NAMES = {
    "hospital-a": "Hospital A",
    "hospital-b": "Hospital B",
    "hospital-c": "Hospital C",
    "hospital-d": "Hospital D",
}
APP_SERVICES = ("identity", "consent", "records", "audit")
CHAIN_ID = "medledger-local"

DEFAULT_DATA_DIR = Path("./.medledger")
DEFAULT_BASE_PORT = 50050
DEFAULT_NATS_PORT = 4222
DEFAULT_NATS_MONITORING_PORT = 8222
# Port of a service = base + stride * organisation index + offset, so hospital A's services sit
# on the single-service defaults (identity 50051 to audit 50055) and B's ten ports above.
ORG_PORT_STRIDE = 10
SERVICE_PORT_OFFSETS = {"identity": 1, "consent": 2, "records": 3, "ledger": 4, "audit": 5}

RecordsBackend = Literal["dir", "s3"]
# Variables a user may set for the stack's processes; every other MEDLEDGER_* variable of the
# calling shell is dropped so the stack runs the same whatever the shell exported.
PASSTHROUGH_VARIABLES = (
    "MEDLEDGER_S3_ACCESS_KEY",
    "MEDLEDGER_S3_SECRET_KEY",
    "MEDLEDGER_S3_REGION",
)


@dataclass(frozen=True)
class StackOptions:
    """The knobs of `medledger up`."""

    data_dir: Path = DEFAULT_DATA_DIR
    base_port: int = DEFAULT_BASE_PORT
    nats_port: int = DEFAULT_NATS_PORT
    nats_monitoring_port: int = DEFAULT_NATS_MONITORING_PORT
    records_backend: RecordsBackend = "dir"
    s3_endpoint: str | None = None
    s3_bucket: str = "medledger-records"
    log_level: str = "INFO"
    # Per process ("hospital-a/audit"): a database URL instead of the SQLite file in its data dir.
    database_urls: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0
    shutdown_grace_seconds: float = 3.0


@dataclass(frozen=True)
class DataLayout:
    """Where everything lives under the data directory."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "stack.json"

    @property
    def consortium_dir(self) -> Path:
        return self.root / "consortium"

    @property
    def genesis_path(self) -> Path:
        return self.consortium_dir / "genesis.json"

    @property
    def nats_dir(self) -> Path:
        return self.root / "nats"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def processes_file(self) -> Path:
        """The running processes (name, pid, address, log), rewritten as they start."""
        return self.run_dir / "processes.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "up.lock"

    def validator_key(self, organisation: str) -> Path:
        # The layout medledger.ledger.genesis.create_consortium writes.
        return self.consortium_dir / organisation / "validator.key"

    def organisation_dir(self, organisation: str) -> Path:
        return self.root / "orgs" / organisation

    def key(self, organisation: str, name: str) -> Path:
        return self.organisation_dir(organisation) / "keys" / f"{name}.key"

    def secret(self, organisation: str, name: str) -> Path:
        """A symmetric key file (32 random bytes), e.g. the records service's KEK."""
        return self.organisation_dir(organisation) / "keys" / f"{name}.bin"

    def registration_marker(self, organisation: str, principal: str) -> Path:
        """Present once `principal` ("organisation" for the organisation itself, its admin
        and identity service) is final on the ledger; holds the transaction ids."""
        return self.organisation_dir(organisation) / "registered" / principal

    def service_dir(self, organisation: str, service: str) -> Path:
        return self.organisation_dir(organisation) / service

    def log(self, organisation: str, service: str) -> Path:
        return self.logs_dir / f"{organisation}-{service}.log"


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the stack: `medledger serve <service>` for one organisation."""

    organisation: str
    service: str
    grpc_port: int
    data_dir: Path
    log_path: Path
    env: Mapping[str, str] = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.organisation}/{self.service}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "medledger.cli.main", "serve", self.service]

    def environment(self, inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
        """The full environment of the child: the caller's, minus stray MEDLEDGER_* settings."""
        env = {
            key: value
            for key, value in inherited.items()
            if not key.startswith("MEDLEDGER_") or key in PASSTHROUGH_VARIABLES
        }
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        return env


def service_port(base_port: int, organisation: str, service: str) -> int:
    return (
        base_port
        + ORG_PORT_STRIDE * ORGANISATIONS.index(organisation)
        + (SERVICE_PORT_OFFSETS[service])
    )


@dataclass(frozen=True)
class Topology:
    """Every process of the stack for the given options and the services that exist."""

    options: StackOptions
    app_services: Sequence[str] = APP_SERVICES

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.options.data_dir.resolve())

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.options.nats_port}"

    def validators(self) -> list[ProcessSpec]:
        return [self._spec(org, "ledger") for org in ORGANISATIONS]

    def hospital_services(self) -> list[ProcessSpec]:
        """The hospital services, in start order (identity first: the others ask it for keys)."""
        wanted = [s for s in APP_SERVICES if s in self.app_services]
        return [self._spec(org, service) for service in wanted for org in HOSPITALS]

    def processes(self) -> list[ProcessSpec]:
        return [*self.validators(), *self.hospital_services()]

    def ports(self) -> list[tuple[int, str]]:
        """Every port the stack listens on, with what listens there."""
        return [
            (self.options.nats_port, "NATS client"),
            (self.options.nats_monitoring_port, "NATS monitoring"),
            *((spec.grpc_port, f"{spec.name} gRPC") for spec in self.processes()),
        ]

    def spec(self, organisation: str, service: str) -> ProcessSpec:
        return self._spec(organisation, service)

    def _spec(self, organisation: str, service: str) -> ProcessSpec:
        layout = self.layout
        port = service_port(self.options.base_port, organisation, service)
        data_dir = layout.service_dir(organisation, service)
        env = {
            "MEDLEDGER_ORG_ID": organisation,
            "MEDLEDGER_DATA_DIR": str(data_dir),
            "MEDLEDGER_GRPC_HOST": "127.0.0.1",
            "MEDLEDGER_GRPC_PORT": str(port),
            "MEDLEDGER_NATS_URL": self.nats_url,
            "MEDLEDGER_LOG_FORMAT": "console",
            "MEDLEDGER_LOG_LEVEL": self.options.log_level,
            "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": f"{self.options.shutdown_grace_seconds:g}",
            "MEDLEDGER_CHAIN_ID": CHAIN_ID,
            "MEDLEDGER_GENESIS_FILE": str(layout.genesis_path),
            **self._service_env(organisation, service),
        }
        database_url = self.options.database_urls.get(f"{organisation}/{service}")
        if database_url:
            env["MEDLEDGER_DATABASE_URL"] = database_url
        return ProcessSpec(
            organisation=organisation,
            service=service,
            grpc_port=port,
            data_dir=data_dir,
            log_path=layout.log(organisation, service),
            env=env,
        )

    def _service_env(self, organisation: str, service: str) -> dict[str, str]:
        layout = self.layout
        if service == "ledger":
            return {"MEDLEDGER_VALIDATOR_KEY_FILE": str(layout.validator_key(organisation))}
        if service == "identity":
            return {"MEDLEDGER_SERVICE_KEY_FILE": str(layout.key(organisation, "identity"))}
        if service == "consent":
            return {
                "MEDLEDGER_CUSTODIAN_PRINCIPAL": f"organisations/{organisation}/principals/consent",
                "MEDLEDGER_CUSTODIAN_KEY_FILE": str(layout.key(organisation, "consent")),
                # Both hospitals share the local NATS: each answers its own records service.
                "MEDLEDGER_CHECK_SUBJECT": f"consent.{organisation}.check",
            }
        if service == "records":
            return self._records_env(organisation)
        if service == "audit":
            return {"MEDLEDGER_SIGNING_KEY_FILE": str(layout.key(organisation, "audit"))}
        return {}

    def _records_env(self, organisation: str) -> dict[str, str]:
        layout = self.layout
        options = self.options
        env = {
            "MEDLEDGER_SERVICE_KEY_FILE": str(layout.key(organisation, "records")),
            "MEDLEDGER_KEK_FILE": str(layout.secret(organisation, "records-kek")),
            "MEDLEDGER_STUDY_KEY_FILE": str(layout.secret(organisation, "records-study")),
            "MEDLEDGER_STORAGE_BACKEND": options.records_backend,
            "MEDLEDGER_CONSENT_SUBJECT": f"consent.{organisation}.check",
        }
        if options.records_backend == "s3" and options.s3_endpoint:
            env.update(
                {
                    "MEDLEDGER_S3_ENDPOINT": options.s3_endpoint,
                    "MEDLEDGER_S3_BUCKET": options.s3_bucket,
                    # One bucket for the stack, each hospital under its own prefix.
                    "MEDLEDGER_S3_PREFIX": f"{organisation}/",
                }
            )
        else:
            env["MEDLEDGER_BLOB_DIR"] = str(layout.service_dir(organisation, "records") / "blobs")
        return env
