"""The audit log's records: a stored entry, a stored checkpoint, and the filter queries use."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from medledger._gen.common.v1 import access_pb2, audit_event_pb2
from medledger.audit.errors import BadAuditEvent


@dataclass(frozen=True, slots=True)
class IndexedEvent:
    """The columns an event is searched by, taken from its leaf bytes."""

    event_id: str
    event_time_ms: int
    patient_pseudonym: str
    principal: str
    actor_organisation: str
    action: int
    decision: int
    purpose: int
    record: str
    break_glass: bool


def parse_event(leaf_data: bytes) -> audit_event_pb2.AuditEvent:
    try:
        event = audit_event_pb2.AuditEvent.FromString(leaf_data)
    except DecodeError:
        raise BadAuditEvent("BAD_AUDIT_EVENT", "payload is not an AuditEvent") from None
    if not event.event_id or len(event.event_id) > 128:
        raise BadAuditEvent("BAD_AUDIT_EVENT", "event has no usable event_id")
    return event


def index_event(event: audit_event_pb2.AuditEvent) -> IndexedEvent:
    time = event.time
    return IndexedEvent(
        event_id=event.event_id,
        event_time_ms=time.seconds * 1000 + time.nanos // 1_000_000,
        patient_pseudonym=event.patient_pseudonym,
        principal=event.actor.principal,
        actor_organisation=event.actor.organisation,
        action=event.action,
        decision=event.decision,
        purpose=event.purpose,
        record=event.record,
        break_glass=(
            event.HasField("break_glass")
            or event.purpose == access_pb2.PURPOSE_OF_USE_BTG
            or event.action == access_pb2.ACCESS_ACTION_BREAK_GLASS
        ),
    )


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One appended event with its place in the tree."""

    leaf_index: int
    append_time_ms: int
    leaf_hash: bytes
    completed: bytes
    leaf_data: bytes
    indexed: IndexedEvent

    @property
    def event_id(self) -> str:
        return self.indexed.event_id

    def event(self) -> audit_event_pb2.AuditEvent:
        return audit_event_pb2.AuditEvent.FromString(self.leaf_data)


@dataclass(frozen=True, slots=True)
class AnchorState:
    """Where a checkpoint's anchoring transaction stands on the ledger."""

    tx_id: str = ""
    state: int = 0  # medledger.common.v1.CommitState
    height: int = 0
    receipt: bytes = b""  # serialized TransactionReceipt once FINAL


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A signed tree head, the anchoring transaction, and the frontier to resume from."""

    tree_size: int
    log_id: str
    root_hash: bytes
    time_ms: int
    signer: str
    signer_key_id: str
    signer_public_key: bytes
    signature: bytes
    accumulator: bytes
    anchor_tx: bytes
    anchor: AnchorState = field(default_factory=AnchorState)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Conditions on events, combined with AND; empty fields do not filter."""

    patient_pseudonym: str = ""
    principal: str = ""
    organisation: str = ""
    action: int = 0
    decision: int = 0
    purpose: int = 0
    record: str = ""
    start_ms: int | None = None
    end_ms: int | None = None
    break_glass_only: bool = False

    def canonical(self) -> str:
        """A stable text of the filter, bound into page tokens."""
        return "|".join(
            str(part)
            for part in (
                self.patient_pseudonym,
                self.principal,
                self.organisation,
                self.action,
                self.decision,
                self.purpose,
                self.record,
                self.start_ms,
                self.end_ms,
                self.break_glass_only,
            )
        )
