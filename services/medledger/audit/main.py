"""Wiring of the audit service: store, log, signing key, JetStream ingest, checkpoints, gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pydantic import Field, SecretStr

from medledger._gen.ledger.v1 import ledger_service_pb2
from medledger.audit.api import AuditServicer, audit_grpc_service
from medledger.audit.checkpointer import CheckpointScheduler
from medledger.audit.ingest import EventIngestor
from medledger.audit.service import AuditLog, LogIdentity
from medledger.audit.store import open_store
from medledger.core.audit_events import AuditPublisher
from medledger.core.auth import Authenticator, load_static_tokens
from medledger.core.grpc_server import ReadinessCheck
from medledger.core.jwt_auth import JwtAuthenticator, NatsIdentityDirectory
from medledger.core.logging import get_logger
from medledger.core.nats_bus import NatsBus
from medledger.core.service import ServiceApp
from medledger.core.settings import CommonSettings
from medledger.crypto import SigningKey
from medledger.crypto.keys import load_signing_key, save_signing_key
from medledger.ledgerclient import LedgerClient, LedgerClientError

_log = get_logger("medledger.audit")


class Settings(CommonSettings):
    """Settings of the audit service (MEDLEDGER_*)."""

    service_name = "audit"

    grpc_port: int = 50055
    checkpoint_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    signing_key_file: Path | None = None
    signing_key_passphrase: SecretStr | None = None
    signer_principal_id: str = "audit"
    chain_id: str = ""
    anchor_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    ingest_batch: int = Field(default=2000, ge=1, le=10_000)
    stream_replicas: int = Field(default=1, ge=1, le=5)
    api_tokens_file: Path | None = None


def signing_key(settings: Settings) -> SigningKey:
    """The checkpoint key: the configured file, or one generated once under the data dir."""
    passphrase = (
        settings.signing_key_passphrase.get_secret_value().encode()
        if settings.signing_key_passphrase
        else None
    )
    path = settings.signing_key_file or settings.data_dir / "audit-signing.key"
    if settings.signing_key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_signing_key(path, SigningKey.generate(), passphrase=passphrase)
        _log.warning("audit.signing_key_generated", key_file=str(path))
    return load_signing_key(path, passphrase=passphrase)


def build(settings: Settings) -> ServiceApp:
    organisation = f"organisations/{settings.org_id}"
    key = signing_key(settings)
    identity = LogIdentity(
        log_id=f"{settings.org_id}/audit",
        signer=f"{organisation}/principals/{settings.signer_principal_id}",
        key=key,
    )
    log = AuditLog(open_store(settings.database_dsn), identity)
    ledger_holder: list[LedgerClient] = []

    async def validators() -> ledger_service_pb2.ValidatorSet | None:
        if not ledger_holder:
            return None
        try:
            return await ledger_holder[0].validator_set()
        except LedgerClientError:
            return None

    servicer = AuditServicer(log, settings.org_id, validators=validators)
    directory = NatsIdentityDirectory()
    authenticator: Authenticator = (
        load_static_tokens(settings.api_tokens_file)
        if settings.api_tokens_file
        else JwtAuthenticator(directory)
    )
    app = ServiceApp(
        name="audit",
        settings=settings,
        services=[audit_grpc_service(servicer)],
        authenticator=authenticator,
        readiness_checks=[ReadinessCheck("audit log open", lambda: log.is_open)],
    )
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    scheduler_holder: list[CheckpointScheduler] = []
    ingestor_holder: list[EventIngestor] = []

    async def start() -> None:
        await log.open()
        bus = await NatsBus.connect(
            settings.nats_servers,
            name=f"medledger-audit-{settings.org_id}",
            creds_file=str(settings.nats_creds_file) if settings.nats_creds_file else None,
            tls_ca_file=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None,
        )
        app.bus = bus
        directory.bind(bus)
        if settings.api_tokens_file is None:
            await directory.start()
        ledger = LedgerClient(bus, settings.chain_id) if settings.chain_id else None
        if ledger is not None:
            ledger_holder.append(ledger)
        ingestor = EventIngestor(
            bus,
            log,
            settings.org_id,
            batch=settings.ingest_batch,
            replicas=settings.stream_replicas,
        )
        await ingestor.start()
        ingestor_holder.append(ingestor)
        servicer.publisher = AuditPublisher(bus, settings.org_id, "audit")
        scheduler = CheckpointScheduler(
            log,
            ledger,
            interval=settings.checkpoint_interval_seconds,
            anchor_timeout=settings.anchor_timeout_seconds,
        )
        scheduler_holder.append(scheduler)
        tasks.append(asyncio.create_task(ingestor.run(stopping)))
        tasks.append(asyncio.create_task(scheduler.run(stopping)))

    async def stop() -> None:
        stopping.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=settings.shutdown_grace_seconds)
        for ingestor in ingestor_holder:
            await ingestor.stop()
        for scheduler in scheduler_holder:
            await scheduler.stop()
        await directory.stop()
        await log.close()

    app.on_startup = [start]
    app.on_shutdown = [stop]
    return app
