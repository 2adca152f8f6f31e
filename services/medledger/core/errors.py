"""The one error hierarchy of medledger and the one place it is mapped to gRPC status.

    MedledgerError
    ├── InvalidArgument      INVALID_ARGUMENT
    ├── NotFound             NOT_FOUND
    ├── AlreadyExists        ALREADY_EXISTS
    ├── PermissionDenied     PERMISSION_DENIED
    ├── Unauthenticated      UNAUTHENTICATED
    ├── FailedPrecondition   FAILED_PRECONDITION
    │   └── SettingsError    (raised at start-up, never on the wire)
    ├── Aborted              ABORTED
    ├── OutOfRange           OUT_OF_RANGE
    ├── ResourceExhausted    RESOURCE_EXHAUSTED
    ├── Unavailable          UNAVAILABLE
    ├── DeadlineExceeded     DEADLINE_EXCEEDED
    ├── Unimplemented        UNIMPLEMENTED
    └── Internal             INTERNAL

Services subclass the category that fits and give the subclass its own
``reason`` (``class ConsentNotFound(NotFound): reason = "CONSENT_NOT_FOUND"``).
On the wire every error is a ``google.rpc.Status`` carrying a
``google.rpc.ErrorInfo(reason, domain="<service>.medledger", metadata)`` in the
``grpc-status-details-bin`` trailer (AIP-193).
"""

# The category names are gRPC's own, so they carry no "Error" suffix.
# ruff: noqa: N818

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

_REASON_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_INTERNAL_MESSAGE = "internal error"


class MedledgerError(Exception):
    """Base of every error medledger raises on purpose.

    ``MedledgerError(reason, message, metadata)``: ``reason`` is an
    UPPER_SNAKE_CASE machine-readable cause (the class default when omitted),
    ``message`` a short text for the caller (never PHI), ``metadata`` string
    pairs a client may act on (ids, limits). A lone argument that is not
    UPPER_SNAKE_CASE is taken as the message, so ``NotFound("no such consent")``
    also works.
    """

    reason: str = "MEDLEDGER_ERROR"
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        reason: str | None = None,
        message: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if reason is not None and message is None and not _REASON_PATTERN.match(reason):
            reason, message = None, reason
        if reason is not None and not _REASON_PATTERN.match(reason):
            raise ValueError(f"error reason must be UPPER_SNAKE_CASE, got {reason!r}")
        self.reason = reason or type(self).reason
        self.message = message or self.reason.lower().replace("_", " ")
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


class InvalidArgument(MedledgerError):
    reason = "INVALID_ARGUMENT"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MedledgerError):
    reason = "NOT_FOUND"
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MedledgerError):
    reason = "ALREADY_EXISTS"
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MedledgerError):
    reason = "PERMISSION_DENIED"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(MedledgerError):
    reason = "UNAUTHENTICATED"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(MedledgerError):
    reason = "FAILED_PRECONDITION"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(MedledgerError):
    reason = "ABORTED"
    grpc_code = grpc.StatusCode.ABORTED


class OutOfRange(MedledgerError):
    reason = "OUT_OF_RANGE"
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(MedledgerError):
    reason = "RESOURCE_EXHAUSTED"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(MedledgerError):
    reason = "UNAVAILABLE"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MedledgerError):
    reason = "DEADLINE_EXCEEDED"
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(MedledgerError):
    reason = "UNIMPLEMENTED"
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MedledgerError):
    reason = "INTERNAL"
    grpc_code = grpc.StatusCode.INTERNAL


class SettingsError(FailedPrecondition):
    """The process settings are invalid; the message lists every bad variable."""

    reason = "INVALID_SETTINGS"


_BY_CODE: dict[grpc.StatusCode, type[MedledgerError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unimplemented,
        Internal,
    )
}


def error_domain(service_name: str) -> str:
    """The ErrorInfo domain of a service: ``<service>.medledger``."""
    return f"{service_name}.medledger"


def to_rpc_status(error: BaseException, service_name: str) -> grpc.Status:
    """Map any exception to the gRPC status a client sees.

    A MedledgerError keeps its code, message, reason and metadata; anything else
    becomes INTERNAL with reason INTERNAL and a fixed message, so no internal
    detail leaks to the caller.
    """
    if isinstance(error, MedledgerError) and error.grpc_code is not grpc.StatusCode.UNKNOWN:
        code, reason, message, metadata = (
            error.grpc_code,
            error.reason,
            error.message,
            error.metadata,
        )
    else:
        code, reason, message = grpc.StatusCode.INTERNAL, "INTERNAL", _INTERNAL_MESSAGE
        metadata = {}
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain=error_domain(service_name), metadata=metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=_numeric_code(code), message=message, details=[detail])
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def _numeric_code(code: grpc.StatusCode) -> int:
    value: tuple[int, str] = code.value
    return value[0]


@dataclass(frozen=True)
class RpcErrorDetails:
    """What a client learns from a failed call: code, reason, domain and metadata."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


class FailedCall(Protocol):
    """A failed call as grpc raises it: AioRpcError, or the sync stack's RpcError."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Any: ...


def rpc_error_details(error: FailedCall) -> RpcErrorDetails:
    """Extract (code, reason, metadata) from a failed call (an AioRpcError or sync RpcError)."""
    code = error.code()
    message = error.details() or ""
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return RpcErrorDetails(
                    code=code,
                    message=message,
                    reason=info.reason,
                    domain=info.domain,
                    metadata=dict(info.metadata),
                )
    return RpcErrorDetails(code=code, message=message, reason=code.name)


def from_rpc_error(error: FailedCall) -> MedledgerError:
    """Turn a failed call into the MedledgerError of the same code and reason.

    For service clients that want to re-raise a remote failure in their own
    domain terms.
    """
    details = rpc_error_details(error)
    cls = _BY_CODE.get(details.code, Internal)
    reason = details.reason if _REASON_PATTERN.match(details.reason) else cls.reason
    return cls(reason, details.message or reason.lower(), details.metadata)
