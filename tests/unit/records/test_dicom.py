"""Non-identifying DICOM summaries from pydicom's real test files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medledger.records.dicom import summarize_dicom
from medledger.records.errors import NotDicom

CT = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
MR = Path(str(get_testdata_file("MR_small.dcm"))).read_bytes()


def test_modality_and_sop_class() -> None:
    ct, mr = summarize_dicom(CT), summarize_dicom(MR)
    assert (ct.modality, ct.sop_class_uid) == ("CT", "1.2.840.10008.5.1.4.1.1.2")
    assert (mr.modality, mr.sop_class_uid) == ("MR", "1.2.840.10008.5.1.4.1.1.4")
    assert ct.study_reference is None


def test_study_reference_is_keyed_and_hides_the_uid() -> None:
    a = summarize_dicom(CT, study_key=b"k" * 32)
    b = summarize_dicom(CT, study_key=b"j" * 32)
    assert a.study_reference and b.study_reference and a.study_reference != b.study_reference
    assert b"1.3.6.1.4.1.5962" not in a.study_reference
    assert "5962" not in repr(a)


def test_a_prefix_is_enough() -> None:
    assert summarize_dicom(CT[:4096]).modality == "CT"


def test_not_dicom() -> None:
    with pytest.raises(NotDicom):
        summarize_dicom(b"%PDF-1.7 not an image" * 10)
