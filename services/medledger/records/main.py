"""Wiring of the records service: settings, metadata store, blob storage, keys, NATS (consent,
ledger, audit, identity) and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from medledger.core.audit_events import AuditPublisher, ensure_audit_stream
from medledger.core.auth import Authenticator, load_static_tokens
from medledger.core.grpc_server import ReadinessCheck
from medledger.core.jwt_auth import JwtAuthenticator, NatsIdentityDirectory
from medledger.core.logging import get_logger
from medledger.core.nats_bus import NatsBus
from medledger.core.service import ServiceApp
from medledger.core.settings import CommonSettings
from medledger.core.tokens import DEFAULT_AUDIENCE
from medledger.crypto import SigningKey
from medledger.crypto.kek import KeyProvider, LocalKeyFileProvider, parse_key_material
from medledger.crypto.keys import load_signing_key, save_signing_key
from medledger.crypto.stream import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE
from medledger.ledgerclient import LedgerClient
from medledger.records.api import RecordsApi, records_grpc_service
from medledger.records.audit import JetStreamRecordAudit
from medledger.records.consent_client import CHECK_SUBJECT, NatsConsentChecker
from medledger.records.directory import DirectoryBlobStorage
from medledger.records.ledger_registration import NatsLedgerRegistrar
from medledger.records.memory_tuning import limit_malloc_arenas
from medledger.records.s3 import DEFAULT_PART_SIZE, MIN_PART_SIZE, S3BlobStorage, S3Config
from medledger.records.service import DEFAULT_MAX_RECORD_SIZE, RecordsService
from medledger.records.storage import BlobStorage
from medledger.records.store import MetadataStore, open_metadata_store

_log = get_logger("medledger.records")
SECRET_FILE_MODE = 0o600


class Settings(CommonSettings):
    """Settings of the records service (MEDLEDGER_*)."""

    service_name = "records"

    grpc_port: int = 50053
    chain_id: str = Field(default="medledger", min_length=1, max_length=64)
    # Signs registrations and erasures; generated once under the data dir when not given.
    service_key_file: Path | None = None
    service_key_passphrase: SecretStr | None = None
    service_principal_id: str = "records"
    # Where encrypted blobs live: a local directory (default) or S3/MinIO.
    storage_backend: Literal["dir", "s3"] = "dir"
    blob_dir: Path | None = None
    s3_endpoint: str | None = None
    s3_bucket: str = "medledger-records"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = ""
    s3_ca_file: Path | None = None
    s3_part_size_bytes: int = Field(default=DEFAULT_PART_SIZE, ge=MIN_PART_SIZE, le=1 << 30)
    # KEKs: one file, or a directory of files (a mounted Kubernetes secret) with a current id.
    kek_file: Path | None = None
    kek_dir: Path | None = None
    current_kek_id: str | None = None
    # Keys the opaque study ids derived from DICOM Study Instance UIDs.
    study_key_file: Path | None = None
    chunk_size_bytes: int = Field(default=DEFAULT_CHUNK_SIZE, ge=4096, le=MAX_CHUNK_SIZE)
    max_record_bytes: int = Field(default=DEFAULT_MAX_RECORD_SIZE, ge=1)
    registration_wait_seconds: float = Field(default=5.0, ge=0, le=300)
    incomplete_upload_ttl_seconds: float = Field(default=3600.0, ge=0)
    consent_subject: str = CHECK_SUBJECT
    consent_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    token_audience: str = DEFAULT_AUDIENCE
    api_tokens_file: Path | None = None
    # Process-wide glibc settings (records/memory_tuning.py); off when embedded in another
    # program, such as a test run, whose allocator it would change too.
    malloc_tuning: bool = True

    @model_validator(mode="after")
    def _backend_complete(self) -> Settings:
        if self.storage_backend == "s3" and not (
            self.s3_endpoint and self.s3_access_key and self.s3_secret_key
        ):
            raise ValueError(
                "MEDLEDGER_STORAGE_BACKEND=s3 needs MEDLEDGER_S3_ENDPOINT, "
                "MEDLEDGER_S3_ACCESS_KEY and MEDLEDGER_S3_SECRET_KEY"
            )
        if self.kek_file is not None and self.kek_dir is not None:
            raise ValueError("set MEDLEDGER_KEK_FILE or MEDLEDGER_KEK_DIR, not both")
        return self


def _secret_file(path: Path, size: int = 32) -> bytes:
    """The bytes of a local secret file, created (mode 0600) with random bytes if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(os.urandom(size))
                handle.flush()
                os.fsync(handle.fileno())
            _log.warning("generated a local secret", file=str(path))
    return path.read_bytes()


