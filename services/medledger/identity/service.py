"""The identity service's domain logic: the registry view kept from final blocks, registry
changes as signed ledger transactions, login challenges and access tokens, and JWKS."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar

from medledger._gen.common.v1 import (
    access_pb2,
    identity_change_pb2,
    ledger_commit_pb2,
)
from medledger._gen.common.v1 import actor_pb2 as actor_pb
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.core.auth import CallerIdentity
from medledger.core.errors import AlreadyExists, MedledgerError
from medledger.core.logging import get_logger
from medledger.core.tokens import TokenIssuer, jwk_of
from medledger.crypto import SignatureError, SigningContext, SigningKey, VerifyKey, sha256
from medledger.identity import audit
from medledger.identity.errors import (
    ChallengeRejected,
    LedgerUnavailable,
    OrganisationNotFound,
    PrincipalNotFound,
    TokenKeyNotRegistered,
    WrongOrganisation,
    error_for_refusal,
)
from medledger.identity.registry import (
    ChangeOutcome,
    Refusal,
    RegistryRules,
    check_key,
    check_register_organisation,
    check_register_principal,
    key_valid_at,
    parse_organisation_name,
    parse_principal_name,
)
from medledger.identity.store import Challenge, IdentityStore, RequestRecord
from medledger.ledgerclient import LedgerClientError, sign_transaction

CHALLENGE_BYTES = 32
P = ParamSpec("P")
T = TypeVar("T")
_log = get_logger("medledger.identity")


class LedgerPort(Protocol):
    """The part of medledger.ledgerclient.LedgerClient the identity service uses."""

    async def submit(self, tx: bytes) -> str: ...

    async def wait_receipt(
        self,
        tx_id_hex: str,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> ledger_pb.TransactionReceipt: ...

    async def validator_set(self) -> ledger_pb.ValidatorSet: ...

    def blocks(self, start_height: int = 0) -> AsyncIterator[ledger_pb.Block]: ...


@dataclass(frozen=True)
class IdentityConfig:
    organisation_id: str
    chain_id: str
    service_principal: str
    token_lifetime_seconds: int = 300
    max_token_lifetime_seconds: int = 3600
    challenge_ttl_seconds: int = 60
    commit_timeout_seconds: float = 15.0


ChangeListener = Callable[[Sequence[str]], Awaitable[None]]


class IdentityService:
    """One organisation's identity service."""

    def __init__(
        self,
        config: IdentityConfig,
        store: IdentityStore,
        ledger: LedgerPort | None,
        service_key: SigningKey,
        issuer: TokenIssuer,
        audit_sink: audit.AuditSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self._ledger_port = ledger
        self._service_key = service_key
        self._issuer = issuer
        self._audit = audit_sink
        self._clock = clock
        self._organisation = f"organisations/{config.organisation_id}"
        self._rules: RegistryRules | None = None
        self._height = asyncio.Condition()
        self._applied_height = store.height()
        self._listeners: list[ChangeListener] = []

    # --- the view ---

    @property
    def applied_height(self) -> int:
        return self._applied_height

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener`` with the resource names each applied block changed."""
        self._listeners.append(listener)

    def attach_ledger(self, ledger: LedgerPort) -> None:
        """Set the ledger client once the bus is connected (``build`` runs before that)."""
        self._ledger_port = ledger

    @property
    def _ledger(self) -> LedgerPort:
        if self._ledger_port is None:
            raise LedgerUnavailable("LEDGER_UNAVAILABLE", "not connected to the ledger yet")
        return self._ledger_port

    async def rules(self) -> RegistryRules:
        if self._rules is None:
            self._rules = RegistryRules(await self._ledger.validator_set())
        return self._rules

    async def follow(self, blocks: AsyncIterator[ledger_pb.Block] | None = None) -> None:
        """Apply every final block after the view's height, forever (or until ``blocks`` ends)."""
        rules = await self.rules()
        source = blocks if blocks is not None else self._ledger.blocks(self.store.height() + 1)
        async for block in source:
            await self.apply_block(rules, block)

    async def apply_block(self, rules: RegistryRules, block: ledger_pb.Block) -> None:
        height = block.header.height
        if height <= self._applied_height:
            return
        outcomes, changed = await asyncio.to_thread(
            self.store.apply_block, height, lambda view: rules.apply_block(view, block)
        )
        async with self._height:
            self._applied_height = height
            self._height.notify_all()
        for outcome in outcomes:
            if not outcome.applied:
                _log.info("identity change refused", tx_id=outcome.tx_id, reason=outcome.reason)
            if outcome.organisation == self._organisation:
                await self._audit_change(outcome, block.header.timestamp_unix_ms)
        if changed:
            for listener in self._listeners:
                await listener(changed)

    async def wait_for_height(self, height: int, timeout: float) -> bool:  # noqa: ASYNC109
        async with self._height:
            try:
                await asyncio.wait_for(
                    self._height.wait_for(lambda: self._applied_height >= height), timeout
                )
            except TimeoutError:
                return False
        return True

    async def _audit_change(self, outcome: ChangeOutcome, block_ms: int) -> None:
        signer = self.store.principal(outcome.signer) if outcome.signer else None
        who = audit.actor(
            outcome.signer, signer.roles if signer else (), signer.kind if signer else 0
        )
        action = {
            "register_organisation": access_pb2.ACCESS_ACTION_CREATE,
            "register_principal": access_pb2.ACCESS_ACTION_CREATE,
            "revoke_key": access_pb2.ACCESS_ACTION_DELETE,
            "revoke_principal": access_pb2.ACCESS_ACTION_DELETE,
        }.get(outcome.change, access_pb2.ACCESS_ACTION_UPDATE)
        await audit.emit_safely(
            self._audit,
            audit.event(
                who=who,
                action=action,
                resource=outcome.resource,
                decision=access_pb2.DECISION_PERMIT
                if outcome.applied
                else access_pb2.DECISION_DENY,
                reason=f"IDENTITY_{outcome.change.upper()}" if outcome.applied else outcome.reason,
                organisation=self._organisation,
                now_ms=block_ms,
                event_id=audit.change_event_id(outcome.tx_id),
            ),
        )

    # --- reads ---

    def organisation(self, name: str) -> pb.Organisation:
        _refusal_as_error(parse_organisation_name, name)
        found = self.store.organisation(name)
        if found is None:
            raise OrganisationNotFound("ORGANISATION_NOT_FOUND", "no such organisation")
        return found

    def principal(self, name: str) -> pb.Principal:
        _refusal_as_error(parse_principal_name, name)
        found = self.store.principal(name)
        if found is None:
            raise PrincipalNotFound("PRINCIPAL_NOT_FOUND", "no such principal")
        return self._with_expiry(found)

    def _with_expiry(self, principal: pb.Principal) -> pb.Principal:
        now_ms = int(self._clock() * 1000)
        for key in principal.keys:
            if key.state == pb.KEY_STATE_GRACE and not key_valid_at(key, now_ms):
                key.state = pb.KEY_STATE_EXPIRED
        return principal

    def jwks(self, organisation: str = "") -> list[pb.JsonWebKey]:
        """Token-verification keys of ``organisation`` (default: ours) valid now."""
        organisation = organisation or self._organisation
        _refusal_as_error(parse_organisation_name, organisation)
        now_ms = int(self._clock() * 1000)
        keys: list[pb.JsonWebKey] = []
        for issuer in self.store.token_issuers(organisation):
            for key in issuer.keys:
                if key_valid_at(key, now_ms):
                    keys.append(pb.JsonWebKey(**jwk_of(VerifyKey(key.public_key))))
        return keys

    # --- registry changes ---

    async def create_organisation(
        self, organisation_id: str, organisation: pb.Organisation, request_id: str, key: SigningKey
    ) -> pb.Organisation:
        """Register an organisation; ``key`` must be its validator key (the bootstrap)."""
        name = f"organisations/{organisation_id}"
        change = identity_change_pb2.IdentityChange(
            register_organisation=identity_change_pb2.RegisterOrganisation(
                organisation=name,
                display_name=organisation.display_name,
                keys=[_public_key(k) for k in organisation.keys],
            )
        )
        _refusal_as_error(check_register_organisation, change.register_organisation)
        if self.store.organisation(name) is not None and not request_id:
            raise error_for_refusal("ORGANISATION_EXISTS", "organisation is already registered")
        commit = await self._commit(change, name, request_id, key, signer=name)
        found = self.store.organisation(name)
        if found is None or commit.state != ledger_commit_pb2.COMMIT_STATE_FINAL:
            pending = pb.Organisation(name=name, display_name=organisation.display_name)
            pending.keys.extend(organisation.keys)
            pending.ledger_commit.CopyFrom(commit)
            return pending
        return found

    async def create_principal(
        self,
        caller: CallerIdentity,
        parent: str,
        principal_id: str,
        principal: pb.Principal,
        request_id: str,
    ) -> pb.Principal:
        self._check_own(caller, parent)
        principal_id = principal_id or f"p-{uuid.uuid4().hex[:20]}"
        name = f"{parent}/principals/{principal_id}"
        register = identity_change_pb2.RegisterPrincipal(
            principal=name,
            kind=principal.kind,
            roles=list(principal.roles),
            keys=[_public_key(k) for k in principal.keys],
            patient_pseudonym=principal.patient_pseudonym,
        )
        _refusal_as_error(check_register_principal, register)
        if not request_id and self.store.principal(name) is not None:
            raise error_for_refusal("PRINCIPAL_EXISTS", "principal is already registered")
        change = identity_change_pb2.IdentityChange(register_principal=register)
        return await self._principal_change(change, name, request_id)

    async def rotate_key(
        self,
        caller: CallerIdentity,
        name: str,
        old_key_id: str,
        new_key: pb.PrincipalKey,
        grace_period_ms: int,
        request_id: str,
    ) -> pb.Principal:
        self._check_own_principal(caller, name)
        rotate = identity_change_pb2.RotateKey(
            principal=name,
            old_key_id=old_key_id,
            new_key=_public_key(new_key),
            grace_period_ms=grace_period_ms,
        )
        _refusal_as_error(check_key, rotate.new_key)
        self.principal(name)
        change = identity_change_pb2.IdentityChange(rotate_key=rotate)
        return await self._principal_change(change, name, request_id)

    async def revoke_key(
        self, caller: CallerIdentity, name: str, key_id: str, reason: int, request_id: str
    ) -> pb.Principal:
        self._check_own_principal(caller, name)
        self.principal(name)
        change = identity_change_pb2.IdentityChange(
            revoke_key=identity_change_pb2.RevokeKey(principal=name, key_id=key_id, reason=reason)  # type: ignore[arg-type]
        )
        return await self._principal_change(change, name, request_id)

    async def revoke_principal(
        self, caller: CallerIdentity, name: str, reason: int, request_id: str
    ) -> pb.Principal:
        self._check_own_principal(caller, name)
        self.principal(name)
        change = identity_change_pb2.IdentityChange(
            revoke_principal=identity_change_pb2.RevokePrincipal(principal=name, reason=reason)  # type: ignore[arg-type]
        )
        return await self._principal_change(change, name, request_id)

    def _check_own(self, caller: CallerIdentity, organisation: str) -> None:
        _refusal_as_error(parse_organisation_name, organisation)
        if organisation != self._organisation or caller.org_id != self.config.organisation_id:
            raise WrongOrganisation(
                "WRONG_ORGANISATION", "administrators manage their own organisation only"
            )

    def _check_own_principal(self, caller: CallerIdentity, name: str) -> None:
        organisation, _ = _refusal_as_error(parse_principal_name, name)
        self._check_own(caller, organisation)

    async def _principal_change(
        self, change: identity_change_pb2.IdentityChange, name: str, request_id: str
    ) -> pb.Principal:
        commit = await self._commit(
            change, name, request_id, self._service_key, signer=self.config.service_principal
        )
        found = self.store.principal(name)
        if commit.state != ledger_commit_pb2.COMMIT_STATE_FINAL or found is None:
            pending = pb.Principal(name=name, state=pb.PRINCIPAL_STATE_PENDING)
            if change.HasField("register_principal"):
                reg = change.register_principal
                pending.kind = reg.kind
                pending.roles.extend(reg.roles)
                pending.patient_pseudonym = reg.patient_pseudonym
            pending.ledger_commit.CopyFrom(commit)
            return pending
        found.ledger_commit.CopyFrom(commit)
        return self._with_expiry(found)

    async def _commit(
        self,
        change: identity_change_pb2.IdentityChange,
        resource: str,
        request_id: str,
        key: SigningKey,
        *,
        signer: str,
    ) -> ledger_commit_pb2.LedgerCommit:
        """Submit the change, wait until the view applied it; raise if the registry refused."""
        fingerprint = sha256(change.SerializeToString(deterministic=True)).hex()
        tx_id = ""
        if request_id:
            previous = self.store.request(request_id)
            if previous is not None:
                if previous.fingerprint != fingerprint:
                    raise AlreadyExists(
                        "REQUEST_ID_REUSED", "request_id was used for a different request"
                    )
                tx_id = previous.tx_id
        if not tx_id:
            body = tx_pb.TransactionBody(
                chain_id=self.config.chain_id,
                type=tx_pb.TRANSACTION_TYPE_IDENTITY_CHANGE,
                nonce=secrets.randbits(63),
                created_at_unix_ms=int(self._clock() * 1000),
                signer=signer,
                identity_change=change,
            )
            try:
                tx_id = await self._ledger.submit(sign_transaction(body, key))
            except LedgerClientError as exc:
                raise LedgerUnavailable(
                    "LEDGER_UNAVAILABLE", f"the ledger did not accept the change ({exc.reason})"
                ) from exc
            if request_id:
                await asyncio.to_thread(
                    self.store.remember_request,
                    RequestRecord(request_id, fingerprint, tx_id, resource),
                )
        return await self._await_outcome(tx_id)

    async def _await_outcome(self, tx_id: str) -> ledger_commit_pb2.LedgerCommit:
        pending = ledger_commit_pb2.LedgerCommit(
            tx_id=tx_id, state=ledger_commit_pb2.COMMIT_STATE_PENDING
        )
        outcome = self.store.outcome(tx_id)
        if outcome is None:
            timeout = self.config.commit_timeout_seconds
            try:
                receipt = await self._ledger.wait_receipt(tx_id, timeout)
            except LedgerClientError as exc:
                if exc.reason == "TX_NOT_FINAL":
                    return pending
                raise LedgerUnavailable("LEDGER_UNAVAILABLE", "no receipt for the change") from exc
            if not await self.wait_for_height(receipt.height, timeout):
                return pending
            outcome = self.store.outcome(tx_id)
        if outcome is None:
            return pending
        if not outcome.applied:
            raise error_for_refusal(outcome.reason, "the registry refused the change")
        return ledger_commit_pb2.LedgerCommit(
            tx_id=tx_id, state=ledger_commit_pb2.COMMIT_STATE_FINAL, height=outcome.height
        )

    # --- authentication ---

    async def create_challenge(self, principal_name: str, key_id: str) -> pb.TokenChallenge:
        try:
            return await self._create_challenge(principal_name, key_id)
        except MedledgerError as error:
            await self._audit_login_refused(principal_name, error)
            raise

    async def _create_challenge(self, principal_name: str, key_id: str) -> pb.TokenChallenge:
        organisation, _ = _refusal_as_error(parse_principal_name, principal_name)
        if organisation != self._organisation:
            raise WrongOrganisation(
                "WRONG_ORGANISATION", "this identity service issues tokens for its own principals"
            )
        principal = self.principal(principal_name)
        self._usable_key(principal, key_id)
        now_ms = int(self._clock() * 1000)
        challenge = Challenge(
            challenge_id=str(uuid.uuid4()),
            principal=principal_name,
            key_id=key_id,
            challenge=os.urandom(CHALLENGE_BYTES),
            expire_ms=now_ms + self.config.challenge_ttl_seconds * 1000,
        )
        await asyncio.to_thread(self.store.put_challenge, challenge, now_ms)
        out = pb.TokenChallenge(challenge_id=challenge.challenge_id, challenge=challenge.challenge)
        out.expire_time.FromMilliseconds(challenge.expire_ms)
        return out

    async def issue_token(
        self,
        challenge_id: str,
        principal_name: str,
        key_id: str,
        signature: bytes,
        requested_lifetime_seconds: int,
    ) -> pb.IssueTokenResponse:
        try:
            return await self._issue_token(
                challenge_id, principal_name, key_id, signature, requested_lifetime_seconds
            )
        except MedledgerError as error:
            await self._audit_login_refused(principal_name, error)
            raise

    async def _audit_login_refused(self, principal_name: str, error: MedledgerError) -> None:
        await audit.emit_safely(
            self._audit,
            audit.event(
                who=audit.actor(principal_name if principal_name.count("/") == 3 else ""),
                action=access_pb2.ACCESS_ACTION_AUTHENTICATE,
                resource=principal_name[:300],
                decision=access_pb2.DECISION_DENY,
                reason=error.reason,
                organisation=self._organisation,
                now_ms=int(self._clock() * 1000),
            ),
        )

    async def _issue_token(
        self,
        challenge_id: str,
        principal_name: str,
        key_id: str,
        signature: bytes,
        requested_lifetime_seconds: int,
    ) -> pb.IssueTokenResponse:
        # Consumed before anything is checked, so a failed attempt burns the challenge.
        challenge = await asyncio.to_thread(self.store.consume_challenge, challenge_id[:64])
        now = self._clock()
        if challenge is None:
            raise ChallengeRejected("CHALLENGE_UNKNOWN_OR_USED", "challenge unknown or used")
        if challenge.expire_ms < int(now * 1000):
            raise ChallengeRejected("CHALLENGE_EXPIRED", "the challenge has expired")
        if challenge.principal != principal_name or challenge.key_id != key_id:
            raise ChallengeRejected("CHALLENGE_MISMATCH", "challenge was made for another key")
        principal = self.principal(principal_name)
        key = self._usable_key(principal, key_id)
        try:
            VerifyKey(key.public_key).verify(
                SigningContext.TOKEN_CHALLENGE, challenge.challenge, signature
            )
        except SignatureError as exc:
            raise ChallengeRejected("BAD_SIGNATURE", "challenge signature does not verify") from exc
        if not any(jwk.kid == self._issuer.key_id for jwk in self.jwks()):
            raise TokenKeyNotRegistered(
                "TOKEN_KEY_NOT_REGISTERED", "this service's token key is not registered on chain"
            )
        token, claims = self._issuer.issue(
            subject=principal_name,
            roles=principal.roles,
            kind=actor_pb.PrincipalKind.Name(principal.kind).removeprefix("PRINCIPAL_KIND_"),
            principal_key_id=key_id,
            now=int(now),
            lifetime_seconds=requested_lifetime_seconds or None,
        )
        who = audit.actor(principal_name, principal.roles, principal.kind, claims.token_id)
        response = pb.IssueTokenResponse(
            access_token=token,
            token_type="Bearer",  # noqa: S106 -- the scheme name
            token_id=claims.token_id,
            actor=who,
        )
        response.expire_time.FromSeconds(claims.expires_at)
        await audit.emit_safely(
            self._audit,
            audit.event(
                who=who,
                action=access_pb2.ACCESS_ACTION_AUTHENTICATE,
                resource=principal_name,
                decision=access_pb2.DECISION_PERMIT,
                reason="TOKEN_ISSUED",
                organisation=self._organisation,
                now_ms=int(now * 1000),
            ),
        )
        return response

    def _usable_key(self, principal: pb.Principal, key_id: str) -> pb.PrincipalKey:
        if principal.state != pb.PRINCIPAL_STATE_ACTIVE:
            raise ChallengeRejected("PRINCIPAL_REVOKED", "the principal has been revoked")
        key = next((k for k in principal.keys if k.key_id == key_id), None)
        if key is None:
            raise ChallengeRejected("UNKNOWN_KEY", "the principal has no such key")
        if not key_valid_at(key, int(self._clock() * 1000)):
            raise ChallengeRejected("KEY_REVOKED", "the key is revoked or expired")
        return key


def _public_key(key: pb.PrincipalKey) -> identity_change_pb2.PublicKey:
    out = identity_change_pb2.PublicKey(
        key_id=key.key_id, algorithm=key.algorithm, public_key=key.public_key
    )
    if key.HasField("not_before"):
        out.not_before_unix_ms = key.not_before.ToMilliseconds()
    if key.HasField("not_after"):
        out.not_after_unix_ms = key.not_after.ToMilliseconds()
    return out


def _refusal_as_error(check: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return check(*args, **kwargs)
    except Refusal as refusal:
        raise error_for_refusal(refusal.reason, refusal.message) from None
