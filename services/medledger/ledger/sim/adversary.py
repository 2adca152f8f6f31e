"""A Byzantine validator: a real replica whose key and outputs an adversary controls.

The adversary rewrites what its replica sends: equivocating proposals to different
halves of the network, double votes, corrupted signatures, replays of old messages,
withheld votes and timeouts, and malformed messages. It signs only with its own key,
so it stays within the fault model.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from enum import StrEnum
from typing import cast

from medledger.crypto import SigningContext, SigningKey, sha256
from medledger.ledger.consensus import (
    BlockRequest,
    FinalityVote,
    Message,
    Outbound,
    Proposal,
    SyncRequest,
    Timeout,
    Vote,
)
from medledger.ledger.consensus.encoding import proposal_payload, vote_payload
from medledger.ledger.sim.coalition import Coalition

_REPLAY_MEMORY = 64


class Behaviour(StrEnum):
    EQUIVOCATE = "equivocation"
    DOUBLE_VOTE = "double_vote"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    WITHHOLD = "withheld"
    GARBAGE = "garbage"
    FORK = "fork"


class Adversary:
    def __init__(
        self,
        rng: random.Random,
        key: SigningKey,
        index: int,
        size: int,
        chain_id: str,
        behaviours: frozenset[Behaviour],
        faults: Counter[str],
        coalition: Coalition | None = None,
    ) -> None:
        self._rng = rng
        self._key = key
        self.index = index
        self._size = size
        self._chain_id = chain_id
        self.behaviours = behaviours
        self._faults = faults
        self._seen: list[Message] = []
        self._coalition = coalition

    def observe(self, message: Message) -> None:
        """Remember a message it received, to replay later."""
        if len(self._seen) >= _REPLAY_MEMORY:
            self._seen.pop(self._rng.randrange(len(self._seen)))
        self._seen.append(message)

    def _others(self) -> list[int]:
        return [i for i in range(self._size) if i != self.index]

    def rewrite(self, outbound: Outbound, now: float) -> list[tuple[int, object]]:
        """What actually leaves the Byzantine validator for one outbound message."""
        message = outbound.message
        targets = self._others() if outbound.to is None else [outbound.to]
        self.observe(message)
        b = self.behaviours
        rng = self._rng
        sends: list[tuple[int, object]] = []
        coalition = self._coalition
        if Behaviour.FORK in b and coalition is not None:
            crafted = self._coalition_rewrite(coalition, message, now)
            if crafted is not None:
                return crafted
        if (
            Behaviour.WITHHOLD in b
            and isinstance(message, (Vote, Timeout, FinalityVote))
            and rng.random() < 0.5
        ):
            self._faults[Behaviour.WITHHOLD] += 1
            return []
        if Behaviour.EQUIVOCATE in b and isinstance(message, Proposal) and len(targets) > 1:
            twin = self._twin_proposal(message)
            half = len(targets) // 2
            self._faults[Behaviour.EQUIVOCATE] += 1
            sends += [(t, message) for t in targets[:half]]
            sends += [(t, twin) for t in targets[half:]]
        elif Behaviour.BAD_SIGNATURE in b and rng.random() < 0.25 and hasattr(message, "signature"):
            self._faults[Behaviour.BAD_SIGNATURE] += 1
            sends += [(t, self._corrupt(message)) for t in targets]
        else:
            sends += [(t, message) for t in targets]
        if Behaviour.DOUBLE_VOTE in b and isinstance(message, Vote):
            self._faults[Behaviour.DOUBLE_VOTE] += 1
            other = sha256(b"double", message.block_hash)
            signature = self._key.sign(
                SigningContext.VOTE,
                vote_payload(self._chain_id, other, message.height, message.round),
            )
            sends += [(t, replace(message, block_hash=other, signature=signature)) for t in targets]
        if Behaviour.REPLAY in b and self._seen and rng.random() < 0.3:
            self._faults[Behaviour.REPLAY] += 1
            sends.append((rng.choice(self._others()), rng.choice(self._seen)))
        if Behaviour.GARBAGE in b and rng.random() < 0.1:
            self._faults[Behaviour.GARBAGE] += 1
            sends.append((rng.choice(self._others()), self._garbage()))
        return sends

    def _coalition_rewrite(
        self, coalition: Coalition, message: Message, now: float
    ) -> list[tuple[int, object]] | None:
        """The coalition's version of a proposal, timeout or vote; None to leave it be."""
        rng = self._rng
        sends: list[tuple[int, object]] = []
        if coalition.withheld and rng.random() < 0.05:
            sends += coalition.reveal()
        if isinstance(message, Proposal) and rng.random() < 0.8:
            sends += coalition.fork(self.index, message, now)
        elif isinstance(message, Timeout) and rng.random() < 0.5:
            sends += coalition.timeout(self.index, message)
        elif isinstance(message, Vote):
            leader = (message.round + 1) % self._size
            sends.append((leader, message))
            sends += coalition.member_votes(message.round, leader)
        return sends or None

    def _twin_proposal(self, proposal: Proposal) -> Proposal:
        header = proposal.block.header
        twin_header = replace(header, timestamp_unix_ms=header.timestamp_unix_ms + 1)
        twin_block = replace(proposal.block, header=twin_header)
        signature = self._key.sign(
            SigningContext.PROPOSAL,
            proposal_payload(self._chain_id, twin_block.hash, header.round),
        )
        return replace(proposal, block=twin_block, signature=signature)

    def _corrupt(self, message: Message) -> object:
        signature: bytes = getattr(message, "signature")  # noqa: B009 (checked by caller)
        flipped = bytes([signature[0] ^ 0xFF]) + signature[1:]
        changed: object = replace(cast(Vote, message), signature=flipped)
        return changed

    def _garbage(self) -> object:
        rng = self._rng
        choice = rng.randrange(5)
        if choice == 0:
            return b"\x00not a message"
        if choice == 1:
            return Vote(b"short", -1, 2**70, self.index, b"")
        if choice == 2:
            return BlockRequest(rng.randbytes(31), -5)
        if choice == 3:
            return SyncRequest(0)
        # A well-signed vote for another chain.
        block_hash = rng.randbytes(32)
        signature = self._key.sign(
            SigningContext.VOTE, vote_payload("another-chain", block_hash, 1, 1)
        )
        return Vote(block_hash, 1, 1, self.index, signature)
