"""Errors of the audit service, each a core category with its own machine-readable reason.

MedledgerError (medledger.core.errors)
├── InvalidArgument
│   ├── BadAuditEvent           BAD_AUDIT_EVENT
│   ├── BadPageToken            BAD_PAGE_TOKEN
│   └── BadReportRequest        BAD_REPORT_REQUEST
├── NotFound
│   ├── EntryNotFound           ENTRY_NOT_FOUND
│   └── CheckpointNotFound      CHECKPOINT_NOT_FOUND
├── PermissionDenied
│   └── OutsidePatientScope     OUTSIDE_PATIENT_SCOPE
├── FailedPrecondition
│   ├── NoCheckpoint            NO_CHECKPOINT
│   ├── InconsistentLog         INCONSISTENT_LOG
│   └── LogWriterConflict       LOG_WRITER_CONFLICT
└── OutOfRange
    └── TreeSizeOutOfRange      TREE_SIZE_OUT_OF_RANGE
"""

from __future__ import annotations

from medledger.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
)


class BadAuditEvent(InvalidArgument):
    """An event on the stream is not a usable AuditEvent (it is never retried)."""

    reason = "BAD_AUDIT_EVENT"


class BadPageToken(InvalidArgument):
    reason = "BAD_PAGE_TOKEN"


class BadReportRequest(InvalidArgument):
    reason = "BAD_REPORT_REQUEST"


class EntryNotFound(NotFound):
    reason = "ENTRY_NOT_FOUND"


class CheckpointNotFound(NotFound):
    reason = "CHECKPOINT_NOT_FOUND"


class OutsidePatientScope(PermissionDenied):
    """A patient asked about data that is not their own."""

    reason = "OUTSIDE_PATIENT_SCOPE"


class NoCheckpoint(FailedPrecondition):
    """Nothing has been checkpointed yet (or nothing anchored, when that was asked)."""

    reason = "NO_CHECKPOINT"


class InconsistentLog(FailedPrecondition):
    """A new tree head is not an extension of the previous checkpoint: the store was altered."""

    reason = "INCONSISTENT_LOG"


class LogWriterConflict(FailedPrecondition):
    """Another writer appended to the log since this one loaded it."""

    reason = "LOG_WRITER_CONFLICT"


class TreeSizeOutOfRange(OutOfRange):
    reason = "TREE_SIZE_OUT_OF_RANGE"
