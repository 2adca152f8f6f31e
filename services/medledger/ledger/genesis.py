"""The genesis file: chain id, the initial validators (one per organisation)
and consensus parameters, plus a generator for a local consortium's keys.

The genesis is public: it holds validators' public keys only. Each validator's
private key lives in its own PEM file, never in the genesis.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medledger.crypto import SigningKey, VerifyKey, sha256
from medledger.crypto.keys import save_signing_key
from medledger.ledger.consensus.config import ReplicaConfig
from medledger.ledger.consensus.types import ChainParameters, ValidatorInfo, ValidatorSet
from medledger.ledger.consensus.types import Genesis as ConsensusGenesis

DEFAULT_MEMPOOL_CAPACITY = 20_000

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class GenesisError(Exception):
    """The genesis file is missing, malformed or inconsistent."""

    reason = "BAD_GENESIS"


class GenesisValidator(BaseModel):
    """One validator of the initial set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="validator name, unique in the consortium")
    organisation: str = Field(description="the organisation (hospital) that runs it")
    public_key: str = Field(description="Ed25519 public key, 64 hex characters")
    power: int = Field(default=1, ge=1, le=1, description="voting power; equal for now")

    @field_validator("name", "organisation")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be a lowercase DNS label (a-z, 0-9, '-'; at most 63 chars)")
        return value

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        try:
            VerifyKey(bytes.fromhex(value))
        except ValueError as exc:
            raise ValueError("must be 64 hex characters") from exc
        except Exception as exc:
            raise ValueError(str(exc)) from exc
        return value.lower()

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(bytes.fromhex(self.public_key))


class ConsensusParameters(BaseModel):
    """Tunables every validator must agree on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_block_txs: int = Field(default=4000, ge=1, le=100_000)
    # A proposal travels as one NATS message: keep blocks under NATS's max_payload
    # (1 MiB by default; raise both together).
    max_block_bytes: int = Field(default=768 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_tx_bytes: int = Field(default=64 * 1024, ge=256, le=1024 * 1024)
    round_timeout_ms: int = Field(default=1500, ge=50)
    max_round_timeout_ms: int = Field(default=30_000, ge=50)
    idle_block_interval_ms: int = Field(default=1000, ge=10)
    max_clock_drift_ms: int = Field(default=5_000, ge=0)


class Genesis(BaseModel):
    """The content of genesis.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chain_id: str = Field(min_length=1, max_length=64)
    genesis_time_unix_ms: int = Field(ge=0)
    validators: tuple[GenesisValidator, ...] = Field(min_length=1)
    parameters: ConsensusParameters = ConsensusParameters()

    @field_validator("chain_id")
    @classmethod
    def _chain_id(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9._-]+$", value):
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Genesis:
        names = [v.name for v in self.validators]
        keys = [v.public_key for v in self.validators]
        orgs = [v.organisation for v in self.validators]
        if len(set(names)) != len(names):
            raise ValueError("validator names must be unique")
        if len(set(keys)) != len(keys):
            raise ValueError("validator public keys must be unique")
        if len(set(orgs)) != len(orgs):
            raise ValueError("one validator per organisation")
        return self

    @property
    def fault_tolerance(self) -> int:
        """f: how many Byzantine validators the set tolerates (n = 3f + 1)."""
        return (len(self.validators) - 1) // 3

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON, to pin which genesis a node runs."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return sha256(canonical.encode())


def load_genesis(path: Path | str) -> Genesis:
    """Read and validate a genesis file; GenesisError names the problem."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GenesisError(f"cannot read genesis file {path}: {exc.strerror}") from exc
    try:
        return Genesis.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
            for err in exc.errors()
        )
        raise GenesisError(f"invalid genesis file {path}: {problems}") from exc


def validator_key_path(out_dir: Path, organisation: str) -> Path:
    """Where `create_consortium` puts an organisation's validator key."""
    return out_dir / organisation / "validator.key"


def create_consortium(
    out_dir: Path,
    organisations: list[str],
    chain_id: str,
    genesis_time_unix_ms: int,
    passphrase: bytes | None = None,
    parameters: ConsensusParameters | None = None,
) -> Genesis:
    """Generate one validator key per organisation and the genesis naming them.

    Writes `<out_dir>/genesis.json` and `<out_dir>/<org>/validator.key`
    (PKCS#8 PEM, mode 0600, encrypted when a passphrase is given).
    """
    validators = []
    for organisation in organisations:
        key = SigningKey.generate()
        validator_key_path(out_dir, organisation).parent.mkdir(parents=True, exist_ok=True)
        save_signing_key(validator_key_path(out_dir, organisation), key, passphrase=passphrase)
        validators.append(
            GenesisValidator(
                name=f"{organisation}-validator",
                organisation=organisation,
                public_key=key.public_key.raw.hex(),
            )
        )
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_unix_ms=genesis_time_unix_ms,
        validators=tuple(validators),
        parameters=parameters or ConsensusParameters(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "genesis.json").write_text(genesis.to_json(), encoding="utf-8")
    return genesis


def consensus_genesis(genesis: Genesis) -> ConsensusGenesis:
    """The consensus core's view of a genesis file."""
    return ConsensusGenesis(
        chain_id=genesis.chain_id,
        validators=ValidatorSet(
            tuple(
                ValidatorInfo(
                    name=v.name,
                    organisation=v.organisation,
                    public_key=bytes.fromhex(v.public_key),
                    power=v.power,
                )
                for v in genesis.validators
            )
        ),
        parameters=ChainParameters(
            max_block_txs=genesis.parameters.max_block_txs,
            max_block_bytes=genesis.parameters.max_block_bytes,
            max_tx_bytes=genesis.parameters.max_tx_bytes,
            max_clock_drift_ms=genesis.parameters.max_clock_drift_ms,
        ),
        timestamp_unix_ms=genesis.genesis_time_unix_ms,
    )


def replica_config(
    genesis: Genesis, index: int, mempool_capacity: int = DEFAULT_MEMPOOL_CAPACITY
) -> ReplicaConfig:
    """Replica settings for validator `index`: timings from the genesis parameters,
    the mempool size from the validator's own settings."""
    p = genesis.parameters
    return ReplicaConfig(
        genesis=consensus_genesis(genesis),
        index=index,
        round_timeout=p.round_timeout_ms / 1000,
        max_round_timeout=p.max_round_timeout_ms / 1000,
        idle_interval=p.idle_block_interval_ms / 1000,
        mempool_capacity=mempool_capacity,
    )


def validator_index(genesis: Genesis, key: VerifyKey) -> int:
    """The index of the validator whose public key is `key`; GenesisError if none."""
    for index, validator in enumerate(genesis.validators):
        if validator.public_key == key.raw.hex():
            return index
    raise GenesisError(f"key {key.key_id} is not a validator key in this genesis")
