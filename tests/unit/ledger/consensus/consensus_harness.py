"""Replicas wired in memory with time stepped by hand, and a forge for hand-made
blocks and certificates signed with the validators' keys."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from medledger.crypto import SigningContext, SigningKey, sha256
from medledger.ledger.consensus import (
    Block,
    BlockHeader,
    ChainParameters,
    FinalityCertificate,
    Genesis,
    Message,
    Output,
    Proposal,
    QuorumCertificate,
    Replica,
    ReplicaConfig,
    SafetyState,
    Timeout,
    TimeoutCertificate,
    TimeoutSignature,
    ValidatorInfo,
    ValidatorSet,
    ValidatorSetChange,
    ValidatorSignature,
    Vote,
    genesis_block,
)
from medledger.ledger.consensus.encoding import (
    finality_payload,
    proposal_payload,
    timeout_payload,
    vote_payload,
)
from medledger.ledger.sim.store import MemoryLedgerStore
from medledger.merkle import root_hash

T0 = 1_700_000_000.0
CHAIN = "test-chain"


class Rules:
    """tx = b"ok:" + anything is valid; anything else is not. Counts validations."""

    def __init__(self) -> None:
        self.validations = 0

    def tx_id(self, tx: bytes) -> bytes:
        return sha256(tx)

    def validate(self, tx: bytes) -> str | None:
        self.validations += 1
        return None if tx.startswith(b"ok:") else "not ok"

    def validator_set_change(self, tx: bytes) -> ValidatorSetChange | None:
        return None


def make_keys(n: int, tag: bytes = b"k") -> list[SigningKey]:
    return [SigningKey.from_seed(sha256(tag, bytes([i]))) for i in range(n)]


def make_validator_set(keys: list[SigningKey]) -> ValidatorSet:
    return ValidatorSet(
        tuple(ValidatorInfo(f"v{i}", f"org{i}", key.public_key.raw) for i, key in enumerate(keys))
    )


def make_genesis(keys: list[SigningKey], **params: int) -> Genesis:
    return Genesis(CHAIN, make_validator_set(keys), ChainParameters(**params), int(T0 * 1000))


@dataclass
class Forge:
    """Signs anything any validator could sign: for hand-built scenarios."""

    keys: list[SigningKey]
    genesis: Genesis

    @property
    def root(self) -> Block:
        return genesis_block(self.genesis)

    def block(
        self,
        parent: Block,
        round_: int,
        txs: tuple[bytes, ...] = (),
        justify: QuorumCertificate | None = None,
        timestamp_ms: int | None = None,
        chain_id: str = CHAIN,
    ) -> Block:
        validators = self.genesis.validators
        header = BlockHeader(
            chain_id=chain_id,
            height=parent.height + 1,
            round=round_,
            parent_hash=parent.hash,
            tx_root=root_hash(list(txs)),
            validator_set_hash=validators.hash,
            next_validator_set_hash=validators.hash,
            proposer=validators.leader(round_),
            timestamp_unix_ms=timestamp_ms or parent.header.timestamp_unix_ms + 1,
        )
        return Block(header, txs, justify or self.qc(parent))

    def qc(self, block: Block, signers: range | list[int] | None = None) -> QuorumCertificate:
        if block.height == 0:
            return block.justify
        chosen = list(signers) if signers is not None else self._quorum()
        payload = vote_payload(CHAIN, block.hash, block.height, block.round)
        sigs = tuple(
            ValidatorSignature(i, self.keys[i].sign(SigningContext.VOTE, payload)) for i in chosen
        )
        return QuorumCertificate(block.hash, block.height, block.round, sigs)

    def tc(self, round_: int, high_qc: QuorumCertificate) -> TimeoutCertificate:
        payload = timeout_payload(CHAIN, round_, high_qc.round)
        sigs = tuple(
            TimeoutSignature(i, high_qc.round, self.keys[i].sign(SigningContext.TIMEOUT, payload))
            for i in self._quorum()
        )
        return TimeoutCertificate(round_, sigs, high_qc)

    def proposal(self, block: Block, tc: TimeoutCertificate | None = None) -> Proposal:
        key = self.keys[block.header.proposer]
        signature = key.sign(
            SigningContext.PROPOSAL, proposal_payload(CHAIN, block.hash, block.round)
        )
        return Proposal(block, tc, signature)

    def certificate(self, block: Block, chain_id: str = CHAIN) -> FinalityCertificate:
        payload = finality_payload(chain_id, block.height, block.hash)
        sigs = tuple(
            ValidatorSignature(i, self.keys[i].sign(SigningContext.FINALITY, payload))
            for i in self._quorum()
        )
        return FinalityCertificate(chain_id, block.height, block.hash, sigs)

    def _quorum(self) -> list[int]:
        return list(range(self.genesis.validators.quorum))


@dataclass
class Cluster:
    """n replicas; messages are delivered instantly in FIFO order, time moves on ticks."""

    n: int = 4
    config: dict[str, float | int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = make_keys(self.n)
        self.genesis = make_genesis(self.keys, **self.params)
        self.forge = Forge(self.keys, self.genesis)
        self.rules = Rules()
        self.now = T0
        self.stores = [MemoryLedgerStore(self.rules) for _ in range(self.n)]
        self.safety: list[SafetyState | None] = [None] * self.n
        self.replicas: list[Replica | None] = [self._make(i) for i in range(self.n)]
        self.queue: deque[tuple[int, int, Message]] = deque()
        self.drop: Callable[[int, int, Message], bool] = lambda s, d, m: False
        self.sent: list[tuple[int, int | None, Message]] = []
        self.certificates: list[list[FinalityCertificate]] = [[] for _ in range(self.n)]

    def _make(self, i: int) -> Replica:
        config = ReplicaConfig(genesis=self.genesis, index=i, **self.config)  # type: ignore[arg-type]
        return Replica(config, self.keys[i], self.stores[i], self.rules, self.safety[i])

    def replica(self, i: int) -> Replica:
        replica = self.replicas[i]
        assert replica is not None
        return replica

    def start(self) -> None:
        for i, replica in enumerate(self.replicas):
            if replica is not None:
                self.apply(i, replica.start(self.now))

    def apply(self, i: int, output: Output) -> Output:
        for outbound in output.messages:
            # What the adapter relies on: the safety state covering a vote or timeout
            # is handed over in the same output, before the message may be sent.
            message = outbound.message
            if isinstance(message, Vote):
                assert output.safety_state is not None
                assert output.safety_state.highest_voted_round >= message.round
            if isinstance(message, Timeout) and message.signer == i:
                state = output.safety_state or self.safety[i]
                assert state is not None
                assert state.highest_timeout_round >= message.round
        if output.safety_state is not None:
            self.safety[i] = output.safety_state
        self.stores[i].apply(output)
        self.certificates[i].extend(output.certificates)
        for outbound in output.messages:
            self.sent.append((i, outbound.to, outbound.message))
            targets = [j for j in range(self.n) if j != i] if outbound.to is None else [outbound.to]
            for j in targets:
                self.queue.append((i, j, outbound.message))
        return output

    def deliver(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            source, destination, message = self.queue.popleft()
            replica = self.replicas[destination]
            if replica is None or self.drop(source, destination, message):
                continue
            self.apply(destination, replica.receive(source, message, self.now))
        raise AssertionError("message storm")

    def step(self, seconds: float) -> None:
        self.now += seconds
        for i, replica in enumerate(self.replicas):
            if replica is not None:
                self.apply(i, replica.tick(self.now))
        self.deliver()

    def run(self, seconds: float, step: float = 0.05) -> None:
        self.deliver()
        end = self.now + seconds
        while self.now < end:
            self.step(step)

    def run_until(self, condition: Callable[[], bool], seconds: float = 30.0) -> None:
        self.deliver()
        end = self.now + seconds
        while not condition():
            if self.now >= end:
                raise AssertionError("condition not reached in simulated time")
            self.step(0.05)

    def submit(self, i: int, txs: list[bytes]) -> Output:
        out = self.apply(i, self.replica(i).submit(txs, self.now))
        self.deliver()
        return out

    def crash(self, i: int) -> None:
        self.replicas[i] = None

    def restart(self, i: int, restored: bool = True) -> None:
        if not restored:
            self.safety[i] = None
        self.replicas[i] = self._make(i)
        self.apply(i, self.replica(i).start(self.now))

    def final_txs(self, i: int) -> list[bytes]:
        store = self.stores[i]
        txs: list[bytes] = []
        for height in range(1, store.committed_height() + 1):
            block = store.block_at(height)
            assert block is not None
            txs.extend(block.transactions)
        return txs
