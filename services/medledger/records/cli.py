"""``medledger records put/get/ls/rm/verify``: talk to a records service over gRPC.

``put`` takes files and folders (a folder of DICOM instances is one study), uploads with
bounded concurrency and progress bars, and can be re-run after a failure: files already
stored are recognised by their idempotency keys and skipped. ``get`` resumes a partial
download with a byte range.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from medledger._gen.records.v1 import records_service_pb2 as pb
from medledger._gen.records.v1 import records_service_pb2_grpc as pb_grpc
from medledger.core.errors import MedledgerError, from_rpc_error
from medledger.core.grpc_channel import ClientTLS, create_channel
from medledger.records.client import (
    DEFAULT_CONCURRENCY,
    RecordsClient,
    UploadOptions,
    UploadOutcome,
    files_under,
)
from medledger.records.codes import (
    category_code,
    category_value,
    erasure_value,
    purpose_value,
)

EXIT_OK = 0
EXIT_FAILED = 1
ADDRESS_VARIABLE = "MEDLEDGER_RECORDS_ADDRESS"
TOKEN_VARIABLE = "MEDLEDGER_TOKEN"  # noqa: S105 -- a variable name
DEFAULT_ADDRESS = "127.0.0.1:50053"
_STATES = {
    pb.RECORD_STATE_PENDING: "pending",
    pb.RECORD_STATE_AVAILABLE: "available",
    pb.RECORD_STATE_ERASED: "erased",
}


def register(subparsers: Any) -> None:
    records = subparsers.add_parser("records", help="store and fetch encrypted clinical records")
    commands = records.add_subparsers(dest="records_command", metavar="COMMAND", required=True)

    def connection(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--address",
            default=os.environ.get(ADDRESS_VARIABLE, DEFAULT_ADDRESS),
            help=f"records service host:port (${ADDRESS_VARIABLE}, default {DEFAULT_ADDRESS})",
        )
        parser.add_argument(
            "--token-file", type=Path, help=f"bearer token file (or ${TOKEN_VARIABLE})"
        )
        parser.add_argument("--ca-file", type=Path, help="CA of the service's TLS certificate")
        parser.add_argument("--purpose", default="TREAT", help="HL7 purpose of use (default TREAT)")

    put = commands.add_parser("put", help="upload files or folders (a DICOM folder is one study)")
    put.add_argument("paths", nargs="+", type=Path)
    put.add_argument("--patient", required=True, help="patient pseudonym")
    put.add_argument("--category", default="DOCUMENT", help="record category, e.g. IMAGING")
    put.add_argument("--label", action="append", default=[], help="sensitivity label (repeatable)")
    put.add_argument("--content-type", help="media type (default: detected per file)")
    put.add_argument("--study", default="", help="file every instance under studies/{id}")
    put.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    put.add_argument("--quiet", action="store_true", help="no progress bars")
    connection(put)
    put.set_defaults(func=_put)

    get = commands.add_parser("get", help="download a record (resumes a partial download)")
    get.add_argument("name", help="records/{id}")
    get.add_argument("-o", "--output", type=Path, required=True)
    get.add_argument("--quiet", action="store_true")
    connection(get)
    get.set_defaults(func=_get)

    ls = commands.add_parser("ls", help="list records")
    ls.add_argument("--patient", default="")
    ls.add_argument("--category", default="")
    ls.add_argument("--study", default="")
    ls.add_argument("--erased", action="store_true", help="include erased records")
    ls.add_argument("--page-size", type=int, default=100)
    connection(ls)
    ls.set_defaults(func=_ls)

    rm = commands.add_parser("rm", help="crypto-shred a record (its content is gone for good)")
    rm.add_argument("name")
    rm.add_argument("--reason", required=True, help="e.g. PATIENT_REQUEST, ENTERED_IN_ERROR")
    connection(rm)
    rm.set_defaults(func=_rm)

    verify = commands.add_parser("verify", help="check a record against its ledger registration")
    verify.add_argument("name")
    connection(verify)
    verify.set_defaults(func=_verify)


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        return str(args.token_file.read_text(encoding="utf-8").strip())
    return os.environ.get(TOKEN_VARIABLE) or None


def _run(
    args: argparse.Namespace,
    body: Callable[[pb_grpc.RecordsServiceAsyncStub], Coroutine[Any, Any, int]],
) -> int:
    async def main() -> int:
        tls = ClientTLS(ca_file=args.ca_file) if args.ca_file else None
        channel = create_channel(args.address, tls=tls, token=_token(args))
        async with channel:
            return await body(pb_grpc.RecordsServiceStub(channel))

    return asyncio.run(main())


def _bars(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def _emit(table: Table, rows: list[list[str]]) -> None:
    """A table on a terminal; tab-separated lines (whole values) when piped or captured."""
    if sys.stdout.isatty():
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    print("\t".join(str(column.header) for column in table.columns))
    for row in rows:
        print("\t".join(row))


def _put(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    paths = files_under(args.paths)
    if not paths:
        raise MedledgerError("NO_FILES", "nothing to upload")
    options = UploadOptions(
        patient_pseudonym=args.patient,
        category=category_code(category_value(args.category.upper())),
        purpose=args.purpose,
        labels=tuple(label.upper() for label in args.label),
        content_type=args.content_type,
        study=f"studies/{args.study.removeprefix('studies/')}" if args.study else "",
    )
    total = sum(path.stat().st_size for path in paths)

    async def body(stub: pb_grpc.RecordsServiceAsyncStub) -> int:
        client = RecordsClient(stub)
        with _bars(console, args.quiet) as bars:
            overall = bars.add_task(f"{len(paths)} file(s)", total=total)
            per_file: dict[str, TaskID] = {}

            def progress(label: str, count: int) -> None:
                if label not in per_file and len(paths) > 1 and len(per_file) < 64:
                    size = Path(label).stat().st_size
                    per_file[label] = bars.add_task(Path(label).name, total=size)
                if label in per_file:
                    bars.advance(per_file[label], count)
                bars.advance(overall, count)

            def finished(outcome: UploadOutcome) -> None:
                task = per_file.pop(str(outcome.path), None)
                if task is not None:
                    bars.remove_task(task)

            result = await client.upload_many(
                paths, options, concurrency=args.concurrency, progress=progress, finished=finished
            )
        rows: list[list[str]] = []
        for outcome in result.outcomes:
            record = outcome.record
            if record is None:
                rows.append(["-", str(outcome.path), "-", f"failed: {outcome.error}", ""])
            else:
                rows.append(
                    [
                        record.name,
                        str(outcome.path),
                        str(record.size_bytes),
                        _STATES.get(record.state, "?"),
                        record.study,
                    ]
                )
        _emit(Table("record", "file", "bytes", "state", "study"), rows)
        if result.failed:
            console.print(
                f"{len(result.failed)} upload(s) failed; run the same command again to resume"
            )
            return EXIT_FAILED
        return EXIT_OK

    return _run(args, body)


def _get(args: argparse.Namespace) -> int:
    console = Console(stderr=True)

    async def body(stub: pb_grpc.RecordsServiceAsyncStub) -> int:
        client = RecordsClient(stub)
        with _bars(console, args.quiet) as bars:
            task = bars.add_task(args.name, total=None)

            def started(done: int, total: int) -> None:
                bars.update(task, total=total, completed=done)

            record = await client.download_to(
                args.name,
                args.output,
                purpose=args.purpose,
                progress=lambda _label, count: bars.advance(task, count),
                started=started,
            )
        console.print(f"{record.name}: {record.size_bytes} bytes -> {args.output}")
        return EXIT_OK

    return _run(args, body)


def _ls(args: argparse.Namespace) -> int:
    async def body(stub: pb_grpc.RecordsServiceAsyncStub) -> int:
        request = pb.ListRecordsRequest(
            page_size=args.page_size,
            purpose=purpose_value(args.purpose),  # type: ignore[arg-type]
            patient_pseudonym=args.patient,
            category=category_value(args.category.upper()) if args.category else 0,  # type: ignore[arg-type]
            study=f"studies/{args.study.removeprefix('studies/')}" if args.study else "",
            show_erased=args.erased,
        )
        table = Table(
            "record", "patient", "category", "type", "bytes", "state", "study", "modality"
        )
        rows: list[list[str]] = []
        while True:
            try:
                page = await stub.ListRecords(request)
            except Exception as error:
                raise _remote(error) from None
            rows.extend(
                [
                    record.name,
                    record.patient_pseudonym,
                    category_code(record.data_class.category),
                    record.content_type,
                    str(record.size_bytes),
                    _STATES.get(record.state, "?"),
                    record.study,
                    record.imaging.modality,
                ]
                for record in page.records
            )
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        _emit(table, rows)
        return EXIT_OK

    return _run(args, body)


def _rm(args: argparse.Namespace) -> int:
    reason = erasure_value(args.reason.upper())

    async def body(stub: pb_grpc.RecordsServiceAsyncStub) -> int:
        try:
            record = await stub.DeleteRecord(pb.DeleteRecordRequest(name=args.name, reason=reason))  # type: ignore[arg-type]
        except Exception as error:
            raise _remote(error) from None
        state = _STATES.get(record.state, "?")
        print(f"{record.name}: {state} (ledger tx {record.ledger_commit.tx_id})")
        return EXIT_OK

    return _run(args, body)


def _verify(args: argparse.Namespace) -> int:
    async def body(stub: pb_grpc.RecordsServiceAsyncStub) -> int:
        try:
            result = await stub.VerifyRecord(pb.VerifyRecordRequest(name=args.name))
        except Exception as error:
            raise _remote(error) from None
        name = pb.VerificationResult.Name(result.result).removeprefix("VERIFICATION_RESULT_")
        print(
            f"{args.name}: {name} (computed {result.computed_ciphertext_sha256.hex() or '-'}, "
            f"registered {result.registered_ciphertext_sha256.hex() or '-'} at height "
            f"{result.registration_height})"
        )
        return EXIT_OK if result.result == pb.VERIFICATION_RESULT_VERIFIED else EXIT_FAILED

    return _run(args, body)


def _remote(error: Exception) -> Exception:
    import grpc

    if isinstance(error, grpc.aio.AioRpcError):
        return from_rpc_error(error)
    return error
