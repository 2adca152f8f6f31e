"""The identity registry's rules: how final blocks change the view, deterministically.

Every identity service applies the same final blocks with these rules and so reaches the
same registry. A change that breaks a rule (wrong signer, unknown principal, key reused…)
is not applied; it is recorded as refused with a reason. Who may sign:

- ``RegisterOrganisation`` of X: only X's validator key from the validator set (genesis).
- Any other change for organisation X: X's validator key (this is how X's first
  administrator is registered, and how X recovers if it loses every administrator), or an
  active principal of X signing with one of its valid keys that is an ADMINISTRATOR, or a
  SERVICE holding the ``registrar`` role (the identity service acting for an administrator).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError

from medledger._gen.common.v1 import actor_pb2, identity_change_pb2, ledger_commit_pb2
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.crypto import KeyFormatError, SigningContext, VerifyKey, sha256

REGISTRAR_ROLE = "registrar"
TOKEN_ISSUER_ROLE = "token_issuer"  # noqa: S105 -- a role code, not a secret
MAX_KEYS = 8
MAX_ROLES = 32
MAX_DISPLAY_NAME = 200
MAX_GRACE_PERIOD_MS = 30 * 24 * 3600 * 1000

ORGANISATION_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
PRINCIPAL_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ROLE_CODE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

_VALID_KEY_STATES = (pb.KEY_STATE_ACTIVE, pb.KEY_STATE_GRACE)


class Refusal(Exception):  # noqa: N818 -- a refused change, not a failure of the code
    """A change the registry does not apply; ``reason`` is UPPER_SNAKE_CASE."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ChangeOutcome:
    """What one identity transaction of a final block did to the registry."""

    tx_id: str
    height: int
    change: str
    resource: str
    organisation: str
    signer: str
    applied: bool
    reason: str = ""


class RegistryWriter(Protocol):
    """The view as the rules read and write it, inside one block's store transaction."""

    def organisation(self, name: str) -> pb.Organisation | None: ...

    def principal(self, name: str) -> pb.Principal | None: ...

    def key_owner(self, public_key: bytes) -> str | None: ...

    def put_organisation(self, organisation: pb.Organisation) -> None: ...

    def put_principal(self, principal: pb.Principal) -> None: ...

    def claim_key(self, public_key: bytes, key_id: str, owner: str) -> None: ...

    def record_outcome(self, outcome: ChangeOutcome) -> None: ...


# --- names and field checks, shared with the API's early validation -------------------------


def organisation_name(organisation_id: str) -> str:
    return f"organisations/{organisation_id}"


def parse_organisation_name(name: str) -> str:
    """The id of ``organisations/{id}``; Refusal BAD_NAME otherwise."""
    prefix, _, org_id = name.partition("/")
    if prefix != "organisations" or not ORGANISATION_ID.match(org_id):
        raise Refusal("BAD_NAME", "not an organisation resource name")
    return org_id


