"""Records domain logic: encrypted upload, consented (ranged) download, crypto-shred, verify.

No gRPC or NATS types here. Consent, ledger registration and audit publishing
come in through the small protocols below; consent_client.py,
ledger_registration.py and audit.py implement them over NATS, memory.py in
memory for unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from medledger.core.logging import get_logger
from medledger.crypto.kek import KeyProvider, WrappedKey, new_data_key
from medledger.crypto.stream import (
    BASE_HEADER_SIZE,
    DEFAULT_CHUNK_SIZE,
    RangeDecryptor,
    StreamDecryptor,
    StreamEncryptor,
    StreamError,
    StreamHeader,
    StreamIntegrityError,
    chunk_span,
)
from medledger.records.commitment import PlaintextCommitment
from medledger.records.dicom import DICOM_CONTENT_TYPE, DICOM_PREFIX_SIZE, summarize_dicom
from medledger.records.errors import (
    AccessDenied,
    BlobNotFound,
    InvalidRecordRequest,
    RangeNotSatisfiable,
    RecordErased,
    RecordIntegrityError,
    RecordNotFound,
    RecordPending,
    UploadDigestMismatch,
    UploadSizeMismatch,
    UploadTooLarge,
)
from medledger.records.pipeline import read_ahead
from medledger.records.storage import BlobStorage, blob_writer
from medledger.records.store import (
    CommitKind,
    MetadataStore,
    RecordFilter,
    RecordMetadata,
    RecordPage,
)

DEFAULT_MAX_RECORD_SIZE = 64 * 1024**3
# Below this, a piece is hashed and sealed on the event loop: a thread hop costs more.
OFFLOAD_THRESHOLD = 64 * 1024
# Pieces (about 1 MiB each) a transfer stage may run ahead of the next one.
READ_AHEAD_PIECES = 2
RESUBMIT_AFTER_SECONDS = 5.0
_TEXT_FIELD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
# Record ids derived from a client's idempotency key (AIP-155) live in their own namespace.
_REQUEST_ID_NAMESPACE = uuid.UUID("0b7d2f3c-54a1-4b8e-9d0e-6a1f3c2e9b47")
_T = TypeVar("_T")

_log = get_logger("medledger.records")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is acting: an authenticated principal of an organisation."""

    principal: str
    organisation: str
    roles: tuple[str, ...] = ()
    token_id: str = ""
    kind: str = ""


class AccessAction(StrEnum):
    READ = "READ"
    SEARCH = "SEARCH"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """The question put to consent before any read."""

    caller: Caller
    patient_pseudonym: str
    data_class: str
    sensitivity_labels: tuple[str, ...]
    purpose: str
    record_id: str
    break_glass_justification: str = ""
    action: AccessAction = AccessAction.READ


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """Consent's answer, with what decided it (a consent version, a break-glass or a rule)."""

    permitted: bool
    reason: str
    consent_ref: str = ""
    consent_version: int = 0
    break_glass_session: str = ""
    policy_rule: str = ""


class ConsentChecker(Protocol):
    async def check(self, request: AccessRequest) -> AccessDecision: ...


@dataclass(frozen=True, slots=True)
class RecordRegistration:
    """What goes on the ledger for a new record: ids, hashes, size, never content."""

    record_id: str
    patient_pseudonym: str
    ciphertext_sha256: bytes
    plaintext_commitment: bytes
    size_bytes: int
    custodian: str
    data_class: str
    sensitivity_labels: tuple[str, ...]
    study_id: str | None


@dataclass(frozen=True, slots=True)
class LedgerTransaction:
    """A signed ledger transaction, ready to submit (again) at any time."""

    tx_id: str
    signed: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    """A final registration as the ledger has it."""

    record_id: str
    ciphertext_sha256: bytes
    tx_id: str
    height: int


