"""Records domain logic: encrypted upload, consented (ranged) download, crypto-shred, verify.

No gRPC or NATS types here. Consent, ledger registration and audit publishing
come in through the small protocols below, so the service can be wired to
NATS later and tested with in-memory fakes now.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

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
    UploadDigestMismatch,
    UploadSizeMismatch,
    UploadTooLarge,
)
from medledger.records.storage import BlobStorage, blob_writer
from medledger.records.store import MetadataStore, RecordMetadata

DEFAULT_MAX_RECORD_SIZE = 64 * 1024**3
_TEXT_FIELD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is acting: an authenticated principal of an organisation."""

    principal: str
    organisation: str


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


@dataclass(frozen=True, slots=True)
class AccessDecision:
    permitted: bool
    reason: str
    consent_ref: str = ""


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
    study_id: str | None


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    """A final registration as the ledger has it."""

    ciphertext_sha256: bytes
    tx_id: str
    height: int


class LedgerRegistrar(Protocol):
    async def register(self, registration: RecordRegistration) -> None:
        """Submit durably (return once accepted for ordering, not necessarily final)."""
        ...

    async def register_erasure(self, record_id: str, reason: str) -> None: ...

    async def registration(self, record_id: str) -> RegistrationStatus | None:
        """The final registration of `record_id`, or None if there is none."""
        ...


class AuditAction(StrEnum):
    UPLOAD = "RECORD_UPLOAD"
    READ = "RECORD_READ"
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


def _check_field(name: str, value: str) -> str:
    if not _TEXT_FIELD.match(value):
        raise InvalidRecordRequest(f"{name} is not a valid identifier")
    return value


