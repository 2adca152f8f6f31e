"""Deterministic simulation of a validator set running the real consensus replica.

One seed drives everything: the fault plan, the network, the workload, the keys.
Phase 1 injects faults (loss up to 30%, delay, duplication, reordering, partitions,
crashes with restarts from the surviving store, up to f Byzantine validators) under a
transaction load; phase 2 heals the network, restarts crashed validators, and checks
that every valid transaction becomes final, with certificates, at every honest
validator within a bound. Agreement, validity and certificate validity are checked
on every output as it happens.
"""

from __future__ import annotations

import heapq
import random
import traceback
from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum
from typing import cast

from medledger.crypto import SigningContext, SigningKey, sha256
from medledger.ledger.consensus import (
    Approval,
    ChainParameters,
    Genesis,
    Message,
    Output,
    Replica,
    ReplicaConfig,
    SafetyState,
    ValidatorInfo,
    ValidatorSet,
    ValidatorSetChange,
    genesis_qc,
)
from medledger.ledger.consensus.epochs import approval_payload
from medledger.ledger.sim.adversary import Adversary, Behaviour
from medledger.ledger.sim.campaign import Campaign, CampaignKind, make_campaign
from medledger.ledger.sim.checker import SafetyViolationError, StateChecker
from medledger.ledger.sim.coalition import Coalition
from medledger.ledger.sim.network import LinkConditions, SimulatedNetwork
from medledger.ledger.sim.store import MemoryLedgerStore
from medledger.ledger.sim.workload import SimTransactionRules, Workload

START_TIME = 1_700_000_000.0
LIVENESS_BOUND = 60.0
CLIENT_RETRY_INTERVAL = 2.0
CHECK_INTERVAL = 0.25
MAX_EVENTS = 2_000_000
CAMPAIGN_DELAY = 0.002
CAMPAIGN_SHARE = 0.4
"""Of the runs with a Byzantine validator, the share given to a targeted campaign."""


class Outcome(IntEnum):
    """Also the process exit code of `medledger ledger simulate`."""

    OK = 0
    SAFETY = 2
    LIVENESS = 3
    CRASH = 4


@dataclass(frozen=True, slots=True)
class SimulationResult:
    seed: int
    validators: int
    byzantine: tuple[int, ...]
    outcome: Outcome
    detail: str
    faults: Counter[str]
    events: Counter[str]
    dropped: Counter[str]
    simulated_seconds: float
    final_height: int

    def replay_command(self) -> str:
        return (
            f"medledger ledger simulate --seed {self.seed} --count 1"
            f" --validators {self.validators} --byzantine {len(self.byzantine)}"
        )


@dataclass(slots=True)
class _Node:
    index: int
    key: SigningKey
    config: ReplicaConfig
    store: MemoryLedgerStore
    adversary: Adversary | None
    replica: Replica | None = None
    safety: SafetyState | None = None
    token: int = 0


@dataclass(order=True, slots=True)
class _Event:
    time: float
    sequence: int
    kind: str = field(compare=False)
    node: int = field(compare=False, default=-1)
    payload: object = field(compare=False, default=None)


