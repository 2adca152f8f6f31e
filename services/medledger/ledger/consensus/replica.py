"""The sans-I/O consensus replica: 2-chain HotStuff (Jolteon / DiemBFT-v4 style).

The host calls `start`, `receive`, `tick` and `submit`, passing the time in; each call
returns an `Output` (messages, next deadline, safety state to persist first, committed
blocks, finality certificates, admission results). Nothing here reads a clock, a socket
or a random source, so the same object runs in the validator and in the simulator.
The protocol and its safety argument are written up in docs/ledger.md.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medledger.crypto import SigningContext, SigningKey
from medledger.ledger.consensus.blocktree import BlockTree
from medledger.ledger.consensus.certificates import (
    sorted_signatures,
    verify_finality_certificate,
    verify_quorum_certificate,
    verify_timeout_certificate,
)
from medledger.ledger.consensus.config import ReplicaConfig
from medledger.ledger.consensus.encoding import (
    finality_payload,
    proposal_payload,
    timeout_payload,
    vote_payload,
)
from medledger.ledger.consensus.epochs import (
    Epoch,
    change_in,
    epochs_of,
    is_approved,
    is_reconfiguration,
    next_epoch,
)
from medledger.ledger.consensus.errors import (
    ConfigurationError,
    IllegalCallError,
    VerificationError,
)
from medledger.ledger.consensus.genesis import genesis_block
from medledger.ledger.consensus.mempool import Mempool
from medledger.ledger.consensus.protocols import LedgerView, TransactionRules
from medledger.ledger.consensus.types import (
    Block,
    BlockHeader,
    BlockRequest,
    BlockResponse,
    CertifiedBlock,
    FinalityCertificate,
    FinalityVote,
    Message,
    Outbound,
    Output,
    Proposal,
    QuorumCertificate,
    Rejection,
    SafetyState,
    SyncInfo,
    SyncRequest,
    SyncResponse,
    Timeout,
    TimeoutCertificate,
    TimeoutSignature,
    TransactionBatch,
    ValidatorSet,
    ValidatorSetChange,
    Vote,
)
from medledger.ledger.consensus.wellformed import check_message
from medledger.merkle import root_hash

# Heights around the committed one for which finality votes are kept.
FINALITY_WINDOW = 64
# How many of the lowest uncertified heights get their finality vote re-sent per tick.
FINALITY_REBROADCAST_BATCH = 16
# A block this far above the committed height is fetched by SyncRequest, not by hash.
SYNC_GAP = 4
# Rounds ahead of ours for which votes are buffered.
VOTE_LOOKAHEAD = 8
MAX_PARKED = 64
MAX_MISSING = 64
_MAX_BACKOFF_EXPONENT = 16


@dataclass(slots=True)
class _Fetch:
    """A block we know is certified but do not have yet."""

    height: int
    round: int
    source: int
    attempts: int
    retry_at: float


class Replica:
    """One validator's consensus state machine."""

    def __init__(
        self,
        config: ReplicaConfig,
        signing_key: SigningKey,
        view: LedgerView,
        rules: TransactionRules,
        restored: SafetyState | None = None,
    ) -> None:
        genesis = config.genesis
        if (
            config.index is not None
            and signing_key.public_key.raw != genesis.validators.validators[config.index].public_key
        ):
            raise ConfigurationError(f"the signing key is not validator {config.index}'s key")
        self._config = config
        self._key = signing_key
        self._view = view
        self._rules = rules
        self._chain_id = genesis.chain_id
        self._params = genesis.parameters
        self._genesis = genesis_block(genesis)
        self._mempool = Mempool(rules, config.mempool_capacity, self._params.max_tx_bytes)
        try:
            epoch, previous = epochs_of(genesis, view, rules)
        except ValueError as bad:
            raise ConfigurationError(str(bad)) from bad
        self._previous = previous
        self._settling = False
        self._commit_proof: tuple[QuorumCertificate, list[Block]] | None = None
        self._handover: tuple[QuorumCertificate, dict[bytes, Block]] | None = None
        self._use_epoch(epoch)

        height = view.committed_height()
        root = self._genesis if height == 0 else view.block_at(height)
        if root is None:
            raise ConfigurationError(f"the ledger view has no block at its height {height}")
        self._tree = BlockTree(root)

        state = restored or SafetyState(0, 0, self._root_qc, None)
        # Rounds count on across epochs, so the voted and timeout rounds always hold; the
        # certificates hold only if they belong to the current epoch.
        self._voted_round = state.highest_voted_round
        self._timeout_round = state.highest_timeout_round
        self._high_qc = state.high_qc if self._qc_in_epoch(state.high_qc) else self._root_qc
        self._last_tc = state.last_tc if self._tc_in_epoch(state.last_tc) else None
        self._safety_dirty = False

        self._started = False
        self._now = 0.0
        self.round = 0
        self._round_start = 0.0
        self._round_deadline = 0.0
        self._consecutive_timeouts = 0
        self._retransmits = 0
        self._timed_out = False
        self._proposed_round = 0
        self._idle_deadline: float | None = None

        self._votes: dict[int, dict[int, Vote]] = {}
        self._timeouts: dict[int, dict[int, Timeout]] = {}
        self._qc_for_block: dict[bytes, QuorumCertificate] = {}
        self._parked: dict[bytes, list[tuple[int, Block, Proposal | None]]] = {}
        self._missing: dict[bytes, _Fetch] = {}
        self._recent_hashes: dict[int, bytes] = {root.height: root.hash}

        self._finality_votes: dict[int, dict[int, FinalityVote]] = {}
        self._certificates: dict[int, FinalityCertificate] = {}
        self._uncertified: dict[int, None] = {}
        self._finality_resend_at = 0.0
        self._sync_retry_at = 0.0
        self._sync_peer = self.index or 0

        self.dropped: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

        self._local: deque[Message] = deque()
        self._out: list[Outbound] = []
        self._out_committed: list[Block] = []
        self._out_certificates: list[FinalityCertificate] = []

    # -- public surface ---------------------------------------------------------------

    @property
    def validators(self) -> ValidatorSet:
        """The current epoch's validator set; `index` is this validator's place in it."""
        return self._validators

    @property
    def safety_state(self) -> SafetyState:
        return SafetyState(self._voted_round, self._timeout_round, self._high_qc, self._last_tc)

    @property
    def committed_height(self) -> int:
        return self._tree.root.height

    @property
    def mempool_size(self) -> int:
        return len(self._mempool)

    def start(self, now: float) -> Output:
        """Begin at the round the restored safety state allows; call once."""
        if self._started:
            raise IllegalCallError("the replica is already started")
        self._started = True
        self._now = now
        # Start in the round our certificates justify, so others follow our timeouts; the
        # voted and timeout rounds (which may lie beyond, even in an earlier epoch) still
        # keep us from voting or proposing again in any round we already signed in.
        tc_round = self._last_tc.round + 1 if self._last_tc else 0
        self.round = max(1, self._high_qc.round + 1, tc_round)
        self._round_start = now
        self._round_deadline = now + self._round_timeout(0)
        self._timed_out = False
        low = max(1, self.committed_height - FINALITY_WINDOW + 1)
        for height in range(low, self.committed_height + 1):
            if self._view.certificate_at(height) is None:
                self._uncertified[height] = None
        if self._n > 1 and (self.committed_height > 0 or self._high_qc.round > 0):
            # A restarted validator asks a peer for what it missed straight away.
            self._request_sync(None, now)
        self._maybe_propose(now)
        return self._flush()

    def receive(self, sender: int, message: Message, now: float) -> Output:
        """Handle one message from validator `sender` (authenticated by the adapter).

        Anything malformed, unverifiable or out of place is dropped and counted in
        `dropped`; this never raises for bad input.
        """
        self._require_started()
        now = self._clock(now)
        self._settling = False
        if type(sender) is not int or not 0 <= sender < self._n or sender == self.index:
            self._drop("BAD_SENDER")
            return self._flush()
        problem = check_message(message, self._n, self._chain_id, self._params)
        if problem is not None:
            self._drop(problem)
            return self._flush()
        self._dispatch(sender, message, now)
        self._drain_local(now)
        return self._flush()

    def tick(self, now: float) -> Output:
        """Fire whatever timers are due at `now`."""
        self._require_started()
        now = self._clock(now)
        self._settling = False
        if now >= self._round_deadline:
            self._on_round_timeout(now)
        self._maybe_propose(now)
        if self._uncertified and now >= self._finality_resend_at:
            self._resend_finality_votes(now)
        for block_hash, fetch in list(self._missing.items()):
            if now >= fetch.retry_at:
                fetch.attempts += 1
                fetch.retry_at = now + self._config.fetch_retry_interval
                peer = (fetch.source + fetch.attempts) % self._n
                if peer == self.index:
                    peer = (peer + 1) % self._n
                self._send(peer, BlockRequest(block_hash, fetch.height))
        self._drain_local(now)
        return self._flush()

    def submit(self, txs: Sequence[bytes], now: float) -> Output:
        """Admit client transactions into the mempool and forward them to the others.

        Every transaction is either in `Output.accepted` (by id) or in `Output.rejected`
        with a reason (MEMPOOL_FULL is the back-pressure answer); none is dropped silently.
        """
        self._require_started()
        if isinstance(txs, (bytes, str)) or not all(type(tx) is bytes for tx in txs):
            raise IllegalCallError("submit takes a sequence of transactions as bytes")
        now = self._clock(now)
        self._settling = False
        accepted: list[bytes] = []
        rejected: list[Rejection] = []
        forward: list[bytes] = []
        for i, tx in enumerate(txs):
            verdict = self._mempool.check(tx)
            if verdict.reason is not None or verdict.tx_id is None:
                rejected.append(
                    Rejection(i, verdict.tx_id, verdict.reason or "INVALID", verdict.detail)
                )
                continue
            tx_id = verdict.tx_id
            change = self._rules.validator_set_change(tx)
            if change is not None and not self._approved(change):
                rejected.append(
                    Rejection(
                        i,
                        tx_id,
                        "UNAPPROVED_VALIDATOR_SET_CHANGE",
                        "the change needs approvals of a quorum of the current validators",
                    )
                )
            elif tx_id in self._mempool:
                rejected.append(Rejection(i, tx_id, "DUPLICATE", "already pending"))
            elif self._view.contains_tx(tx_id):
                rejected.append(Rejection(i, tx_id, "ALREADY_FINAL", "already in a final block"))
            elif not self._mempool.add(tx_id, tx):
                rejected.append(
                    Rejection(
                        i,
                        tx_id,
                        "MEMPOOL_FULL",
                        f"mempool holds {self._mempool.capacity} transactions; retry later",
                    )
                )
            else:
                accepted.append(tx_id)
                forward.append(tx)
        self._forward(forward)
        self._maybe_propose(now)
        self._drain_local(now)
        return self._flush(accepted=tuple(accepted), rejected=tuple(rejected))

    # -- plumbing ------------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise IllegalCallError("call start() first")

    def _clock(self, now: float) -> float:
        # A host clock stepping back must not move deadlines backwards.
        self._now = max(self._now, now)
        return self._now

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def _send(self, to: int, message: Message) -> None:
        if to == self.index:
            self._local.append(message)
        else:
            self._out.append(Outbound(to, message))

    def _broadcast(self, message: Message, include_self: bool = True) -> None:
        if self._n > 1:
            self._out.append(Outbound(None, message))
        if include_self:
            self._local.append(message)

    def _drain_local(self, now: float) -> None:
        while self._local:
            # Only a member of the epoch signs what it sends itself (-1 never matches).
            self._dispatch(-1 if self.index is None else self.index, self._local.popleft(), now)

    def _sign(self, context: SigningContext, payload: bytes) -> bytes:
        signature = self._key.sign(context, payload)
        if self.index is not None:
            # Our own signature is good: seed the cache so our QCs and TCs skip the check.
            self._verifier.remember_own(self.index, context, payload, signature)
        return signature

    def _flush(
        self, accepted: tuple[bytes, ...] = (), rejected: tuple[Rejection, ...] = ()
    ) -> Output:
        output = Output(
            messages=tuple(self._out),
            next_deadline=self._next_deadline(),
            safety_state=self.safety_state if self._safety_dirty else None,
            committed=tuple(self._out_committed),
            certificates=tuple(self._out_certificates),
            accepted=accepted,
            rejected=rejected,
        )
        self._out = []
        self._out_committed = []
        self._out_certificates = []
        self._safety_dirty = False
        return output

    def _next_deadline(self) -> float:
        if self._settling:
            return self._now
        deadline = self._round_deadline
        if self._idle_deadline is not None:
            deadline = min(deadline, self._idle_deadline)
        if self._uncertified:
            deadline = min(deadline, max(self._finality_resend_at, self._now))
        for fetch in self._missing.values():
            deadline = min(deadline, fetch.retry_at)
        return deadline

    def _round_timeout(self, extra: int) -> float:
        exponent = min(self._consecutive_timeouts + extra, _MAX_BACKOFF_EXPONENT)
        return float(min(self._config.round_timeout * 2**exponent, self._config.max_round_timeout))

    def _dispatch(self, sender: int, message: Message, now: float) -> None:
        match message:
            case Proposal():
                self._on_proposal(sender, message, now)
            case Vote():
                self._on_vote(sender, message, now)
            case Timeout():
                self._on_timeout(sender, message, now)
            case SyncInfo():
                if self._accept_qc(message.high_qc, sender, now) and message.last_tc:
                    self._accept_tc(message.last_tc, sender, now)
            case FinalityVote():
                self._on_finality_vote(sender, message, now)
            case FinalityCertificate():
                self._on_finality_certificate(sender, message, now)
            case TransactionBatch():
                self._on_transaction_batch(message)
            case BlockRequest():
                self._on_block_request(sender, message)
            case BlockResponse():
                self._on_block_response(sender, message, now)
            case SyncRequest():
                self._on_sync_request(sender, message)
            case SyncResponse():
                self._on_sync_response(sender, message, now)

    # -- certificates and rounds ---------------------------------------------------------

    def _accept_qc(self, qc: QuorumCertificate, source: int, now: float) -> bool:
        try:
            verify_quorum_certificate(qc, self._sign_id, self._verifier, self._root_qc)
        except VerificationError as bad:
            self._drop(f"QC_{bad.reason}")
            return False
        self._process_qc(qc, source, now)
        return True

    def _accept_tc(self, tc: TimeoutCertificate, source: int, now: float) -> bool:
        if tc == self._last_tc:
            return True  # already verified; any other TC is checked, even for an old round
        try:
            verify_timeout_certificate(tc, self._sign_id, self._verifier, self._root_qc)
        except VerificationError as bad:
            self._drop(f"TC_{bad.reason}")
            return False
        self._process_tc(tc, source, now)
        return True

    def _process_qc(self, qc: QuorumCertificate, source: int, now: float) -> None:
        if qc.height > self.committed_height and qc.block_hash not in self._qc_for_block:
            self._qc_for_block[qc.block_hash] = qc
        if qc.round > self._high_qc.round:
            self._high_qc = qc
            self._safety_dirty = True
        epoch = self._epoch
        if qc.block_hash in self._tree:
            self._try_commit(qc, now)
            if self._epoch is not epoch:
                return  # the QC ended its epoch; it justifies nothing in the next one
        elif qc.height > self.committed_height:
            self._fetch(qc.block_hash, qc.height, qc.round, source, now)
        self._advance_round(qc.round + 1, now, progress=True)

    def _process_tc(self, tc: TimeoutCertificate, source: int, now: float) -> None:
        if self._last_tc is None or tc.round > self._last_tc.round:
            self._last_tc = tc
            self._safety_dirty = True
        epoch = self._epoch
        self._process_qc(tc.high_qc, source, now)
        if self._epoch is epoch:
            self._advance_round(tc.round + 1, now, progress=False)

    def _advance_round(self, new_round: int, now: float, progress: bool) -> None:
        if new_round <= self.round:
            return
        self.round = new_round
        self._round_start = now
        self._consecutive_timeouts = 0 if progress else self._consecutive_timeouts + 1
        self._retransmits = 0
        self._timed_out = False
        self._idle_deadline = None
        self._round_deadline = now + self._round_timeout(0)
        for table in (self._votes, self._timeouts):
            for stale in [r for r in table if r + 1 < new_round]:
                del table[stale]
        self.events["rounds"] += 1
        self._maybe_propose(now)

    def _on_round_timeout(self, now: float) -> None:
        round_ = self.round
        if self.index is None or self._settling:
            # Not a validator of this epoch (or just entering it): nothing to sign.
            self._round_deadline = now + self._round_timeout(self._retransmits)
            return
        if round_ > self._timeout_round:
            # Recorded (and persisted by the host) before the timeout leaves: from now
            # on this replica never votes in this round.
            self._timeout_round = round_
            self._safety_dirty = True
        last_tc = self._last_tc if self._last_tc and self._last_tc.round + 1 == round_ else None
        signature = self._sign(
            SigningContext.TIMEOUT,
            timeout_payload(self._sign_id, round_, self._high_qc.round),
        )
        timeout = Timeout(round_, self._high_qc, last_tc, self.index, signature)
        self._broadcast(timeout, include_self=not self._timed_out)
        self.events["timeouts_sent" if not self._timed_out else "timeouts_resent"] += 1
        self._timed_out = True
        self._retransmits += 1
        self._round_deadline = now + self._round_timeout(self._retransmits)

    def _on_timeout(self, sender: int, timeout: Timeout, now: float) -> None:
        if timeout.signer != sender:
            self._drop("SENDER_MISMATCH")
            return
        payload = timeout_payload(self._sign_id, timeout.round, timeout.high_qc.round)
        if not self._verifier.is_valid(sender, SigningContext.TIMEOUT, payload, timeout.signature):
            self._drop("BAD_SIGNATURE")
            return
        epoch = self._epoch
        if not self._accept_qc(timeout.high_qc, sender, now):
            return
        if timeout.last_tc is not None and not self._accept_tc(timeout.last_tc, sender, now):
            return
        if self._epoch is not epoch:
            return
        if timeout.round < self.round:
            # The sender is behind; hand it the certificates that moved us on.
            if sender != self.index:
                self._send(sender, SyncInfo(self._high_qc, self._last_tc))
            return
        if timeout.round > self.round:
            self._drop("UNJUSTIFIED_ROUND")
            return
        collected = self._timeouts.setdefault(timeout.round, {})
        if sender in collected:
            return
        collected[sender] = timeout
        power = self._validators.power_of(list(collected))
        if power >= self._validators.quorum:
            self._process_tc(self._form_tc(timeout.round, collected), sender, now)
        elif power > self._validators.fault_tolerance and not self._timed_out:
            # f + 1 timeouts include an honest one: join so a TC can form.
            self._on_round_timeout(now)

    def _form_tc(self, round_: int, collected: dict[int, Timeout]) -> TimeoutCertificate:
        high_qc = max((t.high_qc for t in collected.values()), key=lambda qc: qc.round)
        signatures = tuple(
            TimeoutSignature(s, collected[s].high_qc.round, collected[s].signature)
            for s in sorted(collected)
        )
        self.events["tcs_formed"] += 1
        return TimeoutCertificate(round_, signatures, high_qc)

    # -- proposals and votes -------------------------------------------------------------

    def _maybe_propose(self, now: float) -> None:
        self._idle_deadline = None
        round_ = self.round
        if self._validators.leader(round_) != self.index or self._proposed_round >= round_:
            return
        if self._settling:
            return
        if round_ <= max(self._voted_round, self._timeout_round):
            return
        via_qc = self._high_qc.round + 1 == round_
        tc = self._last_tc if self._last_tc and self._last_tc.round + 1 == round_ else None
        if not via_qc and tc is None:
            return
        parent = self._tree.get(self._high_qc.block_hash)
        if parent is None:
            if self._high_qc.height > self.committed_height:
                self._fetch(
                    self._high_qc.block_hash,
                    self._high_qc.height,
                    self._high_qc.round,
                    self._validators.leader(self._high_qc.round),
                    now,
                )
            return
        branch = self._tree.branch(parent.hash)
        in_branch = self._branch_tx_ids(branch)
        pending = self._pending_change(branch)

        def excluded(tx_id: bytes) -> bool:
            return tx_id in in_branch

        has_work = any(b.transactions for b in branch) or (
            pending is None and self._mempool.has_any(excluded)
        )
        if not has_work and not (tc and not via_qc):
            idle_at = self._round_start + self._config.idle_interval
            if now < idle_at:
                self._idle_deadline = idle_at
                return
        txs: list[bytes] = []
        next_set = self._validators
        if pending is not None:
            # Above a reconfiguration block only empty blocks, until it commits.
            next_set = pending.validators
        else:
            txs = self._select_transactions(excluded)
            change = self._change_among(txs)
            if change is not None:
                next_set = change.validators
        header = BlockHeader(
            chain_id=self._chain_id,
            height=parent.height + 1,
            round=round_,
            parent_hash=parent.hash,
            tx_root=root_hash(txs),
            validator_set_hash=self._validators.hash,
            next_validator_set_hash=next_set.hash,
            proposer=self.index,
            timestamp_unix_ms=max(int(now * 1000), parent.header.timestamp_unix_ms + 1),
        )
        block = Block(header, tuple(txs), self._high_qc)
        signature = self._sign(
            SigningContext.PROPOSAL, proposal_payload(self._sign_id, block.hash, round_)
        )
        self._proposed_round = round_
        self.events["proposals"] += 1
        self._broadcast(Proposal(block, None if via_qc else tc, signature))

    def _on_proposal(self, sender: int, proposal: Proposal, now: float) -> None:
        block = proposal.block
        header = block.header
        if header.proposer != sender:
            self._drop("SENDER_MISMATCH")
            return
        if self._validators.leader(header.round) != sender:
            self._drop("WRONG_PROPOSER")
            return
        payload = proposal_payload(self._sign_id, block.hash, header.round)
        if not self._verifier.is_valid(
            sender, SigningContext.PROPOSAL, payload, proposal.signature
        ):
            self._drop("BAD_SIGNATURE")
            return
        epoch = self._epoch
        if not self._accept_qc(block.justify, sender, now):
            return
        tc = proposal.timeout_certificate
        if tc is not None and not self._accept_tc(tc, sender, now):
            return
        if self._epoch is not epoch:
            return
        if header.round < self.round and sender != self.index:
            self._send(sender, SyncInfo(self._high_qc, self._last_tc))
        self._consider_block(sender, block, proposal, now)

    def _consider_block(
        self, sender: int, block: Block, proposal: Proposal | None, now: float
    ) -> None:
        work: deque[tuple[int, Block, Proposal | None]] = deque([(sender, block, proposal)])
        epoch = self._epoch
        while work and self._epoch is epoch:
            source, candidate, carried_by = work.popleft()
            if self._insert_block(source, candidate, carried_by, now):
                work.extend(self._parked.pop(candidate.hash, []))
                if carried_by is not None:
                    self._maybe_vote(carried_by, now)

    def _insert_block(
        self, source: int, block: Block, proposal: Proposal | None, now: float
    ) -> bool:
        """Validate and add `block` to the tree; True when it is (now) in the tree."""
        if block.hash in self._tree:
            if proposal is not None:
                self._maybe_vote(proposal, now)
            return False
        if block.height <= self.committed_height:
            self._drop("STALE_BLOCK")
            return False
        parent = self._tree.get(block.parent_hash)
        if parent is None:
            self._park(source, block, proposal)
            if block.height > self.committed_height + SYNC_GAP:
                self._request_sync(source, now)
            else:
                self._fetch(block.parent_hash, block.height - 1, block.justify.round, source, now)
            return False
        problem = self._check_block(block, parent, now, proposal is not None)
        if problem is not None:
            self._drop(problem)
            return False
        self._tree.add(block)
        self._missing.pop(block.hash, None)
        self._try_commit(block.justify, now)
        later_qc = self._qc_for_block.get(block.hash)
        if later_qc is not None:
            self._try_commit(later_qc, now)
        if block.hash == self._high_qc.block_hash:
            self._maybe_propose(now)
        return True

    def _park(self, source: int, block: Block, proposal: Proposal | None) -> None:
        waiting = self._parked.setdefault(block.parent_hash, [])
        if any(b.hash == block.hash for _, b, _ in waiting):
            return
        if sum(len(v) for v in self._parked.values()) >= MAX_PARKED:
            self._drop("PARKED_FULL")
            return
        waiting.append((source, block, proposal))

    def _fetch(self, block_hash: bytes, height: int, round_: int, source: int, now: float) -> None:
        if block_hash in self._missing or block_hash in self._tree:
            return
        if len(self._missing) >= MAX_MISSING:
            self._drop("MISSING_FULL")
            return
        if source == self.index:
            source = self._validators.leader(round_)
        if source == self.index:
            source = (self.index + 1) % self._n
        self._missing[block_hash] = _Fetch(
            height, round_, source, 0, now + self._config.fetch_retry_interval
        )
        self._send(source, BlockRequest(block_hash, height))

    def _check_block(self, block: Block, parent: Block, now: float, proposed: bool) -> str | None:
        """Why `block` may not extend `parent`, or None. Transactions and the clock are
        checked only for proposals: a fetched block is certified by a verified QC."""
        header = block.header
        if header.height != parent.height + 1:
            return "BAD_HEIGHT"
        if block.justify.round != parent.round or block.justify.height != parent.height:
            return "JUSTIFY_MISMATCH"
        if header.validator_set_hash != self._validators.hash:
            return "WRONG_VALIDATOR_SET"
        problem = self._check_handover(block, self._pending_change(self._tree.branch(parent.hash)))
        if problem is not None:
            return problem
        if header.proposer != self._validators.leader(header.round):
            return "WRONG_PROPOSER"
        if header.timestamp_unix_ms <= parent.header.timestamp_unix_ms:
            return "TIMESTAMP_NOT_AFTER_PARENT"
        if root_hash(block.transactions) != header.tx_root:
            return "BAD_TX_ROOT"
        if not proposed:
            return None
        if header.timestamp_unix_ms > int(now * 1000) + self._params.max_clock_drift_ms:
            return "TIMESTAMP_IN_FUTURE"
        in_branch = self._branch_tx_ids(self._tree.branch(parent.hash))
        seen: set[bytes] = set()
        for tx in block.transactions:
            verdict = self._mempool.check(tx)
            if verdict.reason is not None or verdict.tx_id is None:
                return "INVALID_TRANSACTION"
            tx_id = verdict.tx_id
            if tx_id in seen or tx_id in in_branch:
                return "DUPLICATE_TRANSACTION"
            if self._view.contains_tx(tx_id):
                return "ALREADY_FINAL_TRANSACTION"
            seen.add(tx_id)
        return None

    def _branch_tx_ids(self, branch: list[Block]) -> set[bytes]:
        return {self._rules.tx_id(tx) for block in branch for tx in block.transactions}

    def _maybe_vote(self, proposal: Proposal, now: float) -> None:
        block = proposal.block
        round_ = block.round
        if self.index is None or self._settling:
            return
        if round_ != self.round or round_ <= self._voted_round or round_ <= self._timeout_round:
            return
        if block.hash not in self._tree:
            return
        if block.justify.round + 1 != round_:
            tc = proposal.timeout_certificate
            if tc is None or tc.round + 1 != round_ or block.justify.round < tc.high_qc.round:
                self._drop("VOTE_REFUSED_UNSAFE")
                return
        # Recorded (and persisted by the host) before the vote leaves.
        self._voted_round = round_
        self._safety_dirty = True
        signature = self._sign(
            SigningContext.VOTE,
            vote_payload(self._sign_id, block.hash, block.height, round_),
        )
        self.events["votes_sent"] += 1
        self._send(
            self._validators.leader(round_ + 1),
            Vote(block.hash, block.height, round_, self.index, signature),
        )

    def _on_vote(self, sender: int, vote: Vote, now: float) -> None:
        if vote.signer != sender:
            self._drop("SENDER_MISMATCH")
            return
        if self._validators.leader(vote.round + 1) != self.index:
            self._drop("NOT_NEXT_LEADER")
            return
        if vote.round <= self._high_qc.round or vote.round + 1 < self.round:
            self._drop("STALE_VOTE")
            return
        if vote.round > self.round + VOTE_LOOKAHEAD:
            self._drop("FAR_FUTURE_VOTE")
            return
        payload = vote_payload(self._sign_id, vote.block_hash, vote.height, vote.round)
        if not self._verifier.is_valid(sender, SigningContext.VOTE, payload, vote.signature):
            self._drop("BAD_SIGNATURE")
            return
        by_signer = self._votes.setdefault(vote.round, {})
        earlier = by_signer.get(sender)
        if earlier is not None:
            if earlier != vote:
                self._drop("DOUBLE_VOTE")
            return
        by_signer[sender] = vote
        same = {
            s: v.signature
            for s, v in by_signer.items()
            if v.block_hash == vote.block_hash and v.height == vote.height
        }
        if self._validators.power_of(list(same)) >= self._validators.quorum:
            qc = QuorumCertificate(
                vote.block_hash, vote.height, vote.round, sorted_signatures(same)
            )
            self.events["qcs_formed"] += 1
            del self._votes[vote.round]
            self._process_qc(qc, sender, now)

    # -- commit and finality -------------------------------------------------------------

    def _try_commit(self, qc: QuorumCertificate, now: float) -> None:
        """2-chain rule: a QC for B' whose parent B is from the round just before commits B."""
        certified = self._tree.get(qc.block_hash)
        if certified is None or certified.hash == self._tree.root.hash:
            return
        parent = self._tree.get(certified.parent_hash)
        if parent is None or parent.height <= self.committed_height:
            return
        if certified.round != parent.round + 1:
            return
        self._commit_proof = (qc, self._tree.branch(certified.hash))
        for block in self._tree.branch(parent.hash):
            self._commit(block, None, now)
            if is_reconfiguration(block):
                # The epoch ends here: what was built above it in this epoch is dropped.
                break

    def _commit(self, block: Block, certificate: FinalityCertificate | None, now: float) -> None:
        self._tree.advance_root(block)
        height = block.height
        self._recent_hashes[height] = block.hash
        self._recent_hashes.pop(height - FINALITY_WINDOW, None)
        self._out_committed.append(block)
        self._mempool.remove(self._rules.tx_id(tx) for tx in block.transactions)
        self.events["blocks_committed"] += 1
        for table in (self._qc_for_block, self._missing):
            for block_hash in [h for h, v in table.items() if v.height <= height]:
                del table[block_hash]
        for parent_hash in list(self._parked):
            kept = [entry for entry in self._parked[parent_hash] if entry[1].height > height]
            if kept:
                self._parked[parent_hash] = kept
            else:
                del self._parked[parent_hash]
        for old in [h for h in self._finality_votes if h <= height - FINALITY_WINDOW]:
            del self._finality_votes[old]
        if certificate is not None:
            self._record_certificate(certificate)
        else:
            self._uncertified[height] = None
            vote = self._own_finality_vote(height, block.hash)
            if vote is not None:
                self._broadcast(vote)
        if is_reconfiguration(block):
            self._enter_epoch(block, now)

    def _own_finality_vote(self, height: int, block_hash: bytes) -> FinalityVote | None:
        """Our FINALITY signature for a height, as a member of that height's epoch."""
        epoch = self._epoch_at(height)
        signer = None if epoch is None else epoch.index_of(self._key.public_key)
        if epoch is None or signer is None:
            return None
        payload = finality_payload(self._chain_id, height, block_hash)
        signature = self._key.sign(SigningContext.FINALITY, payload)
        epoch.verifier.remember_own(signer, SigningContext.FINALITY, payload, signature)
        return FinalityVote(height, block_hash, signer, signature)

    # -- epochs ----------------------------------------------------------------------------

    def _use_epoch(self, epoch: Epoch) -> None:
        self._epoch = epoch
        self._validators = epoch.validators
        self._verifier = epoch.verifier
        self._n = epoch.validators.size
        self._root_qc = epoch.root_qc
        self._sign_id = epoch.signing_chain_id
        self.index = epoch.index_of(self._key.public_key)

    def _epoch_at(self, height: int) -> Epoch | None:
        """The epoch whose validators sign finality for `height` (if still known)."""
        if height >= self._epoch.first_height:
            return self._epoch
        previous = self._previous
        if previous is not None and height >= previous.first_height:
            return previous
        return None

    def _qc_in_epoch(self, qc: QuorumCertificate) -> bool:
        if qc == self._root_qc:
            return True
        if qc.height < self._epoch.first_height:
            return False
        try:
            verify_quorum_certificate(qc, self._sign_id, self._verifier, self._root_qc)
        except VerificationError:
            return False
        return True

    def _tc_in_epoch(self, tc: TimeoutCertificate | None) -> bool:
        if tc is None or not self._qc_in_epoch(tc.high_qc):
            return False
        try:
            verify_timeout_certificate(tc, self._sign_id, self._verifier, self._root_qc)
        except VerificationError:
            return False
        return True

    def _enter_epoch(self, root: Block, now: float) -> None:
        """A reconfiguration block committed: its change's set runs the chain from here."""
        change = change_in(root, self._rules)
        assert change is not None  # checked when the block entered the tree
        self._previous = self._epoch
        proof = self._commit_proof
        # Validators still in the old epoch commit the reconfiguration the way we did:
        # from the QC that committed it and the blocks up to the one it certifies, which
        # we keep handing out until the old epoch's heights are certified.
        self._handover = None
        if proof is not None and root in proof[1]:
            above = proof[1][proof[1].index(root) + 1 :]
            self._handover = (proof[0], {block.hash: block for block in above})
        self._use_epoch(next_epoch(self._chain_id, root, change.validators))
        self._tree = BlockTree(root)
        self._high_qc = self._root_qc
        self._last_tc = None
        for table in (self._votes, self._timeouts):
            table.clear()
        self._qc_for_block.clear()
        self._parked.clear()
        self._missing.clear()
        self._sync_peer = self.index or 0
        self.events["epochs"] += 1
        if self._handover is not None:
            self._broadcast(SyncInfo(self._handover[0], None), include_self=False)
        # Nothing is signed in the new epoch during this call: the host stores the
        # reconfiguration block before the new epoch's safety state can be written.
        self._settling = True
        self.round = root.round + 1
        self._round_start = now
        self._consecutive_timeouts = 0
        self._retransmits = 0
        self._timed_out = False
        self._idle_deadline = None
        self._round_deadline = now + self._round_timeout(0)

    def _pending_change(self, branch: list[Block]) -> ValidatorSetChange | None:
        """The change of an uncommitted reconfiguration block in `branch`, if any."""
        for block in branch:
            if is_reconfiguration(block):
                return change_in(block, self._rules)
        return None

    def _change_among(self, txs: Sequence[bytes]) -> ValidatorSetChange | None:
        for tx in txs:
            change = self._rules.validator_set_change(tx)
            if change is not None:
                return change
        return None

    def _approved(self, change: ValidatorSetChange) -> bool:
        return is_approved(change, self._validators, self._chain_id)

    def _check_handover(self, block: Block, pending: ValidatorSetChange | None) -> str | None:
        """The next-validator-set rule: the pending change's set above a reconfiguration
        block (which must then be empty), the block's own approved change, or no change."""
        next_hash = block.header.next_validator_set_hash
        if pending is not None:
            if block.transactions:
                return "RECONFIGURATION_PENDING"
            return None if next_hash == pending.validators.hash else "WRONG_NEXT_VALIDATOR_SET"
        changes = [c for tx in block.transactions if (c := self._rules.validator_set_change(tx))]
        if not changes:
            return None if next_hash == self._validators.hash else "WRONG_NEXT_VALIDATOR_SET"
        if len(changes) > 1 or not self._approved(changes[0]):
            return "INVALID_VALIDATOR_SET_CHANGE"
        if next_hash != changes[0].validators.hash:
            return "WRONG_NEXT_VALIDATOR_SET"
        return None

    def _select_transactions(self, excluded: Callable[[bytes], bool]) -> list[bytes]:
        """Mempool transactions for a block: at most one approved validator-set change;
        changes this epoch's validators did not approve leave the mempool."""
        txs = self._mempool.select(
            excluded, self._params.max_block_txs, self._params.max_block_bytes
        )
        chosen: list[bytes] = []
        has_change = False
        for tx in txs:
            change = self._rules.validator_set_change(tx)
            if change is not None:
                if not self._approved(change):
                    self._mempool.remove([self._rules.tx_id(tx)])
                    self._drop("UNAPPROVED_VALIDATOR_SET_CHANGE")
                    continue
                if has_change:
                    continue
                has_change = True
            chosen.append(tx)
        return chosen

    def _committed_hash(self, height: int) -> bytes | None:
        known = self._recent_hashes.get(height)
        if known is not None:
            return known
        if height == 0:
            return self._genesis.hash
        block = self._view.block_at(height)
        return None if block is None else block.hash

    def _certificate(self, height: int) -> FinalityCertificate | None:
        return self._certificates.get(height) or self._view.certificate_at(height)

    def _record_certificate(self, certificate: FinalityCertificate) -> None:
        height = certificate.height
        self._certificates[height] = certificate
        self._certificates.pop(height - FINALITY_WINDOW, None)
        self._uncertified.pop(height, None)
        self._finality_votes.pop(height, None)
        self._out_certificates.append(certificate)
        self.events["certificates"] += 1

    def _on_finality_vote(self, sender: int, vote: FinalityVote, now: float) -> None:
        height = vote.height
        if height > self.committed_height + SYNC_GAP:
            # The sender is well ahead (perhaps in a later epoch, whose signers we
            # cannot check yet): fetch its final blocks, which carry certificates.
            self._request_sync(sender, now)
        if vote.signer != sender and height >= self._epoch.first_height:
            # Senders are numbered in the current epoch; earlier heights' votes are
            # authenticated by their signature alone.
            self._drop("SENDER_MISMATCH")
            return
        committed = self.committed_height
        if height <= committed and height not in self._uncertified:
            certificate = self._certificate(height)
            if certificate is not None and sender != self.index:
                # The sender still lacks this certificate; ours ends its rebroadcasts.
                self._send(sender, certificate)
            return
        if height > committed + FINALITY_WINDOW:
            self._drop("FAR_FUTURE_FINALITY_VOTE")
            return
        epoch = self._epoch_at(height)
        if epoch is None:
            self._drop("UNKNOWN_EPOCH")
            return
        payload = finality_payload(self._chain_id, height, vote.block_hash)
        if not epoch.verifier.is_valid(
            vote.signer, SigningContext.FINALITY, payload, vote.signature
        ):
            self._drop("BAD_SIGNATURE")
            return
        votes = self._finality_votes.setdefault(height, {})
        if vote.signer in votes:
            return
        votes[vote.signer] = vote
        self._try_certify(height)

    def _try_certify(self, height: int) -> None:
        if height > self.committed_height or height not in self._uncertified:
            return
        block_hash = self._committed_hash(height)
        votes = self._finality_votes.get(height, {})
        matching = {s: v.signature for s, v in votes.items() if v.block_hash == block_hash}
        if block_hash is None:
            return
        if len(matching) != len(votes):
            self.events["conflicting_finality_votes"] += 1
        epoch = self._epoch_at(height)
        if epoch is None:
            return
        if epoch.validators.power_of(list(matching)) >= epoch.validators.quorum:
            self._record_certificate(
                FinalityCertificate(self._chain_id, height, block_hash, sorted_signatures(matching))
            )

    def _on_finality_certificate(
        self, sender: int, certificate: FinalityCertificate, now: float
    ) -> None:
        height = certificate.height
        if height > self.committed_height:
            self._request_sync(sender, now)
            return
        epoch = self._epoch_at(height)
        if height not in self._uncertified or epoch is None:
            return
        try:
            verify_finality_certificate(
                certificate, epoch.validators, self._chain_id, epoch.verifier
            )
        except VerificationError as bad:
            self._drop(f"CERTIFICATE_{bad.reason}")
            return
        if certificate.block_hash != self._committed_hash(height):
            self.events["conflicting_certificates"] += 1
            self._drop("CONFLICTING_CERTIFICATE")
            return
        self._record_certificate(certificate)

    def _resend_finality_votes(self, now: float) -> None:
        self._finality_resend_at = now + self._config.finality_rebroadcast_interval
        handover = self._handover
        if handover is not None:
            if any(h < self._epoch.first_height for h in self._uncertified):
                self._broadcast(SyncInfo(handover[0], None), include_self=False)
            else:
                self._handover = None
        for height in sorted(self._uncertified)[:FINALITY_REBROADCAST_BATCH]:
            block_hash = self._committed_hash(height)
            if block_hash is None or self._epoch_at(height) is None:
                # Gone from view, or from an epoch too old to check: leave it be.
                self._uncertified.pop(height, None)
                continue
            vote = self._own_finality_vote(height, block_hash)
            if vote is None:
                # Not a signer of that height: ask a peer for the certified blocks.
                self._request_sync(None, now, height)
                break
            self.events["finality_votes_resent"] += 1
            self._broadcast(vote, include_self=False)

    # -- transactions, block fetch and sync ---------------------------------------------

    def _forward(self, txs: list[bytes]) -> None:
        batch: list[bytes] = []
        size = 0
        for tx in txs:
            if batch and (
                len(batch) >= self._config.forward_batch_txs
                or size + len(tx) > self._config.forward_batch_bytes
            ):
                self._broadcast(TransactionBatch(tuple(batch)), include_self=False)
                batch, size = [], 0
            batch.append(tx)
            size += len(tx)
        if batch:
            self._broadcast(TransactionBatch(tuple(batch)), include_self=False)

    def _on_transaction_batch(self, batch: TransactionBatch) -> None:
        for tx in batch.transactions:
            verdict = self._mempool.check(tx)
            if verdict.reason is not None or verdict.tx_id is None:
                self._drop("FORWARDED_" + verdict.reason if verdict.reason else "FORWARDED_BAD")
            elif verdict.tx_id in self._mempool or self._view.contains_tx(verdict.tx_id):
                continue
            elif not self._mempool.add(verdict.tx_id, tx):
                self._drop("FORWARDED_MEMPOOL_FULL")

    def _on_block_request(self, sender: int, request: BlockRequest) -> None:
        block = self._tree.get(request.block_hash)
        if block is None and self._handover is not None:
            block = self._handover[1].get(request.block_hash)
        if block is None and 0 < request.height <= self.committed_height:
            block = self._view.block_at(request.height)
            if block is not None and block.hash != request.block_hash:
                block = None
        if block is None or block.height == 0:
            self._drop("UNKNOWN_BLOCK_REQUESTED")
            return
        self._send(sender, BlockResponse(block))

    def _on_block_response(self, sender: int, response: BlockResponse, now: float) -> None:
        block = response.block
        fetch = self._missing.get(block.hash)
        if fetch is None:
            self._drop("UNSOLICITED_BLOCK")
            return
        if block.height != fetch.height or block.round != fetch.round:
            self._drop("FETCHED_BLOCK_MISMATCH")
            return
        epoch = self._epoch
        if not self._accept_qc(block.justify, sender, now) or self._epoch is not epoch:
            return
        self._consider_block(sender, block, None, now)

    def _request_sync(self, peer: int | None, now: float, from_height: int | None = None) -> None:
        if now < self._sync_retry_at:
            return
        self._sync_retry_at = now + 2 * self._config.fetch_retry_interval
        if peer is None or peer == self.index:
            self._sync_peer = (self._sync_peer + 1) % self._n
            if self._sync_peer == self.index:
                self._sync_peer = (self._sync_peer + 1) % self._n
            peer = self._sync_peer
        self.events["sync_requests"] += 1
        first = self.committed_height + 1 if from_height is None else from_height
        self._send(peer, SyncRequest(first))

    def _on_sync_request(self, sender: int, request: SyncRequest) -> None:
        blocks: list[CertifiedBlock] = []
        last = min(self.committed_height, request.from_height + self._config.max_sync_blocks - 1)
        for height in range(request.from_height, last + 1):
            block = self._tree.root if height == self.committed_height else None
            block = block or self._view.block_at(height)
            certificate = self._certificate(height)
            if block is None or certificate is None:
                break
            blocks.append(CertifiedBlock(block, certificate))
        if blocks:
            self._send(sender, SyncResponse(tuple(blocks)))

    def _on_sync_response(self, sender: int, response: SyncResponse, now: float) -> None:
        applied = 0
        for item in response.blocks:
            block, certificate = item.block, item.certificate
            if block.height <= self.committed_height:
                # Still useful for a height we committed without its certificate.
                self._on_finality_certificate(sender, certificate, now)
                continue
            problem = self._check_certified(block, certificate)
            if problem is not None:
                self._drop(problem)
                break
            self._commit(block, certificate, now)
            applied += 1
        if applied:
            self.events["blocks_synced"] += applied
            if len(response.blocks) >= self._config.max_sync_blocks:
                self._sync_retry_at = 0.0
                self._request_sync(sender, now)

    def _check_certified(self, block: Block, certificate: FinalityCertificate) -> str | None:
        root = self._tree.root
        if block.height != root.height + 1:
            return "SYNC_GAP"
        if block.parent_hash != root.hash:
            return "SYNC_BROKEN_CHAIN"
        if certificate.height != block.height or certificate.block_hash != block.hash:
            return "SYNC_CERTIFICATE_MISMATCH"
        header = block.header
        if header.validator_set_hash != self._validators.hash:
            return "SYNC_WRONG_VALIDATOR_SET"
        if root_hash(block.transactions) != header.tx_root:
            return "SYNC_BAD_TX_ROOT"
        # A final block is never above an uncommitted reconfiguration, so only its own
        # change (if any) may name another next set.
        if self._check_handover(block, None) is not None:
            return "SYNC_WRONG_VALIDATOR_SET"
        try:
            verify_finality_certificate(
                certificate, self._validators, self._chain_id, self._verifier
            )
        except VerificationError as bad:
            return f"SYNC_CERTIFICATE_{bad.reason}"
        return None
