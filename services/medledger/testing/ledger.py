"""A local ledger for tests and the local stack: validators of a generated
consortium running in-process on one event loop, over a real NATS server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from medledger._gen.common.v1 import record_registration_pb2, transaction_pb2
from medledger._gen.ledger.v1 import ledger_service_pb2
from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningKey
from medledger.crypto.keys import load_signing_key
from medledger.ledger.genesis import (
    ConsensusParameters,
    Genesis,
    consensus_genesis,
    create_consortium,
    replica_config,
    validator_key_path,
)
from medledger.ledger.node import Validator
from medledger.ledger.reads import validator_set_pb
from medledger.ledger.store import BlockStore
from medledger.ledger.transactions import LedgerTransactionRules
from medledger.ledgerclient import LedgerClient, sign_transaction

# Short timings so tests finalize quickly; production defaults live in the genesis.
FAST_PARAMETERS = ConsensusParameters(
    round_timeout_ms=1000, max_round_timeout_ms=5000, idle_block_interval_ms=200
)


@dataclass
class LocalLedger:
    """`size` validators of chain `chain_id`, their data under `directory`."""

    nats_url: str
    directory: Path
    size: int = 4
    chain_id: str = "medledger-test"
    parameters: ConsensusParameters = FAST_PARAMETERS
    mempool_capacity: int = 20_000
    genesis: Genesis = field(init=False)
    validators: list[Validator | None] = field(init=False, default_factory=list)
    _buses: list[NatsBus | None] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        genesis_path = self.directory / "genesis.json"
        if genesis_path.exists():
            from medledger.ledger.genesis import load_genesis

            self.genesis = load_genesis(genesis_path)
        else:
            self.genesis = create_consortium(
                self.directory,
                [f"org-{chr(ord('a') + i)}" for i in range(self.size)],
                self.chain_id,
                int(time.time() * 1000),
                parameters=self.parameters,
            )
        self.validators = [None] * self.size
        self._buses = [None] * self.size

    @property
    def genesis_path(self) -> Path:
        return self.directory / "genesis.json"

    @property
    def organisations(self) -> list[str]:
        return [v.organisation for v in self.genesis.validators]

    def validator_key(self, index: int) -> SigningKey:
        return load_signing_key(validator_key_path(self.directory, self.organisations[index]))

    @property
    def validator_set(self) -> ledger_service_pb2.ValidatorSet:
        return validator_set_pb(consensus_genesis(self.genesis).validators)

    async def start(self) -> None:
        for index in range(self.size):
            await self.start_validator(index)

    async def start_validator(self, index: int) -> Validator:
        if self.validators[index] is not None:
            raise RuntimeError(f"validator {index} is already running")
        store = BlockStore(self.directory / f"validator-{index}.db")
        validator = Validator(
            consensus_genesis(self.genesis),
            index,
            self.validator_key(index),
            store,
            replica_config(self.genesis, index, self.mempool_capacity),
            LedgerTransactionRules(self.genesis.chain_id, self.genesis.parameters.max_tx_bytes),
        )
        bus = await NatsBus.connect(self.nats_url, name=f"medledger-validator-{index}")
        await validator.start(bus)
        self.validators[index] = validator
        self._buses[index] = bus
        return validator

    async def stop_validator(self, index: int) -> None:
        validator, bus = self.validators[index], self._buses[index]
        self.validators[index] = None
        self._buses[index] = None
        if validator is not None:
            await validator.stop()
            validator.store.close()
        if bus is not None:
            await bus.close()

    async def stop(self) -> None:
        for index in range(self.size):
            await self.stop_validator(index)

    def client(self, bus: NatsBus) -> LedgerClient:
        return LedgerClient(bus, self.genesis.chain_id)

    def running(self) -> list[Validator]:
        return [v for v in self.validators if v is not None]


class ValidatorProcess:
    """A validator run the way production runs it: `medledger serve ledger` in its own
    process, configured by MEDLEDGER_* variables."""

    def __init__(
        self,
        genesis_dir: Path,
        organisation: str,
        nats_urls: list[str],
        data_dir: Path,
        grpc_port: int | None = None,
    ) -> None:
        import os
        import sys

        from medledger.testing.processes import LoggedProcess, free_port

        self.organisation = organisation
        self.grpc_port = grpc_port or free_port()
        self.data_dir = data_dir
        env = dict(os.environ)
        env.update(
            {
                "MEDLEDGER_ORG_ID": organisation,
                "MEDLEDGER_DATA_DIR": str(data_dir),
                "MEDLEDGER_GRPC_PORT": str(self.grpc_port),
                "MEDLEDGER_NATS_URL": ",".join(nats_urls),
                "MEDLEDGER_GENESIS_FILE": str(genesis_dir / "genesis.json"),
                "MEDLEDGER_VALIDATOR_KEY_FILE": str(validator_key_path(genesis_dir, organisation)),
                "MEDLEDGER_LOG_LEVEL": "INFO",
                "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": "3",
            }
        )
        self.process = LoggedProcess(
            [sys.executable, "-m", "medledger.cli.main", "serve", "ledger"],
            data_dir / f"{organisation}-validator.log",
            env=env,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 30.0) -> None:
        self.process.start()
        self.process.wait_until(
            self.serving, timeout=timeout, what=f"{self.organisation} validator"
        )

    def serving(self) -> bool:
        """True when the process answers gRPC health with SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()

    def store_path(self, chain_id: str, index: int) -> Path:
        return self.data_dir / f"ledger-{chain_id}-{index}.db"


def record_tx(chain_id: str, key: SigningKey, nonce: int) -> bytes:
    """A signed record-registration transaction carrying no PHI, for load and tests."""
    body = transaction_pb2.TransactionBody(
        chain_id=chain_id,
        nonce=nonce,
        created_at_unix_ms=1_700_000_000_000,
        signer="organisations/org-a/principals/records",
        record_registration=record_registration_pb2.RecordRegistration(
            record=f"records/r{nonce}",
            patient_pseudonym="patients/p-1",
            ciphertext_sha256=bytes(32),
            size_bytes=nonce,
            custodian="organisations/org-a",
        ),
    )
    return sign_transaction(body, key)
