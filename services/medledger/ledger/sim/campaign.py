"""Targeted attacks: schedules aimed at the three pillars of the safety argument.

Random faults rarely line up into the few-round schedules that break a subtly wrong
replica, so some runs hand the network and the Byzantine coalition to one campaign. A
campaign anchors at a round a coalition member leads and, for a handful of rounds,
decides which messages are delivered, when an honest validator crashes (it restarts from
its store and persisted safety state), and what the members sign. Each one attacks a
step of the argument in docs/ledger.md:

- `FORK_BELOW_LOCK`: withhold the QC the member formed, wait for a TC, propose a fork
  below the TC's high QC and reveal the withheld QC to one validator (voting rule).
- `REVIVE_STALE_BRANCH`: certify two sibling branches in non-consecutive rounds, hiding
  each QC from the part of the network that would extend it (2-chain commit rule).
- `DOUBLE_VOTE_AFTER_CRASH`: equivocate, crash the next leader right after it proposes,
  and offer it the other block again when it comes back (persisted voting state).

Against the correct replica every campaign ends with the network healed and no damage;
that is what the sweep checks.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from medledger.crypto import SigningContext
from medledger.ledger.consensus import (
    Block,
    BlockHeader,
    Message,
    Outbound,
    Output,
    Proposal,
    QuorumCertificate,
    SyncInfo,
    Timeout,
    TimeoutCertificate,
    Vote,
)
from medledger.ledger.consensus.encoding import proposal_payload, timeout_payload
from medledger.ledger.sim.coalition import Coalition
from medledger.merkle import root_hash

# Once the member's replica is this many rounds past the anchor, the campaign hands the
# network back, played out or not.
_ROUND_SPAN = 8


class CampaignKind(StrEnum):
    FORK_BELOW_LOCK = "fork_below_lock"
    REVIVE_STALE_BRANCH = "revive_stale_branch"
    DOUBLE_VOTE_AFTER_CRASH = "double_vote_after_crash"


@dataclass(slots=True)
class Plan:
    """The rounds and validators one campaign run is about."""

    member: int
    anchor: int
    tip: Block
    """The block the member's own replica extended: certified by the QC it formed."""
    withheld: QuorumCertificate
    first: int
    """The honest leader of anchor + 1."""
    second: int
    """The honest leader of anchor + 2."""
    others: list[int]
    """Every other honest validator."""
    blocks: dict[str, Block] = field(default_factory=dict)
    stage: str = "waiting"


