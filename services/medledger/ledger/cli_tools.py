"""`medledger ledger genesis | get-block | get-receipt | verify-block`: create a
local consortium, fetch blocks and receipts over NATS, and verify them offline
with only the validators' public keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from medledger._gen.ledger.v1 import ledger_service_pb2 as pb
from medledger.ledger.consensus.genesis import genesis_block
from medledger.ledger.genesis import (
    GenesisError,
    consensus_genesis,
    create_consortium,
    load_genesis,
)
from medledger.ledger.reads import validator_set_pb
from medledger.ledgerclient import LightClientError, header_hash, verify_block, verify_receipt

EXIT_INVALID = 1
EXIT_USAGE = 2


def register(commands: Any) -> None:
    """Add the commands to the `ledger` group's subparsers."""
    genesis = commands.add_parser(
        "genesis",
        help="create validator keys and a genesis file for a local consortium",
        description="Writes DIR/genesis.json and DIR/<org>/validator.key (PEM, mode 0600).",
    )
    genesis.add_argument("--orgs", required=True, help="comma-separated organisation ids")
    genesis.add_argument("--chain-id", required=True)
    genesis.add_argument("--out", type=Path, required=True, help="output directory")
    genesis.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt the keys with the passphrase in environment variable VAR",
    )
    genesis.set_defaults(func=run_genesis)

    for name, what in (("get-block", "a final block"), ("get-receipt", "a transaction receipt")):
        fetch = commands.add_parser(name, help=f"fetch {what} as JSON over NATS")
        fetch.add_argument("key", help="block height" if name == "get-block" else "tx id (hex)")
        fetch.add_argument("--nats-url", default="nats://127.0.0.1:4222")
        fetch.add_argument("--chain-id", required=True)
        fetch.add_argument("--out", type=Path, help="write here instead of stdout")
        fetch.set_defaults(func=run_fetch, fetch=name)

    verify = commands.add_parser(
        "verify-block",
        help="verify blocks or receipts offline against a genesis",
        description=(
            "Each FILE is a Block or TransactionReceipt in JSON (as get-block and get-receipt"
            " write them). Checks every finality certificate against the genesis validators,"
            " the hash links between consecutive blocks, and receipts' inclusion proofs."
            " Exit 0 when all are valid, 1 naming the first failure."
        ),
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument("--genesis", type=Path, required=True)
    verify.set_defaults(func=run_verify)


def run_genesis(args: argparse.Namespace) -> int:
    orgs = [o.strip() for o in args.orgs.split(",") if o.strip()]
    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            print(f"error: environment variable {args.passphrase_env} is empty", file=sys.stderr)
            return EXIT_USAGE
        passphrase = value.encode()
    try:
        genesis = create_consortium(
            args.out, orgs, args.chain_id, int(time.time() * 1000), passphrase=passphrase
        )
    except (ValueError, GenesisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"wrote {args.out / 'genesis.json'}: chain {genesis.chain_id}, "
        f"{len(genesis.validators)} validators (tolerates f={genesis.fault_tolerance})"
    )
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from medledger.core.nats_bus import NatsBus
    from medledger.ledgerclient import LedgerClient, LedgerClientError

    async def fetch() -> str:
        bus = await NatsBus.connect(args.nats_url, name="medledger-cli")
        try:
            client = LedgerClient(bus, args.chain_id)
            message: Any
            if args.fetch == "get-block":
                message = await client.block(int(args.key))
            else:
                message = await client.receipt(args.key)
                if message is None:
                    raise LedgerClientError("TX_NOT_FINAL", f"{args.key} is not final yet")
            return json_format.MessageToJson(message, indent=2)
        finally:
            await bus.close()

    try:
        text = asyncio.run(fetch())
    except LedgerClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def _load(path: Path) -> pb.Block | pb.TransactionReceipt:
    raw = json.loads(path.read_text(encoding="utf-8"))
    message: pb.Block | pb.TransactionReceipt = (
        pb.TransactionReceipt() if "inclusionProof" in raw or "txId" in raw else pb.Block()
    )
    json_format.ParseDict(raw, message)
    return message


def run_verify(args: argparse.Namespace) -> int:
    try:
        genesis = load_genesis(args.genesis)
    except GenesisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    trusted = consensus_genesis(genesis)
    validators = validator_set_pb(trusted.validators)
    genesis_hash = genesis_block(trusted).hash
    previous: pb.Block | None = None
    for path in args.files:
        try:
            message = _load(path)
        except (OSError, ValueError, json_format.ParseError) as exc:
            print(f"INVALID {path}: cannot read: {exc}")
            return EXIT_INVALID
        try:
            if isinstance(message, pb.TransactionReceipt):
                verify_receipt(message, validators)
                what = f"transaction {message.tx_id} final at height {message.height}"
            elif message.header.height == 0:
                # The genesis block has no certificate: it is trusted by being the genesis.
                if header_hash(message.header) != genesis_hash:
                    raise LightClientError("NOT_THE_GENESIS", "block 0 is not this genesis")
                previous = message
                what = "genesis block matches the genesis file"
            else:
                verify_block(message, validators)
                if (
                    previous is not None
                    and message.header.height == previous.header.height + 1
                    and message.header.previous_hash != previous.hash
                ):
                    raise LightClientError("CHAIN_BROKEN", "previous_hash does not link")
                previous = message
                what = f"block {message.header.height} final"
        except LightClientError as exc:
            print(f"INVALID {path}: {exc.reason}: {exc.detail}")
            return EXIT_INVALID
        print(f"ok {path}: {what}")
    return 0
