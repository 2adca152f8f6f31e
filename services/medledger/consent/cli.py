"""``medledger consent ...``: offline FHIR checks and access questions to a running service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medledger._gen.common.v1 import consent_terms_pb2 as ct


def register(subparsers: Any) -> None:
    consent = subparsers.add_parser("consent", help="patient consent and access decisions")
    commands = consent.add_subparsers(dest="consent_command", metavar="COMMAND")

    fhir = commands.add_parser(
        "fhir-check",
        help="translate a FHIR R4 Consent offline and report what it leaves open",
    )
    fhir.add_argument("file", type=Path)
    fhir.add_argument("--grantor", default="organisations/local/principals/consent")
    fhir.add_argument("--root-type", choices=("permit", "deny"))
    fhir.add_argument("--grantee", help="resource name of the grantee, or organisations/-")
    fhir.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="FHIR=NAME",
        help="map a FHIR reference to a medledger name (repeatable)",
    )
    fhir.set_defaults(func=_fhir_check)

    check = commands.add_parser("check", help="ask a running consent service (gRPC)")
    check.add_argument("--address", default="127.0.0.1:50052")
    check.add_argument("--token-file", type=Path, required=True)
    check.add_argument("--patient", required=True)
    check.add_argument("--category", default="LABORATORY")
    check.add_argument("--action", default="READ")
    check.add_argument("--purpose", default="TREAT")
    check.set_defaults(func=_check)


def _fhir_check(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from medledger.consent.fhir import Reading, import_fhir_consent

    types = {"permit": ct.PROVISION_TYPE_PERMIT, "deny": ct.PROVISION_TYPE_DENY}
    references = dict(item.split("=", 1) for item in args.reference)
    reading = Reading(
        root_type=types.get(args.root_type) if args.root_type else None, grantee=args.grantee
    )
    imported = import_fhir_consent(
        args.file.read_text(encoding="utf-8"),
        grantor=args.grantor,
        references=references,
        reading=reading,
    )
    print(json_format.MessageToJson(imported.terms))
    for note in imported.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    import grpc

    from medledger._gen.common.v1 import access_pb2 as acc
    from medledger._gen.consent.v1 import consent_service_pb2 as pb
    from medledger._gen.consent.v1 import consent_service_pb2_grpc as pb_grpc

    token = args.token_file.read_text(encoding="utf-8").strip()
    request = pb.CheckAccessRequest(
        patient_pseudonym=args.patient,
        data_class=acc.DataClass(
            category=acc.RecordCategory.Value(f"RECORD_CATEGORY_{args.category}")
        ),
        action=acc.AccessAction.Value(f"ACCESS_ACTION_{args.action}"),
        purpose=acc.PurposeOfUse.Value(f"PURPOSE_OF_USE_{args.purpose}"),
    )
    with grpc.insecure_channel(args.address) as channel:
        reply = pb_grpc.ConsentServiceStub(channel).CheckAccess(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )
    decision = acc.Decision.Name(reply.decision).removeprefix("DECISION_")
    basis = reply.WhichOneof("basis") or ""
    print(f"{decision} {reply.reason} {basis} height={reply.ledger_height}")
    return 0 if reply.decision == acc.DECISION_PERMIT else 3
