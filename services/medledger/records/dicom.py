"""Non-identifying facts about a DICOM instance: modality, SOP class, and a keyed study reference.

Only three elements are parsed, and only from the first bytes of the file; the
Study Instance UID never leaves this module except as an HMAC under the
service's study key, so instances of one study group together without the UID
(which identifies a person's examination) reaching plaintext metadata.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError

from medledger.records.errors import NotDicom

# Modality, SOP Class UID and Study Instance UID sit in the first few KiB of any instance.
DICOM_PREFIX_SIZE = 1024 * 1024
DICOM_CONTENT_TYPE = "application/dicom"
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STUDY_LABEL = b"medledger/v1/records/study\x00"


@dataclass(frozen=True, slots=True)
class DicomSummary:
    """What may be stored in clear about an instance."""

    modality: str
    sop_class_uid: str
    study_reference: bytes | None  # HMAC-SHA256(study key, Study Instance UID)


def summarize_dicom(prefix: bytes, *, study_key: bytes | None = None) -> DicomSummary:
    """Read modality and SOP class (and the keyed study reference) from a file's first bytes."""
    try:
        dataset = pydicom.dcmread(
            io.BytesIO(prefix[:DICOM_PREFIX_SIZE]),
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "Modality", "StudyInstanceUID"],
        )
    except (InvalidDicomError, EOFError, ValueError, TypeError, OSError, KeyError):
        raise NotDicom("the content is not a readable DICOM instance") from None
    modality = str(dataset.get("Modality", "") or "").strip()
    sop_class_uid = str(dataset.get("SOPClassUID", "") or "").strip()
    if not _MODALITY.match(modality):
        raise NotDicom("the instance has no valid Modality (0008,0060)")
    if not _UID.match(sop_class_uid) or len(sop_class_uid) > 64:
        raise NotDicom("the instance has no valid SOP Class UID (0008,0016)")
    reference = None
    if study_key is not None:
        study_uid = str(dataset.get("StudyInstanceUID", "") or "").strip()
        if not _UID.match(study_uid):
            raise NotDicom("the instance has no valid Study Instance UID (0020,000D)")
        reference = hmac.new(
            study_key, _STUDY_LABEL + study_uid.encode("ascii"), hashlib.sha256
        ).digest()
    return DicomSummary(modality, sop_class_uid, reference)
