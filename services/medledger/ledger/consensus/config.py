"""One replica's configuration: the genesis it runs, its index, and local timing and sizes."""

from __future__ import annotations

from dataclasses import dataclass

from medledger.ledger.consensus.errors import ConfigurationError
from medledger.ledger.consensus.types import Genesis


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """Timings are in seconds of the `now` the adapter passes in.

    `idle_interval` must be shorter than `round_timeout`: an idle leader proposes an
    empty block after it, so rounds do not time out while there is nothing to do.
    """

    genesis: Genesis
    index: int | None
    """This validator's index in the genesis set; None for one that joins later."""
    round_timeout: float = 1.5
    max_round_timeout: float = 30.0
    idle_interval: float = 1.0
    mempool_capacity: int = 20_000
    forward_batch_txs: int = 512
    forward_batch_bytes: int = 1024 * 1024
    fetch_retry_interval: float = 0.5
    finality_rebroadcast_interval: float = 1.0
    max_sync_blocks: int = 64

    def __post_init__(self) -> None:
        if self.index is not None and not 0 <= self.index < self.genesis.validators.size:
            raise ConfigurationError(f"validator index {self.index} is not in the validator set")
        if not 0 < self.idle_interval < self.round_timeout <= self.max_round_timeout:
            raise ConfigurationError("need 0 < idle_interval < round_timeout <= max_round_timeout")
        if self.mempool_capacity < 1 or self.forward_batch_txs < 1:
            raise ConfigurationError("mempool_capacity and forward_batch_txs must be positive")
        if self.fetch_retry_interval <= 0 or self.finality_rebroadcast_interval <= 0:
            raise ConfigurationError("retry intervals must be positive")
        if not 1 <= self.max_sync_blocks <= 256:
            raise ConfigurationError("max_sync_blocks must be in 1..256")
