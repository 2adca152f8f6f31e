"""``medledger identity …``: bootstrap an organisation (its first administrator and the identity
service's key), register principals, rotate and revoke keys, and get a token for scripting.

Registry changes are signed locally with the key file given and submitted to the ledger over
NATS; ``token`` talks to an identity service over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from medledger._gen.common.v1 import actor_pb2, identity_change_pb2
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger._gen.identity.v1 import identity_service_pb2_grpc as pb_grpc
from medledger.core.errors import InvalidArgument, from_rpc_error
from medledger.core.grpc_channel import create_channel
from medledger.core.nats_bus import NatsBus
from medledger.crypto import SigningContext, SigningKey, VerifyKey
from medledger.crypto.keys import load_signing_key, save_signing_key
from medledger.identity.errors import ChangeNotCommitted
from medledger.identity.registry import REGISTRAR_ROLE, TOKEN_ISSUER_ROLE
from medledger.ledgerclient import LedgerClient, LedgerClientError, sign_transaction

ADMINISTRATOR_ROLE = "administrator"


def public_key(key: VerifyKey) -> identity_change_pb2.PublicKey:
    return identity_change_pb2.PublicKey(
        key_id=key.key_id,
        algorithm=identity_change_pb2.KEY_ALGORITHM_ED25519,
        public_key=key.raw,
    )


def change_transaction(
    chain_id: str, signer: str, key: SigningKey, change: identity_change_pb2.IdentityChange
) -> bytes:
    """A signed ledger transaction carrying ``change``."""
    body = tx_pb.TransactionBody(
        chain_id=chain_id,
        type=tx_pb.TRANSACTION_TYPE_IDENTITY_CHANGE,
        nonce=secrets.randbits(63),
        created_at_unix_ms=int(time.time() * 1000),
        signer=signer,
        identity_change=change,
    )
    return sign_transaction(body, key)


async def submit_changes(
    ledger: LedgerClient,
    signer: str,
    key: SigningKey,
    changes: Sequence[identity_change_pb2.IdentityChange],
    timeout: float = 30.0,  # noqa: ASYNC109 -- a ledger deadline
) -> list[str]:
    """Submit each change in order, each final before the next; their transaction ids."""
    tx_ids = []
    for change in changes:
        try:
            receipt = await ledger.submit_and_wait(
                change_transaction(ledger.chain_id, signer, key, change), timeout
            )
        except LedgerClientError as exc:
            raise ChangeNotCommitted(
                "CHANGE_NOT_COMMITTED", f"the ledger did not commit the change: {exc.reason}"
            ) from exc
        tx_ids.append(receipt.tx_id)
    return tx_ids


def register_principal_change(
    principal: str,
    kind: int,
    roles: Sequence[str],
    keys: Sequence[VerifyKey],
    patient_pseudonym: str = "",
) -> identity_change_pb2.IdentityChange:
    return identity_change_pb2.IdentityChange(
        register_principal=identity_change_pb2.RegisterPrincipal(
            principal=principal,
            kind=kind,  # type: ignore[arg-type]
            roles=list(roles),
            keys=[public_key(k) for k in keys],
            patient_pseudonym=patient_pseudonym,
        )
    )


async def bootstrap_organisation(
    ledger: LedgerClient,
    *,
    organisation_id: str,
    display_name: str,
    validator_key: SigningKey,
    admin_key: VerifyKey,
    service_key: VerifyKey,
    admin_id: str = "admin",
    service_id: str = "identity",
) -> list[str]:
    """Register the organisation, its first administrator and its identity service principal,
    all signed by the organisation's validator key (the genesis names it)."""
    organisation = f"organisations/{organisation_id}"
    changes = [
        identity_change_pb2.IdentityChange(
            register_organisation=identity_change_pb2.RegisterOrganisation(
                organisation=organisation,
                display_name=display_name,
                keys=[public_key(validator_key.public_key)],
            )
        ),
        register_principal_change(
            f"{organisation}/principals/{admin_id}",
            actor_pb2.PRINCIPAL_KIND_ADMINISTRATOR,
            [ADMINISTRATOR_ROLE],
            [admin_key],
        ),
        register_principal_change(
            f"{organisation}/principals/{service_id}",
            actor_pb2.PRINCIPAL_KIND_SERVICE,
            [REGISTRAR_ROLE, TOKEN_ISSUER_ROLE],
            [service_key],
        ),
    ]
    # The validator is not a principal; the transaction names it by its organisation.
    return await submit_changes(ledger, organisation, validator_key, changes)


