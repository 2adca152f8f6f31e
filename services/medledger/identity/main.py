"""Wiring of the identity service: settings, store, keys, ledger client, NATS, gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pydantic import Field, SecretStr

from medledger._gen.common.v1 import audit_event_pb2
from medledger.core.grpc_server import ReadinessCheck
from medledger.core.jwt_auth import JwtAuthenticator
from medledger.core.logging import get_logger
from medledger.core.nats_bus import BusSubscription, BusUnavailable, NatsBus
from medledger.core.service import ServiceApp
from medledger.core.settings import CommonSettings
from medledger.core.tokens import DEFAULT_AUDIENCE, TokenIssuer
from medledger.crypto import SigningKey
from medledger.crypto.keys import load_signing_key
from medledger.identity.api import identity_grpc_service
from medledger.identity.audit import JetStreamAuditSink
from medledger.identity.responders import LocalIdentityDirectory, serve_directory
from medledger.identity.service import IdentityConfig, IdentityService
from medledger.identity.store import IdentityStore
from medledger.ledgerclient import LedgerClient

_log = get_logger("medledger.identity")


class Settings(CommonSettings):
    """Settings of the identity service (MEDLEDGER_*)."""

    service_name = "identity"

    grpc_port: int = 50051
    chain_id: str = Field(default="medledger", min_length=1, max_length=64)
    service_key_file: Path = Path("./.medledger/identity.key")
    service_key_passphrase: SecretStr | None = None
    service_principal_id: str = "identity"
    bootstrap_key_file: Path | None = None
    token_audience: str = DEFAULT_AUDIENCE
    token_lifetime_seconds: int = Field(default=300, ge=10, le=3600)
    max_token_lifetime_seconds: int = Field(default=3600, ge=10, le=86_400)
    challenge_ttl_seconds: int = Field(default=60, ge=5, le=600)
    commit_timeout_seconds: float = Field(default=15.0, gt=0, le=300)


def _key(path: Path, passphrase: SecretStr | None) -> SigningKey:
    secret = passphrase.get_secret_value().encode() if passphrase else None
    return load_signing_key(path, passphrase=secret)


def build(settings: Settings) -> ServiceApp:
    organisation = f"organisations/{settings.org_id}"
    service_key = _key(settings.service_key_file, settings.service_key_passphrase)
    bootstrap_key = (
        load_signing_key(settings.bootstrap_key_file) if settings.bootstrap_key_file else None
    )
    store = IdentityStore(settings.database_dsn)
    issuer = TokenIssuer(
        organisation,
        service_key,
        audience=settings.token_audience,
        lifetime_seconds=min(settings.token_lifetime_seconds, settings.max_token_lifetime_seconds),
        max_lifetime_seconds=settings.max_token_lifetime_seconds,
    )
    config = IdentityConfig(
        organisation_id=settings.org_id,
        chain_id=settings.chain_id,
        service_principal=f"{organisation}/principals/{settings.service_principal_id}",
        token_lifetime_seconds=settings.token_lifetime_seconds,
        max_token_lifetime_seconds=settings.max_token_lifetime_seconds,
        challenge_ttl_seconds=settings.challenge_ttl_seconds,
        commit_timeout_seconds=settings.commit_timeout_seconds,
    )
    sink = _DeferredSink()
    service = IdentityService(config, store, None, service_key, issuer, sink)
    app = ServiceApp(
        name="identity",
        settings=settings,
        services=[identity_grpc_service(service, bootstrap_key)],
        authenticator=JwtAuthenticator(
            LocalIdentityDirectory(service), audience=settings.token_audience
        ),
        readiness_checks=[
            ReadinessCheck("view following the chain", lambda: follower.running),
        ],
    )
    follower = _Follower(service)
    subscriptions: list[BusSubscription] = []

    async def start() -> None:
        bus = await NatsBus.connect(
            settings.nats_servers,
            name=f"medledger-identity-{settings.org_id}",
            creds_file=str(settings.nats_creds_file) if settings.nats_creds_file else None,
            tls_ca_file=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None,
        )
        app.bus = bus
        sink.target = JetStreamAuditSink(bus, settings.org_id)
        service.attach_ledger(LedgerClient(bus, settings.chain_id))
        subscriptions.extend(await serve_directory(bus, service))
        follower.start()

    async def stop() -> None:
        await follower.stop()
        for subscription in subscriptions:
            await subscription.unsubscribe()
        store.close()

    app.on_startup = [start]
    app.on_shutdown = [stop]
    return app


class _DeferredSink:
    """The audit sink before the bus is connected: nothing can be emitted yet."""

    def __init__(self) -> None:
        self.target: JetStreamAuditSink | None = None

    async def emit(self, event: audit_event_pb2.AuditEvent) -> None:
        if self.target is None:
            raise BusUnavailable("audit sink used before the bus is connected")
        await self.target.emit(event)


class _Follower:
    """Keeps the registry view following final blocks; restarts after a ledger failure."""

    def __init__(self, service: IdentityService) -> None:
        self._service = service
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="identity-view")

    async def _run(self) -> None:
        while True:
            try:
                await self._service.follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.error("view follower failed; retrying", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
