"""The consensus core's values: validator sets, blocks, certificates, messages and outputs.

All are frozen dataclasses. Messages arrive from a decoder and may hold garbage;
`medledger.ledger.consensus.wellformed` checks them before the replica looks inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from medledger.crypto import VerifyKey

HASH_SIZE = 32
BROADCAST = None
"""`Outbound.to` for a message meant for every other validator."""


@dataclass(frozen=True, slots=True)
class ValidatorInfo:
    """One validator: who runs it and the key its consensus signatures verify under."""

    name: str
    organisation: str
    public_key: bytes
    power: int = 1


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    """An ordered set of validators; a validator's index is its position here."""

    validators: tuple[ValidatorInfo, ...]
    _keys: tuple[VerifyKey, ...] = field(init=False, repr=False, compare=False)
    _hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from medledger.ledger.consensus.encoding import validator_set_hash

        if not self.validators:
            raise ValueError("a validator set needs at least one validator")
        if any(v.power < 1 for v in self.validators):
            raise ValueError("validator power must be at least 1")
        keys = tuple(VerifyKey(v.public_key) for v in self.validators)
        if len({k.raw for k in keys}) != len(keys):
            raise ValueError("validator public keys must be distinct")
        object.__setattr__(self, "_keys", keys)
        object.__setattr__(self, "_hash", validator_set_hash(self))

    @property
    def size(self) -> int:
        return len(self.validators)

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    @property
    def fault_tolerance(self) -> int:
        """f: the voting power that may be Byzantine, (total - 1) // 3."""
        return (self.total_power - 1) // 3

    @property
    def quorum(self) -> int:
        """Voting power of a quorum: total - f (2f + 1 when total = 3f + 1)."""
        return self.total_power - self.fault_tolerance

    @property
    def hash(self) -> bytes:
        return self._hash

    def key(self, index: int) -> VerifyKey:
        return self._keys[index]

    def power_of(self, signers: tuple[int, ...] | list[int]) -> int:
        return sum(self.validators[i].power for i in signers)

    def leader(self, round_: int) -> int:
        """Round-robin leader of `round_`."""
        return round_ % len(self.validators)


@dataclass(frozen=True, slots=True)
class Approval:
    """A current validator's signature approving a validator-set change."""

    public_key: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class ValidatorSetChange:
    """What a governance transaction asks for: a new set, approved by current validators.

    The core checks the approvals against the set of the epoch the transaction lands in
    (see consensus.epochs); the transaction rules only parse them."""

    validators: ValidatorSet
    approvals: tuple[Approval, ...]


@dataclass(frozen=True, slots=True)
class ChainParameters:
    """Consensus-critical limits every validator must agree on (fixed by the genesis)."""

    max_block_txs: int = 4000
    max_block_bytes: int = 8 * 1024 * 1024
    max_tx_bytes: int = 64 * 1024
    max_clock_drift_ms: int = 5_000


@dataclass(frozen=True, slots=True)
class Genesis:
    """What the consensus core needs from the genesis file."""

    chain_id: str
    validators: ValidatorSet
    parameters: ChainParameters
    timestamp_unix_ms: int


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """The hashed part of a block; `hash` is SHA-256 of its canonical encoding."""

    chain_id: str
    height: int
    round: int
    parent_hash: bytes
    tx_root: bytes
    validator_set_hash: bytes
    next_validator_set_hash: bytes
    proposer: int
    timestamp_unix_ms: int
    _hash: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def hash(self) -> bytes:
        if self._hash is None:
            from medledger.ledger.consensus.encoding import header_hash

            object.__setattr__(self, "_hash", header_hash(self))
        assert self._hash is not None
        return self._hash


@dataclass(frozen=True, slots=True)
class ValidatorSignature:
    """A validator's signature, naming the validator by index."""

    signer: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class QuorumCertificate:
    """Votes of a quorum for one block in one round. The genesis QC has no signatures."""

    block_hash: bytes
    height: int
    round: int
    signatures: tuple[ValidatorSignature, ...]


