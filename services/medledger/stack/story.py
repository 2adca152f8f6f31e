"""The consent and audit story told against a running stack, step by step, through the public gRPC
APIs only: two hospitals, a patient, clinicians, a consent granted and revoked, a break-glass, and
the patient's accounting of disclosures verified offline. `medledger demo` narrates it; the
end-to-end test asserts every outcome it records."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger._gen.audit.v1 import audit_service_pb2 as audit_pb
from medledger._gen.audit.v1 import audit_service_pb2_grpc as audit_grpc
from medledger._gen.common.v1 import (
    access_pb2,
    actor_pb2,
    consent_change_pb2,
    consent_terms_pb2,
    transaction_pb2,
)
from medledger._gen.consent.v1 import consent_service_pb2 as consent_pb
from medledger._gen.consent.v1 import consent_service_pb2_grpc as consent_grpc
from medledger._gen.identity.v1 import identity_service_pb2 as identity_pb
from medledger._gen.identity.v1 import identity_service_pb2_grpc as identity_grpc
from medledger._gen.records.v1 import records_service_pb2 as records_pb
from medledger._gen.records.v1 import records_service_pb2_grpc as records_grpc
from medledger.core.errors import rpc_error_details
from medledger.core.grpc_channel import create_channel
from medledger.crypto import SigningContext, SigningKey
from medledger.crypto.keys import load_signing_key, save_signing_key
from medledger.ledgerclient import sign_transaction
from medledger.stack.errors import DemoStepFailed, StackNotRunning
from medledger.stack.storydata import (
    StoryPatient,
    ct_study,
    fhir_document,
    psychotherapy_note,
    report_entries,
    tamper_one_byte,
    verify_report_file,
)
from medledger.stack.topology import APP_SERVICES, CHAIN_ID, HOSPITALS, Topology

UPLOAD_CHUNK_BYTES = 256 * 1024
CONSENT_FINAL_TIMEOUT = 30.0
REPORT_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0

HOSPITAL_A, HOSPITAL_B = HOSPITALS
T = TypeVar("T")
Narrate = Callable[[str], None]
# Called between steps with the name of the step about to run (the resilience test kills and
# restarts processes there).
StepHook = Callable[[str], Awaitable[None]]


# --- the cast ------------------------------------------------------------------------------------


@dataclass
class Person:
    principal: str
    organisation: str
    kind: int
    roles: Sequence[str]
    key: SigningKey
    token: str = field(default="", repr=False)

    @property
    def org_id(self) -> str:
        return self.organisation.removeprefix("organisations/")


# --- what happened -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessOutcome:
    """One attempt to read a record, and how it was decided."""

    step: str
    actor: str
    record: str
    permitted: bool
    reason: str = ""
    bytes_read: int = 0


@dataclass
class StoryResult:
    patient: StoryPatient
    records: dict[str, str] = field(default_factory=dict)  # role in the story -> record name
    accesses: list[AccessOutcome] = field(default_factory=list)
    consent: str = ""
    consent_final_seconds: float = 0.0
    revocation_final_seconds: float = 0.0
    break_glass_session: str = ""
    report_json: Path | None = None
    report_pdf: Path | None = None
    report_entries: int = 0
    verification_output: str = ""
    tampered_entry: int = -1
    tamper_output: str = ""

    def outcome(self, step: str) -> AccessOutcome:
        for access in self.accesses:
            if access.step == step:
                return access
        raise KeyError(step)


@dataclass(frozen=True)
class Endpoints:
    """Where each hospital's services listen, from the stack's topology."""

    topology: Topology

    def address(self, organisation: str, service: str) -> str:
        return self.topology.spec(organisation.removeprefix("organisations/"), service).address


# --- the story -----------------------------------------------------------------------------------


class Story:
    """One telling of the story. `run()` performs every step in order and returns what happened;
    a step whose outcome differs from the story raises DemoStepFailed naming it."""

    def __init__(
        self,
        topology: Topology,
        out_dir: Path,
        narrate: Narrate,
        before_step: StepHook | None = None,
    ) -> None:
        self.topology = topology
        self.endpoints = Endpoints(topology)
        self.out_dir = out_dir
        self.narrate = narrate
        self.before_step = before_step
        self.patient = StoryPatient.invent()
        self.result = StoryResult(self.patient)
        self._files: dict[str, bytes] = {}

    async def run(self) -> StoryResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("check", self.check_stack),
            ("cast", self.register_cast),
            ("upload", self.upload_records),
            ("b-denied", self.hospital_b_is_denied),
            ("grant", self.patient_grants_b),
            ("b-reads", self.hospital_b_reads),
            ("b-note-denied", self.hospital_b_is_denied_the_note),
            ("research", self.researcher_reads_for_the_study),
            ("break-glass", self.emergency_breaks_the_glass),
            ("revoke", self.patient_revokes),
            ("export", self.officer_exports_the_accounting),
            ("verify", self.verify_offline),
            ("tamper", self.tamper_and_verify),
        ]
        for name, step in steps:
            if self.before_step is not None:
                await self.before_step(name)
            await step()
        return self.result

    # --- 1. the stack ---------------------------------------------------------------------------

    async def check_stack(self) -> None:
        missing = [s for s in APP_SERVICES if s not in self.topology.app_services]
        if missing:
            raise StackNotRunning(
                f"the story needs the {', '.join(missing)} service(s), which this installation "
                "does not have yet"
            )
        down = [spec.name for spec in self.topology.processes() if not await _serving(spec.address)]
        if down:
            raise StackNotRunning(
                f"not answering: {', '.join(down)}; start the stack with `medledger up` "
                "(same --data-dir and --base-port) and wait for 'medledger is up'"
            )
        self.narrate(
            f"Two hospitals, {HOSPITAL_A} and {HOSPITAL_B}, each run identity, consent, records "
            "and audit services; four hospitals' validators run the shared ledger."
        )

    # --- 2. people --------------------------------------------------------------------------------

    async def register_cast(self) -> None:
        keys = self.out_dir / "keys"
        a, b = f"organisations/{HOSPITAL_A}", f"organisations/{HOSPITAL_B}"
        tag = uuid.uuid4().hex[:8]
        self.patient_person = self._person(keys, f"{a}/principals/patient-{tag}", a, "PATIENT", [])
        self.clinician_a = self._person(
            keys, f"{a}/principals/dr-radiology-{tag}", a, "PRACTITIONER", ["physician"]
        )
        self.clinician_b = self._person(
            keys, f"{b}/principals/dr-cardiology-{tag}", b, "PRACTITIONER", ["physician"]
        )
        self.researcher_b = self._person(
            keys, f"{b}/principals/researcher-{tag}", b, "PRACTITIONER", ["researcher"]
        )
        self.emergency_b = self._person(
            keys, f"{b}/principals/dr-emergency-{tag}", b, "PRACTITIONER", ["emergency_physician"]
        )
        self.officer_a = self._person(
            keys, f"{a}/principals/compliance-{tag}", a, "AUDITOR", ["auditor"]
        )
        cast = [
            self.patient_person,
            self.clinician_a,
            self.clinician_b,
            self.researcher_b,
            self.emergency_b,
            self.officer_a,
        ]
        admins = {org: await self.admin(org) for org in (HOSPITAL_A, HOSPITAL_B)}
        started = time.monotonic()
        await asyncio.gather(*(self._register(admins[p.org_id], p) for p in cast))
        for person in cast:
            person.token = await self._login(person)
        self.narrate(
            f"{HOSPITAL_A} registers a patient (pseudonym {self.patient.pseudonym}; the name, "
            "MRN and birth date stay inside the hospital's records), a radiologist and a "
            f"compliance officer; {HOSPITAL_B} a cardiologist, a researcher and an emergency "
            "physician. "
            "Each registration is a ledger transaction, final in "
            f"{time.monotonic() - started:.1f}s; each person logs in by signing a challenge "
            "with their own key."
        )

    def _person(
        self, keys: Path, principal: str, organisation: str, kind: str, roles: list[str]
    ) -> Person:
        key = SigningKey.generate()
        keys.mkdir(parents=True, exist_ok=True)
        save_signing_key(keys / f"{principal.rsplit('/', 1)[1]}.key", key)
        return Person(
            principal=principal,
            organisation=organisation,
            kind=actor_pb2.PrincipalKind.Value(f"PRINCIPAL_KIND_{kind}"),
            roles=roles,
            key=key,
        )

    async def admin(self, organisation: str) -> Person:
        """A hospital's first administrator (its key is in the stack's data dir), logged in."""
        layout = self.topology.layout
        admin = Person(
            principal=f"organisations/{organisation}/principals/admin",
            organisation=f"organisations/{organisation}",
            kind=actor_pb2.PRINCIPAL_KIND_ADMINISTRATOR,
            roles=["administrator"],
            key=load_signing_key(layout.key(organisation, "admin")),
        )
        admin.token = await self._login(admin)
        return admin

    async def _register(self, admin: Person, person: Person) -> None:
        principal = identity_pb.Principal(
            kind=person.kind,  # type: ignore[arg-type]
            roles=list(person.roles),
            keys=[
                identity_pb.PrincipalKey(
                    key_id=person.key.public_key.key_id,
                    algorithm=1,  # type: ignore[arg-type]
                    public_key=person.key.public_key.raw,
                )
            ],
        )
        if person.kind == actor_pb2.PRINCIPAL_KIND_PATIENT:
            principal.patient_pseudonym = self.patient.pseudonym
        async with self._channel(admin.organisation, "identity", admin.token) as channel:
            stub = identity_grpc.IdentityServiceStub(channel)
            await stub.CreatePrincipal(
                identity_pb.CreatePrincipalRequest(
                    parent=admin.organisation,
                    principal_id=person.principal.rsplit("/", 1)[1],
                    principal=principal,
                    request_id=str(uuid.uuid4()),
                ),
                timeout=CALL_TIMEOUT,
            )
        await self._wait_active(admin, person.principal)

    async def _wait_active(self, admin: Person, principal: str) -> None:
        deadline = time.monotonic() + CONSENT_FINAL_TIMEOUT
        async with self._channel(admin.organisation, "identity", admin.token) as channel:
            stub = identity_grpc.IdentityServiceStub(channel)
            while True:
                found = await stub.GetPrincipal(
                    identity_pb.GetPrincipalRequest(name=principal), timeout=CALL_TIMEOUT
                )
                if found.state == identity_pb.PRINCIPAL_STATE_ACTIVE:
                    return
                if time.monotonic() > deadline:
                    raise DemoStepFailed(f"{principal} was not active within the deadline")
                await asyncio.sleep(0.25)

    async def _login(self, person: Person) -> str:
        async with self._channel(person.organisation, "identity") as channel:
            stub = identity_grpc.IdentityServiceStub(channel)
            challenge = await stub.CreateTokenChallenge(
                identity_pb.CreateTokenChallengeRequest(
                    principal=person.principal, key_id=person.key.public_key.key_id
                ),
                timeout=CALL_TIMEOUT,
            )
            issued = await stub.IssueToken(
                identity_pb.IssueTokenRequest(
                    challenge_id=challenge.challenge_id,
                    principal=person.principal,
                    key_id=person.key.public_key.key_id,
                    signature=person.key.sign(SigningContext.TOKEN_CHALLENGE, challenge.challenge),
                ),
                timeout=CALL_TIMEOUT,
            )
        return str(issued.access_token)

    # --- 3. uploads -------------------------------------------------------------------------------

    async def upload_records(self) -> None:
        clinician = self.clinician_a
        study = ct_study(self.patient, slices=3)
        ct_names = []
        for index, instance in enumerate(study):
            record = await self._upload(
                clinician,
                instance,
                "application/dicom",
                access_pb2.RECORD_CATEGORY_IMAGING,
            )
            ct_names.append(record.name)
            self._files[record.name] = instance
            if index == 0:
                self.result.records["ct"] = record.name
                self.result.records["study"] = record.study
        document = fhir_document(self.patient)
        fhir = await self._upload(
            clinician, document, "application/fhir+json", access_pb2.RECORD_CATEGORY_DOCUMENT
        )
        self._files[fhir.name] = document
        self.result.records["fhir"] = fhir.name
        note = psychotherapy_note(self.patient)
        note_record = await self._upload(
            clinician,
            note,
            "text/plain",
            access_pb2.RECORD_CATEGORY_CLINICAL_NOTE,
            [access_pb2.SENSITIVITY_LABEL_PSYTHPN],
        )
        self._files[note_record.name] = note
        self.result.records["note"] = note_record.name
        self.narrate(
            f"The radiologist at {HOSPITAL_A} uploads a {len(study)}-slice CT study "
            f"({sum(len(i) for i in study)} bytes), a FHIR document and a psychotherapy note. "
            "Each is encrypted chunk by chunk with its own key; only its hashes and size are "
            "registered on the ledger."
        )

    async def _upload(
        self,
        person: Person,
        content: bytes,
        content_type: str,
        category: int,
        labels: Sequence[int] = (),
    ) -> records_pb.Record:
        header = records_pb.RecordHeader(
            patient_pseudonym=self.patient.pseudonym,
            data_class=access_pb2.DataClass(
                category=category,  # type: ignore[arg-type]
                sensitivity_labels=list(labels),  # type: ignore[arg-type]
            ),
            content_type=content_type,
            purpose=access_pb2.PURPOSE_OF_USE_TREAT,
            expected_size_bytes=len(content),
            request_id=str(uuid.uuid4()),
        )

        async def parts() -> AsyncIterator[records_pb.UploadRecordRequest]:
            yield records_pb.UploadRecordRequest(header=header)
            for start in range(0, len(content), UPLOAD_CHUNK_BYTES):
                yield records_pb.UploadRecordRequest(
                    chunk=content[start : start + UPLOAD_CHUNK_BYTES]
                )

        async with self._channel(person.organisation, "records", person.token) as channel:
            stub = records_grpc.RecordsServiceStub(channel)
            try:
                record: records_pb.Record = await stub.UploadRecord(parts(), timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                details = rpc_error_details(error)
                raise DemoStepFailed(
                    f"upload by {person.principal} failed: {details.code.name} {details.reason} "
                    f"{details.message}"
                ) from None
        return record

    # --- 4. to 9. reads, consent, break-glass --------------------------------------------------

    async def hospital_b_is_denied(self) -> None:
        outcome = await self._read("b-denied", self.clinician_b, self.result.records["ct"])
        self._expect(outcome, permitted=False)
        self.narrate(
            f"A cardiologist at {HOSPITAL_B} asks for the CT: DENIED ({outcome.reason}). "
            "The patient has not consented, and the denial is itself audited."
        )

    async def patient_grants_b(self) -> None:
        consent_id = str(uuid.uuid4())
        terms = consent_terms_pb2.ConsentTerms(
            patient_pseudonym=self.patient.pseudonym,
            grantor=self.patient_person.principal,
            grantor_capacity=consent_terms_pb2.GRANTOR_CAPACITY_PATIENT,
            grantor_evidence=consent_terms_pb2.GrantorEvidence(
                kind=consent_terms_pb2.EVIDENCE_KIND_PATIENT_SIGNATURE,
                captured_at_unix_ms=int(time.time() * 1000),
            ),
            grantee=consent_terms_pb2.Party(organisation=f"organisations/{HOSPITAL_B}"),
            provision=consent_terms_pb2.Provision(
                type=consent_terms_pb2.PROVISION_TYPE_PERMIT,
                actions=[access_pb2.ACCESS_ACTION_READ],
                categories=[
                    access_pb2.RECORD_CATEGORY_IMAGING,
                    access_pb2.RECORD_CATEGORY_DOCUMENT,
                ],
                purposes=[access_pb2.PURPOSE_OF_USE_TREAT, access_pb2.PURPOSE_OF_USE_HRESCH],
            ),
            scope=consent_terms_pb2.CONSENT_SCOPE_TREATMENT,
        )
        name = f"consents/{consent_id}"
        change = consent_change_pb2.ConsentChange(
            grant=consent_change_pb2.ConsentGrant(consent=name, version=1, terms=terms)
        )
        started = time.monotonic()
        async with self._channel(
            self.patient_person.organisation, "consent", self.patient_person.token
        ) as channel:
            stub = consent_grpc.ConsentServiceStub(channel)
            await self._call(
                "grant",
                stub.CreateConsent(
                    consent_pb.CreateConsentRequest(
                        consent_id=consent_id,
                        consent=consent_pb.Consent(terms=terms),
                        signed_transaction=self._signed_by_patient(change),
                        request_id=str(uuid.uuid4()),
                    ),
                    timeout=CALL_TIMEOUT,
                ),
            )
            await self._wait_consent(stub, name, consent_pb.CONSENT_STATE_ACTIVE)
        self.result.consent = name
        self.result.consent_final_seconds = time.monotonic() - started
        self.narrate(
            f"The patient grants {HOSPITAL_B} access to imaging and documents for treatment "
            f"(and for a research registry at {HOSPITAL_B} they joined), signing the ledger "
            "transaction with their own key. It is final in "
            f"{self.result.consent_final_seconds:.1f}s, on every validator."
        )

    def _signed_by_patient(
        self, change: consent_change_pb2.ConsentChange
    ) -> transaction_pb2.Transaction:
        body = transaction_pb2.TransactionBody(
            chain_id=CHAIN_ID,
            nonce=secrets.randbits(63),
            created_at_unix_ms=int(time.time() * 1000),
            signer=self.patient_person.principal,
            consent_change=change,
        )
        return transaction_pb2.Transaction.FromString(
            sign_transaction(body, self.patient_person.key)
        )

    async def _wait_consent(
        self, stub: consent_grpc.ConsentServiceAsyncStub, name: str, state: int
    ) -> consent_pb.Consent:
        deadline = time.monotonic() + CONSENT_FINAL_TIMEOUT
        while True:
            try:
                consent: consent_pb.Consent = await stub.GetConsent(
                    consent_pb.GetConsentRequest(name=name), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as error:
                # A consent is unknown to the decision index until its block is final.
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                if consent.state == state:
                    return consent
            if time.monotonic() > deadline:
                raise DemoStepFailed(
                    f"{name} did not reach {consent_pb.ConsentState.Name(state)} within "  # type: ignore[arg-type]
                    f"{CONSENT_FINAL_TIMEOUT:g}s"
                )
            await asyncio.sleep(0.2)

    async def hospital_b_reads(self) -> None:
        ct = await self._read("b-reads-ct", self.clinician_b, self.result.records["ct"])
        self._expect(ct, permitted=True)
        fhir = await self._read("b-reads-fhir", self.clinician_b, self.result.records["fhir"])
        self._expect(fhir, permitted=True)
        self.narrate(
            f"The cardiologist at {HOSPITAL_B} now reads the CT slice ({ct.bytes_read} bytes) and "
            f"the FHIR document ({fhir.bytes_read} bytes), decrypted by {HOSPITAL_A}'s records "
            "service, byte for byte what was uploaded."
        )

    async def hospital_b_is_denied_the_note(self) -> None:
        outcome = await self._read("b-note-denied", self.clinician_b, self.result.records["note"])
        self._expect(outcome, permitted=False)
        self.narrate(
            "The same cardiologist asks for the psychotherapy note: DENIED "
            f"({outcome.reason}); the consent covers imaging and documents, not notes."
        )

    async def researcher_reads_for_the_study(self) -> None:
        outcome = await self._read(
            "research-read",
            self.researcher_b,
            self.result.records["fhir"],
            purpose=access_pb2.PURPOSE_OF_USE_HRESCH,
        )
        self._expect(outcome, permitted=True)
        self.narrate(
            f"A researcher at {HOSPITAL_B} reads the FHIR document for the registry: permitted "
            "by the consent, and a disclosure for research, which the patient's accounting of "
            "disclosures must list (treatment disclosures are exempt, 164.528(a)(1)(i))."
        )

    async def emergency_breaks_the_glass(self) -> None:
        justification = "Unconscious patient in the emergency department; history needed now."
        async with self._channel(
            self.emergency_b.organisation, "consent", self.emergency_b.token
        ) as channel:
            stub = consent_grpc.ConsentServiceStub(channel)
            session = await self._call(
                "break-glass",
                stub.BreakGlass(
                    consent_pb.BreakGlassRequest(
                        session=consent_pb.BreakGlassSession(
                            patient_pseudonym=self.patient.pseudonym,
                            purpose=access_pb2.PURPOSE_OF_USE_ETREAT,
                            justification=justification,
                        ),
                        request_id=str(uuid.uuid4()),
                    ),
                    timeout=CALL_TIMEOUT,
                ),
            )
        self.result.break_glass_session = str(session.name)
        outcome = await self._read(
            "break-glass-read",
            self.emergency_b,
            self.result.records["note"],
            purpose=access_pb2.PURPOSE_OF_USE_ETREAT,
            justification=justification,
        )
        self._expect(outcome, permitted=True)
        self.narrate(
            f"An emergency physician at {HOSPITAL_B} breaks the glass with a justification and "
            f"reads the note ({outcome.bytes_read} bytes); the access is flagged for review."
        )

    async def patient_revokes(self) -> None:
        revocation = consent_change_pb2.ConsentRevocation(
            consent=self.result.consent,
            version=1,
            reason=consent_change_pb2.CONSENT_REVOCATION_REASON_WITHDRAWN,
            evidence=consent_terms_pb2.GrantorEvidence(
                kind=consent_terms_pb2.EVIDENCE_KIND_PATIENT_SIGNATURE,
                captured_at_unix_ms=int(time.time() * 1000),
            ),
        )
        change = consent_change_pb2.ConsentChange(revocation=revocation)
        started = time.monotonic()
        async with self._channel(
            self.patient_person.organisation, "consent", self.patient_person.token
        ) as channel:
            stub = consent_grpc.ConsentServiceStub(channel)
            await self._call(
                "revoke",
                stub.RevokeConsent(
                    consent_pb.RevokeConsentRequest(
                        name=revocation.consent,
                        version=revocation.version,
                        reason=revocation.reason,
                        evidence=revocation.evidence,
                        signed_transaction=self._signed_by_patient(change),
                        request_id=str(uuid.uuid4()),
                    ),
                    timeout=CALL_TIMEOUT,
                ),
            )
            await self._wait_consent(stub, revocation.consent, consent_pb.CONSENT_STATE_REVOKED)
        self.result.revocation_final_seconds = time.monotonic() - started
        outcome = await self._read("b-denied-again", self.clinician_b, self.result.records["ct"])
        self._expect(outcome, permitted=False)
        self.narrate(
            "The patient revokes the consent (final in "
            f"{self.result.revocation_final_seconds:.1f}s); the cardiologist at {HOSPITAL_B} "
            f"is DENIED again ({outcome.reason})."
        )

    async def _read(
        self,
        step: str,
        person: Person,
        record: str,
        *,
        purpose: int = access_pb2.PURPOSE_OF_USE_TREAT,
        justification: str = "",
    ) -> AccessOutcome:
        # The record's custodian serves it, whoever asks.
        request = records_pb.DownloadRecordRequest(
            name=record,
            purpose=purpose,  # type: ignore[arg-type]
            break_glass_justification=justification,
        )
        content = bytearray()
        async with self._channel(f"organisations/{HOSPITAL_A}", "records", person.token) as channel:
            stub = records_grpc.RecordsServiceStub(channel)
            try:
                async for part in stub.DownloadRecord(request, timeout=CALL_TIMEOUT):
                    if part.WhichOneof("part") == "chunk":
                        content += part.chunk
            except grpc.aio.AioRpcError as error:
                details = rpc_error_details(error)
                if details.code != grpc.StatusCode.PERMISSION_DENIED:
                    raise DemoStepFailed(
                        f"{step}: reading {record} failed: {details.code.name} {details.reason} "
                        f"{details.message}"
                    ) from None
                outcome = AccessOutcome(step, person.principal, record, False, details.reason)
                self.result.accesses.append(outcome)
                return outcome
        if bytes(content) != self._files[record]:
            raise DemoStepFailed(f"{step}: the bytes read are not the bytes uploaded")
        outcome = AccessOutcome(step, person.principal, record, True, "", len(content))
        self.result.accesses.append(outcome)
        return outcome

    def accountable_disclosures(self) -> list[AccessOutcome]:
        """The permitted reads that 164.528 requires be accounted for: by another organisation,
        for a purpose other than treatment, payment or operations."""
        return [a for a in self.result.accesses if a.permitted and a.step == "research-read"]

    def _expect(self, outcome: AccessOutcome, *, permitted: bool) -> None:
        if outcome.permitted != permitted:
            said = "permitted" if outcome.permitted else f"denied ({outcome.reason})"
            raise DemoStepFailed(
                f"{outcome.step}: {outcome.actor} was {said}, but the story says "
                f"{'permit' if permitted else 'deny'}"
            )

    # --- 10. to 12. the accounting of disclosures ------------------------------------------------

    async def officer_exports_the_accounting(self) -> None:
        officer = self.officer_a
        expected = len(self.accountable_disclosures())
        deadline = time.monotonic() + REPORT_TIMEOUT
        # The log takes events as they arrive and anchors a checkpoint every second; wait until
        # the report covers every access the story made.
        while True:
            content = await self._export(officer, audit_pb.REPORT_FORMAT_JSON)
            report = json.loads(content)
            entries = report_entries(report)
            if len(entries) >= expected:
                break
            if time.monotonic() > deadline:
                raise DemoStepFailed(
                    f"the accounting lists {len(entries)} disclosures after "
                    f"{REPORT_TIMEOUT:g}s; the story made {expected} that must be listed"
                )
            await asyncio.sleep(1.0)
        json_path = self.out_dir / "accounting-of-disclosures.json"
        json_path.write_bytes(content)
        pdf = await self._export(officer, audit_pb.REPORT_FORMAT_PDF)
        pdf_path = self.out_dir / "accounting-of-disclosures.pdf"
        pdf_path.write_bytes(pdf)
        self.result.report_json, self.result.report_pdf = json_path, pdf_path
        self.result.report_entries = len(entries)
        self.narrate(
            f"A compliance officer at {HOSPITAL_A} exports the patient's accounting of "
            f"disclosures (45 CFR 164.528): {_count(len(entries), 'entry', 'entries')}, "
            f"as JSON ({json_path}) and PDF ({pdf_path}). The JSON carries each entry's Merkle "
            "inclusion proof, the signed checkpoint, and the ledger block that anchors it with "
            "its finality certificate."
        )

    async def _export(self, officer: Person, report_format: int) -> bytes:
        request = audit_pb.ExportReportRequest(
            kind=audit_pb.REPORT_KIND_ACCOUNTING_OF_DISCLOSURES,
            format=report_format,  # type: ignore[arg-type]
            patient_pseudonym=self.patient.pseudonym,
        )
        content = io.BytesIO()
        async with self._channel(officer.organisation, "audit", officer.token) as channel:
            stub = audit_grpc.AuditServiceStub(channel)
            try:
                async for part in stub.ExportReport(request, timeout=CALL_TIMEOUT):
                    if part.WhichOneof("part") == "chunk":
                        content.write(part.chunk)
            except grpc.aio.AioRpcError as error:
                details = rpc_error_details(error)
                raise DemoStepFailed(
                    f"export failed: {details.code.name} {details.reason} {details.message}"
                ) from None
        return content.getvalue()

    async def verify_offline(self) -> None:
        assert self.result.report_json is not None
        code, output = await verify_report_file(
            self.result.report_json, self.topology.layout.genesis_path
        )
        self.result.verification_output = output
        if code != 0:
            raise DemoStepFailed(f"the exported report does not verify: {output}")
        self.narrate(
            "Anyone holding only the consortium's genesis file verifies it offline:\n"
            f"  $ medledger audit verify {self.result.report_json} "
            f"--genesis {self.topology.layout.genesis_path}\n  {output}"
        )

    async def tamper_and_verify(self) -> None:
        assert self.result.report_json is not None
        original = json.loads(self.result.report_json.read_bytes())
        tampered, index = tamper_one_byte(original)
        path = self.out_dir / "accounting-of-disclosures.tampered.json"
        path.write_text(json.dumps(tampered, indent=2), encoding="utf-8")
        code, output = await verify_report_file(path, self.topology.layout.genesis_path)
        self.result.tampered_entry, self.result.tamper_output = index, output
        if code == 0:
            raise DemoStepFailed("a report with a changed byte still verified")
        self.narrate(f"Change one byte of entry {index} and verify again:\n  {output}")

    # --- plumbing ---------------------------------------------------------------------------------

    def _channel(self, organisation: str, service: str, token: str = "") -> grpc.aio.Channel:
        target = self.endpoints.address(organisation, service)
        return create_channel(target, token=token or None)

    async def _call(self, step: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            details = rpc_error_details(error)
            raise DemoStepFailed(
                f"{step}: {details.code.name} {details.reason} {details.message}"
            ) from None


# --- helpers ----------------------------------------------------------------------------------


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"