class Campaign:
    """One targeted attack per run; the simulator calls its hooks around every step.

    Subclasses write the attack: `_start` when the member's replica proposes in the
    anchor round, `_observe` for every message that leaves a validator, `_deliver` to
    drop messages, and `after_output` / `on_boot` around crashes.
    """

    kind: CampaignKind
    final_stage: str

    def __init__(
        self,
        coalition: Coalition,
        rng: random.Random,
        size: int,
        faults: Counter[str],
        not_before: float,
    ) -> None:
        self._coalition = coalition
        self._rng = rng
        self._n = size
        self._faults = faults
        self._not_before = not_before
        self.plan: Plan | None = None
        self.finished = False
        self.outbox: list[tuple[int, int, Message]] = []
        """(source, destination, message) to deliver promptly; drained by the simulator."""
        self.crash_now: list[tuple[int, float]] = []
        """(validator, seconds until restart) to crash right after the current step."""
        self._isolated: set[int] = set()

    @property
    def reached_end(self) -> bool:
        """Whether the attack played out to its last move."""
        return self.plan is not None and self.plan.stage == self.final_stage

    def finish(self) -> None:
        """Hand the network back: nothing is dropped or steered from now on."""
        self.finished = True
        self._isolated.clear()

    def _stage(self, plan: Plan, stage: str) -> None:
        plan.stage = stage
        if stage == self.final_stage:
            self._faults[f"campaign_{self.kind.value}_played_out"] += 1

    def _leader(self, round_: int) -> int:
        return round_ % self._n

    def _running(self) -> Plan | None:
        return None if self.finished else self.plan

    # -- anchoring ------------------------------------------------------------------------

    def _try_anchor(self, member: int, proposal: Proposal, now: float) -> Plan | None:
        block = proposal.block
        anchor = block.round
        coalition = self._coalition
        tip = coalition.blocks.get(block.parent_hash)
        if now < self._not_before or block.justify.round + 1 != anchor or tip is None:
            return None
        parent = coalition.blocks.get(tip.parent_hash)
        grandparent = None if parent is None else coalition.blocks.get(parent.parent_hash)
        if tip.height < 3 or parent is None or grandparent is None:
            return None
        leaders = [self._leader(anchor + k) for k in (1, 2)]
        if any(leader in coalition.members for leader in leaders) or leaders[0] == leaders[1]:
            return None
        others = [i for i in coalition.honest if i not in leaders]
        if not others:
            return None
        self._faults[f"campaign_{self.kind.value}"] += 1
        plan = Plan(member, anchor, tip, block.justify, leaders[0], leaders[1], others)
        plan.blocks.update({"parent": parent, "grandparent": grandparent})
        return plan

    # -- hooks ----------------------------------------------------------------------------

    def member_outbound(
        self, member: int, outbound: Outbound, now: float
    ) -> list[tuple[int, Message]] | None:
        """What leaves a member instead of its replica's message; None for no change."""
        message = outbound.message
        if self.finished:
            return None
        if self.plan is None:
            if isinstance(message, SyncInfo):
                # Members never help others catch up: a QC a member formed as the next
                # leader stays with it until the campaign decides.
                return []
            if isinstance(message, Proposal):
                self.plan = self._try_anchor(member, message, now)
                if self.plan is not None:
                    return self._start(self.plan, now)
            return None
        plan = self.plan
        if member != plan.member:
            return None
        round_ = message.block.round if isinstance(message, Proposal) else None
        if isinstance(message, (Vote, Timeout)):
            round_ = message.round
        if round_ is not None and round_ > plan.anchor + _ROUND_SPAN:
            self.finish()
            return None
        # While the campaign runs, the member's replica speaks only through it.
        if isinstance(message, (Proposal, Timeout, Vote, SyncInfo)):
            return []
        return None

    def deliver(self, source: int, destination: int, message: Message) -> bool:
        """Whether the network delivers this message (campaigns drop, never forge)."""
        plan = self._running()
        if plan is None:
            return True
        keep = source not in self._isolated and self._deliver(plan, source, destination, message)
        if not keep:
            self._faults["campaign_drop"] += 1
        return keep

    def observed(self, sender: int, message: Message, now: float) -> None:
        """React to a message as it leaves a validator (after the coalition saw it)."""
        plan = self._running()
        if plan is None:
            return
        if isinstance(message, Proposal) and sender not in self._coalition.members:
            self._member_votes(message.block)
        self._observe(plan, sender, message, now)

    def after_output(self, node: int, output: Output) -> None:
        """Called after the simulator carried out one output of validator `node`."""

    def on_boot(self, node: int, now: float) -> None:
        """Called after validator `node` (re)started."""

    def _start(self, plan: Plan, now: float) -> list[tuple[int, Message]]:
        # By default the member keeps its fresh QC back and waits for a TC.
        self._faults["qc_withheld"] += 1
        return []

    def _observe(self, plan: Plan, sender: int, message: Message, now: float) -> None:
        raise NotImplementedError

    def _deliver(self, plan: Plan, source: int, destination: int, message: Message) -> bool:
        return True

    # -- shared moves ---------------------------------------------------------------------

    def _send(self, source: int, targets: list[int], message: Message) -> None:
        self.outbox += [(source, t, message) for t in targets]

    def _honest(self, plan: Plan) -> list[int]:
        return [plan.first, plan.second, *plan.others]

    def _member_votes(self, block: Block) -> None:
        """Members vote for every block they see, to that block's next leader."""
        leader = self._leader(block.round + 1)
        if leader in self._coalition.members:
            return
        for vote in self._coalition.votes_for(block):
            self._send(vote.signer, [leader], vote)

    def _propose(
        self, plan: Plan, parent: Block, tc: TimeoutCertificate | None, now: float, salt: int
    ) -> Proposal:
        """A member's block for the anchor round extending `parent` (no transactions)."""
        coalition = self._coalition
        header = BlockHeader(
            chain_id=coalition.chain_id,
            height=parent.height + 1,
            round=plan.anchor,
            parent_hash=parent.hash,
            tx_root=root_hash([]),
            validator_set_hash=coalition.validators.hash,
            next_validator_set_hash=coalition.validators.hash,
            proposer=plan.member,
            timestamp_unix_ms=max(int(now * 1000), parent.header.timestamp_unix_ms + 1) + salt,
        )
        block = Block(header, (), coalition.qcs[parent.hash])
        key = coalition.members[plan.member]
        signature = key.sign(
            SigningContext.PROPOSAL,
            proposal_payload(coalition.chain_id, block.hash, plan.anchor),
        )
        proposal = Proposal(block, tc, signature)
        coalition.observe(plan.member, proposal)
        return proposal

    def _timeout(self, member: int, round_: int, high_qc: QuorumCertificate) -> Timeout:
        coalition = self._coalition
        key = coalition.members[member]
        payload = timeout_payload(coalition.chain_id, round_, high_qc.round)
        signature = key.sign(SigningContext.TIMEOUT, payload)
        return Timeout(round_, high_qc, None, member, signature)