def _record_id(value: str | None) -> str:
    if value is None or value == "":
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRecordRequest("a record id is a UUID") from None


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
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
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
        self._clock = clock

    # --- upload ------------------------------------------------------------------------

    async def upload(self, request: UploadRequest, content: AsyncIterable[bytes]) -> RecordMetadata:
        """Encrypt and store `content`, record its metadata and register it on the ledger.

        Nothing is visible unless every step succeeds: a failure or cancellation at
        any point removes the partial object and leaves no metadata.
        """
        record_id = _record_id(request.record_id)
        _check_field("patient pseudonym", request.patient_pseudonym)
        _check_field("data class", request.data_class)
        _check_field("content type", request.content_type)
        for label in request.sensitivity_labels:
            _check_field("sensitivity label", label)
        if request.study_id is not None:
            _check_field("study id", request.study_id)
        data_key = new_data_key()
        wrapped = await self.keys.wrap(data_key, context=record_id.encode("ascii"))
        blob_key = f"records/{record_id}"
        encryptor = StreamEncryptor(
            data_key, key_ref=record_id.encode("ascii"), chunk_size=self.chunk_size
        )
        ciphertext_hash = hashlib.sha256(encryptor.header_bytes)
        plaintext_hash = hashlib.sha256() if request.expected_sha256 is not None else None
        commitment = PlaintextCommitment.for_record(data_key, record_id)
        is_dicom = request.content_type == DICOM_CONTENT_TYPE
        dicom_prefix = bytearray()
        ciphertext_size = len(encryptor.header_bytes)

        async with blob_writer(self.storage, blob_key) as writer:
            await writer.write(encryptor.header_bytes)
            async for piece in content:
                if encryptor.plaintext_size + len(piece) > self.max_record_size:
                    raise UploadTooLarge(f"a record is at most {self.max_record_size} bytes")
                commitment.update(piece)
                if plaintext_hash is not None:
                    plaintext_hash.update(piece)
                if is_dicom and len(dicom_prefix) < DICOM_PREFIX_SIZE:
                    dicom_prefix += piece[: DICOM_PREFIX_SIZE - len(dicom_prefix)]
                for chunk in encryptor.update(piece):
                    ciphertext_hash.update(chunk)
                    ciphertext_size += len(chunk)
                    await writer.write(chunk)
            last = encryptor.finalize()
            ciphertext_hash.update(last)
            ciphertext_size += len(last)
            await writer.write(last)
            size = encryptor.plaintext_size
            if request.expected_size is not None and request.expected_size != size:
                raise UploadSizeMismatch(f"expected {request.expected_size} bytes, got {size}")
            if plaintext_hash is not None and plaintext_hash.digest() != request.expected_sha256:
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

        record = RecordMetadata(
            record_id=record_id,
            patient_pseudonym=request.patient_pseudonym,
            data_class=request.data_class,
            sensitivity_labels=request.sensitivity_labels,
            content_type=request.content_type,
            size_bytes=size,
            ciphertext_size=ciphertext_size,
            ciphertext_sha256=ciphertext_hash.digest(),
            plaintext_commitment=commitment.digest(),
            blob_key=blob_key,
            wrapped_key=wrapped.ciphertext,
            kek_id=wrapped.kek_id,
            custodian=self.custodian,
            created_by=request.caller.principal,
            created_at=self._clock(),
            study_id=study_id,
            modality=modality,
            sop_class_uid=sop_class_uid,
        )
        inserted = False
        try:
            await self.store.insert(record)
            inserted = True
            await self.ledger.register(
                RecordRegistration(
                    record_id=record_id,
                    patient_pseudonym=record.patient_pseudonym,
                    ciphertext_sha256=record.ciphertext_sha256,
                    plaintext_commitment=record.plaintext_commitment,
                    size_bytes=size,
                    custodian=self.custodian,
                    data_class=record.data_class,
                    study_id=study_id,
                )
            )
        except BaseException:
            await asyncio.shield(self._roll_back(record_id, blob_key, inserted))
            raise
        await self._audit(AuditAction.UPLOAD, request.caller, record, request.purpose, True, "")
        return record

    def _study_id(self, patient_pseudonym: str, study_reference: bytes) -> str:
        # Opaque and per patient: the same DICOM study of two patients never shares an id.
        digest = hashlib.sha256(patient_pseudonym.encode() + b"\x00" + study_reference)
        return "study-" + digest.hexdigest()[:32]

    async def _roll_back(self, record_id: str, blob_key: str, inserted: bool) -> None:
        if inserted:
            await self.store.delete(record_id)
        await self.storage.delete(blob_key)

    # --- read ----------------------------------------------------------------------------

    async def get(self, record_id: str) -> RecordMetadata:
        return await self.store.get(record_id)

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
        decision = await self.consent.check(
            AccessRequest(
                caller=caller,
                patient_pseudonym=record.patient_pseudonym,
                data_class=record.data_class,
                sensitivity_labels=record.sensitivity_labels,
                purpose=purpose,
                record_id=record_id,
                break_glass_justification=break_glass_justification,
            )
        )
        if not decision.permitted:
            await self._audit(
                AuditAction.READ,
                caller,
                record,
                purpose,
                False,
                decision.reason,
                decision.consent_ref,
            )
            raise AccessDenied(
                "ACCESS_DENIED",
                "consent does not permit this access",
                {"consent_reason": decision.reason, "consent_ref": decision.consent_ref},
            )
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRecordRequest("offset and length are not negative")
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
        await self._audit(
            AuditAction.READ, caller, record, purpose, True, decision.reason, decision.consent_ref
        )
        if offset == 0 and end == record.size_bytes:
            content = self._decrypt_whole(record, data_key)
        else:
            content = self._decrypt_range(record, data_key, offset, end - offset)
        return Download(record, offset, end - offset, content)

    async def _decrypt_whole(self, record: RecordMetadata, data_key: bytes) -> AsyncIterator[bytes]:
        decryptor = StreamDecryptor(data_key, expected_key_ref=record.record_id.encode("ascii"))
        try:
            async with contextlib.aclosing(self.storage.read(record.blob_key)) as pieces:
                async for piece in pieces:
                    for plaintext in decryptor.update(piece):
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
            async with contextlib.aclosing(
                self.storage.read(record.blob_key, span.ciphertext_start, span.ciphertext_end)
            ) as pieces:
                async for piece in pieces:
                    for plaintext in decryptor.update(piece):
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
        """Crypto-shred: destroy the wrapped data key first, then the ciphertext (best effort).

        Idempotent; the metadata stays, marked erased, as does the ledger registration.
        """
        _check_field("erasure reason", reason)
        record = await self.store.get(record_id)
        if record.erased:
            return record
        erased = await self.store.shred(record_id, self._clock())
        await self.ledger.register_erasure(record_id, reason)
        with contextlib.suppress(BlobNotFound):
            await self.storage.delete(record.blob_key)
        await self._audit(AuditAction.DELETE, caller, erased, "", True, reason)
        return erased

    async def verify(self, record_id: str, caller: Caller) -> Verification:
        """Recompute the stored ciphertext's SHA-256 and compare it with the ledger's."""
        record = await self.store.get(record_id)
        registration = await self.ledger.registration(record_id)
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
                        digest.update(piece)
                computed = digest.digest()
            except BlobNotFound:
                computed = b""
            if not computed:
                result = VerificationResult.CONTENT_MISSING
            elif computed == registered:
                result = VerificationResult.VERIFIED
            else:
                result = VerificationResult.HASH_MISMATCH
        await self._audit(
            AuditAction.VERIFY, caller, record, "", result == VerificationResult.VERIFIED, result
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
            )
        )
