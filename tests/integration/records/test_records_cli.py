"""`medledger records put/get/ls/rm/verify` against a running service: a DICOM folder as one
upload run with bounded concurrency, a re-run that stores nothing twice, a download resumed
from a partial file, verification against the ledger and crypto-shredding."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medledger._gen.common.v1 import access_pb2
from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger.cli.main import main as cli_main
from medledger.testing.ledger import LocalLedger
from tests.integration.records.records_harness import (
    PERMITTED_PATIENT,
    ConsentResponder,
    running_records,
)

pytestmark = pytest.mark.integration


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = await asyncio.to_thread(cli_main, list(argv))
    return code, capsys.readouterr().out


async def test_cli_put_get_ls_verify_rm(
    tmp_path: Path,
    nats_url: str,
    ledger_network: LocalLedger,
    consent_responder: ConsentResponder,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(str(get_testdata_file(name)), folder / name)
    (folder / "notes").mkdir()
    (folder / "notes" / "report.txt").write_bytes(b"impression: normal\n" * 5000)
    async with running_records(tmp_path, nats_url, ledger_network.genesis.chain_id) as running:
        token_file = tmp_path / "clinician.token"
        token_file.write_text(running.tokens["clinician"])
        admin_file = tmp_path / "admin.token"
        admin_file.write_text(running.tokens["admin"])
        address = f"127.0.0.1:{running.port}"
        common = ["--address", address, "--token-file", str(token_file)]
        put = [
            "records",
            "put",
            str(folder),
            "--patient",
            PERMITTED_PATIENT,
            "--category",
            "IMAGING",
            "--concurrency",
            "2",
            "--quiet",
            *common,
        ]
        code, out = await run_cli(capsys, *put)
        assert code == 0, out
        listed = await running.stub.ListRecords(
            pb.ListRecordsRequest(
                purpose=access_pb2.PURPOSE_OF_USE_TREAT, patient_pseudonym=PERMITTED_PATIENT
            ),
            metadata=running.auth(),
        )
        assert len(listed.records) == 3
        by_type = {r.content_type: r for r in listed.records}
        assert by_type["application/dicom"].study.startswith("studies/")
        assert by_type["text/plain"].size_bytes == 19 * 5000

        # Re-running (as after an interrupted run) stores nothing twice.
        code, out = await run_cli(capsys, *put)
        assert code == 0, out
        again = await running.stub.ListRecords(
            pb.ListRecordsRequest(
                purpose=access_pb2.PURPOSE_OF_USE_TREAT, patient_pseudonym=PERMITTED_PATIENT
            ),
            metadata=running.auth(),
        )
        assert {r.name for r in again.records} == {r.name for r in listed.records}

        code, out = await run_cli(capsys, "records", "ls", "--patient", PERMITTED_PATIENT, *common)
        assert code == 0 and all(r.name in out for r in listed.records)

        # A download cut off earlier resumes from the partial file.
        report = by_type["text/plain"]
        expected = (folder / "notes" / "report.txt").read_bytes()
        target = tmp_path / "out" / "report.txt"
        target.parent.mkdir()
        target.with_name("report.txt.part").write_bytes(expected[:40_000])
        target.with_name("report.txt.part.json").write_text(
            json.dumps({"record": report.name, "ciphertext_sha256": report.ciphertext_sha256.hex()})
        )
        code, out = await run_cli(
            capsys, "records", "get", report.name, "-o", str(target), "--quiet", *common
        )
        assert code == 0, out
        assert target.read_bytes() == expected
        assert not target.with_name("report.txt.part").exists()
        ct = tmp_path / "out" / "ct.dcm"
        code, _ = await run_cli(
            capsys,
            "records",
            "get",
            by_type["application/dicom"].name,
            "-o",
            str(ct),
            "--quiet",
            *common,
        )
        assert code == 0
        assert ct.read_bytes() in {
            (folder / n).read_bytes() for n in ("CT_small.dcm", "MR_small.dcm")
        }

        admin = ["--address", address, "--token-file", str(admin_file)]
        code, out = await run_cli(capsys, "records", "verify", report.name, *admin)
        assert code == 0 and "VERIFIED" in out
        code, out = await run_cli(
            capsys, "records", "rm", report.name, "--reason", "ENTERED_IN_ERROR", *admin
        )
        assert code == 0 and "erased" in out
        code, out = await run_cli(capsys, "records", "verify", report.name, *admin)
        assert code == 1 and "ERASED" in out
        code, _ = await run_cli(capsys, "records", "rm", report.name, "--reason", "X", *admin)
        assert code != 0