class LedgerRegistrar(Protocol):
    """Builds, submits and looks up the record transactions of this custodian."""

    def registration_transaction(self, registration: RecordRegistration) -> LedgerTransaction: ...

    def erasure_transaction(self, record_id: str, reason: str) -> LedgerTransaction: ...

    async def submit(self, tx: LedgerTransaction) -> None:
        """Offer the transaction for ordering; idempotent."""
        ...

    async def final_height(self, tx_id: str) -> int | None:
        """Height of the final block holding `tx_id`, or None while it is not final."""
        ...

    async def registration(self, tx_id: str) -> RegistrationStatus | None:
        """The registration carried by final transaction `tx_id`, as the ledger proves it."""
        ...


class AuditAction(StrEnum):
    UPLOAD = "RECORD_UPLOAD"
    READ = "RECORD_READ"
    SEARCH = "RECORD_SEARCH"
    DELETE = "RECORD_DELETE"
    VERIFY = "RECORD_VERIFY"


@dataclass(frozen=True, slots=True)
class RecordAuditEvent:
    action: AuditAction
    caller: Caller
    record_id: str
    patient_pseudonym: str
    purpose: str
    permitted: bool
    reason: str
    consent_ref: str
    occurred_at: datetime
    consent_version: int = 0
    break_glass_session: str = ""
    break_glass_justification: str = ""
    policy_rule: str = ""
    resource: str = ""


