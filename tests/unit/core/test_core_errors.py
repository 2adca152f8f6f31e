"""The error hierarchy and its one mapping to google.rpc.Status."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from medledger.core.errors import (
    AlreadyExists,
    Internal,
    InvalidArgument,
    MedledgerError,
    NotFound,
    PermissionDenied,
    SettingsError,
    Unauthenticated,
    from_rpc_error,
    rpc_error_details,
    to_rpc_status,
)


class ConsentNotFound(NotFound):
    reason = "CONSENT_NOT_FOUND"


class FakeFailedCall:
    """A failed call as a client receives it, built from the status the server sends."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self._status.code
        return code

    def details(self) -> str:
        details: str = self._status.details
        return details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def _decode(status: grpc.Status) -> tuple[Any, Any]:
    key, value = status.trailing_metadata[0]
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    return rich, info


def test_constructor_forms() -> None:
    full = NotFound("CONSENT_NOT_FOUND", "consent c1 not found", {"consent_id": "c1"})
    assert (full.reason, full.message, full.metadata) == (
        "CONSENT_NOT_FOUND",
        "consent c1 not found",
        {"consent_id": "c1"},
    )
    message_only = ConsentNotFound("consent c2 not found")
    assert (message_only.reason, message_only.message) == (
        "CONSENT_NOT_FOUND",
        "consent c2 not found",
    )
    bare = AlreadyExists()
    assert (bare.reason, bare.message) == ("ALREADY_EXISTS", "already exists")
    with pytest.raises(ValueError, match="UPPER_SNAKE_CASE"):
        InvalidArgument("bad-reason", "message")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConsentNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (SettingsError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (Internal("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_category_maps_to_its_code(error: MedledgerError, code: grpc.StatusCode) -> None:
    status = to_rpc_status(error, "consent")
    assert status.code is code
    rich, info = _decode(status)
    assert rich.code == code.value[0]
    assert info.reason == error.reason
    assert info.domain == "consent.medledger"


def test_unknown_exception_maps_to_internal_without_leaking() -> None:
    status = to_rpc_status(KeyError("patient Alice Smith"), "records")
    assert status.code is grpc.StatusCode.INTERNAL
    assert "Alice" not in status.details
    rich, info = _decode(status)
    assert info.reason == "INTERNAL" and not info.metadata
    assert "Alice" not in rich.message


def test_bare_base_error_is_internal() -> None:
    status = to_rpc_status(MedledgerError("SOMETHING", "m"), "ledger")
    assert status.code is grpc.StatusCode.INTERNAL


def test_client_side_round_trip() -> None:
    sent = ConsentNotFound("CONSENT_NOT_FOUND", "no such consent", {"consent_id": "c9"})
    call = FakeFailedCall(to_rpc_status(sent, "consent"))
    details = rpc_error_details(call)
    assert details.code is grpc.StatusCode.NOT_FOUND
    assert (details.reason, details.domain) == ("CONSENT_NOT_FOUND", "consent.medledger")
    assert details.metadata == {"consent_id": "c9"}
    again = from_rpc_error(call)
    assert isinstance(again, NotFound)
    assert (again.reason, again.message, again.metadata) == (
        "CONSENT_NOT_FOUND",
        "no such consent",
        {"consent_id": "c9"},
    )
