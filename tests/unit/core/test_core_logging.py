"""PHI and secrets never reach the log output, whichever way they are logged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import struct_pb2

from medledger.core.logging import (
    REDACTED,
    Sensitive,
    configure_logging,
    get_logger,
    is_sensitive_key,
    mark_sensitive,
    scrub,
)

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJwcm4tMSIsIm9yZyI6Im9yZy1hIn0.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDn0bDEj\n-----END PRIVATE KEY-----"
PHI_VALUES = ["Bartholomew", "Featherstonehaugh", "MRN-8841207", "1947-03-12", "fell down stairs"]


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    yield stream
    configure_logging("INFO", "json")


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@dataclass
class PatientView:
    patient_id: str
    family_name: str
    birth_date: str


def test_structlog_event_with_planted_phi(output: io.StringIO) -> None:
    log = get_logger("medledger.test")
    log.info(
        "record read",
        patient_id="pt-3c9f",
        record_id="rec-17",
        code="LOINC-2345-7",
        given_name="Bartholomew",
        familyName="Featherstonehaugh",
        mrn="MRN-8841207",
        dob="1947-03-12",
        note="fell down stairs",
        authorization=f"Bearer {JWT}",
    )
    text = output.getvalue()
    for value in [*PHI_VALUES, JWT]:
        assert value not in text
    (line,) = _lines(output)
    assert line["event"] == "record read"
    assert (line["patient_id"], line["record_id"], line["code"]) == (
        "pt-3c9f",
        "rec-17",
        "LOINC-2345-7",
    )
    assert line["given_name"] == REDACTED and line["note"] == REDACTED


def test_nested_structures_protobuf_dataclass_and_sensitive(output: io.StringIO) -> None:
    request = struct_pb2.Struct()
    request.update(
        {"subject": {"display_name": "Bartholomew F", "id": "pt-1"}, "text": "fell down stairs"}
    )
    get_logger("medledger.test").warning(
        "nested",
        request=request,
        view=PatientView("pt-2", "Featherstonehaugh", "1947-03-12"),
        items=[{"mrn": "MRN-8841207", "status": "final"}],
        lookup=Sensitive("Bartholomew"),
        blob=b"\x00" * 2048,
    )
    text = output.getvalue()
    for value in PHI_VALUES:
        assert value not in text
    (line,) = _lines(output)
    assert line["request"]["subject"]["id"] == "pt-1"
    assert line["view"]["patient_id"] == "pt-2"
    assert line["items"][0]["status"] == "final"
    assert line["lookup"] == REDACTED
    assert line["blob"] == "<2048 bytes>"


def test_tokens_and_keys_inside_free_strings(output: io.StringIO) -> None:
    get_logger("medledger.test").error(f"token was {JWT} and key {PEM}", detail=f"got {JWT}")
    text = output.getvalue()
    assert JWT not in text
    assert "MC4CAQAwBQYDK2VwBCIEIDn0bDEj" not in text
    assert REDACTED in _lines(output)[0]["event"]


def test_stdlib_loggers_go_through_the_same_scrubbing(output: io.StringIO) -> None:
    logging.getLogger("nats.client").warning("auth with Bearer %s failed", JWT)
    logging.getLogger("medledger.legacy").info("plain %s", "message", extra={"mrn": "MRN-8841207"})
    text = output.getvalue()
    assert JWT not in text
    lines = _lines(output)
    assert lines[0]["logger"] == "nats.client" and lines[0]["level"] == "warning"
    assert lines[1]["event"] == "plain message"


def test_exceptions_are_scrubbed(output: io.StringIO) -> None:
    try:
        raise ValueError(f"cannot parse {JWT}")
    except ValueError:
        get_logger("medledger.test").exception("failed", mrn="MRN-8841207")
    text = output.getvalue()
    assert JWT not in text and "MRN-8841207" not in text
    assert "ValueError" in _lines(output)[0]["exception"]


def test_marked_sensitive_keys(output: io.StringIO) -> None:
    mark_sensitive("insurance_member_id")
    get_logger("medledger.test").info("claim", insurance_member_id="IM-99912", claim_id="c-1")
    (line,) = _lines(output)
    assert line["insurance_member_id"] == REDACTED
    assert line["claim_id"] == "c-1"


@pytest.mark.parametrize(
    "key",
    [
        "name",
        "given",
        "patientName",
        "family_name",
        "birthDate",
        "date_of_birth",
        "home_address",
        "phone",
        "email",
        "ssn",
        "patient_mrn",
        "clinical_note",
        "break_glass_justification",
        "narrative",
        "description",
        "comment",
        "access_token",
        "private_key",
    ],
)
def test_sensitive_keys(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    ["patient_id", "record_id", "code", "method", "status", "consent_id", "org_id", "context"],
)
def test_ordinary_keys(key: str) -> None:
    assert not is_sensitive_key(key)


def test_scrub_leaves_plain_values() -> None:
    assert scrub({"a": 1, "b": [True, None, 2.5], "c": "x"}) == {
        "a": 1,
        "b": [True, None, 2.5],
        "c": "x",
    }


def test_console_format_is_scrubbed_too() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "console", stream=stream)
    try:
        get_logger("medledger.test").info("hello", mrn="MRN-8841207", record_id="rec-1")
    finally:
        configure_logging("INFO", "json")
    assert "MRN-8841207" not in stream.getvalue()
    assert "rec-1" in stream.getvalue()
