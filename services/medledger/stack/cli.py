"""The `medledger up` and `medledger demo` commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from medledger.stack.topology import (
    DEFAULT_BASE_PORT,
    DEFAULT_DATA_DIR,
    DEFAULT_NATS_MONITORING_PORT,
    DEFAULT_NATS_PORT,
    RecordsBackend,
    StackOptions,
)

S3_ENDPOINT_VARIABLE = "MEDLEDGER_S3_ENDPOINT"


def register(subparsers: Any) -> None:
    up = subparsers.add_parser(
        "up",
        help="run the whole system locally until Ctrl-C",
        description=(
            "Start an embedded NATS server, a consortium of four organisations' validators "
            "and the identity, consent, records and audit services of two hospitals, each "
            "its own process; wait until all are healthy, stream their logs, stop them all "
            "on Ctrl-C. Data (genesis, keys, blocks, records) stays in --data-dir for the "
            "next run."
        ),
    )
    _location_options(up)
    up.add_argument("--reset", action="store_true", help="wipe the data directory first")
    up.add_argument(
        "--nats-monitoring-port", type=int, default=DEFAULT_NATS_MONITORING_PORT, metavar="PORT"
    )
    up.add_argument(
        "--records-backend",
        choices=("dir", "s3"),
        default=None,
        help="where records keep encrypted blobs: a local directory (default) or S3/MinIO "
        "(default when an endpoint is given)",
    )
    up.add_argument(
        "--s3-endpoint",
        default=os.environ.get(S3_ENDPOINT_VARIABLE),
        metavar="URL",
        help=f"S3/MinIO endpoint, e.g. http://127.0.0.1:9000 (or ${S3_ENDPOINT_VARIABLE}); "
        "credentials from $MEDLEDGER_S3_ACCESS_KEY and $MEDLEDGER_S3_SECRET_KEY",
    )
    up.add_argument("--s3-bucket", default="medledger-records")
    up.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    up.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long each group of processes may take to become healthy",
    )
    up.set_defaults(func=run_up)

    demo = subparsers.add_parser(
        "demo",
        help="narrate the consent and audit story against a stack `medledger up` started",
    )
    _location_options(demo)
    demo.add_argument(
        "--out-dir", type=Path, default=None, help="where to write the exported reports"
    )
    demo.set_defaults(func=run_demo)


def _location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default: ./.medledger"
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        metavar="PORT",
        help=f"gRPC ports are PORT+1… (hospital A identity); default {DEFAULT_BASE_PORT}",
    )
    parser.add_argument("--nats-port", type=int, default=DEFAULT_NATS_PORT, metavar="PORT")


def stack_options(args: argparse.Namespace) -> StackOptions:
    endpoint = getattr(args, "s3_endpoint", None) or None
    backend: RecordsBackend = getattr(args, "records_backend", None) or (
        "s3" if endpoint else "dir"
    )
    if backend == "s3" and not endpoint:
        from medledger.stack.errors import StackError

        raise StackError(
            "BAD_OPTIONS", f"--records-backend s3 needs --s3-endpoint (or ${S3_ENDPOINT_VARIABLE})"
        )
    return StackOptions(
        data_dir=args.data_dir,
        base_port=args.base_port,
        nats_port=args.nats_port,
        nats_monitoring_port=getattr(args, "nats_monitoring_port", DEFAULT_NATS_MONITORING_PORT),
        records_backend=backend,
        s3_endpoint=endpoint,
        s3_bucket=getattr(args, "s3_bucket", "medledger-records"),
        log_level=getattr(args, "log_level", "INFO"),
        start_timeout=getattr(args, "start_timeout", 60.0),
    )


def run_up(args: argparse.Namespace) -> int:
    from medledger.stack.catalog import discover_services
    from medledger.stack.supervisor import run_until_signalled
    from medledger.stack.topology import APP_SERVICES, Topology

    options = stack_options(args)
    catalog = discover_services(APP_SERVICES)
    topology = Topology(options, catalog.available)
    return run_until_signalled(topology, missing_services=catalog.missing, reset=args.reset)


def run_demo(args: argparse.Namespace) -> int:
    from medledger.stack.demo import run_demo_command

    return run_demo_command(stack_options(args), args.out_dir)
