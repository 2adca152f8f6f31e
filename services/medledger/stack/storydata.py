"""What the story is made of: an invented patient whose identifying data must never leak, the CT
study, FHIR document and psychotherapy note uploaded for them, and the offline check of an
exported report (and of a tampered copy)."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from medledger.stack.errors import DemoStepFailed


@dataclass(frozen=True)
class StoryPatient:
    """The patient's identifying data: it goes into the CT images and the FHIR document, and must
    never appear in a log line or a ledger block."""

    given: str
    family: str
    mrn: str
    birth_date: date
    pseudonym: str

    @classmethod
    def invent(cls) -> StoryPatient:
        # Unusual, per-run values, so a leak scan cannot match anything by chance.
        tag = secrets.token_hex(3)
        return cls(
            given=f"Zelda{tag[:3]}",
            family=f"Quintanilla{tag[3:]}",
            mrn=f"MRN{secrets.randbelow(10**9):09d}",
            birth_date=date(1961, 7, 19),
            pseudonym=f"p-{uuid.uuid4().hex[:20]}",
        )

    def identifying_strings(self) -> list[str]:
        """Every form in which the story writes the patient's name, MRN or date of birth."""
        return [
            self.given,
            self.family,
            self.mrn,
            self.birth_date.isoformat(),
            self.birth_date.strftime("%Y%m%d"),
        ]


# --- content -------------------------------------------------------------------------


def ct_study(patient: StoryPatient, slices: int) -> list[bytes]:
    """`slices` CT instances of one study, from pydicom's CT test image, labelled with the
    patient's name, MRN and birth date, as a scanner would."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = get_testdata_file("CT_small.dcm")
    if source is None:
        raise DemoStepFailed("pydicom's CT_small.dcm test image is not installed")
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = []
    for number in range(1, slices + 1):
        dataset = pydicom.dcmread(str(source))
        dataset.PatientName = f"{patient.family}^{patient.given}"
        dataset.PatientID = patient.mrn
        dataset.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = number
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        instances.append(buffer.getvalue())
    return instances


def fhir_document(patient: StoryPatient) -> bytes:
    """A FHIR document Bundle: a Composition about the patient, and the Patient resource."""
    patient_id = uuid.uuid4().hex
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "timestamp": "2026-01-15T10:00:00Z",
        "entry": [
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": {
                    "resourceType": "Composition",
                    "status": "final",
                    "type": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "date": "2026-01-15T10:00:00Z",
                    "title": "Diagnostic imaging report: CT chest",
                },
            },
            {
                "fullUrl": f"Patient/{patient_id}",
                "resource": {
                    "resourceType": "Patient",
                    "id": patient_id,
                    "identifier": [{"system": "urn:hospital-a:mrn", "value": patient.mrn}],
                    "name": [{"family": patient.family, "given": [patient.given]}],
                    "birthDate": patient.birth_date.isoformat(),
                },
            },
        ],
    }
    return json.dumps(bundle, indent=2).encode()


def psychotherapy_note(patient: StoryPatient) -> bytes:
    return (
        f"Psychotherapy session note for {patient.given} {patient.family} ({patient.mrn}).\n"
        "Session 4. Discussed sleep and work stress; continue weekly sessions.\n"
    ).encode()


# --- the report -----------------------------------------------------------------------------------


def report_entries(report: object) -> list[object]:
    """The entries of a JSON report."""
    if isinstance(report, dict):
        entries = report.get("entries")
        if isinstance(entries, list):
            return entries
    raise DemoStepFailed("the JSON report has no list of entries")


def tamper_one_byte(report: object) -> tuple[object, int]:
    """A copy of the report with one character changed inside its last entry's recorded bytes;
    returns it and the index of the entry changed."""
    tampered = json.loads(json.dumps(report))
    entries = report_entries(tampered)
    index = len(entries) - 1
    entry = entries[index]
    if not isinstance(entry, dict):
        raise DemoStepFailed("a report entry is not an object")
    for key in ("leaf_data", "leafData", "event"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            entry[key] = _flip_one_character(value)
            return tampered, index
    raise DemoStepFailed(f"report entry {index} has no recorded bytes to change")


def _flip_one_character(text: str) -> str:
    # Changing a base64 character in the middle changes one decoded byte and keeps it decodable.
    middle = len(text) // 2
    while text[middle] in "=":
        middle -= 1
    replacement = "A" if text[middle] != "A" else "B"
    return text[:middle] + replacement + text[middle + 1 :]


async def verify_report_file(report: Path, genesis: Path) -> tuple[int, str]:
    """Run `medledger audit verify` as a separate process (offline: only the file and the
    genesis); its exit code and its one-line verdict."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "medledger.cli.main",
        "audit",
        "verify",
        str(report),
        "--genesis",
        str(genesis),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
    return int(process.returncode or 0), lines[-1] if lines else ""
