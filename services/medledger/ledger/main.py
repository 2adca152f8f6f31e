"""Wiring of one validator process: settings, block store, NATS, consensus, gRPC."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from medledger.core.grpc_server import ReadinessCheck
from medledger.core.jwt_auth import JwtAuthenticator, NatsIdentityDirectory
from medledger.core.nats_bus import NatsBus
from medledger.core.service import ServiceApp
from medledger.core.settings import CommonSettings
from medledger.core.tokens import DEFAULT_AUDIENCE
from medledger.crypto.keys import load_signing_key
from medledger.ledger.api import ledger_grpc_service
from medledger.ledger.genesis import (
    DEFAULT_MEMPOOL_CAPACITY,
    consensus_genesis,
    load_genesis,
    replica_config,
    validator_index,
)
from medledger.ledger.node import Validator
from medledger.ledger.store import BlockStore
from medledger.ledger.transactions import LedgerTransactionRules


class Settings(CommonSettings):
    """Settings of a validator (MEDLEDGER_*)."""

    service_name = "ledger"

    grpc_port: int = 50054
    genesis_file: Path = Path("./.medledger/genesis.json")
    validator_key_file: Path = Path("./.medledger/validator.key")
    validator_key_passphrase: SecretStr | None = None
    token_audience: str = DEFAULT_AUDIENCE
    mempool_capacity: int = Field(default=DEFAULT_MEMPOOL_CAPACITY, ge=1, le=1_000_000)


def build(settings: Settings) -> ServiceApp:
    genesis = load_genesis(settings.genesis_file)
    passphrase = (
        settings.validator_key_passphrase.get_secret_value().encode()
        if settings.validator_key_passphrase
        else None
    )
    key = load_signing_key(settings.validator_key_file, passphrase=passphrase)
    index = validator_index(genesis, key.public_key)
    store = BlockStore(settings.data_dir / f"ledger-{genesis.chain_id}-{index}.db")
    validator = Validator(
        consensus_genesis(genesis),
        index,
        key,
        store,
        replica_config(genesis, index, settings.mempool_capacity),
        LedgerTransactionRules(genesis.chain_id, genesis.parameters.max_tx_bytes),
    )
    # Callers present identity-issued JWTs, checked against the issuing organisation's keys
    # from the on-chain registry (answered by any organisation's identity service).
    directory = NatsIdentityDirectory()
    authenticator = JwtAuthenticator(directory, audience=settings.token_audience)
    app = ServiceApp(
        name="ledger",
        settings=settings,
        services=[ledger_grpc_service(validator)],
        authenticator=authenticator,
        readiness_checks=[ReadinessCheck("block store open", lambda: store.is_open)],
    )

    async def start() -> None:
        bus = await NatsBus.connect(
            settings.nats_servers,
            name=f"medledger-ledger-{index}",
            creds_file=str(settings.nats_creds_file) if settings.nats_creds_file else None,
            tls_ca_file=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None,
        )
        app.bus = bus
        directory.bind(bus)
        await directory.start()
        await validator.start(bus)

    async def stop() -> None:
        await directory.stop()
        await validator.stop()
        store.close()

    app.on_startup = [start]
    app.on_shutdown = [stop]
    return app