async def obtain_token(
    channel: grpc.aio.Channel, principal: str, key: SigningKey, lifetime_seconds: int = 0
) -> pb.IssueTokenResponse:
    """Log in: sign a fresh challenge with ``key`` and exchange it for an access token."""
    stub = pb_grpc.IdentityServiceStub(channel)
    try:
        challenge = await stub.CreateTokenChallenge(
            pb.CreateTokenChallengeRequest(principal=principal, key_id=key.public_key.key_id)
        )
        request = pb.IssueTokenRequest(
            challenge_id=challenge.challenge_id,
            principal=principal,
            key_id=key.public_key.key_id,
            signature=key.sign(SigningContext.TOKEN_CHALLENGE, challenge.challenge),
        )
        if lifetime_seconds:
            request.requested_lifetime.FromSeconds(lifetime_seconds)
        response: pb.IssueTokenResponse = await stub.IssueToken(request)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    return response


# --- argparse ------------------------------------------------------------------------------

_KINDS = {
    name.removeprefix("PRINCIPAL_KIND_").lower(): value
    for name, value in actor_pb2.PrincipalKind.items()
    if value
}
_KEY_REASONS = {
    name.removeprefix("KEY_REVOCATION_REASON_").lower(): value
    for name, value in identity_change_pb2.KeyRevocationReason.items()
    if value
}
_PRINCIPAL_REASONS = {
    name.removeprefix("PRINCIPAL_REVOCATION_REASON_").lower(): value
    for name, value in identity_change_pb2.PrincipalRevocationReason.items()
    if value
}


def _key_or_new(path: Path) -> SigningKey:
    if path.exists():
        return load_signing_key(path)
    key = SigningKey.generate()
    save_signing_key(path, key)
    return key


async def _with_ledger(args: argparse.Namespace) -> tuple[NatsBus, LedgerClient]:
    bus = await NatsBus.connect(args.nats_url, name="medledger-identity-cli")
    return bus, LedgerClient(bus, args.chain_id)


def _run_changes(
    args: argparse.Namespace, changes: list[identity_change_pb2.IdentityChange]
) -> int:
    key = load_signing_key(args.signer_key)

    async def run() -> list[str]:
        bus, ledger = await _with_ledger(args)
        try:
            return await submit_changes(ledger, args.signer, key, changes)
        finally:
            await bus.close()

    for tx_id in asyncio.run(run()):
        print(tx_id)
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise InvalidArgument("KEY_FILE_EXISTS", f"{args.out} exists; refusing to overwrite it")
    key = SigningKey.generate()
    save_signing_key(args.out, key)
    print(key.public_key.key_id)
    return 0


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    validator_key = load_signing_key(args.validator_key)
    admin_key = _key_or_new(args.admin_key)
    service_key = _key_or_new(args.service_key)

    async def run() -> list[str]:
        bus, ledger = await _with_ledger(args)
        try:
            return await bootstrap_organisation(
                ledger,
                organisation_id=args.org,
                display_name=args.display_name,
                validator_key=validator_key,
                admin_key=admin_key.public_key,
                service_key=service_key.public_key,
                admin_id=args.admin_id,
                service_id=args.service_id,
            )
        finally:
            await bus.close()

    for tx_id in asyncio.run(run()):
        print(tx_id)
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    key = _key_or_new(args.key)
    change = register_principal_change(
        args.principal, _KINDS[args.kind], args.role, [key.public_key], args.patient_pseudonym
    )
    return _run_changes(args, [change])


def _cmd_rotate(args: argparse.Namespace) -> int:
    new_key = _key_or_new(args.new_key)
    change = identity_change_pb2.IdentityChange(
        rotate_key=identity_change_pb2.RotateKey(
            principal=args.principal,
            old_key_id=args.old_key_id,
            new_key=public_key(new_key.public_key),
            grace_period_ms=int(args.grace_seconds * 1000),
        )
    )
    return _run_changes(args, [change])