@dataclass(frozen=True, slots=True)
class TimeoutSignature:
    """A validator's timeout signature over (round, the round of its high QC)."""

    signer: int
    high_qc_round: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class TimeoutCertificate:
    """Timeouts of a quorum for one round, with the highest QC they reported."""

    round: int
    signatures: tuple[TimeoutSignature, ...]
    high_qc: QuorumCertificate


@dataclass(frozen=True, slots=True)
class Block:
    """A header, its transactions (opaque bytes) and the QC certifying its parent."""

    header: BlockHeader
    transactions: tuple[bytes, ...]
    justify: QuorumCertificate

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def round(self) -> int:
        return self.header.round

    @property
    def parent_hash(self) -> bytes:
        return self.header.parent_hash


@dataclass(frozen=True, slots=True)
class FinalityCertificate:
    """A quorum's FINALITY signatures over (chain id, height, block hash).

    What light clients and audit reports check, with only validator public keys.
    """

    chain_id: str
    height: int
    block_hash: bytes
    signatures: tuple[ValidatorSignature, ...]


@dataclass(frozen=True, slots=True)
class CertifiedBlock:
    """A final block with its finality certificate, as served to syncing peers."""

    block: Block
    certificate: FinalityCertificate


@dataclass(frozen=True, slots=True)
class SafetyState:
    """What a replica must have on disk before any vote or timeout it signs leaves it."""

    highest_voted_round: int
    highest_timeout_round: int
    high_qc: QuorumCertificate
    last_tc: TimeoutCertificate | None = None


# -- messages between validators ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    """The leader's block for its round; carries TC(round - 1) when QC(round - 1) is missing."""

    block: Block
    timeout_certificate: TimeoutCertificate | None
    signature: bytes


@dataclass(frozen=True, slots=True)
class Vote:
    """A vote for a block, sent to the leader of the next round."""

    block_hash: bytes
    height: int
    round: int
    signer: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class Timeout:
    """The signer gives up on `round`; carries its high QC and the TC that led into the round."""

    round: int
    high_qc: QuorumCertificate
    last_tc: TimeoutCertificate | None
    signer: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class SyncInfo:
    """Certificates that let a replica behind in rounds catch up."""

    high_qc: QuorumCertificate
    last_tc: TimeoutCertificate | None


@dataclass(frozen=True, slots=True)
class FinalityVote:
    """One validator's FINALITY signature for a block it committed."""

    height: int
    block_hash: bytes
    signer: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class TransactionBatch:
    """Client transactions a validator admitted, forwarded to the others' mempools."""

    transactions: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class BlockRequest:
    """Ask for a block by hash; `height` lets a peer find it among final blocks."""

    block_hash: bytes
    height: int


@dataclass(frozen=True, slots=True)
class BlockResponse:
    block: Block


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Ask for final blocks with their certificates from `from_height` upward."""

    from_height: int


@dataclass(frozen=True, slots=True)
class SyncResponse:
    blocks: tuple[CertifiedBlock, ...]


Message: TypeAlias = (
    Proposal
    | Vote
    | Timeout
    | SyncInfo
    | FinalityVote
    | FinalityCertificate
    | TransactionBatch
    | BlockRequest
    | BlockResponse
    | SyncRequest
    | SyncResponse
)


# -- what a call into the replica returns -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to send: to one validator index, or to all others when `to` is None."""

    to: int | None
    message: Message


@dataclass(frozen=True, slots=True)
class Rejection:
    """A submitted transaction that was not admitted, and why (UPPER_SNAKE_CASE reason)."""

    index: int
    tx_id: bytes | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Output:
    """Everything one call produced. The adapter, in this order: persists `safety_state`
    (durably) if set, appends `committed` and `certificates` to its store, then sends
    `messages`, and calls `tick` at `next_deadline`."""

    messages: tuple[Outbound, ...] = ()
    next_deadline: float | None = None
    safety_state: SafetyState | None = None
    committed: tuple[Block, ...] = ()
    certificates: tuple[FinalityCertificate, ...] = ()
    accepted: tuple[bytes, ...] = ()
    rejected: tuple[Rejection, ...] = ()