def parse_principal_name(name: str) -> tuple[str, str]:
    """(organisation name, principal id) of a principal resource name; Refusal BAD_NAME."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "organisations"
        or parts[2] != "principals"
        or not ORGANISATION_ID.match(parts[1])
        or not PRINCIPAL_ID.match(parts[3])
    ):
        raise Refusal("BAD_NAME", "not a principal resource name")
    return organisation_name(parts[1]), parts[3]


def check_keys(keys: Iterable[identity_change_pb2.PublicKey], *, at_least: int = 1) -> None:
    keys = list(keys)
    if not at_least <= len(keys) <= MAX_KEYS:
        raise Refusal("BAD_KEYS", f"between {at_least} and {MAX_KEYS} keys are required")
    seen: set[bytes] = set()
    for key in keys:
        check_key(key)
        if key.public_key in seen:
            raise Refusal("BAD_KEYS", "the same key is listed twice")
        seen.add(key.public_key)


def check_key(key: identity_change_pb2.PublicKey) -> None:
    if key.algorithm != identity_change_pb2.KEY_ALGORITHM_ED25519:
        raise Refusal("BAD_KEY_ALGORITHM", "keys must be Ed25519")
    try:
        verify_key = VerifyKey(key.public_key)
    except KeyFormatError as exc:
        raise Refusal("BAD_PUBLIC_KEY", "public key is not a 32-byte Ed25519 key") from exc
    if key.key_id != verify_key.key_id:
        raise Refusal("BAD_KEY_ID", "key_id is not the id of the public key")
    if key.not_before_unix_ms < 0 or key.not_after_unix_ms < 0:
        raise Refusal("BAD_KEY_VALIDITY", "key validity times must not be negative")
    if key.not_after_unix_ms and key.not_after_unix_ms <= key.not_before_unix_ms:
        raise Refusal("BAD_KEY_VALIDITY", "not_after must come after not_before")


def check_roles(roles: Iterable[str]) -> None:
    roles = list(roles)
    if len(roles) > MAX_ROLES:
        raise Refusal("BAD_ROLES", f"at most {MAX_ROLES} roles")
    for role in roles:
        if not ROLE_CODE.match(role):
            raise Refusal("BAD_ROLES", "roles are lower_snake_case codes of at most 63 characters")


def check_register_principal(change: identity_change_pb2.RegisterPrincipal) -> None:
    parse_principal_name(change.principal)
    if change.kind == actor_pb2.PRINCIPAL_KIND_UNSPECIFIED or change.kind not in (
        actor_pb2.PrincipalKind.values()
    ):
        raise Refusal("BAD_KIND", "principal kind is required")
    check_roles(change.roles)
    check_keys(change.keys)
    if change.kind == actor_pb2.PRINCIPAL_KIND_PATIENT:
        if not PSEUDONYM.match(change.patient_pseudonym):
            raise Refusal("BAD_PATIENT_PSEUDONYM", "a patient principal needs a pseudonym")
    elif change.patient_pseudonym:
        raise Refusal("BAD_PATIENT_PSEUDONYM", "only patient principals carry a pseudonym")


def check_register_organisation(change: identity_change_pb2.RegisterOrganisation) -> None:
    parse_organisation_name(change.organisation)
    name = change.display_name
    if not 0 < len(name) <= MAX_DISPLAY_NAME or not name.isprintable():
        raise Refusal("BAD_DISPLAY_NAME", f"display name must be 1-{MAX_DISPLAY_NAME} printable")
    check_keys(change.keys)


def key_valid_at(key: pb.PrincipalKey, now_ms: int) -> bool:
    """Whether a registered key may authenticate or sign at ``now_ms``."""
    if key.state not in _VALID_KEY_STATES:
        return False
    if key.HasField("not_before") and now_ms < key.not_before.ToMilliseconds():
        return False
    return not (key.HasField("not_after") and now_ms > key.not_after.ToMilliseconds())


def principal_key(key: identity_change_pb2.PublicKey) -> pb.PrincipalKey:
    out = pb.PrincipalKey(
        key_id=key.key_id,
        algorithm=key.algorithm,
        public_key=key.public_key,
        state=pb.KEY_STATE_ACTIVE,
    )
    if key.not_before_unix_ms:
        out.not_before.FromMilliseconds(key.not_before_unix_ms)
    if key.not_after_unix_ms:
        out.not_after.FromMilliseconds(key.not_after_unix_ms)
    return out


# --- applying blocks -------------------------------------------------------------------------


class RegistryRules:
    """Applies the identity changes of final blocks to a RegistryWriter."""

    def __init__(self, validators: ledger_pb.ValidatorSet) -> None:
        self._validator_keys: Mapping[str, bytes] = {
            v.organisation: bytes(v.public_key) for v in validators.validators
        }

    def validator_key(self, organisation: str) -> bytes | None:
        return self._validator_keys.get(organisation)

    def apply_block(self, view: RegistryWriter, block: ledger_pb.Block) -> list[ChangeOutcome]:
        outcomes: list[ChangeOutcome] = []
        height = block.header.height
        block_ms = block.header.timestamp_unix_ms
        for envelope in block.transactions:
            body = tx_pb.TransactionBody()
            try:
                body.ParseFromString(envelope.body)
            except DecodeError:
                continue
            if body.WhichOneof("payload") != "identity_change":
                continue
            outcome = self.apply(view, envelope, body, height, block_ms)
            view.record_outcome(outcome)
            outcomes.append(outcome)
        return outcomes

    def apply(
        self,
        view: RegistryWriter,
        envelope: tx_pb.Transaction,
        body: tx_pb.TransactionBody,
        height: int,
        block_ms: int,
    ) -> ChangeOutcome:
        change = body.identity_change
        kind = change.WhichOneof("change") or ""
        resource, organisation = _target(change)
        tx_id = sha256(envelope.body).hex()
        try:
            if not _signature_valid(envelope):
                raise Refusal("TX_BAD_SIGNATURE", "transaction signature does not verify")
            commit = ledger_commit_pb2.LedgerCommit(
                tx_id=tx_id, state=ledger_commit_pb2.COMMIT_STATE_FINAL, height=height
            )
            if kind == "register_organisation":
                self._register_organisation(view, envelope, change.register_organisation, commit)
            elif kind == "register_principal":
                self._authorise(view, envelope, body, organisation, block_ms)
                self._register_principal(view, change.register_principal, commit, block_ms)
            elif kind == "rotate_key":
                self._authorise(view, envelope, body, organisation, block_ms)
                self._rotate_key(view, change.rotate_key, commit, block_ms)
            elif kind == "revoke_key":
                self._authorise(view, envelope, body, organisation, block_ms)
                self._revoke_key(view, change.revoke_key, commit)
            elif kind == "revoke_principal":
                self._authorise(view, envelope, body, organisation, block_ms)
                self._revoke_principal(view, change.revoke_principal, commit)
            else:
                raise Refusal("BAD_IDENTITY_CHANGE", "identity change sets no change")
        except Refusal as refusal:
            return ChangeOutcome(
                tx_id, height, kind, resource, organisation, body.signer, False, refusal.reason
            )
        return ChangeOutcome(tx_id, height, kind, resource, organisation, body.signer, True)

    # --- who may sign ---

    def _authorise(
        self,
        view: RegistryWriter,
        envelope: tx_pb.Transaction,
        body: tx_pb.TransactionBody,
        organisation: str,
        block_ms: int,
    ) -> None:
        if not organisation:
            raise Refusal("BAD_NAME", "the change names no organisation")
        if view.organisation(organisation) is None:
            raise Refusal("ORGANISATION_NOT_FOUND", "the organisation is not registered")
        if envelope.signer_public_key == self._validator_keys.get(organisation):
            return
        signer_org, _ = _principal_parts(body.signer)
        if signer_org != organisation:
            raise Refusal("SIGNER_WRONG_ORGANISATION", "signer is not of the organisation")
        signer = view.principal(body.signer)
        if signer is None:
            raise Refusal("SIGNER_UNKNOWN", "signer is not a registered principal")
        if signer.state != pb.PRINCIPAL_STATE_ACTIVE:
            raise Refusal("SIGNER_REVOKED", "signer has been revoked")
        key = next(
            (
                k
                for k in signer.keys
                if k.key_id == envelope.signer_key_id and k.public_key == envelope.signer_public_key
            ),
            None,
        )
        if key is None:
            raise Refusal("SIGNER_KEY_NOT_REGISTERED", "signing key is not the signer's")
        if not key_valid_at(key, block_ms):
            raise Refusal("SIGNER_KEY_NOT_VALID", "signing key is revoked or expired")
        if signer.kind == actor_pb2.PRINCIPAL_KIND_ADMINISTRATOR:
            return
        if signer.kind == actor_pb2.PRINCIPAL_KIND_SERVICE and REGISTRAR_ROLE in signer.roles:
            return
        raise Refusal("SIGNER_NOT_AUTHORISED", "signer may not change the registry")

    # --- the changes ---

    def _register_organisation(
        self,
        view: RegistryWriter,
        envelope: tx_pb.Transaction,
        change: identity_change_pb2.RegisterOrganisation,
        commit: ledger_commit_pb2.LedgerCommit,
    ) -> None:
        check_register_organisation(change)
        validator_key = self._validator_keys.get(change.organisation)
        if validator_key is None:
            raise Refusal("NOT_A_CONSORTIUM_MEMBER", "organisation runs no validator")
        if envelope.signer_public_key != validator_key:
            raise Refusal("SIGNER_NOT_VALIDATOR", "only the organisation's validator registers it")
        if view.organisation(change.organisation) is not None:
            raise Refusal("ORGANISATION_EXISTS", "organisation is already registered")
        self._claim_keys(view, change.keys, change.organisation)
        organisation = pb.Organisation(
            name=change.organisation,
            display_name=change.display_name,
            keys=[principal_key(k) for k in change.keys],
            ledger_commit=commit,
        )
        view.put_organisation(organisation)

    def _register_principal(
        self,
        view: RegistryWriter,
        change: identity_change_pb2.RegisterPrincipal,
        commit: ledger_commit_pb2.LedgerCommit,
        block_ms: int,
    ) -> None:
        check_register_principal(change)
        if view.principal(change.principal) is not None:
            raise Refusal("PRINCIPAL_EXISTS", "principal is already registered")
        self._claim_keys(view, change.keys, change.principal)
        principal = pb.Principal(
            name=change.principal,
            kind=change.kind,
            roles=sorted(set(change.roles)),
            keys=[principal_key(k) for k in change.keys],
            patient_pseudonym=change.patient_pseudonym,
            state=pb.PRINCIPAL_STATE_ACTIVE,
            ledger_commit=commit,
        )
        principal.create_time.FromMilliseconds(block_ms)
        view.put_principal(principal)

    def _rotate_key(
        self,
        view: RegistryWriter,
        change: identity_change_pb2.RotateKey,
        commit: ledger_commit_pb2.LedgerCommit,
        block_ms: int,
    ) -> None:
        principal = _existing_active(view, change.principal)
        check_key(change.new_key)
        if change.grace_period_ms > MAX_GRACE_PERIOD_MS:
            raise Refusal("BAD_GRACE_PERIOD", "grace period is at most 30 days")
        old = next((k for k in principal.keys if k.key_id == change.old_key_id), None)
        if old is None:
            raise Refusal("KEY_NOT_FOUND", "the principal has no such key")
        if old.state != pb.KEY_STATE_ACTIVE or not key_valid_at(old, block_ms):
            raise Refusal("OLD_KEY_NOT_ACTIVE", "only an active key can be rotated")
        self._claim_keys(view, [change.new_key], principal.name)
        if change.grace_period_ms:
            old.state = pb.KEY_STATE_GRACE
            old.not_after.FromMilliseconds(block_ms + change.grace_period_ms)
        else:
            old.state = pb.KEY_STATE_EXPIRED
            old.not_after.FromMilliseconds(block_ms)
        principal.keys.append(principal_key(change.new_key))
        principal.ledger_commit.CopyFrom(commit)
        view.put_principal(principal)

    def _revoke_key(
        self,
        view: RegistryWriter,
        change: identity_change_pb2.RevokeKey,
        commit: ledger_commit_pb2.LedgerCommit,
    ) -> None:
        principal = _existing(view, change.principal)
        if change.reason == identity_change_pb2.KEY_REVOCATION_REASON_UNSPECIFIED or (
            change.reason not in identity_change_pb2.KeyRevocationReason.values()
        ):
            raise Refusal("BAD_REVOCATION_REASON", "a revocation reason is required")
        key = next((k for k in principal.keys if k.key_id == change.key_id), None)
        if key is None:
            raise Refusal("KEY_NOT_FOUND", "the principal has no such key")
        if key.state == pb.KEY_STATE_REVOKED:
            raise Refusal("KEY_ALREADY_REVOKED", "the key is already revoked")
        key.state = pb.KEY_STATE_REVOKED
        principal.ledger_commit.CopyFrom(commit)
        view.put_principal(principal)

    def _revoke_principal(
        self,
        view: RegistryWriter,
        change: identity_change_pb2.RevokePrincipal,
        commit: ledger_commit_pb2.LedgerCommit,
    ) -> None:
        principal = _existing_active(view, change.principal)
        if change.reason == identity_change_pb2.PRINCIPAL_REVOCATION_REASON_UNSPECIFIED or (
            change.reason not in identity_change_pb2.PrincipalRevocationReason.values()
        ):
            raise Refusal("BAD_REVOCATION_REASON", "a revocation reason is required")
        principal.state = pb.PRINCIPAL_STATE_REVOKED
        for key in principal.keys:
            key.state = pb.KEY_STATE_REVOKED
        principal.ledger_commit.CopyFrom(commit)
        view.put_principal(principal)

    @staticmethod
    def _claim_keys(
        view: RegistryWriter, keys: Iterable[identity_change_pb2.PublicKey], owner: str
    ) -> None:
        keys = list(keys)
        for key in keys:
            if view.key_owner(key.public_key) is not None:
                raise Refusal("KEY_ALREADY_REGISTERED", "the key is registered already")
        for key in keys:
            view.claim_key(key.public_key, key.key_id, owner)


def _existing(view: RegistryWriter, name: str) -> pb.Principal:
    parse_principal_name(name)
    principal = view.principal(name)
    if principal is None:
        raise Refusal("PRINCIPAL_NOT_FOUND", "no such principal")
    return principal


def _existing_active(view: RegistryWriter, name: str) -> pb.Principal:
    principal = _existing(view, name)
    if principal.state != pb.PRINCIPAL_STATE_ACTIVE:
        raise Refusal("PRINCIPAL_REVOKED", "the principal has been revoked")
    return principal


def _principal_parts(name: str) -> tuple[str, str]:
    try:
        return parse_principal_name(name)
    except Refusal:
        return "", ""


def _target(change: identity_change_pb2.IdentityChange) -> tuple[str, str]:
    """(resource, organisation) an identity change is about; empty when it names none."""
    kind = change.WhichOneof("change")
    if kind == "register_organisation":
        name = change.register_organisation.organisation
        return name, name
    resource = {
        "register_principal": change.register_principal.principal,
        "rotate_key": change.rotate_key.principal,
        "revoke_key": change.revoke_key.principal,
        "revoke_principal": change.revoke_principal.principal,
    }.get(kind or "", "")
    return resource, _principal_parts(resource)[0]


def _signature_valid(envelope: tx_pb.Transaction) -> bool:
    try:
        key = VerifyKey(envelope.signer_public_key)
    except KeyFormatError:
        return False
    return key.key_id == envelope.signer_key_id and key.is_valid(
        SigningContext.TRANSACTION, envelope.body, envelope.signature
    )
