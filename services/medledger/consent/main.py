"""Wiring of the consent service: settings, decision index, ledger follower, NATS and gRPC."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from pydantic import Field, SecretStr

from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.consent.api import consent_grpc_service
from medledger.consent.bus_api import CHECK_SUBJECT, AuditingSink, ConsentBusApi
from medledger.consent.index import ConsentIndex, open_database
from medledger.consent.policy import BasePolicy, DecisionEngine
from medledger.consent.service import ConsentService, CustodianSigner
from medledger.core.audit_events import ensure_audit_stream
from medledger.core.auth import (
    Authenticator,
    RejectAll,
    load_static_tokens,
)
from medledger.core.grpc_server import ReadinessCheck
from medledger.core.jwt_auth import JwtAuthenticator, NatsIdentityDirectory
from medledger.core.logging import get_logger
from medledger.core.nats_bus import NatsBus
from medledger.core.service import ServiceApp
from medledger.core.settings import CommonSettings
from medledger.crypto.keys import load_signing_key
from medledger.ledgerclient import LedgerClient

_log = get_logger("medledger.consent.main")


class Settings(CommonSettings):
    """Settings of the consent service (MEDLEDGER_*)."""

    service_name = "consent"

    grpc_port: int = 50052
    chain_id: str = "medledger"
    custodian_principal: str = ""
    custodian_key_file: Path | None = None
    custodian_key_passphrase: SecretStr | None = None
    api_tokens_file: Path | None = None
    jwt_auth: bool = True
    break_glass_default_seconds: int = 3600
    break_glass_max_seconds: int = 4 * 3600
    break_glass_overrides_consent: bool = True
    decision_cache_patients: int | None = Field(default=None, ge=1)
    """Bound on the patients whose compiled consents are held in memory (an LRU whose misses
    read the store); unset holds every patient, loaded at start."""
    check_concurrency: int = Field(default=64, ge=1)
    # Where consent.check is served; one NATS shared by several organisations needs one
    # subject per organisation so each organisation's records ask its own consent service.
    check_subject: str = CHECK_SUBJECT
    """``consent.check`` questions that need the store, answered at once at most."""


def build(settings: Settings) -> ServiceApp:
    index = ConsentIndex(
        open_database(settings.database_dsn), cache_size=settings.decision_cache_patients
    )
    engine = DecisionEngine(
        BasePolicy(break_glass_overrides_consent=settings.break_glass_overrides_consent)
    )
    custodian = None
    if settings.custodian_key_file is not None:
        passphrase = (
            settings.custodian_key_passphrase.get_secret_value().encode()
            if settings.custodian_key_passphrase
            else None
        )
        custodian = CustodianSigner(
            settings.custodian_principal,
            load_signing_key(settings.custodian_key_file, passphrase=passphrase),
        )
    directory: NatsIdentityDirectory | None = None
    authenticator: Authenticator = RejectAll()
    if settings.api_tokens_file is not None:
        authenticator = load_static_tokens(settings.api_tokens_file)
    app = ServiceApp(name="consent", settings=settings, authenticator=authenticator)
    tasks: list[asyncio.Task[None]] = []
    parts: dict[str, object] = {}
    warmed = False

    async def start() -> None:
        nonlocal directory, warmed
        bus = await NatsBus.connect(
            settings.nats_servers,
            name=f"medledger-consent-{settings.org_id}",
            creds_file=str(settings.nats_creds_file) if settings.nats_creds_file else None,
            tls_ca_file=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None,
        )
        app.bus = bus
        if settings.api_tokens_file is None and settings.jwt_auth:
            directory = NatsIdentityDirectory(bus)
            await directory.start()
            app.authenticator = JwtAuthenticator(directory)
        await ensure_audit_stream(bus)
        ledger = LedgerClient(bus, settings.chain_id)
        index.set_validators(await ledger.validator_set())
        sink = AuditingSink(bus, settings.org_id)
        sink.start()
        service = ConsentService(
            index,
            engine,
            sink,
            ledger=ledger,
            custodian=custodian,
            break_glass_default_seconds=settings.break_glass_default_seconds,
            break_glass_max_seconds=settings.break_glass_max_seconds,
        )
        await service.load_views()
        # The compiled index lives as long as the process: out of the collector's sight, a
        # full collection never walks it in the middle of a decision.
        gc.freeze()
        warmed = True
        app.services = [consent_grpc_service(service)]
        bus_api = ConsentBusApi(
            service,
            bus,
            max_concurrency=settings.check_concurrency,
            subject=settings.check_subject,
        )
        await bus_api.start()
        parts.update(sink=sink, bus_api=bus_api)
        tasks.append(asyncio.create_task(_follow(service, ledger)))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bus_api = parts.get("bus_api")
        if isinstance(bus_api, ConsentBusApi):
            await bus_api.stop()
        sink = parts.get("sink")
        if isinstance(sink, AuditingSink):
            await sink.drain()
        if directory is not None:
            await directory.stop()
        await asyncio.to_thread(index.close)

    app.on_startup = [start]
    app.on_shutdown = [stop]
    app.readiness_checks = [
        ReadinessCheck("decision index loaded", lambda: warmed and index.height >= 0)
    ]
    return app


class BlockSource(Protocol):
    def blocks(self, start_height: int = 0) -> AsyncIterator[ledger_pb.Block]: ...


async def _follow(service: ConsentService, ledger: BlockSource, retry_seconds: float = 1.0) -> None:
    """Apply final blocks for ever; a failure is logged and the follower restarts. A cancel
    ends it at once, even during the pause before a restart: swallowing it there kept
    shutdown waiting for ever whenever the ledger was failing (as it is once the bus closes)."""
    while True:
        try:
            async for block in ledger.blocks(service.index.next_height):
                await service.apply_block(block)
        except Exception as exc:
            _log.error("block follower failed, restarting", error=type(exc).__name__)
        await asyncio.sleep(retry_seconds)
