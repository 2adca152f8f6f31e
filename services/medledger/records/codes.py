"""Translation between the records domain's codes (plain strings such as "IMAGING", "TREAT",
"PATIENT_REQUEST") and the protobuf enums of the API, the ledger and consent."""

from __future__ import annotations

from medledger._gen.common.v1 import access_pb2, record_registration_pb2
from medledger.records.errors import InvalidRecordRequest

_CATEGORY = "RECORD_CATEGORY_"
_LABEL = "SENSITIVITY_LABEL_"
_PURPOSE = "PURPOSE_OF_USE_"
_ERASURE = "RECORD_ERASURE_REASON_"


def _name(prefix: str, value: int, names: dict[int, str], what: str) -> str:
    name = names.get(value, "")
    if not name or name.endswith("_UNSPECIFIED"):
        raise InvalidRecordRequest(f"a {what} is required")
    return name.removeprefix(prefix)


def _value(prefix: str, code: str, values: dict[str, int], what: str) -> int:
    value = values.get(prefix + code)
    if value is None or value == 0:
        raise InvalidRecordRequest(f"{code!r} is not a {what}")
    return value


_CATEGORIES = {v.number: v.name for v in access_pb2.RecordCategory.DESCRIPTOR.values}
_LABELS = {v.number: v.name for v in access_pb2.SensitivityLabel.DESCRIPTOR.values}
_PURPOSES = {v.number: v.name for v in access_pb2.PurposeOfUse.DESCRIPTOR.values}
_REASONS = {v.number: v.name for v in record_registration_pb2.RecordErasureReason.DESCRIPTOR.values}


def category_code(value: int) -> str:
    return _name(_CATEGORY, value, _CATEGORIES, "record category")


def category_value(code: str) -> int:
    return _value(_CATEGORY, code, {n: v for v, n in _CATEGORIES.items()}, "record category")


def label_codes(values: list[int] | tuple[int, ...]) -> tuple[str, ...]:
    return tuple(sorted({_name(_LABEL, v, _LABELS, "sensitivity label") for v in values}))


def label_values(codes: tuple[str, ...]) -> list[int]:
    table = {n: v for v, n in _LABELS.items()}
    return [_value(_LABEL, code, table, "sensitivity label") for code in codes]


def purpose_code(value: int) -> str:
    return _name(_PURPOSE, value, _PURPOSES, "purpose of use")


def purpose_value(code: str) -> int:
    """The PurposeOfUse of a code; 0 (unspecified) for an empty or unknown one."""
    return {n: v for v, n in _PURPOSES.items()}.get(_PURPOSE + code, 0)


def erasure_code(value: int) -> str:
    return _name(_ERASURE, value, _REASONS, "erasure reason")


def erasure_value(code: str) -> int:
    return _value(_ERASURE, code, {n: v for v, n in _REASONS.items()}, "erasure reason")


def data_class(category: str, labels: tuple[str, ...]) -> access_pb2.DataClass:
    return access_pb2.DataClass(
        category=category_value(category) if category else 0,  # type: ignore[arg-type]
        sensitivity_labels=label_values(labels),  # type: ignore[arg-type]
    )
