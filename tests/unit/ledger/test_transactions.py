"""The transaction envelope: signatures over carried bytes, chain binding, shape checks."""

from __future__ import annotations

import pytest

from medledger._gen.common.v1 import record_registration_pb2, transaction_pb2
from medledger.crypto import SigningKey
from medledger.ledger.transactions import LedgerTransactionRules
from medledger.ledgerclient.transactions import (
    TransactionError,
    check_transaction,
    sign_transaction,
    transaction_id,
)

CHAIN = "test-chain"


def _body(chain: str = CHAIN, nonce: int = 1) -> transaction_pb2.TransactionBody:
    return transaction_pb2.TransactionBody(
        chain_id=chain,
        type=transaction_pb2.TRANSACTION_TYPE_RECORD_REGISTRATION,
        nonce=nonce,
        created_at_unix_ms=1_700_000_000_000,
        signer="organisations/org-a/principals/records-service",
        record_registration=record_registration_pb2.RecordRegistration(
            record="records/r1", patient_pseudonym="patients/p-123", ciphertext_sha256=b"\x01" * 32
        ),
    )


def test_signed_transaction_checks_and_has_body_hash_id() -> None:
    key = SigningKey.generate()
    data = sign_transaction(_body(), key)
    checked = check_transaction(data, CHAIN, 65536)
    assert checked.tx_id == transaction_id(checked.envelope.body)
    assert checked.body.record_registration.record == "records/r1"
    rules = LedgerTransactionRules(CHAIN, 65536)
    assert rules.validate(data) is None
    assert rules.tx_id(data) == checked.tx_id


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda env: setattr(env, "signature", bytes(64)), "TX_BAD_SIGNATURE"),
        (lambda env: setattr(env, "body", env.body + b"\x00"), "TX_BAD_SIGNATURE"),
        (lambda env: setattr(env, "signer_public_key", b"short"), "TX_BAD_SIGNER_KEY"),
        (lambda env: setattr(env, "signer_key_id", "00" * 8), "TX_BAD_SIGNER_KEY"),
        (lambda env: setattr(env, "body", b""), "TX_MALFORMED"),
    ],
)
def test_tampered_envelopes_are_rejected(mutate: object, reason: str) -> None:
    key = SigningKey.generate()
    env = transaction_pb2.Transaction.FromString(sign_transaction(_body(), key))
    mutate(env)  # type: ignore[operator]
    with pytest.raises(TransactionError) as info:
        check_transaction(env.SerializeToString(), CHAIN, 65536)
    assert info.value.reason == reason


def test_wrong_chain_type_mismatch_size_and_garbage() -> None:
    key = SigningKey.generate()
    with pytest.raises(TransactionError, match="chain") as info:
        check_transaction(sign_transaction(_body(chain="other"), key), CHAIN, 65536)
    assert info.value.reason == "TX_WRONG_CHAIN"

    body = _body()
    body.type = transaction_pb2.TRANSACTION_TYPE_CONSENT_CHANGE
    with pytest.raises(TransactionError) as info:
        check_transaction(sign_transaction(body, key), CHAIN, 65536)
    assert info.value.reason == "TX_TYPE_MISMATCH"

    with pytest.raises(TransactionError) as info:
        check_transaction(sign_transaction(_body(), key), CHAIN, 64)
    assert info.value.reason == "TX_TOO_LARGE"

    with pytest.raises(TransactionError) as info:
        check_transaction(b"\xff\xff\xff garbage", CHAIN, 65536)
    assert info.value.reason == "TX_MALFORMED"
    rules = LedgerTransactionRules(CHAIN, 65536)
    assert rules.validate(b"\xff\xff\xff") == "TX_MALFORMED"
    assert len(rules.tx_id(b"\xff\xff\xff")) == 32


def test_same_change_with_another_nonce_is_another_transaction() -> None:
    key = SigningKey.generate()
    rules = LedgerTransactionRules(CHAIN, 65536)
    a = sign_transaction(_body(nonce=1), key)
    b = sign_transaction(_body(nonce=2), key)
    assert rules.tx_id(a) != rules.tx_id(b)