def _cmd_revoke(args: argparse.Namespace) -> int:
    if args.key_id:
        change = identity_change_pb2.IdentityChange(
            revoke_key=identity_change_pb2.RevokeKey(
                principal=args.principal,
                key_id=args.key_id,
                reason=_KEY_REASONS[args.reason],
            )
        )
    else:
        change = identity_change_pb2.IdentityChange(
            revoke_principal=identity_change_pb2.RevokePrincipal(
                principal=args.principal,
                reason=_PRINCIPAL_REASONS[args.reason],
            )
        )
    return _run_changes(args, [change])


def _cmd_token(args: argparse.Namespace) -> int:
    key = load_signing_key(args.key)

    async def run() -> pb.IssueTokenResponse:
        async with create_channel(args.target) as channel:
            return await obtain_token(channel, args.principal, key, args.lifetime)

    response = asyncio.run(run())
    # The token goes to stdout only, for `TOKEN=$(medledger identity token …)`.
    sys.stdout.write(response.access_token + "\n")
    return 0


def _ledger_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--chain-id", required=True)


def _signer_options(parser: argparse.ArgumentParser) -> None:
    _ledger_options(parser)
    parser.add_argument("--signer", required=True, help="resource name of the administrator")
    parser.add_argument("--signer-key", type=Path, required=True, help="its private key file")


def register(subparsers: Any) -> None:
    identity = subparsers.add_parser("identity", help="identity registry and tokens")
    commands = identity.add_subparsers(dest="identity_command", metavar="COMMAND", required=True)

    keygen = commands.add_parser("keygen", help="create an Ed25519 key file (mode 0600)")
    keygen.add_argument("--out", type=Path, required=True)
    keygen.set_defaults(func=_cmd_keygen)

    bootstrap = commands.add_parser(
        "bootstrap",
        help="register this organisation, its first administrator and identity service key",
    )
    _ledger_options(bootstrap)
    bootstrap.add_argument("--org", required=True, help="organisation id (as in the genesis)")
    bootstrap.add_argument("--display-name", required=True)
    bootstrap.add_argument("--validator-key", type=Path, required=True)
    bootstrap.add_argument("--admin-key", type=Path, required=True, help="created if absent")
    bootstrap.add_argument("--service-key", type=Path, required=True, help="created if absent")
    bootstrap.add_argument("--admin-id", default="admin")
    bootstrap.add_argument("--service-id", default="identity")
    bootstrap.set_defaults(func=_cmd_bootstrap)

    reg = commands.add_parser("register", help="register a principal")
    _signer_options(reg)
    reg.add_argument("--principal", required=True, help="organisations/{org}/principals/{id}")
    reg.add_argument("--kind", required=True, choices=sorted(_KINDS))
    reg.add_argument("--role", action="append", default=[])
    reg.add_argument("--key", type=Path, required=True, help="its key file; created if absent")
    reg.add_argument("--patient-pseudonym", default="")
    reg.set_defaults(func=_cmd_register)

    rotate = commands.add_parser("rotate", help="replace a principal's key")
    _signer_options(rotate)
    rotate.add_argument("--principal", required=True)
    rotate.add_argument("--old-key-id", required=True)
    rotate.add_argument("--new-key", type=Path, required=True, help="created if absent")
    rotate.add_argument("--grace-seconds", type=float, default=0.0)
    rotate.set_defaults(func=_cmd_rotate)

    revoke = commands.add_parser("revoke", help="revoke a key (--key-id) or a whole principal")
    _signer_options(revoke)
    revoke.add_argument("--principal", required=True)
    revoke.add_argument("--key-id", default="")
    revoke.add_argument(
        "--reason", required=True, choices=sorted({*_KEY_REASONS, *_PRINCIPAL_REASONS})
    )
    revoke.set_defaults(func=_cmd_revoke)

    token = commands.add_parser("token", help="log in and print an access token")
    token.add_argument("--target", default="127.0.0.1:50051", help="identity service host:port")
    token.add_argument("--principal", required=True)
    token.add_argument("--key", type=Path, required=True)
    token.add_argument("--lifetime", type=int, default=0, help="seconds; server-capped")
    token.set_defaults(func=_cmd_token)
