"""The records domain's codes as protobufs: consent questions and answers, audit events,
ledger transactions and API messages carry exactly what they should and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medledger._gen.common.v1 import (
    access_pb2,
    audit_event_pb2,
    record_registration_pb2,
    transaction_pb2,
)
from medledger._gen.consent.v1 import consent_service_pb2 as consent_pb
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger.crypto import SigningKey
from medledger.ledgerclient import check_transaction
from medledger.records.api import record_id_of, record_message, study_id_of
from medledger.records.audit import audit_event
from medledger.records.codes import category_code, erasure_value, label_codes, purpose_code
from medledger.records.consent_client import check_request, decision_of
from medledger.records.errors import InvalidRecordRequest
from medledger.records.ledger_registration import NatsLedgerRegistrar
from medledger.records.service import (
    AccessAction,
    AccessRequest,
    AuditAction,
    Caller,
    RecordAuditEvent,
    RecordRegistration,
)
from medledger.records.store import RecordMetadata

CALLER = Caller(
    "organisations/h1/principals/dr-a", "organisations/h1", ("physician",), "jti-1", "PRACTITIONER"
)
RECORD_ID = "8a4c2a0e-2f7b-4d0e-9f59-0b8e7f3f2c11"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_codes_round_trip_and_refuse_unspecified() -> None:
    assert category_code(access_pb2.RECORD_CATEGORY_IMAGING) == "IMAGING"
    assert purpose_code(access_pb2.PURPOSE_OF_USE_TREAT) == "TREAT"
    assert label_codes([access_pb2.SENSITIVITY_LABEL_HIV, access_pb2.SENSITIVITY_LABEL_PSY]) == (
        "HIV",
        "PSY",
    )
    assert erasure_value("PATIENT_REQUEST") == (
        record_registration_pb2.RECORD_ERASURE_REASON_PATIENT_REQUEST
    )
    for bad in (
        lambda: category_code(0),
        lambda: purpose_code(0),
        lambda: erasure_value("BECAUSE"),
    ):
        with pytest.raises(InvalidRecordRequest):
            bad()


def test_consent_question_for_a_record_and_for_a_class() -> None:
    read = check_request(
        AccessRequest(CALLER, "pp-1", "IMAGING", (), "ETREAT", RECORD_ID, "unconscious")
    )
    assert read.record == f"records/{RECORD_ID}" and read.WhichOneof("target") == "record"
    assert (read.action, read.purpose) == (
        access_pb2.ACCESS_ACTION_READ,
        access_pb2.PURPOSE_OF_USE_ETREAT,
    )
    assert read.break_glass_justification == "unconscious"
    assert (read.actor.principal, read.actor.token_id, list(read.actor.roles)) == (
        CALLER.principal,
        "jti-1",
        ["physician"],
    )
    search = check_request(
        AccessRequest(
            CALLER, "pp-1", "LABORATORY", ("HIV",), "TREAT", "", action=AccessAction.SEARCH
        )
    )
    assert search.WhichOneof("target") == "data_class"
    assert search.data_class.category == access_pb2.RECORD_CATEGORY_LABORATORY
    assert list(search.data_class.sensitivity_labels) == [access_pb2.SENSITIVITY_LABEL_HIV]


def test_consent_answers() -> None:
    permit = decision_of(
        consent_pb.CheckAccessResponse(
            decision=access_pb2.DECISION_PERMIT,
            reason="CONSENT_PERMIT",
            consent=audit_event_pb2.ConsentReference(consent="consents/c1", version=2),
        )
    )
    assert (permit.permitted, permit.consent_ref, permit.consent_version) == (
        True,
        "consents/c1",
        2,
    )
    unset = decision_of(consent_pb.CheckAccessResponse(reason="X"))
    assert not unset.permitted  # DECISION_UNSPECIFIED is a deny
    rule = decision_of(
        consent_pb.CheckAccessResponse(
            decision=access_pb2.DECISION_DENY, reason="NO", policy_rule="base.deny"
        )
    )
    assert (rule.permitted, rule.policy_rule, rule.consent_ref) == (False, "base.deny", "")


def test_audit_event_carries_decision_and_basis() -> None:
    event = audit_event(
        RecordAuditEvent(
            AuditAction.READ,
            CALLER,
            RECORD_ID,
            "pp-1",
            "TREAT",
            True,
            "CONSENT_PERMIT",
            "consents/c1",
            NOW,
            consent_version=4,
        )
    )
    assert event.record == event.resource == f"records/{RECORD_ID}"
    assert (event.decision, event.decision_reason) == (access_pb2.DECISION_PERMIT, "CONSENT_PERMIT")
    assert (event.consent.consent, event.consent.version) == ("consents/c1", 4)
    assert event.time.ToDatetime(tzinfo=UTC) == NOW
    denied = audit_event(
        RecordAuditEvent(
            AuditAction.READ,
            CALLER,
            RECORD_ID,
            "pp-1",
            "TREAT",
            False,
            "NO_MATCHING_CONSENT",
            "",
            NOW,
            policy_rule="base.deny_by_default",
        )
    )
    assert denied.decision == access_pb2.DECISION_DENY
    assert denied.WhichOneof("basis") is None and denied.policy_rule == "base.deny_by_default"


def test_registration_transaction_is_signed_and_carries_no_free_text() -> None:
    key = SigningKey.generate()
    registrar = NatsLedgerRegistrar("chain-x", key, "organisations/h1/principals/records")
    tx = registrar.registration_transaction(
        RecordRegistration(
            RECORD_ID,
            "pp-1",
            b"c" * 32,
            b"p" * 32,
            123,
            "organisations/h1",
            "IMAGING",
            ("PSY",),
            "study-abc",
        )
    )
    checked = check_transaction(tx.signed, "chain-x", 1 << 16)
    assert checked.tx_id_hex == tx.tx_id
    assert checked.body.type == transaction_pb2.TRANSACTION_TYPE_RECORD_REGISTRATION
    registration = checked.body.record_registration
    assert (registration.record, registration.study, registration.size_bytes) == (
        f"records/{RECORD_ID}",
        "studies/study-abc",
        123,
    )
    assert list(registration.data_class.sensitivity_labels) == [access_pb2.SENSITIVITY_LABEL_PSY]
    erasure = check_transaction(
        registrar.erasure_transaction(RECORD_ID, "LEGAL_ORDER").signed, "chain-x", 1 << 16
    )
    assert erasure.body.record_erasure.reason == (
        record_registration_pb2.RECORD_ERASURE_REASON_LEGAL_ORDER
    )
    # Two registrations of the same content are distinct transactions.
    again = registrar.registration_transaction(
        RecordRegistration(
            RECORD_ID,
            "pp-1",
            b"c" * 32,
            b"p" * 32,
            123,
            "organisations/h1",
            "IMAGING",
            ("PSY",),
            "study-abc",
        )
    )
    assert again.tx_id != tx.tx_id


def test_record_message_states_and_names() -> None:
    base = RecordMetadata(
        record_id=RECORD_ID,
        patient_pseudonym="pp-1",
        data_class="IMAGING",
        content_type="application/dicom",
        size_bytes=10,
        ciphertext_size=200,
        ciphertext_sha256=b"c" * 32,
        plaintext_commitment=b"p" * 32,
        blob_key="records/x",
        wrapped_key=b"w",
        kek_id="k",
        custodian="organisations/h1",
        created_by="x",
        created_at=NOW,
        study_id="study-1",
        modality="CT",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        registration_tx_id="ab" * 32,
    )
    pending = record_message(base)
    assert pending.state == pb.RECORD_STATE_PENDING and pending.ledger_commit.height == 0
    assert (pending.imaging.modality, pending.study) == ("CT", "studies/study-1")
    assert not pending.HasField("erase_time")
    with pytest.raises(InvalidRecordRequest):
        record_id_of("records/../etc")
    with pytest.raises(InvalidRecordRequest):
        study_id_of("studies/")
    assert record_id_of(f"records/{RECORD_ID}") == RECORD_ID
