"""``medledger audit …``: verify a JSON report offline, export a report (with progress), and
query the log. ``verify`` needs no service, only the genesis file or trusted validator keys."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2

from medledger._gen.audit.v1 import audit_service_pb2 as pb
from medledger._gen.audit.v1 import audit_service_pb2_grpc as pb_grpc
from medledger._gen.common.v1 import access_pb2
from medledger.audit.reports.verify import (
    ReportVerificationError,
    trusted_validators_from_file,
    trusted_validators_from_genesis,
    verify_report,
)
from medledger.core.errors import from_rpc_error
from medledger.core.grpc_channel import create_channel

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
TOKEN_ENV = "MEDLEDGER_TOKEN"  # noqa: S105 -- the variable's name, not a token

_KINDS = {
    "accounting": pb.REPORT_KIND_ACCOUNTING_OF_DISCLOSURES,
    "principal": pb.REPORT_KIND_ACCESS_BY_PRINCIPAL,
    "break-glass": pb.REPORT_KIND_BREAK_GLASS_REVIEW,
    "denied": pb.REPORT_KIND_DENIED_ACCESSES,
}
_FORMATS = {"csv": pb.REPORT_FORMAT_CSV, "json": pb.REPORT_FORMAT_JSON, "pdf": pb.REPORT_FORMAT_PDF}


def _cmd_verify(args: argparse.Namespace) -> int:
    try:
        if args.genesis is not None:
            trusted, chain_id = trusted_validators_from_genesis(args.genesis)
        else:
            trusted, chain_id = trusted_validators_from_file(args.validators), args.chain_id
        try:
            report = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportVerificationError(
                "REPORT_MALFORMED", f"cannot read {args.file}: {exc}"
            ) from exc
        result = verify_report(report, trusted, chain_id)
    except ReportVerificationError as exc:
        print(f"medledger: verification FAILED: {exc.reason}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.reason == "BAD_TRUST_ROOT" else EXIT_INVALID
    print(
        f"OK: {result.entry_count} entries of {result.kind} verified against checkpoint "
        f"{result.tree_size} of {result.log_id}, anchored in block {result.block_height} "
        f"({result.block_hash[:16]}…) finalized by the trusted validators"
    )
    return EXIT_OK


def _token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise SystemExit(f"medledger: error: give --token or set {TOKEN_ENV}")
    return str(token)


def _timestamp(text: str | None) -> timestamp_pb2.Timestamp | None:
    if not text:
        return None
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def _export(args: argparse.Namespace) -> int:
    request = pb.ExportReportRequest(
        kind=_KINDS[args.kind],
        format=_FORMATS[args.format],
        patient_pseudonym=args.patient or "",
        principal=args.principal or "",
        organisation=args.organisation or "",
    )
    start, end = _timestamp(args.start), _timestamp(args.end)
    if start is not None:
        request.start_time.CopyFrom(start)
    if end is not None:
        request.end_time.CopyFrom(end)
    digest = hashlib.sha256()
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    async with create_channel(args.target, token=_token(args)) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        trailer: pb.ReportTrailer | None = None
        with partial.open("wb") as sink:
            async for part in stub.ExportReport(request):
                which = part.WhichOneof("part")
                if which == "chunk":
                    sink.write(part.chunk)
                    digest.update(part.chunk)
                elif which == "trailer":
                    trailer = part.trailer
                progress = part.progress
                if progress.entries_total:
                    share = 100 * progress.entries_processed // progress.entries_total
                    print(
                        f"\rexporting: {share:3d}% of {progress.entries_total} log entries, "
                        f"{progress.entries_matched} in report",
                        end="",
                        file=sys.stderr,
                    )
        print(file=sys.stderr)
    if trailer is None or trailer.content_sha256 != digest.digest():
        partial.unlink(missing_ok=True)
        print("medledger: error: export incomplete or corrupted in transit", file=sys.stderr)
        return EXIT_INVALID
    partial.replace(out)
    print(f"wrote {out} ({trailer.size_bytes} bytes, {trailer.entry_count} entries)")
    return EXIT_OK


async def _query(args: argparse.Namespace) -> int:
    request = pb.QueryEventsRequest(
        page_size=args.page_size,
        patient_pseudonym=args.patient or "",
        principal=args.principal or "",
        organisation=args.organisation or "",
        record=args.record or "",
    )
    if args.decision:
        request.decision = access_pb2.Decision.Value(f"DECISION_{args.decision.upper()}")
    if args.action:
        request.action = access_pb2.AccessAction.Value(f"ACCESS_ACTION_{args.action.upper()}")
    if args.purpose:
        request.purpose = access_pb2.PurposeOfUse.Value(f"PURPOSE_OF_USE_{args.purpose.upper()}")
    start, end = _timestamp(args.start), _timestamp(args.end)
    if start is not None:
        request.start_time.CopyFrom(start)
    if end is not None:
        request.end_time.CopyFrom(end)
    async with create_channel(args.target, token=_token(args)) as channel:
        stub = pb_grpc.AuditServiceStub(channel)
        shown = 0
        while True:
            response = await stub.QueryEvents(request)
            for entry in response.entries:
                line: dict[str, Any] = {
                    "leaf_index": entry.leaf_index,
                    "event": json_format.MessageToDict(
                        entry.event, preserving_proto_field_name=True
                    ),
                }
                print(json.dumps(line))
                shown += 1
            if not response.next_page_token or (args.limit and shown >= args.limit):
                return EXIT_OK
            request.page_token = response.next_page_token


def _run(coroutine: Any) -> int:
    try:
        return int(asyncio.run(coroutine))
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        print(f"medledger: error: {error.message} ({error.reason})", file=sys.stderr)
        return EXIT_INVALID


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="verify, export and query the audit log")
    commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    verify = commands.add_parser(
        "verify",
        help="check a JSON report offline",
        description="Check every entry, proof, the checkpoint signature, its ledger anchor, the "
        "block header and the finality certificate. Exit 0 when valid, 1 naming the first "
        "failure, 2 when the trust root cannot be read.",
    )
    verify.add_argument("file", type=Path, help="the JSON report")
    trust = verify.add_mutually_exclusive_group(required=True)
    trust.add_argument("--genesis", type=Path, help="the consortium's genesis.json")
    trust.add_argument("--validators", type=Path, help="a trusted ValidatorSet (protobuf JSON)")
    verify.add_argument("--chain-id", help="expected chain id (with --validators)")
    verify.set_defaults(func=_cmd_verify)

    def client_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target", default="127.0.0.1:50055", help="audit service host:port")
        parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
        parser.add_argument("--patient", help="patient pseudonym")
        parser.add_argument("--principal", help="organisations/{org}/principals/{principal}")
        parser.add_argument("--organisation", help="organisations/{org}")
        parser.add_argument("--start", help="ISO 8601 start (inclusive)")
        parser.add_argument("--end", help="ISO 8601 end (exclusive)")

    export = commands.add_parser("export", help="export a compliance report to a file")
    export.add_argument("--kind", choices=sorted(_KINDS), required=True)
    export.add_argument("--format", choices=sorted(_FORMATS), default="json")
    export.add_argument("--out", type=Path, required=True)
    client_options(export)
    export.set_defaults(func=lambda args: _run(_export(args)))

    query = commands.add_parser("query", help="print matching log entries as JSON lines")
    client_options(query)
    query.add_argument("--record")
    query.add_argument("--action", help="e.g. read, disclose")
    query.add_argument("--decision", choices=["permit", "deny"])
    query.add_argument("--purpose", help="HL7 PurposeOfUse code, e.g. TREAT")
    query.add_argument("--page-size", type=int, default=200)
    query.add_argument("--limit", type=int, default=0, help="stop after this many (0: all)")
    query.set_defaults(func=lambda args: _run(_query(args)))
