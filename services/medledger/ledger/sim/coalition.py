"""What the Byzantine validators of a run know together, and the forks they build from it.

Consensus traffic travels on shared subjects, so faulty validators can read every
message, not only those addressed to them. The coalition therefore sees all traffic,
aggregates honest votes (plus its members' own votes for every block it sees) into QCs,
collects honest timeouts into TCs whose high QC is as low as the signatures allow, and,
when a member leads a round, proposes forks off any certified block it knows, withholding
the QC it formed as leader and revealing it later to chosen validators. It only ever
signs with its members' keys, so it stays within the fault model (at most f faulty).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from medledger.crypto import SigningContext, SigningKey
from medledger.ledger.consensus import (
    Block,
    BlockHeader,
    BlockResponse,
    Message,
    Proposal,
    QuorumCertificate,
    SyncInfo,
    Timeout,
    TimeoutCertificate,
    TimeoutSignature,
    ValidatorSet,
    ValidatorSignature,
    Vote,
)
from medledger.ledger.consensus.encoding import proposal_payload, timeout_payload, vote_payload
from medledger.merkle import root_hash

# Old rounds are forgotten so a long run does not accumulate every vote it saw.
_ROUND_MEMORY = 12


class Coalition:
    """The shared knowledge and tactics of a run's Byzantine validators."""

    def __init__(
        self,
        rng: random.Random,
        members: dict[int, SigningKey],
        validators: ValidatorSet,
        chain_id: str,
        genesis_qc: QuorumCertificate,
        faults: Counter[str],
        honest_floor: Callable[[], int],
    ) -> None:
        self._rng = rng
        self.members = members
        self.validators = validators
        self.chain_id = chain_id
        self._faults = faults
        self._honest_floor = honest_floor
        self.blocks: dict[bytes, Block] = {}
        self.qcs: dict[bytes, QuorumCertificate] = {genesis_qc.block_hash: genesis_qc}
        self._qcs_by_round: dict[int, list[QuorumCertificate]] = {0: [genesis_qc]}
        self._votes: dict[tuple[int, bytes, int], dict[int, bytes]] = {}
        self._timeouts: dict[int, dict[int, tuple[int, bytes]]] = {}
        self._top_round = 0
        self.withheld: list[QuorumCertificate] = []
        self.honest = [i for i in range(validators.size) if i not in members]

    # -- what it learns ------------------------------------------------------------------

    def observe(self, sender: int, message: object) -> None:
        """See one message as it leaves a validator (honest, or a member's own replica)."""
        if isinstance(message, Proposal):
            self._learn_block(message.block)
            if message.timeout_certificate is not None:
                self._learn_qc(message.timeout_certificate.high_qc)
        elif isinstance(message, BlockResponse):
            self._learn_block(message.block)
        elif isinstance(message, Vote) and message.signer == sender:
            self._add_vote(message.round, message.block_hash, message.height, sender, message)
        elif isinstance(message, Timeout) and message.signer == sender:
            self._learn_qc(message.high_qc)
            if message.last_tc is not None:
                self._learn_qc(message.last_tc.high_qc)
            self._timeouts.setdefault(message.round, {}).setdefault(
                sender, (message.high_qc.round, message.signature)
            )
            self._note_round(message.round)
        elif isinstance(message, SyncInfo):
            self._learn_qc(message.high_qc)

    def _note_round(self, round_: int) -> None:
        if round_ <= self._top_round:
            return
        self._top_round = round_
        floor = round_ - _ROUND_MEMORY
        for key in [k for k in self._votes if k[0] < floor]:
            del self._votes[key]
        for old in [r for r in self._timeouts if r < floor]:
            del self._timeouts[old]

    def _learn_block(self, block: Block) -> None:
        if block.hash in self.blocks:
            return
        self.blocks[block.hash] = block
        self._learn_qc(block.justify)
        self._note_round(block.round)
        # Every member votes for every block it sees: real double votes.
        for member, key in self.members.items():
            payload = vote_payload(self.chain_id, block.hash, block.height, block.round)
            signature = key.sign(SigningContext.VOTE, payload)
            vote = Vote(block.hash, block.height, block.round, member, signature)
            self._add_vote(block.round, block.hash, block.height, member, vote)

    def _learn_qc(self, qc: QuorumCertificate) -> None:
        if qc.block_hash in self.qcs:
            return
        self.qcs[qc.block_hash] = qc
        self._qcs_by_round.setdefault(qc.round, []).append(qc)

    def _add_vote(
        self, round_: int, block_hash: bytes, height: int, signer: int, vote: Vote
    ) -> None:
        if round_ < self._top_round - _ROUND_MEMORY:
            return
        signatures = self._votes.setdefault((round_, block_hash, height), {})
        signatures.setdefault(signer, vote.signature)
        if block_hash in self.qcs:
            return
        if self.validators.power_of(list(signatures)) >= self.validators.quorum:
            ordered = tuple(ValidatorSignature(s, signatures[s]) for s in sorted(signatures))
            self._learn_qc(QuorumCertificate(block_hash, height, round_, ordered))
            self._faults["coalition_qc"] += 1

    # -- what it builds ------------------------------------------------------------------

    def votes_for(self, block: Block) -> list[Vote]:
        """The members' votes for `block` (signed when the coalition first saw it)."""
        self._learn_block(block)
        signatures = self._votes.get((block.round, block.hash, block.height), {})
        return [
            Vote(block.hash, block.height, block.round, member, signatures[member])
            for member in self.members
            if member in signatures
        ]

    def seen_votes(self, block: Block) -> list[tuple[int, Vote]]:
        """Every vote for `block` the coalition has seen or signed, by signer."""
        signatures = self._votes.get((block.round, block.hash, block.height), {})
        return [
            (s, Vote(block.hash, block.height, block.round, s, signature))
            for s, signature in sorted(signatures.items())
        ]

    def member_votes(self, round_: int, leader: int) -> list[tuple[int, Message]]:
        """Members' votes for every block of `round_` they know, sent to its next leader."""
        sends: list[tuple[int, Message]] = []
        for (r, block_hash, height), signatures in self._votes.items():
            if r != round_:
                continue
            for member in self.members:
                if member in signatures and member != leader:
                    vote = Vote(block_hash, height, r, member, signatures[member])
                    sends.append((leader, vote))
        return sends

    def lowest_tc(self, round_: int) -> TimeoutCertificate | None:
        """A TC for `round_` whose high QC is as low as the timeouts seen allow."""
        honest = self._timeouts.get(round_, {})
        reports: dict[int, tuple[int, bytes]] = {
            s: v for s, v in honest.items() if s not in self.members
        }
        for member, key in self.members.items():
            reports[member] = (
                0,
                key.sign(SigningContext.TIMEOUT, timeout_payload(self.chain_id, round_, 0)),
            )
        chosen: list[int] = []
        for signer in sorted(reports, key=lambda s: (reports[s][0], s)):
            chosen.append(signer)
            if self.validators.power_of(chosen) >= self.validators.quorum:
                break
        else:
            return None
        high_round = max(reports[s][0] for s in chosen)
        options = self._qcs_by_round.get(high_round, [])
        if not options or high_round >= round_:
            return None
        signatures = tuple(
            TimeoutSignature(s, reports[s][0], reports[s][1]) for s in sorted(chosen)
        )
        return TimeoutCertificate(round_, signatures, self._rng.choice(options))

    def fork(self, member: int, proposal: Proposal, now: float) -> list[tuple[int, Message]]:
        """Replace a member's proposal by forks off certified blocks, split among the honest."""
        rng = self._rng
        key = self.members[member]
        round_ = proposal.block.round
        own_qc = proposal.block.justify
        floor = self._honest_floor()
        parents = [
            block
            for block_hash, block in self.blocks.items()
            if block_hash in self.qcs and block.height >= floor and block.round < round_
        ]
        if not parents:
            return []
        if own_qc.round + 1 == round_ and own_qc not in self.withheld:
            # Nobody else has this QC yet: keep it back, to reveal at a time of our choosing.
            self.withheld.append(own_qc)
            self._faults["qc_withheld"] += 1
        targets = list(self.honest)
        rng.shuffle(targets)
        split = rng.randint(1, len(targets))
        groups = [targets[:split], targets[split:]]
        sends: list[tuple[int, Message]] = []
        for group in groups:
            if not group:
                continue
            if rng.random() < 0.25:
                sends += [(t, proposal) for t in group]
                continue
            parent = self._fork_parent(proposal.block, parents)
            forked = self._forked_proposal(key, member, parent, round_, now)
            sends += [(t, forked) for t in group]
            self._faults["fork"] += 1
        if self.withheld and rng.random() < 0.5:
            sends += self.reveal()
        return sends

    def _fork_parent(self, honest_block: Block, parents: list[Block]) -> Block:
        """Mostly an ancestor a step or two below the honest tip, so the fork conflicts
        with blocks that are certified but not yet committed; otherwise any certified one."""
        ancestors: list[Block] = []
        block: Block | None = self.blocks.get(honest_block.parent_hash)
        while block is not None and len(ancestors) < 3:
            block = self.blocks.get(block.parent_hash)
            if block is not None and block in parents:
                ancestors.append(block)
        if ancestors and self._rng.random() < 0.7:
            return self._rng.choice(ancestors)
        return self._rng.choice(parents)

    def _forked_proposal(
        self, key: SigningKey, member: int, parent: Block, round_: int, now: float
    ) -> Proposal:
        justify = self.qcs[parent.hash]
        tc = None
        if justify.round + 1 != round_:
            tc = self.lowest_tc(round_ - 1)
        header = BlockHeader(
            chain_id=self.chain_id,
            height=parent.height + 1,
            round=round_,
            parent_hash=parent.hash,
            tx_root=root_hash([]),
            validator_set_hash=self.validators.hash,
            next_validator_set_hash=self.validators.hash,
            proposer=member,
            timestamp_unix_ms=max(int(now * 1000), parent.header.timestamp_unix_ms + 1),
        )
        block = Block(header, (), justify)
        self._learn_block(block)
        signature = key.sign(
            SigningContext.PROPOSAL, proposal_payload(self.chain_id, block.hash, round_)
        )
        return Proposal(block, tc, signature)

    def reveal(self) -> list[tuple[int, Message]]:
        """Hand a withheld QC to a random part of the honest validators."""
        rng = self._rng
        qc = self.withheld.pop(rng.randrange(len(self.withheld)))
        targets = rng.sample(self.honest, rng.randint(1, len(self.honest)))
        self._faults["qc_revealed"] += 1
        return [(t, SyncInfo(qc, None)) for t in targets]

    def timeout(self, member: int, timeout: Timeout) -> list[tuple[int, Message]]:
        """A member's timeout, sent to each honest validator with a high QC of our choice."""
        rng = self._rng
        key = self.members[member]
        known = [qc for r, qcs in self._qcs_by_round.items() if r < timeout.round for qc in qcs]
        sends: list[tuple[int, Message]] = []
        for target in self.honest:
            qc = rng.choice(known) if known and rng.random() < 0.7 else timeout.high_qc
            payload = timeout_payload(self.chain_id, timeout.round, qc.round)
            signature = key.sign(SigningContext.TIMEOUT, payload)
            sends.append((target, Timeout(timeout.round, qc, timeout.last_tc, member, signature)))
        self._faults["timeout_equivocation"] += 1
        return sends