def key_provider(settings: Settings) -> KeyProvider:
    if settings.kek_dir is not None:
        return LocalKeyFileProvider.from_directory(settings.kek_dir, settings.current_kek_id)
    path = settings.kek_file or settings.data_dir / "records-kek"
    if settings.kek_file is None:
        _secret_file(path)
    return LocalKeyFileProvider.from_file(path, settings.current_kek_id)


def study_key(settings: Settings) -> bytes:
    path = settings.study_key_file or settings.data_dir / "records-study.key"
    if settings.study_key_file is None:
        return parse_key_material(_secret_file(path), source=str(path))
    return parse_key_material(path.read_bytes(), source=str(path))


def signing_key(settings: Settings) -> SigningKey:
    passphrase = (
        settings.service_key_passphrase.get_secret_value().encode()
        if settings.service_key_passphrase
        else None
    )
    path = settings.service_key_file or settings.data_dir / "records-signing.key"
    if settings.service_key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_signing_key(path, SigningKey.generate(), passphrase=passphrase)
        _log.warning("generated the records signing key", key_file=str(path))
    return load_signing_key(path, passphrase=passphrase)


async def open_storage(settings: Settings) -> BlobStorage:
    if settings.storage_backend == "dir":
        return DirectoryBlobStorage(settings.blob_dir or settings.data_dir / "blobs")
    assert settings.s3_endpoint and settings.s3_access_key and settings.s3_secret_key
    return await S3BlobStorage.open(
        S3Config(
            endpoint=settings.s3_endpoint,
            bucket=settings.s3_bucket,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            ca_file=settings.s3_ca_file,
            part_size=settings.s3_part_size_bytes,
        )
    )


def build(settings: Settings) -> ServiceApp:
    if settings.malloc_tuning:
        limit_malloc_arenas()
    organisation = f"organisations/{settings.org_id}"
    registrar = NatsLedgerRegistrar(
        settings.chain_id,
        signing_key(settings),
        f"{organisation}/principals/{settings.service_principal_id}",
    )
    keys = key_provider(settings)
    studies = study_key(settings)
    api = RecordsApi()
    directory = NatsIdentityDirectory()
    authenticator: Authenticator = (
        load_static_tokens(settings.api_tokens_file)
        if settings.api_tokens_file
        else JwtAuthenticator(directory, audience=settings.token_audience)
    )
    app = ServiceApp(
        name="records",
        settings=settings,
        services=[records_grpc_service(api)],
        authenticator=authenticator,
        readiness_checks=[
            ReadinessCheck("records storage open", lambda: api.service is not None),
            ReadinessCheck("ledger outbox running", lambda: bool(tasks) and not tasks[0].done()),
        ],
    )
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    opened: list[MetadataStore | BlobStorage] = []

    async def start() -> None:
        store = await open_metadata_store(settings.database_dsn)
        opened.append(store)
        storage = await open_storage(settings)
        opened.append(storage)
        bus = await NatsBus.connect(
            settings.nats_servers,
            name=f"medledger-records-{settings.org_id}",
            creds_file=str(settings.nats_creds_file) if settings.nats_creds_file else None,
            tls_ca_file=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None,
        )
        app.bus = bus
        directory.bind(bus)
        if settings.api_tokens_file is None:
            await directory.start()
        await ensure_audit_stream(bus)
        registrar.client = LedgerClient(bus, settings.chain_id)
        service = RecordsService(
            storage=storage,
            store=store,
            keys=keys,
            consent=NatsConsentChecker(
                bus,
                subject=settings.consent_subject,
                timeout_seconds=settings.consent_timeout_seconds,
            ),
            ledger=registrar,
            audit=JetStreamRecordAudit(AuditPublisher(bus, settings.org_id, "records")),
            custodian=organisation,
            study_key=studies,
            chunk_size=settings.chunk_size_bytes,
            max_record_size=settings.max_record_bytes,
            registration_wait_seconds=settings.registration_wait_seconds,
        )
        # Writes a crash left half done (temp files, multipart uploads) are discarded.
        aborted = await service.cleanup_incomplete(settings.incomplete_upload_ttl_seconds)
        if aborted:
            _log.info("discarded incomplete uploads", count=aborted)
        api.service = service
        tasks.append(asyncio.create_task(service.run_outbox(stopping), name="records-outbox"))

    async def stop() -> None:
        stopping.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=settings.shutdown_grace_seconds)
        if api.service is not None:
            api.service.close()
        for resource in reversed(opened):
            await resource.close()
        await directory.stop()

    app.on_startup = [start]
    app.on_shutdown = [stop]
    return app