class Simulation:
    """One seeded run. `run()` never raises: every failure becomes an Outcome."""

    def __init__(
        self,
        seed: int,
        validators: int = 4,
        byzantine: int | None = None,
        campaign: CampaignKind | None = None,
        reconfigure: bool = False,
    ) -> None:
        """`campaign` forces that campaign (with one Byzantine validator at least) instead
        of the seed's own choice. `reconfigure` adds a validator that joins mid-run and
        changes the set through governance (removing one genesis validator), with every
        validator honest."""
        if validators < 1:
            raise ValueError("need at least one validator")
        self.seed = seed
        # Determinism, not secrecy: the seed replays the run.
        self.rng = random.Random(seed)  # noqa: S311
        rng = self.rng
        self.n = validators
        self.f = (validators - 1) // 3
        if byzantine is not None and not 0 <= byzantine <= self.f:
            raise ValueError(f"at most f = {self.f} Byzantine validators for n = {validators}")
        b = rng.randint(0, self.f) if byzantine is None else byzantine
        if campaign is not None:
            b = max(b, 1)
        if reconfigure:
            b = 0
        self.reconfigure = reconfigure
        total = validators + (1 if reconfigure else 0)
        self.byzantine = tuple(sorted(rng.sample(range(validators), b)))
        self.honest = [i for i in range(total) if i not in self.byzantine]
        self.faults: Counter[str] = Counter()
        self.network = SimulatedNetwork(rng, total, self.faults)

        seed_bytes = seed.to_bytes(16, "big", signed=True)
        keys = [
            SigningKey.from_seed(sha256(b"sim-validator", seed_bytes, bytes([i])))
            for i in range(total)
        ]
        client = SigningKey.from_seed(sha256(b"sim-client", seed_bytes))
        self.rules = SimTransactionRules(client.public_key)
        self.workload = Workload(rng, client)
        validator_set = ValidatorSet(
            tuple(
                ValidatorInfo(f"validator-{i}", f"hospital-{i}", keys[i].public_key.raw)
                for i in range(total)
            )
        )
        # The genesis set; with `reconfigure` the last validator joins later.
        everyone, validator_set = validator_set, ValidatorSet(validator_set.validators[:validators])
        self.chain_id = f"sim-{seed}"
        genesis = Genesis(
            chain_id=self.chain_id,
            validators=validator_set,
            parameters=ChainParameters(max_block_txs=rng.choice([4, 16, 64])),
            timestamp_unix_ms=int(START_TIME * 1000) - 1000,
        )
        capacity = rng.choice([6, 1000])
        # Some runs with a Byzantine validator hand the schedule to a targeted campaign
        # (see campaign.py); those run on a quiet network so the campaign plays out.
        campaign_kind = (
            rng.choice(list(CampaignKind))
            if self.byzantine and rng.random() < CAMPAIGN_SHARE
            else None
        )
        if campaign is not None:
            campaign_kind = campaign
        # Half the runs have rounds barely longer than message delays, so QCs often
        # form at one replica only and rounds time out with certificates half-spread.
        tight = campaign_kind is not None or rng.random() < 0.5
        round_timeout = 0.3 if tight else 1.0
        max_round_timeout = 2.0 if campaign_kind is not None else 8.0
        self.checker = StateChecker(set(self.honest), self.rules, validator_set, self.chain_id)
        self._by_key = {info.public_key: i for i, info in enumerate(everyone.validators)}
        self.live_nodes = list(self.honest)
        self.new_set: ValidatorSet | None = None
        if reconfigure:
            self.removed = rng.choice(range(validators))
            kept = [v for i, v in enumerate(everyone.validators) if i != self.removed]
            self.new_set = ValidatorSet(tuple(kept))
            self.live_nodes = [i for i in self.honest if i != self.removed]
        self.coalition = (
            Coalition(
                rng,
                {i: keys[i] for i in self.byzantine},
                validator_set,
                self.chain_id,
                genesis_qc(genesis),
                self.faults,
                self._honest_floor,
            )
            if self.byzantine
            else None
        )
        self.nodes: list[_Node] = []
        for i in range(total):
            behaviours = frozenset(beh for beh in Behaviour if rng.random() < 0.6) or frozenset(
                {rng.choice(list(Behaviour))}
            )
            if campaign_kind is not None:
                behaviours = frozenset()
            self.nodes.append(
                _Node(
                    index=i,
                    key=keys[i],
                    config=ReplicaConfig(
                        genesis=genesis,
                        index=i if i < validators else None,
                        round_timeout=round_timeout,
                        max_round_timeout=max_round_timeout,
                        idle_interval=round_timeout * 0.6,
                        mempool_capacity=capacity,
                        fetch_retry_interval=0.3,
                        finality_rebroadcast_interval=0.5,
                    ),
                    store=MemoryLedgerStore(self.rules),
                    adversary=(
                        Adversary(
                            rng,
                            keys[i],
                            i,
                            validators,
                            self.chain_id,
                            behaviours,
                            self.faults,
                            self.coalition,
                        )
                        if i in self.byzantine
                        else None
                    ),
                )
            )
        self.phase1 = rng.uniform(6.0, 12.0)
        self.phase1_conditions = LinkConditions(
            loss=rng.uniform(0.0, 0.3),
            duplicate=rng.uniform(0.0, 0.1),
            min_delay=0.002,
            max_delay=rng.uniform(0.01, 0.25 if tight else 0.15),
            slow=0.05,
        )
        self.campaign: Campaign | None = None
        if campaign_kind is not None and self.coalition is not None:
            self.phase1 = rng.uniform(7.0, 9.0)
            self.phase1_conditions = LinkConditions(
                loss=rng.uniform(0.0, 0.03),
                duplicate=rng.uniform(0.0, 0.03),
                min_delay=0.002,
                max_delay=rng.uniform(0.01, 0.04),
                slow=0.0,
            )
            self.campaign = make_campaign(
                campaign_kind, self.coalition, rng, validators, self.faults, START_TIME + 1.0
            )
        self._queue: list[_Event] = []
        self._sequence = 0
        self.now = START_TIME
        self._transactions: list[bytes] = []
        self._events_processed = 0

    # -- scheduling -----------------------------------------------------------------------

    def _at(self, time: float, kind: str, node: int = -1, payload: object = None) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, _Event(time, self._sequence, kind, node, payload))

    def _plan(self) -> None:
        rng = self.rng
        t0, end1 = START_TIME, START_TIME + self.phase1
        valid = rng.randint(12, 30)
        for sequence in range(valid + max(1, valid // 10)):
            tx = self.workload.make(sequence, valid=sequence < valid)
            tx_id = self.rules.tx_id(tx)
            self.checker.submitted[tx_id] = tx
            if sequence < valid:
                self.checker.valid_ids.add(tx_id)
            self._at(rng.uniform(t0, end1), "submit", payload=tx)
        if self.new_set is not None:
            self._at(rng.uniform(t0 + 1.0, t0 + self.phase1 * 0.6), "governance")
        if self.campaign is not None:
            # The campaign's schedule is the fault plan.
            self._at(end1, "phase2")
            self._at(t0 + CLIENT_RETRY_INTERVAL, "retry")
            return
        # Partitions: at most one at a time, each healing.
        t = t0 + rng.uniform(0.5, 2.0)
        while rng.random() < 0.6 and t < end1 - 0.5:
            group = set(rng.sample(range(self.n), rng.randint(1, max(1, self.n // 2))))
            duration = rng.uniform(0.5, 4.0)
            self._at(t, "partition", payload=group)
            self._at(min(t + duration, end1), "heal")
            t += duration + rng.uniform(0.5, 3.0)
        # Crashes: never more than f faulty at once, counting Byzantine validators.
        for _slot in range(self.f - len(self.byzantine)):
            t = t0 + rng.uniform(0.3, 2.0)
            while rng.random() < 0.7 and t < end1 - 0.3:
                node = rng.choice(self.honest)
                down = rng.uniform(0.3, 5.0)
                self._at(t, "crash", node)
                self._at(min(t + down, end1), "restart", node)
                t += down + rng.uniform(0.5, 3.0)
        self._at(end1, "phase2")
        self._at(t0 + CLIENT_RETRY_INTERVAL, "retry")

    # -- running --------------------------------------------------------------------------

    def run(self) -> SimulationResult:
        try:
            outcome, detail = self._run()
        except SafetyViolationError as violation:
            outcome, detail = Outcome.SAFETY, str(violation)
        except Exception:
            outcome, detail = Outcome.CRASH, traceback.format_exc()
        events: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        for node in self.nodes:
            if node.replica is not None and node.adversary is None:
                events.update(node.replica.events)
                dropped.update(node.replica.dropped)
        return SimulationResult(
            seed=self.seed,
            validators=self.n,
            byzantine=self.byzantine,
            outcome=outcome,
            detail=detail,
            faults=self.faults,
            events=events,
            dropped=dropped,
            simulated_seconds=self.now - START_TIME,
            final_height=max((n.store.committed_height() for n in self.nodes), default=0),
        )

    def _run(self) -> tuple[Outcome, str]:
        self._plan()
        self.network.conditions = self.phase1_conditions
        for node in self.nodes:
            self._boot(node)
        deadline = START_TIME + self.phase1 + LIVENESS_BOUND
        while self._queue:
            event = heapq.heappop(self._queue)
            if event.time > deadline:
                break
            self.now = max(self.now, event.time)
            self._events_processed += 1
            if self._events_processed > MAX_EVENTS:
                return Outcome.CRASH, f"more than {MAX_EVENTS} events: a message storm"
            if event.kind == "check":
                if self.checker.live(self.live_nodes):
                    return Outcome.OK, "all valid transactions final and certified everywhere"
                self._at(self.now + CHECK_INTERVAL, "check")
                continue
            self._handle(event)
        lagging = {
            i: self.checker.missing(i) for i in self.live_nodes if self.checker.missing(i) != (0, 0)
        }
        return Outcome.LIVENESS, (
            f"after {LIVENESS_BOUND:.0f}s of healed network, (txs not final, heights not"
            f" certified) per honest validator: {lagging}"
        )

    def _handle(self, event: _Event) -> None:
        kind, node = event.kind, event.node
        if kind == "deliver":
            target = self.nodes[node]
            if target.replica is None:
                return
            source, message = cast(tuple[int, Message], event.payload)
            if target.adversary is not None:
                target.adversary.observe(message)
            local = self._local(target, source)
            if local is None:
                self.faults["not_a_member_dropped"] += 1
                return
            self._apply(target, target.replica.receive(local, message, self.now))
        elif kind == "tick":
            target = self.nodes[node]
            if target.replica is not None and event.payload == target.token:
                self._apply(target, target.replica.tick(self.now))
        elif kind == "submit":
            self._submit(cast(bytes, event.payload))
        elif kind == "retry":
            for tx_id in sorted(self.checker.valid_ids):
                if not any(tx_id in self.checker.final_ids.get(i, {}) for i in self.honest):
                    self._submit(self.checker.submitted[tx_id])
            self._at(self.now + CLIENT_RETRY_INTERVAL, "retry")
        elif kind == "governance":
            self._submit(self._governance_transaction())
        elif kind == "partition":
            self.network.partition(cast(set[int], event.payload))
        elif kind == "heal":
            self.network.heal()
        elif kind == "crash":
            self._crash(self.nodes[node])
        elif kind == "restart":
            if self.nodes[node].replica is None:
                self.faults["restart"] += 1
                self._boot(self.nodes[node])
        elif kind == "phase2":
            if self.campaign is not None:
                self.campaign.finish()
            self.network.heal()
            self.network.conditions = LinkConditions(0.0, 0.0, 0.002, 0.02, 0.0)
            for target in self.nodes:
                if target.replica is None:
                    self.faults["restart"] += 1
                    self._boot(target)
            self._at(self.now, "check")

    def _governance_transaction(self) -> bytes:
        """The change to `new_set`, approved by every genesis validator."""
        assert self.new_set is not None
        current = self.nodes[0].config.genesis.validators
        payload = approval_payload(self.chain_id, current, self.new_set)
        approvals = tuple(
            Approval(node.key.public_key.raw, node.key.sign(SigningContext.TRANSACTION, payload))
            for node in self.nodes[: self.n]
        )
        tx = self.workload.governance(ValidatorSetChange(self.new_set, approvals), self.rules)
        tx_id = self.rules.tx_id(tx)
        self.checker.submitted[tx_id] = tx
        self.checker.valid_ids.add(tx_id)
        self.faults["validator_set_change"] += 1
        return tx

    def _global(self, node: _Node, index: int) -> int | None:
        """The simulator's id of validator `index` of `node`'s current epoch."""
        if not self.reconfigure or node.replica is None:
            return index
        validators = node.replica.validators.validators
        return self._by_key.get(validators[index].public_key) if index < len(validators) else None

    def _local(self, node: _Node, source: int) -> int | None:
        """`source`'s index in `node`'s current epoch, None when it is not a member."""
        if not self.reconfigure or node.replica is None:
            return source
        key = self.nodes[source].key.public_key.raw
        for i, info in enumerate(node.replica.validators.validators):
            if info.public_key == key:
                return i
        return None

    def _honest_floor(self) -> int:
        return min(self.nodes[i].store.committed_height() for i in self.honest)

    def _boot(self, node: _Node) -> None:
        node.replica = Replica(node.config, node.key, node.store, self.rules, node.safety)
        self._apply(node, node.replica.start(self.now))
        if self.campaign is not None:
            self.campaign.on_boot(node.index, self.now)
            self._campaign_moves()

    def _campaign_moves(self) -> None:
        """Carry out what the campaign asked for: prompt deliveries, then crashes."""
        campaign = self.campaign
        assert campaign is not None
        outbox, campaign.outbox = campaign.outbox, []
        for source, destination, message in outbox:
            # One fixed delay keeps the campaign's messages in the order it sent them.
            self._at(self.now + CAMPAIGN_DELAY, "deliver", destination, (source, message))
        crashes, campaign.crash_now = campaign.crash_now, []
        for index, down in crashes:
            self._crash(self.nodes[index])
            self._at(self.now + down, "restart", index)

    def _crash(self, node: _Node) -> None:
        if node.replica is None:
            return
        # Only the store and the persisted safety state survive.
        node.replica = None
        node.token += 1
        self.faults["crash"] += 1

    def _submit(self, tx: bytes) -> None:
        up = [
            node
            for node in self.nodes
            if node.replica is not None and node.replica.index is not None
        ]
        node = self.rng.choice(up)
        assert node.replica is not None
        output = node.replica.submit([tx], self.now)
        if node.adversary is None:
            for rejection in output.rejected:
                if rejection.reason == "MEMPOOL_FULL":
                    self.faults["mempool_full"] += 1
                elif rejection.reason == "INVALID_TRANSACTION":
                    self.faults["invalid_tx_rejected"] += 1
                if rejection.tx_id in self.checker.valid_ids and rejection.reason not in (
                    "MEMPOOL_FULL",
                    "DUPLICATE",
                    "ALREADY_FINAL",
                ):
                    raise SafetyViolationError(f"a valid transaction was rejected: {rejection}")
            for tx_id in output.accepted:
                if tx_id not in self.checker.valid_ids:
                    raise SafetyViolationError("an invalid transaction was admitted")
        self._apply(node, output)

    def _apply(self, node: _Node, output: Output) -> None:
        """What the adapter does: persist safety state, store, then send; then the timer."""
        if output.safety_state is not None:
            node.safety = output.safety_state
        node.store.apply(output)
        self.checker.on_committed(node.index, output.committed)
        self.checker.on_certificates(node.index, output.certificates)
        campaign = self.campaign
        for outbound in output.messages:
            if self.coalition is not None:
                self.coalition.observe(node.index, outbound.message)
            if campaign is not None:
                campaign.observed(node.index, outbound.message, self.now)
            crafted = None
            if node.adversary is not None and campaign is not None:
                crafted = campaign.member_outbound(node.index, outbound, self.now)
            if crafted is not None:
                sends: list[tuple[int, object]] = list(crafted)
            elif node.adversary is not None:
                sends = node.adversary.rewrite(outbound, self.now)
            elif outbound.to is None:
                everyone = range(len(self.nodes))
                sends = [(i, outbound.message) for i in everyone if i != node.index]
            else:
                to = self._global(node, outbound.to)
                sends = [] if to is None else [(to, outbound.message)]
            for destination, message in sends:
                if campaign is not None and not campaign.deliver(
                    node.index, destination, cast(Message, message)
                ):
                    continue
                for arrival in self.network.arrivals(node.index, destination, self.now):
                    self._at(arrival, "deliver", destination, (node.index, message))
        node.token += 1
        if output.next_deadline is not None:
            self._at(max(output.next_deadline, self.now), "tick", node.index, node.token)
        if campaign is not None:
            campaign.after_output(node.index, output)
            self._campaign_moves()


def simulate(
    seed: int, validators: int = 4, byzantine: int | None = None, reconfigure: bool = False
) -> SimulationResult:
    """Run one seeded simulation."""
    return Simulation(seed, validators, byzantine, reconfigure=reconfigure).run()
