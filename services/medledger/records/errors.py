"""Errors of the records service, each a medledger error category with its own reason.

MedledgerError
├── InvalidArgument
│   ├── InvalidRecordRequest     INVALID_RECORD_REQUEST
│   ├── UploadSizeMismatch       UPLOAD_SIZE_MISMATCH
│   ├── UploadDigestMismatch     UPLOAD_DIGEST_MISMATCH
│   └── NotDicom                 NOT_DICOM
├── NotFound
│   ├── RecordNotFound           RECORD_NOT_FOUND
│   └── BlobNotFound             BLOB_NOT_FOUND
├── AlreadyExists
│   └── RecordAlreadyExists      RECORD_ALREADY_EXISTS
├── PermissionDenied
│   └── AccessDenied             ACCESS_DENIED (reason from consent in metadata)
├── FailedPrecondition
│   ├── RecordErased             RECORD_ERASED
│   └── RecordPending            RECORD_PENDING
├── OutOfRange
│   └── RangeNotSatisfiable      RANGE_NOT_SATISFIABLE
├── ResourceExhausted
│   └── UploadTooLarge           UPLOAD_TOO_LARGE
├── Unavailable
│   ├── StorageUnavailable       STORAGE_UNAVAILABLE
│   ├── MetadataUnavailable      METADATA_UNAVAILABLE
│   ├── AuditUnavailable         AUDIT_UNAVAILABLE
│   ├── ConsentUnavailable       CONSENT_UNAVAILABLE
│   └── LedgerUnavailable        LEDGER_UNAVAILABLE
└── Internal
    └── RecordIntegrityError     RECORD_INTEGRITY_FAILED
"""

from __future__ import annotations

from medledger.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)


class InvalidRecordRequest(InvalidArgument):
    reason = "INVALID_RECORD_REQUEST"


class UploadSizeMismatch(InvalidArgument):
    reason = "UPLOAD_SIZE_MISMATCH"


class UploadDigestMismatch(InvalidArgument):
    reason = "UPLOAD_DIGEST_MISMATCH"


class NotDicom(InvalidArgument):
    reason = "NOT_DICOM"


class RecordNotFound(NotFound):
    reason = "RECORD_NOT_FOUND"


class BlobNotFound(NotFound):
    reason = "BLOB_NOT_FOUND"


class RecordAlreadyExists(AlreadyExists):
    reason = "RECORD_ALREADY_EXISTS"


class AccessDenied(PermissionDenied):
    reason = "ACCESS_DENIED"


class RecordErased(FailedPrecondition):
    reason = "RECORD_ERASED"


class RangeNotSatisfiable(OutOfRange):
    reason = "RANGE_NOT_SATISFIABLE"


class UploadTooLarge(ResourceExhausted):
    reason = "UPLOAD_TOO_LARGE"


class StorageUnavailable(Unavailable):
    reason = "STORAGE_UNAVAILABLE"


class MetadataUnavailable(Unavailable):
    reason = "METADATA_UNAVAILABLE"


class RecordIntegrityError(Internal):
    """Stored content failed authentication or does not match its metadata."""

    reason = "RECORD_INTEGRITY_FAILED"


class RecordPending(FailedPrecondition):
    """The record is stored but its ledger registration is not final yet."""

    reason = "RECORD_PENDING"


class AuditUnavailable(Unavailable):
    """An access could not be audited, so it was not performed."""

    reason = "AUDIT_UNAVAILABLE"


class ConsentUnavailable(Unavailable):
    """Consent could not be asked, so the read was refused."""

    reason = "CONSENT_UNAVAILABLE"


class LedgerUnavailable(Unavailable):
    reason = "LEDGER_UNAVAILABLE"