class AuditPublisher(Protocol):
    async def publish(self, event: RecordAuditEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class UploadRequest:
    caller: Caller
    patient_pseudonym: str
    data_class: str
    content_type: str
    purpose: str
    record_id: str | None = None
    sensitivity_labels: tuple[str, ...] = ()
    expected_size: int | None = None
    expected_sha256: bytes | None = None
    study_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """A permitted read: the metadata, the range, and the plaintext as it authenticates."""

    record: RecordMetadata
    offset: int
    length: int
    content: AsyncIterator[bytes]


class VerificationResult(StrEnum):
    VERIFIED = "VERIFIED"
    HASH_MISMATCH = "HASH_MISMATCH"
    NOT_REGISTERED = "NOT_REGISTERED"
    ERASED = "ERASED"
    CONTENT_MISSING = "CONTENT_MISSING"


@dataclass(frozen=True, slots=True)
class Verification:
    result: VerificationResult
    computed_ciphertext_sha256: bytes
    registered_ciphertext_sha256: bytes
    registration_tx_id: str = ""
    registration_height: int = 0


@dataclass(frozen=True, slots=True)
class StudyView:
    """The registered, unerased instances of one imaging study the caller may see."""

    study_id: str
    patient_pseudonym: str
    instances: list[RecordMetadata]


def _check_field(name: str, value: str) -> str:
    if not _TEXT_FIELD.match(value):
        raise InvalidRecordRequest(f"{name} is not a valid identifier")
    return value


def _record_id(value: str | None, request_id: str | None, custodian: str) -> str:
    if request_id:
        try:
            key = str(uuid.UUID(request_id))
        except ValueError:
            raise InvalidRecordRequest("a request id is a UUID") from None
        derived = str(uuid.uuid5(_REQUEST_ID_NAMESPACE, f"{custodian}\x00{key}"))
        if value and value != derived:
            raise InvalidRecordRequest("give a record id or a request id, not both")
        return derived
    if value is None or value == "":
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRecordRequest("a record id is a UUID") from None


class _Sealer:
    """The per-upload CPU work on plaintext: commitment, digest, encryption, ciphertext hash.

    Runs piece by piece in a worker thread (OpenSSL and hashlib release the GIL on
    large buffers), so the event loop keeps serving other calls during big uploads.
    """

    def __init__(
        self, encryptor: StreamEncryptor, commitment: PlaintextCommitment, digest: bool
    ) -> None:
        self.encryptor = encryptor
        self.commitment = commitment
        self.plaintext_hash = hashlib.sha256() if digest else None
        self.ciphertext_hash = hashlib.sha256(encryptor.header_bytes)
        self.ciphertext_size = len(encryptor.header_bytes)

    def absorb(self, piece: bytes) -> None:
        """The plaintext-side digests; may run concurrently with `seal` of the same piece."""
        self.commitment.update(piece)
        if self.plaintext_hash is not None:
            self.plaintext_hash.update(piece)

    def seal(self, piece: bytes) -> list[bytes]:
        chunks = self.encryptor.update(piece)
        for chunk in chunks:
            self.ciphertext_hash.update(chunk)
            self.ciphertext_size += len(chunk)
        return chunks

    def finish(self) -> bytes:
        last = self.encryptor.finalize()
        self.ciphertext_hash.update(last)
        self.ciphertext_size += len(last)
        return last


class RecordsService:
    """Stores, serves, erases and verifies encrypted records for one custodian."""

    def __init__(
        self,
        *,
        storage: BlobStorage,
        store: MetadataStore,
        keys: KeyProvider,
        consent: ConsentChecker,
        ledger: LedgerRegistrar,
        audit: AuditPublisher,
        custodian: str,
        study_key: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        registration_wait_seconds: float = 0.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        crypto_threads: int | None = None,
    ) -> None:
        self.storage = storage
        self.store = store
        self.keys = keys
        self.consent = consent
        self.ledger = ledger
        self.audit = audit
        self.custodian = custodian
        self.study_key = study_key
        self.chunk_size = chunk_size
        self.max_record_size = max_record_size
        self.registration_wait_seconds = registration_wait_seconds
        self._clock = clock
        self._crypto = ThreadPoolExecutor(
            crypto_threads or min(4, os.cpu_count() or 1), thread_name_prefix="records-crypto"
        )
        self._submitted_at: dict[str, float] = {}
        self._outbox_wakeup = asyncio.Event()

    async def _offload(self, func: Callable[[bytes], _T], piece: bytes) -> _T:
        if len(piece) < OFFLOAD_THRESHOLD:
            return func(piece)
        return await asyncio.get_running_loop().run_in_executor(self._crypto, func, piece)

    def close(self) -> None:
        self._crypto.shutdown(wait=True)

    # --- upload ------------------------------------------------------------------------

    async def upload(self, request: UploadRequest, content: AsyncIterable[bytes]) -> RecordMetadata:
        """Encrypt and store `content`, then record its metadata and queued ledger registration.

        The record exists once its metadata row (which holds the signed registration
        transaction) is durable: that is the acknowledgement. Before that, a failure or
        cancellation removes the partial object and leaves nothing. The record stays
        PENDING, unlisted and unreadable, until the registration is final.
        """
        record_id = _record_id(request.record_id, request.request_id, self.custodian)
        _check_field("patient pseudonym", request.patient_pseudonym)
        _check_field("data class", request.data_class)
        _check_field("content type", request.content_type)
        for label in request.sensitivity_labels:
            _check_field("sensitivity label", label)
        if request.study_id is not None:
            _check_field("study id", request.study_id)
        if request.request_id:
            existing = await self._existing(record_id)
            if existing is not None:
                if (
                    existing.created_by != request.caller.principal
                    or existing.patient_pseudonym != request.patient_pseudonym
                ):
                    raise InvalidRecordRequest("the request id was used for another upload")
                return existing
        data_key = new_data_key()
        wrapped = await self.keys.wrap(data_key, context=record_id.encode("ascii"))
        # Unique per upload: a second upload under an existing id can never overwrite the
        # first one's object, and its clean-up removes only its own.
        blob_key = f"records/{record_id}.{secrets.token_hex(8)}"
        sealer = _Sealer(
            StreamEncryptor(
                data_key, key_ref=record_id.encode("ascii"), chunk_size=self.chunk_size
            ),
            PlaintextCommitment.for_record(data_key, record_id),
            digest=request.expected_sha256 is not None,
        )
        is_dicom = request.content_type == DICOM_CONTENT_TYPE
        dicom_prefix = bytearray()

        async with blob_writer(self.storage, blob_key) as writer:
            await writer.write(sealer.encryptor.header_bytes)
            async for piece in read_ahead(aiter(content), READ_AHEAD_PIECES):
                if sealer.encryptor.plaintext_size + len(piece) > self.max_record_size:
                    raise UploadTooLarge(f"a record is at most {self.max_record_size} bytes")
                if is_dicom and len(dicom_prefix) < DICOM_PREFIX_SIZE:
                    dicom_prefix += piece[: DICOM_PREFIX_SIZE - len(dicom_prefix)]
                _, chunks = await asyncio.gather(
                    self._offload(sealer.absorb, piece), self._offload(sealer.seal, piece)
                )
                for chunk in chunks:
                    await writer.write(chunk)
            await writer.write(sealer.finish())
            size = sealer.encryptor.plaintext_size
            if request.expected_size is not None and request.expected_size != size:
                raise UploadSizeMismatch(f"expected {request.expected_size} bytes, got {size}")
            if (
                sealer.plaintext_hash is not None
                and sealer.plaintext_hash.digest() != request.expected_sha256
            ):
                raise UploadDigestMismatch("the content's SHA-256 differs from the expected one")
            modality = sop_class_uid = None
            study_id = request.study_id
            if is_dicom:
                summary = summarize_dicom(bytes(dicom_prefix), study_key=self.study_key)
                modality, sop_class_uid = summary.modality, summary.sop_class_uid
                if study_id is None and summary.study_reference is not None:
                    study_id = self._study_id(request.patient_pseudonym, summary.study_reference)
            del dicom_prefix
            await writer.commit()

        try:
            ciphertext_sha256 = sealer.ciphertext_hash.digest()
            commitment = sealer.commitment.digest()
            registration = self.ledger.registration_transaction(
                RecordRegistration(
                    record_id=record_id,
                    patient_pseudonym=request.patient_pseudonym,
                    ciphertext_sha256=ciphertext_sha256,
                    plaintext_commitment=commitment,
                    size_bytes=size,
                    custodian=self.custodian,
                    data_class=request.data_class,
                    sensitivity_labels=request.sensitivity_labels,
                    study_id=study_id,
                )
            )
            record = RecordMetadata(
                record_id=record_id,
                patient_pseudonym=request.patient_pseudonym,
                data_class=request.data_class,
                sensitivity_labels=request.sensitivity_labels,
                content_type=request.content_type,
                size_bytes=size,
                ciphertext_size=sealer.ciphertext_size,
                ciphertext_sha256=ciphertext_sha256,
                plaintext_commitment=commitment,
                blob_key=blob_key,
                wrapped_key=wrapped.ciphertext,
                kek_id=wrapped.kek_id,
                custodian=self.custodian,
                created_by=request.caller.principal,
                created_at=self._clock(),
                study_id=study_id,
                modality=modality,
                sop_class_uid=sop_class_uid,
                registration_tx=registration.signed,
                registration_tx_id=registration.tx_id,
            )
            await self.store.insert(record)
        except BaseException:
            # Nothing may stay behind unacknowledged: no row, so no blob either.
            await asyncio.shield(self.storage.delete(blob_key))
            raise
        # Acknowledged from here on: the outbox registers the record even after a crash.
        self._outbox_wakeup.set()
        await self._audit(
            AuditAction.UPLOAD,
            request.caller,
            record,
            request.purpose,
            True,
            "CUSTODIAN_UPLOAD",
            policy_rule="records.custodian_upload",
        )
        if self.registration_wait_seconds > 0:
            record = await self._await_registration(record, self.registration_wait_seconds)
        return record

    async def _existing(self, record_id: str) -> RecordMetadata | None:
        try:
            return await self.store.get(record_id)
        except RecordNotFound:
            return None

    def _study_id(self, patient_pseudonym: str, study_reference: bytes) -> str:
        # Opaque and per patient: the same DICOM study of two patients never shares an id.
        digest = hashlib.sha256(patient_pseudonym.encode() + b"\x00" + study_reference)
        return "study-" + digest.hexdigest()[:32]

    # --- ledger outbox ---------------------------------------------------------------------

    async def _await_registration(
        self, record: RecordMetadata, wait_seconds: float
    ) -> RecordMetadata:
        """Submit now and give the ledger up to `wait_seconds` to make it final."""
        tx = LedgerTransaction(record.registration_tx_id, record.registration_tx or b"")
        deadline = time.monotonic() + wait_seconds
        try:
            await self._submit(tx)
            delay = 0.02
            while True:
                height = await self.ledger.final_height(tx.tx_id)
                if height is not None:
                    await self.store.mark_final(record.record_id, CommitKind.REGISTRATION, height)
                    return await self.store.get(record.record_id)
                if time.monotonic() + delay > deadline:
                    return record
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
        except Exception as exc:
            # The outbox retries; the upload itself is safe and acknowledged.
            _log.warning("registration deferred", record_id=record.record_id, error=str(exc))
            return record

    async def _submit(self, tx: LedgerTransaction) -> None:
        self._submitted_at[tx.tx_id] = time.monotonic()
        await self.ledger.submit(tx)

    async def settle_ledger(self, limit: int = 100) -> int:
        """One pass over the outbox: mark final transactions, (re)submit the others.

        Returns how many are still unsettled. Safe to run after a crash or restart:
        submission is idempotent and a final transaction is only marked.
        """
        unsettled = await self.store.unsettled(limit)
        left = 0
        for entry in unsettled:
            height = await self.ledger.final_height(entry.tx_id)
            if height is not None:
                await self.store.mark_final(entry.record_id, entry.kind, height)
                self._submitted_at.pop(entry.tx_id, None)
                continue
            left += 1
            last = self._submitted_at.get(entry.tx_id)
            if last is None or time.monotonic() - last >= RESUBMIT_AFTER_SECONDS:
                await self._submit(LedgerTransaction(entry.tx_id, entry.signed_tx))
        return left

    async def run_outbox(
        self, stopping: asyncio.Event, interval: float = 0.5, max_backoff: float = 10.0
    ) -> None:
        """Settle the outbox until `stopping` is set; after a failure, back off up to
        `max_backoff` seconds (a new upload or erasure still wakes it at once)."""
        delay = interval
        while not stopping.is_set():
            self._outbox_wakeup.clear()
            try:
                await self.settle_ledger()
                delay = interval
            except Exception as exc:
                _log.warning("ledger outbox pass failed", error=type(exc).__name__, retry_in=delay)
                delay = min(delay * 2, max_backoff)
            waiters = [
                asyncio.ensure_future(stopping.wait()),
                asyncio.ensure_future(self._outbox_wakeup.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=delay, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waiters:
                    waiter.cancel()

    # --- read ----------------------------------------------------------------------------

    async def get(
        self, record_id: str, caller: Caller | None = None, purpose: str = ""
    ) -> RecordMetadata:
        """A record's metadata; with a caller, consent is asked (SEARCH) and the look-up audited."""
        record = await self.store.get(record_id)
        if caller is not None:
            await self._authorise(
                AccessAction.SEARCH,
                caller,
                record.patient_pseudonym,
                record.data_class,
                record.sensitivity_labels,
                purpose,
                record,
            )
        return record

    async def list_records(
        self,
        where: RecordFilter,
        caller: Caller,
        purpose: str,
        page_size: int = 0,
        page_token: str = "",
    ) -> RecordPage:
        """A page of metadata; listing one patient's records is a consented, audited SEARCH."""
        if where.patient_pseudonym is not None:
            _check_field("patient pseudonym", where.patient_pseudonym)
            await self._authorise(
                AccessAction.SEARCH,
                caller,
                where.patient_pseudonym,
                where.data_class or "",
                (),
                purpose,
                None,
            )
        else:
            # Across patients: the API lets only the custodian's staff roles do this.
            await self.audit.publish(
                RecordAuditEvent(
                    action=AuditAction.SEARCH,
                    caller=caller,
                    record_id="",
                    patient_pseudonym="",
                    purpose=purpose,
                    permitted=True,
                    reason="CUSTODIAN_LIST",
                    consent_ref="",
                    occurred_at=self._clock(),
                    policy_rule="records.custodian_list",
                    resource="records",
                )
            )
        return await self.store.list_records(where, page_size, page_token)

    async def study(self, study_id: str, caller: Caller, purpose: str) -> StudyView:
        """The registered instances of a study, after consent for the study's patient."""
        _check_field("study id", study_id)
        instances: list[RecordMetadata] = []
        token = ""
        while True:
            page = await self.store.list_records(RecordFilter(study_id=study_id), 1000, token)
            instances.extend(page.records)
            token = page.next_page_token
            if not token:
                break
        if not instances:
            raise RecordNotFound(f"no study {study_id}")
        patient = instances[0].patient_pseudonym
        labels = tuple(sorted({label for r in instances for label in r.sensitivity_labels}))
        await self._authorise(
            AccessAction.SEARCH,
            caller,
            patient,
            instances[0].data_class,
            labels,
            purpose,
            None,
            resource=f"studies/{study_id}",
        )
        instances.sort(key=lambda r: (r.created_at, r.record_id))
        return StudyView(study_id, patient, instances)

    async def _authorise(
        self,
        action: AccessAction,
        caller: Caller,
        patient: str,
        data_class: str,
        labels: tuple[str, ...],
        purpose: str,
        record: RecordMetadata | None,
        *,
        break_glass_justification: str = "",
        resource: str = "",
    ) -> AccessDecision:
        record_id = record.record_id if record is not None else ""
        decision = await self.consent.check(
            AccessRequest(
                caller=caller,
                patient_pseudonym=patient,
                data_class=data_class,
                sensitivity_labels=labels,
                purpose=purpose,
                record_id=record_id,
                break_glass_justification=break_glass_justification,
                action=action,
            )
        )
        await self.audit.publish(
            RecordAuditEvent(
                action=AuditAction.READ if action is AccessAction.READ else AuditAction.SEARCH,
                caller=caller,
                record_id=record_id,
                patient_pseudonym=patient,
                purpose=purpose,
                permitted=decision.permitted,
                reason=decision.reason,
                consent_ref=decision.consent_ref,
                occurred_at=self._clock(),
                consent_version=decision.consent_version,
                break_glass_session=decision.break_glass_session,
                break_glass_justification=break_glass_justification,
                policy_rule=decision.policy_rule,
                resource=resource,
            )
        )
        if not decision.permitted:
            raise AccessDenied(
                "ACCESS_DENIED",
                "consent does not permit this access",
                {"consent_reason": decision.reason, "consent_ref": decision.consent_ref},
            )
        return decision

    async def download(
        self,
        record_id: str,
        caller: Caller,
        purpose: str,
        *,
        offset: int = 0,
        length: int | None = None,
        break_glass_justification: str = "",
    ) -> Download:
        """Ask consent, then stream plaintext [offset, offset+length), chunk by chunk.

        Each chunk's plaintext is released only after it authenticates; a stored
        object of the wrong size is refused before any plaintext is produced.
        """
        record = await self.store.get(record_id)
        if record.erased or record.wrapped_key is None or record.kek_id is None:
            await self._audit(AuditAction.READ, caller, record, purpose, False, "RECORD_ERASED")
            raise RecordErased(f"record {record_id} was erased")
        if not record.registered:
            await self._audit(AuditAction.READ, caller, record, purpose, False, "RECORD_PENDING")
            raise RecordPending(f"record {record_id} is not yet registered on the ledger")
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRecordRequest("offset and length are not negative")
        await self._authorise(
            AccessAction.READ,
            caller,
            record.patient_pseudonym,
            record.data_class,
            record.sensitivity_labels,
            purpose,
            record,
            break_glass_justification=break_glass_justification,
        )
        if offset > record.size_bytes:
            raise RangeNotSatisfiable(f"offset {offset} is past the end ({record.size_bytes})")
        end = record.size_bytes if length is None else min(record.size_bytes, offset + length)
        data_key = await self.keys.unwrap(
            WrappedKey(record.kek_id, record.wrapped_key), context=record_id.encode("ascii")
        )
        try:
            stored = await self.storage.size(record.blob_key)
        except BlobNotFound:
            raise RecordIntegrityError(f"the content of record {record_id} is missing") from None
        if stored != record.ciphertext_size:
            raise RecordIntegrityError(f"the stored content of record {record_id} has a bad size")
        if offset == 0 and end == record.size_bytes:
            plaintext = self._decrypt_whole(record, data_key)
        else:
            plaintext = self._decrypt_range(record, data_key, offset, end - offset)
        # Reading and opening the next chunks overlaps with sending this one.
        content = read_ahead(plaintext, READ_AHEAD_PIECES)
        return Download(record, offset, end - offset, content)

    async def _decrypt_whole(self, record: RecordMetadata, data_key: bytes) -> AsyncIterator[bytes]:
        decryptor = StreamDecryptor(data_key, expected_key_ref=record.record_id.encode("ascii"))
        try:
            stored = read_ahead(self.storage.read(record.blob_key), READ_AHEAD_PIECES)
            async with contextlib.aclosing(stored) as pieces:
                async for piece in pieces:
                    for plaintext in await self._offload(decryptor.update, piece):
                        yield plaintext
            yield decryptor.finalize()
        except StreamError as exc:
            raise RecordIntegrityError(
                "RECORD_INTEGRITY_FAILED",
                f"record {record.record_id} failed authentication",
                {"stream_reason": exc.reason},
            ) from None

    async def _decrypt_range(
        self, record: RecordMetadata, data_key: bytes, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        key_ref = record.record_id.encode("ascii")
        header_size = BASE_HEADER_SIZE + len(key_ref)
        try:
            async with contextlib.aclosing(
                self.storage.read(record.blob_key, 0, header_size)
            ) as pieces:
                header_bytes = b"".join([piece async for piece in pieces])
            header = StreamHeader.parse(header_bytes)
            if header.key_ref != key_ref or header.size != header_size:
                raise StreamIntegrityError("the stream belongs to another record")
            span = chunk_span(header, record.size_bytes, offset, length)
            decryptor = RangeDecryptor(data_key, header, span)
            stored = read_ahead(
                self.storage.read(record.blob_key, span.ciphertext_start, span.ciphertext_end),
                READ_AHEAD_PIECES,
            )
            async with contextlib.aclosing(stored) as pieces:
                async for piece in pieces:
                    for plaintext in await self._offload(decryptor.update, piece):
                        yield plaintext
            decryptor.finalize()
        except StreamError as exc:
            raise RecordIntegrityError(
                "RECORD_INTEGRITY_FAILED",
                f"record {record.record_id} failed authentication",
                {"stream_reason": exc.reason},
            ) from None

    # --- erase, verify, rotate -------------------------------------------------------------

    async def delete(self, record_id: str, caller: Caller, reason: str) -> RecordMetadata:
        """Crypto-shred: destroy the wrapped data key and queue the erasure transaction in one
        step, then remove the ciphertext (best effort).

        Idempotent; the metadata stays, marked erased, as does the ledger registration.
        """
        _check_field("erasure reason", reason)
        record = await self.store.get(record_id)
        if record.erased:
            return record
        erasure = self.ledger.erasure_transaction(record_id, reason)
        erased = await self.store.shred(record_id, self._clock(), erasure.signed, erasure.tx_id)
        try:
            await self._submit(erasure)
        except Exception as exc:
            # Queued in the same row as the shredding: the outbox submits it later.
            _log.warning("erasure submission deferred", record_id=record_id, error=str(exc))
        self._outbox_wakeup.set()
        with contextlib.suppress(BlobNotFound):
            await self.storage.delete(record.blob_key)
        await self._audit(
            AuditAction.DELETE,
            caller,
            erased,
            "RECORDMGT",
            True,
            reason,
            policy_rule="records.erase",
        )
        return erased

    async def verify(self, record_id: str, caller: Caller) -> Verification:
        """Recompute the stored ciphertext's SHA-256 and compare it with the ledger's."""
        record = await self.store.get(record_id)
        registration = (
            await self.ledger.registration(record.registration_tx_id)
            if record.registration_tx_id
            else None
        )
        if registration is not None and registration.record_id != record_id:
            registration = None
        registered = registration.ciphertext_sha256 if registration else b""
        tx_id, height = (registration.tx_id, registration.height) if registration else ("", 0)
        computed = b""
        if record.erased:
            result = VerificationResult.ERASED
        elif registration is None:
            result = VerificationResult.NOT_REGISTERED
        else:
            digest = hashlib.sha256()
            try:
                async with contextlib.aclosing(self.storage.read(record.blob_key)) as pieces:
                    async for piece in pieces:
                        await self._offload(digest.update, piece)
                computed = digest.digest()
            except BlobNotFound:
                computed = b""
            if not computed:
                result = VerificationResult.CONTENT_MISSING
            elif computed == registered:
                result = VerificationResult.VERIFIED
            else:
                result = VerificationResult.HASH_MISMATCH
        # The check itself was permitted whatever it found; the finding is the reason.
        await self._audit(
            AuditAction.VERIFY, caller, record, "HCOMPL", True, result, policy_rule="records.verify"
        )
        return Verification(result, computed, registered, tx_id, height)

    async def rewrap_keys(self, batch_size: int = 100) -> int:
        """Re-wrap every live data key under the provider's current KEK; blobs are untouched."""
        current = self.keys.current_kek_id
        rewrapped = 0
        while True:
            batch = await self.store.wrapped_keys_not_under(current, batch_size)
            if not batch:
                return rewrapped
            before = rewrapped
            for record_id, kek_id, ciphertext in batch:
                fresh = await self.keys.rewrap(
                    WrappedKey(kek_id, ciphertext), context=record_id.encode("ascii")
                )
                if await self.store.replace_wrapped_key(
                    record_id, kek_id, fresh.kek_id, fresh.ciphertext
                ):
                    rewrapped += 1
            if rewrapped == before:
                # The provider did not move any key to its current KEK; looping would never end.
                return rewrapped

    async def cleanup_incomplete(self, older_than_seconds: float = 3600.0) -> int:
        """Abort writes a crash left unfinished (temp files, multipart uploads)."""
        return await self.storage.cleanup_incomplete(older_than_seconds)

    async def _audit(
        self,
        action: AuditAction,
        caller: Caller,
        record: RecordMetadata,
        purpose: str,
        permitted: bool,
        reason: str,
        consent_ref: str = "",
        *,
        policy_rule: str = "",
    ) -> None:
        await self.audit.publish(
            RecordAuditEvent(
                action=action,
                caller=caller,
                record_id=record.record_id,
                patient_pseudonym=record.patient_pseudonym,
                purpose=purpose,
                permitted=permitted,
                reason=reason,
                consent_ref=consent_ref,
                occurred_at=self._clock(),
                policy_rule=policy_rule,
            )
        )
