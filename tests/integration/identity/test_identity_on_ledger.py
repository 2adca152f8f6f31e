"""Identity against a real 4-validator ledger over NATS: bootstrap, tokens, registry changes
through the API, revocation seen by another service's authenticator, federation across two
organisations, audit events, and rebuilding the view by replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from medledger._gen.common.v1 import access_pb2, actor_pb2, audit_event_pb2, identity_change_pb2
from medledger._gen.common.v1 import ledger_commit_pb2 as commit_pb
from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger._gen.identity.v1 import identity_service_pb2_grpc as pb_grpc
from medledger.core.errors import MedledgerError, rpc_error_details
from medledger.core.grpc_channel import create_channel
from medledger.core.grpc_server import GrpcServer
from medledger.core.jwt_auth import JwtAuthenticator, NatsIdentityDirectory
from medledger.core.nats_bus import NatsBus
from medledger.core.service import serve
from medledger.core.tokens import TokenIssuer
from medledger.crypto import SigningContext, SigningKey
from medledger.crypto.keys import save_signing_key
from medledger.identity.audit import LoggingAuditSink
from medledger.identity.cli import (
    bootstrap_organisation,
    obtain_token,
    register_principal_change,
    submit_changes,
)
from medledger.identity.main import Settings, build
from medledger.identity.service import IdentityConfig, IdentityService
from medledger.identity.store import IdentityStore
from medledger.testing.ledger import LocalLedger

pytestmark = pytest.mark.integration


@dataclass
class RunningIdentity:
    org: str
    admin_key: SigningKey
    port: int
    task: asyncio.Task[int]
    shutdown: asyncio.Event

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"organisations/{self.org}/principals/admin"


async def _start_identity(
    ledger: LocalLedger, bus: NatsBus, index: int, tmp: Path
) -> RunningIdentity:
    org = ledger.organisations[index]
    admin_key, service_key = SigningKey.generate(), SigningKey.generate()
    await bootstrap_organisation(
        ledger.client(bus),
        organisation_id=org,
        display_name=f"Hospital {org}",
        validator_key=ledger.validator_key(index),
        admin_key=admin_key.public_key,
        service_key=service_key.public_key,
    )
    key_file = tmp / f"{org}-identity.key"
    save_signing_key(key_file, service_key)
    settings = Settings(
        org_id=org,
        chain_id=ledger.chain_id,
        service_key_file=key_file,
        data_dir=tmp / org,
        nats_url=ledger.nats_url,
        grpc_port=0,
        metrics_port=0,
        shutdown_grace_seconds=1,
    )
    app = build(settings)
    shutdown = asyncio.Event()
    started: asyncio.Future[GrpcServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, shutdown=shutdown, started=started.set_result))
    server = await asyncio.wait_for(started, 20)
    return RunningIdentity(org, admin_key, server.port, task, shutdown)


@pytest.fixture
async def audit_stream(nats_bus: NatsBus) -> NatsBus:
    await nats_bus.ensure_stream("AUDIT_IDENTITY_TEST", ["medledger.audit.*.events"])
    return nats_bus


@pytest.fixture
async def two_orgs(
    ledger_network: LocalLedger, audit_stream: NatsBus, tmp_path: Path
) -> AsyncIterator[tuple[RunningIdentity, RunningIdentity]]:
    a = await _start_identity(ledger_network, audit_stream, 0, tmp_path)
    b = await _start_identity(ledger_network, audit_stream, 1, tmp_path)
    yield a, b
    for running in (a, b):
        running.shutdown.set()
        await asyncio.wait_for(running.task, 20)


def _key_pb(key: SigningKey) -> pb.PrincipalKey:
    return pb.PrincipalKey(
        key_id=key.public_key.key_id,
        algorithm=identity_change_pb2.KEY_ALGORITHM_ED25519,
        public_key=key.public_key.raw,
    )


async def _rejection(coro: object) -> str:
    try:
        await coro  # type: ignore[misc]
    except MedledgerError as exc:
        return exc.reason
    raise AssertionError("expected a rejection")


async def test_identity_end_to_end(
    ledger_network: LocalLedger,
    two_orgs: tuple[RunningIdentity, RunningIdentity],
    audit_stream: NatsBus,
    tmp_path: Path,
) -> None:
    a, b = two_orgs
    async with create_channel(a.target) as anonymous:
        admin_token = (await obtain_token(anonymous, a.admin, a.admin_key)).access_token

    # An administrator registers a physician through the API; the change is final on return.
    physician_key = SigningKey.generate()
    physician = f"organisations/{a.org}/principals/dr-1"
    async with create_channel(a.target, token=admin_token) as admin:
        stub = pb_grpc.IdentityServiceStub(admin)
        created = await stub.CreatePrincipal(
            pb.CreatePrincipalRequest(
                parent=f"organisations/{a.org}",
                principal_id="dr-1",
                principal=pb.Principal(
                    kind=actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
                    roles=["physician"],
                    keys=[_key_pb(physician_key)],
                ),
                request_id="4b0e3a52-2f54-4d3e-9e0b-3c1c1f3f0a01",
            ),
            timeout=30,
        )
        assert created.state == pb.PRINCIPAL_STATE_ACTIVE
        assert created.ledger_commit.state == commit_pb.COMMIT_STATE_FINAL
        # The same request id returns the first result instead of registering twice.
        again = await stub.CreatePrincipal(
            pb.CreatePrincipalRequest(
                parent=f"organisations/{a.org}",
                principal_id="dr-1",
                principal=created,
                request_id="4b0e3a52-2f54-4d3e-9e0b-3c1c1f3f0a01",
            ),
            timeout=30,
        )
        assert again.ledger_commit.tx_id == created.ledger_commit.tx_id
        listed = await stub.ListPrincipals(
            pb.ListPrincipalsRequest(parent="organisations/-", role="physician")
        )
        assert [p.name for p in listed.principals] == [physician]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.CreatePrincipal(
                pb.CreatePrincipalRequest(
                    parent=f"organisations/{b.org}",
                    principal=pb.Principal(
                        kind=actor_pb2.PRINCIPAL_KIND_PRACTITIONER,
                        keys=[_key_pb(SigningKey.generate())],
                    ),
                )
            )
        assert rpc_error_details(raised.value).reason == "WRONG_ORGANISATION"

    # Another service (no identity code of its own) authenticates the physician's token.
    consumer_bus = await NatsBus.connect(ledger_network.nats_url, name="other-service")
    directory = NatsIdentityDirectory(consumer_bus, ttl_seconds=30)
    await directory.start()
    authenticator = JwtAuthenticator(directory)
    try:
        async with create_channel(a.target) as anonymous:
            issued = await obtain_token(anonymous, physician, physician_key)
            caller = await authenticator.authenticate(
                "/x/Y", [("authorization", f"Bearer {issued.access_token}")]
            )
            assert caller.principal_id == physician
            assert caller.roles == frozenset({"physician"})
            assert caller.token_id == issued.token_id

            # A challenge is single-use.
            stub = pb_grpc.IdentityServiceStub(anonymous)
            challenge = await stub.CreateTokenChallenge(
                pb.CreateTokenChallengeRequest(
                    principal=physician, key_id=physician_key.public_key.key_id
                )
            )
            request = pb.IssueTokenRequest(
                challenge_id=challenge.challenge_id,
                principal=physician,
                key_id=physician_key.public_key.key_id,
                signature=physician_key.sign(SigningContext.TOKEN_CHALLENGE, challenge.challenge),
            )
            await stub.IssueToken(request)
            with pytest.raises(grpc.aio.AioRpcError) as replay:
                await stub.IssueToken(request)
            details = rpc_error_details(replay.value)
            assert details.code is grpc.StatusCode.UNAUTHENTICATED
            assert details.reason == "CHALLENGE_UNKNOWN_OR_USED"

        # Federation: org b's principal, registered by org b's admin, verifies here too.
        nurse_key = SigningKey.generate()
        nurse = f"organisations/{b.org}/principals/rn-7"
        await submit_changes(
            ledger_network.client(consumer_bus),
            b.admin,
            b.admin_key,
            [
                register_principal_change(
                    nurse, actor_pb2.PRINCIPAL_KIND_PRACTITIONER, ["nurse"], [nurse_key.public_key]
                )
            ],
        )
        await asyncio.sleep(0.5)  # let both views apply the block
        async with create_channel(b.target) as anonymous_b:
            nurse_token = (await obtain_token(anonymous_b, nurse, nurse_key)).access_token
        nurse_caller = await authenticator.authenticate(
            "/x/Y", [("authorization", f"Bearer {nurse_token}")]
        )
        assert nurse_caller.org_id == b.org

        # Revoking the physician's key takes effect for the other service at once.
        async with create_channel(a.target, token=admin_token) as admin:
            revoked = await pb_grpc.IdentityServiceStub(admin).RevokePrincipalKey(
                pb.RevokePrincipalKeyRequest(
                    name=physician,
                    key_id=physician_key.public_key.key_id,
                    reason=identity_change_pb2.KEY_REVOCATION_REASON_COMPROMISED,
                ),
                timeout=30,
            )
        assert revoked.keys[0].state == pb.KEY_STATE_REVOKED
        await asyncio.sleep(0.3)  # the change announcement travels over NATS
        reason = await _rejection(
            authenticator.authenticate("/x/Y", [("authorization", f"Bearer {issued.access_token}")])
        )
        assert reason == "PRINCIPAL_KEY_REVOKED"
        async with create_channel(a.target) as anonymous:
            assert (
                await _rejection(obtain_token(anonymous, physician, physician_key)) == "KEY_REVOKED"
            )
    finally:
        await directory.stop()
        await consumer_bus.close()

    # Audit: token issuance and the registry changes of org a were published.
    events = await _audit_events(audit_stream, a.org)
    kinds = {(e.action, e.decision, e.decision_reason) for e in events}
    assert (
        access_pb2.ACCESS_ACTION_AUTHENTICATE,
        access_pb2.DECISION_PERMIT,
        "TOKEN_ISSUED",
    ) in kinds
    assert (access_pb2.ACCESS_ACTION_AUTHENTICATE, access_pb2.DECISION_DENY, "KEY_REVOKED") in kinds
    assert (
        access_pb2.ACCESS_ACTION_CREATE,
        access_pb2.DECISION_PERMIT,
        "IDENTITY_REGISTER_PRINCIPAL",
    ) in kinds
    assert (
        access_pb2.ACCESS_ACTION_DELETE,
        access_pb2.DECISION_PERMIT,
        "IDENTITY_REVOKE_KEY",
    ) in kinds

    # A fresh view built by replaying the chain reaches the same registry.
    rebuilt = IdentityStore(f"sqlite:///{tmp_path / 'rebuilt.sqlite3'}")
    replica = IdentityService(
        IdentityConfig(a.org, ledger_network.chain_id, f"organisations/{a.org}/principals/x"),
        rebuilt,
        ledger_network.client(audit_stream),
        SigningKey.generate(),
        TokenIssuer(f"organisations/{a.org}", SigningKey.generate()),
        LoggingAuditSink(),
    )
    follower = asyncio.create_task(replica.follow())
    try:
        for _ in range(100):
            found = rebuilt.principal(physician)
            if found is not None and found.keys[0].state == pb.KEY_STATE_REVOKED:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("replay did not reach the revocation")
        assert rebuilt.principal(nurse) is not None
        assert {o.name for o in rebuilt.list_organisations("", 10)} == {
            f"organisations/{a.org}",
            f"organisations/{b.org}",
        }
    finally:
        follower.cancel()
        rebuilt.close()


async def _audit_events(bus: NatsBus, org: str) -> list[audit_event_pb2.AuditEvent]:
    durable = f"identity-test-{org}"
    await bus.ensure_durable_consumer(
        "AUDIT_IDENTITY_TEST", durable, filter_subject=f"medledger.audit.{org}.events"
    )
    events: list[audit_event_pb2.AuditEvent] = []
    while True:
        batch = await bus.fetch(
            "AUDIT_IDENTITY_TEST", durable, audit_event_pb2.AuditEvent, batch=100, timeout=1
        )
        if not batch:
            return events
        for delivery in batch:
            events.append(delivery.message)
            await delivery.ack.ack()
