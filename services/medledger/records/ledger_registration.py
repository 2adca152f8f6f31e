"""Record registrations and erasures as signed ledger transactions, submitted and looked up
through the ledger client over NATS. The custodian's records service key signs them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError

from medledger._gen.common.v1 import record_registration_pb2, transaction_pb2
from medledger.crypto import SigningKey
from medledger.ledgerclient import LedgerClient, LedgerClientError, sign_transaction, transaction_id
from medledger.records.codes import data_class, erasure_value
from medledger.records.errors import LedgerUnavailable
from medledger.records.service import LedgerTransaction, RecordRegistration, RegistrationStatus

RECORD_PREFIX = "records/"
STUDY_PREFIX = "studies/"


class NatsLedgerRegistrar:
    """LedgerRegistrar over a LedgerClient; transactions are built without it (the outbox
    stores them before anything is sent), so `client` may be attached after start-up."""

    def __init__(
        self,
        chain_id: str,
        key: SigningKey,
        signer: str,
        client: LedgerClient | None = None,
        *,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.chain_id = chain_id
        self._key = key
        self._signer = signer
        self.client = client
        self._clock_ms = clock_ms

    def _sign(self, body: transaction_pb2.TransactionBody) -> LedgerTransaction:
        body.chain_id = self.chain_id
        # A random nonce: the id must differ from every other transaction, ever.
        body.nonce = secrets.randbits(63)
        body.created_at_unix_ms = self._clock_ms()
        body.signer = self._signer
        signed = sign_transaction(body, self._key)
        return LedgerTransaction(
            transaction_id(body.SerializeToString(deterministic=True)).hex(), signed
        )

    def registration_transaction(self, registration: RecordRegistration) -> LedgerTransaction:
        return self._sign(
            transaction_pb2.TransactionBody(
                record_registration=record_registration_pb2.RecordRegistration(
                    record=RECORD_PREFIX + registration.record_id,
                    patient_pseudonym=registration.patient_pseudonym,
                    ciphertext_sha256=registration.ciphertext_sha256,
                    plaintext_commitment=registration.plaintext_commitment,
                    size_bytes=registration.size_bytes,
                    custodian=registration.custodian,
                    data_class=data_class(registration.data_class, registration.sensitivity_labels),
                    study=STUDY_PREFIX + registration.study_id if registration.study_id else "",
                )
            )
        )

    def erasure_transaction(self, record_id: str, reason: str) -> LedgerTransaction:
        return self._sign(
            transaction_pb2.TransactionBody(
                record_erasure=record_registration_pb2.RecordErasure(
                    record=RECORD_PREFIX + record_id,
                    reason=erasure_value(reason),  # type: ignore[arg-type]
                )
            )
        )

    def _client(self) -> LedgerClient:
        if self.client is None:
            raise LedgerUnavailable("the ledger client is not connected yet")
        return self.client

    async def submit(self, tx: LedgerTransaction) -> None:
        try:
            await self._client().submit(tx.signed)
        except LedgerClientError as exc:
            raise LedgerUnavailable(
                "LEDGER_UNAVAILABLE",
                "the ledger did not take the transaction",
                {"ledger": exc.reason},
            ) from None

    async def final_height(self, tx_id: str) -> int | None:
        try:
            receipt = await self._client().receipt(tx_id)
        except LedgerClientError as exc:
            raise LedgerUnavailable(
                "LEDGER_UNAVAILABLE", "the ledger did not answer", {"ledger": exc.reason}
            ) from None
        return None if receipt is None else int(receipt.height)

    async def registration(self, tx_id: str) -> RegistrationStatus | None:
        """The registration in the light-client-verified receipt of `tx_id`, if final."""
        try:
            receipt = await self._client().receipt(tx_id)
        except LedgerClientError as exc:
            raise LedgerUnavailable(
                "LEDGER_UNAVAILABLE", "the ledger did not answer", {"ledger": exc.reason}
            ) from None
        if receipt is None:
            return None
        carried = receipt.transaction.body
        if transaction_id(carried).hex() != tx_id:
            return None
        body = transaction_pb2.TransactionBody()
        try:
            body.ParseFromString(carried)
        except DecodeError:
            return None
        if body.WhichOneof("payload") != "record_registration":
            return None
        registered = body.record_registration
        return RegistrationStatus(
            record_id=registered.record.removeprefix(RECORD_PREFIX),
            ciphertext_sha256=registered.ciphertext_sha256,
            tx_id=tx_id,
            height=int(receipt.height),
        )