class ForkBelowLock(Campaign):
    """Against the voting rule's TC condition.

    The member withholds QC(tip), waits until the honest validators time out in the
    round before its own, and proposes, with the lowest TC it can assemble, a child of
    the tip's grandparent: below the TC's high QC, so the voting rule must refuse it.
    Once the next leader proposes, one validator (not the next leader) learns the
    withheld QC, which commits the tip's parent there.
    """

    kind = CampaignKind.FORK_BELOW_LOCK
    final_stage = "revealed"
    _target = -1

    def _observe(self, plan: Plan, sender: int, message: Message, now: float) -> None:
        if plan.stage == "forked":
            if (
                isinstance(message, Proposal)
                and sender == plan.first
                and message.block.round == plan.anchor + 1
            ):
                self._send(plan.member, [self._target], SyncInfo(plan.withheld, None))
                self._faults["qc_revealed"] += 1
                self._stage(plan, "revealed")
            return
        if plan.stage != "waiting" or not isinstance(message, Timeout):
            return
        if message.round != plan.anchor - 1:
            return
        tc = self._coalition.lowest_tc(plan.anchor - 1)
        if tc is None:
            return
        parent = plan.blocks["grandparent"]
        if self._coalition.qcs[parent.hash].round >= tc.high_qc.round:
            self.finish()
            return
        fork = self._propose(plan, parent, tc, now, 0)
        self._member_votes(fork.block)
        self._target = self._rng.choice([plan.second, *plan.others])
        self._send(plan.member, [h for h in self._honest(plan) if h != self._target], fork)
        self._faults["fork"] += 1
        self._stage(plan, "forked")


class ReviveStaleBranch(Campaign):
    """Against the 2-chain commit rule's consecutive-round condition.

    The member withholds QC(tip) and, once the honest validators time out, proposes a
    sibling of the tip with a TC; the votes for it reach only the coalition. The first
    leader alone learns QC(tip) and proposes the tip's child; the second leader, who
    certifies that child, is cut off. The coalition's timeouts then report the sibling's
    QC, the remaining validators extend the sibling, and the coalition shows them the QC
    of that extension. Only non-consecutive pairs are ever certified, so the real rule
    commits neither branch.
    """

    kind = CampaignKind.REVIVE_STALE_BRANCH
    final_stage = "done"
    _sibling_qc: QuorumCertificate | None = None

    def _observe(self, plan: Plan, sender: int, message: Message, now: float) -> None:
        coalition = self._coalition
        anchor = plan.anchor
        connected = [plan.first, *plan.others]
        if plan.stage == "waiting" and isinstance(message, Timeout):
            if message.round != anchor - 1:
                return
            tc = coalition.lowest_tc(anchor - 1)
            if tc is None:
                return
            parent = coalition.blocks.get(tc.high_qc.block_hash)
            if parent is None or parent.hash == plan.tip.hash:
                self.finish()
                return
            sibling = self._propose(plan, parent, tc, now, 0)
            self._member_votes(sibling.block)
            plan.blocks["sibling"] = sibling.block
            self._send(plan.member, self._honest(plan), sibling)
            self._send(plan.member, [plan.first], self._timeout(plan.member, anchor, plan.withheld))
            self._faults["fork"] += 1
            self._stage(plan, "sibling")
        elif plan.stage == "sibling" and isinstance(message, Proposal):
            block = message.block
            if sender != plan.first or block.round != anchor + 1:
                return
            self._sibling_qc = coalition.qcs.get(plan.blocks["sibling"].hash)
            if block.parent_hash != plan.tip.hash or self._sibling_qc is None:
                self.finish()
                return
            self._isolated.add(plan.second)
            self._faults["partition_leader"] += 1
            self._stage(plan, "revived")
        elif plan.stage in ("revived", "done") and isinstance(message, Timeout):
            # Answer each timeout of a connected validator with ours, reporting the
            # sibling's QC, so every TC leads back to the sibling's branch.
            if sender in connected and anchor < message.round <= anchor + 4:
                assert self._sibling_qc is not None
                timeout = self._timeout(plan.member, message.round, self._sibling_qc)
                self._send(plan.member, connected, timeout)
        elif plan.stage == "revived" and isinstance(message, Vote):
            extension = coalition.blocks.get(message.block_hash)
            if extension is None or extension.parent_hash != plan.blocks["sibling"].hash:
                return
            qc = coalition.qcs.get(extension.hash)
            if qc is not None:
                self._send(plan.member, connected, SyncInfo(qc, None))
                self._faults["qc_revealed"] += 1
                self._stage(plan, "done")

    def _deliver(self, plan: Plan, source: int, destination: int, message: Message) -> bool:
        # The votes for the sibling never reach the first leader.
        return not (
            plan.stage == "sibling"
            and isinstance(message, Vote)
            and destination == plan.first
            and message.round == plan.anchor
        )


class DoubleVoteAfterCrash(Campaign):
    """Against the persisted voting state.

    The member proposes two children of the tip, one to a group holding the first
    leader and f others, one to the remaining f validators, which cannot hear each
    other. The first leader certifies the first block, proposes on it, and crashes right
    after. When it is back, the coalition offers it the other block and replays the
    votes for it; the first leader now sides with the second group. A replica that
    forgot it voted would vote, certify and propose again in the same rounds.
    """

    kind = CampaignKind.DOUBLE_VOTE_AFTER_CRASH
    final_stage = "reoffered"
    _groups: tuple[list[int], list[int]] = ([], [])
    _offers: tuple[Proposal, ...] = ()

    def _start(self, plan: Plan, now: float) -> list[tuple[int, Message]]:
        first = self._propose(plan, plan.tip, None, now, 1)
        second = self._propose(plan, plan.tip, None, now, 2)
        # The first leader hears the members vote for the first block only.
        self._member_votes(first.block)
        group = self._honest(plan)
        cut = (len(group) + 1) // 2
        self._groups = (group[:cut], group[cut:])
        self._offers = (first, second)
        self._stage(plan, "split")
        sends: list[tuple[int, Message]] = [(t, first) for t in group[:cut]]
        return sends + [(t, second) for t in group[cut:]]

    def _group_of(self, block: Block) -> list[int]:
        first_group, second_group = self._groups
        return first_group if block.parent_hash == self._offers[0].block.hash else second_group

    def after_output(self, node: int, output: Output) -> None:
        plan = self._running()
        if plan is None or plan.stage != "split" or node != plan.first:
            return
        if any(
            isinstance(o.message, Proposal) and o.message.block.round == plan.anchor + 1
            for o in output.messages
        ):
            self._stage(plan, "crashed")
            self.crash_now.append((node, self._rng.uniform(0.05, 0.2)))
            self._faults["crash_after_vote"] += 1

    def on_boot(self, node: int, now: float) -> None:
        plan = self._running()
        if plan is None or plan.stage != "crashed" or node != plan.first:
            return
        self._stage(plan, "reoffered")
        offer = self._offers[1]
        self._send(plan.member, [plan.first], offer)
        for signer, vote in self._coalition.seen_votes(offer.block):
            self._send(signer, [plan.first], vote)

    def _observe(self, plan: Plan, sender: int, message: Message, now: float) -> None:
        # A QC on a child of either block goes to that block's group.
        if plan.stage != "reoffered" or not isinstance(message, Vote):
            return
        block = self._coalition.blocks.get(message.block_hash)
        if block is None or block.round != plan.anchor + 1:
            return
        qc = self._coalition.qcs.get(block.hash)
        if qc is not None:
            targets = [t for t in self._group_of(block) if t != plan.first]
            self._send(plan.member, targets, SyncInfo(qc, None))
            self._faults["qc_revealed"] += 1

    def _deliver(self, plan: Plan, source: int, destination: int, message: Message) -> bool:
        members = self._coalition.members
        if source in members or destination in members:
            return True
        if source == plan.first and isinstance(message, Proposal):
            # Each of the first leader's proposals reaches only its parent's group.
            return destination in self._group_of(message.block)
        # The first leader sides with the first group until it crashes, then with the
        # second one.
        crashed = plan.stage != "split"

        def side(node: int) -> int:
            if node == plan.first:
                return 1 if crashed else 0
            return 0 if node in self._groups[0] else 1

        return side(source) == side(destination)


_KINDS: dict[CampaignKind, type[Campaign]] = {
    CampaignKind.FORK_BELOW_LOCK: ForkBelowLock,
    CampaignKind.REVIVE_STALE_BRANCH: ReviveStaleBranch,
    CampaignKind.DOUBLE_VOTE_AFTER_CRASH: DoubleVoteAfterCrash,
}


def make_campaign(
    kind: CampaignKind,
    coalition: Coalition,
    rng: random.Random,
    size: int,
    faults: Counter[str],
    not_before: float,
) -> Campaign:
    return _KINDS[kind](coalition, rng, size, faults, not_before)
