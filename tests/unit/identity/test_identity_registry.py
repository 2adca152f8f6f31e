"""The registry view applied to blocks built here with real signed transactions, on SQLite and
PostgreSQL: who may sign what, refusals with reasons, rotation grace, revocation, replay."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest

from medledger._gen.common.v1 import actor_pb2, identity_change_pb2, validator_pb2
from medledger._gen.common.v1 import transaction_pb2 as tx_pb
from medledger._gen.identity.v1 import identity_service_pb2 as pb
from medledger._gen.ledger.v1 import ledger_service_pb2 as ledger_pb
from medledger.crypto import SigningKey
from medledger.identity.cli import change_transaction, public_key, register_principal_change
from medledger.identity.registry import RegistryRules, RegistryWriter, key_valid_at
from medledger.identity.store import IdentityStore

ORG = "organisations/org-a"
OTHER = "organisations/org-b"
ADMIN = f"{ORG}/principals/admin"
T0 = 1_800_000_000_000


class Chain:
    """Blocks of signed transactions, applied to a store one by one."""

    def __init__(self, store: IdentityStore) -> None:
        self.validators = {ORG: SigningKey.generate(), OTHER: SigningKey.generate()}
        validator_set = ledger_pb.ValidatorSet(
            validators=[
                validator_pb2.Validator(organisation=o, name=o[14:], public_key=k.public_key.raw)
                for o, k in self.validators.items()
            ]
        )
        self.rules = RegistryRules(validator_set)
        self.store = store
        self.height = 0
        self.blocks: list[ledger_pb.Block] = []

    def commit(
        self,
        signer: str,
        key: SigningKey,
        *changes: identity_change_pb2.IdentityChange,
        at: int = 0,
    ) -> list[tuple[bool, str]]:
        self.height += 1
        block = ledger_pb.Block(
            header=ledger_pb.BlockHeader(
                height=self.height, timestamp_unix_ms=at or T0 + self.height
            )
        )
        for change in changes:
            block.transactions.add().ParseFromString(change_transaction("c", signer, key, change))
        self.blocks.append(block)
        outcomes, _ = self.store.apply_block(
            self.height, lambda view: self.rules.apply_block(view, block)
        )
        return [(o.applied, o.reason) for o in outcomes]


def _register_org(org: str, key: SigningKey) -> identity_change_pb2.IdentityChange:
    return identity_change_pb2.IdentityChange(
        register_organisation=identity_change_pb2.RegisterOrganisation(
            organisation=org, display_name="Hospital", keys=[public_key(key.public_key)]
        )
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityStore]:
    if request.param == "sqlite":
        dsn = f"sqlite:///{tmp_path_factory.mktemp('view') / 'identity.sqlite3'}"
    else:
        dsn = request.getfixturevalue("pg_dsn")
    store = IdentityStore(dsn)
    yield store
    store.close()


@pytest.fixture
def chain(store: IdentityStore) -> Chain:
    chain = Chain(store)
    admin_key = SigningKey.generate()
    chain.admin_key = admin_key  # type: ignore[attr-defined]
    v = chain.validators[ORG]
    assert chain.commit(
        ORG,
        v,
        _register_org(ORG, v),
        register_principal_change(
            ADMIN, actor_pb2.PRINCIPAL_KIND_ADMINISTRATOR, ["administrator"], [admin_key.public_key]
        ),
    ) == [(True, ""), (True, "")]
    return chain


def test_only_an_organisations_own_validator_registers_it(chain: Chain) -> None:
    assert chain.commit(
        ORG, chain.validators[ORG], _register_org(OTHER, SigningKey.generate())
    ) == [(False, "SIGNER_NOT_VALIDATOR")]
    assert chain.commit(ORG, chain.validators[ORG], _register_org(ORG, SigningKey.generate())) == [
        (False, "ORGANISATION_EXISTS")
    ]
    assert chain.store.organisation(OTHER) is None


def test_admin_registers_and_non_admin_cannot(chain: Chain) -> None:
    admin_key: SigningKey = chain.admin_key  # type: ignore[attr-defined]
    nurse_key = SigningKey.generate()
    nurse = f"{ORG}/principals/rn-1"
    assert chain.commit(
        ADMIN,
        admin_key,
        register_principal_change(
            nurse, actor_pb2.PRINCIPAL_KIND_PRACTITIONER, ["nurse"], [nurse_key.public_key]
        ),
    ) == [(True, "")]
    found = chain.store.principal(nurse)
    assert found is not None and found.state == pb.PRINCIPAL_STATE_ACTIVE
    assert list(found.roles) == ["nurse"]
    # A practitioner may not register anyone, nor may an admin sign with a key not theirs.
    assert chain.commit(
        nurse,
        nurse_key,
        register_principal_change(f"{ORG}/principals/x", 1, [], [SigningKey.generate().public_key]),
    ) == [(False, "SIGNER_NOT_AUTHORISED")]
    assert chain.commit(
        ADMIN,
        SigningKey.generate(),
        register_principal_change(f"{ORG}/principals/y", 1, [], [SigningKey.generate().public_key]),
    ) == [(False, "SIGNER_KEY_NOT_REGISTERED")]
    # An admin of one organisation cannot register into another.
    assert chain.commit(
        ADMIN,
        admin_key,
        register_principal_change(
            f"{OTHER}/principals/z", 1, [], [SigningKey.generate().public_key]
        ),
    ) == [(False, "ORGANISATION_NOT_FOUND")]
    # Keys are never registered twice, and patients need a pseudonym.
    assert chain.commit(
        ADMIN,
        admin_key,
        register_principal_change(f"{ORG}/principals/dup", 1, [], [nurse_key.public_key]),
        register_principal_change(
            f"{ORG}/principals/pat",
            actor_pb2.PRINCIPAL_KIND_PATIENT,
            [],
            [SigningKey.generate().public_key],
        ),
        register_principal_change(
            f"{ORG}/principals/Bad_Name", 1, [], [SigningKey.generate().public_key]
        ),
        register_principal_change(
            f"{ORG}/principals/r", 1, ["Not A Code"], [SigningKey.generate().public_key]
        ),
    ) == [
        (False, "KEY_ALREADY_REGISTERED"),
        (False, "BAD_PATIENT_PSEUDONYM"),
        (False, "BAD_NAME"),
        (False, "BAD_ROLES"),
    ]
    assert chain.store.principal(f"{ORG}/principals/dup") is None
    outcome = chain.store.outcome(change_tx_id(chain.blocks[-1], 0))
    assert outcome is not None and outcome.reason == "KEY_ALREADY_REGISTERED"


def _apply(rules: RegistryRules, view: RegistryWriter, *, block: ledger_pb.Block) -> object:
    return rules.apply_block(view, block)


def change_tx_id(block: ledger_pb.Block, index: int) -> str:
    from medledger.crypto import sha256

    return sha256(block.transactions[index].body).hex()


def test_rotation_grace_and_revocation(chain: Chain) -> None:
    admin_key: SigningKey = chain.admin_key  # type: ignore[attr-defined]
    old, new = SigningKey.generate(), SigningKey.generate()
    dr = f"{ORG}/principals/dr-1"
    chain.commit(
        ADMIN, admin_key, register_principal_change(dr, 1, ["physician"], [old.public_key])
    )
    rotated_at = T0 + 1000
    assert chain.commit(
        ADMIN,
        admin_key,
        identity_change_pb2.IdentityChange(
            rotate_key=identity_change_pb2.RotateKey(
                principal=dr,
                old_key_id=old.public_key.key_id,
                new_key=public_key(new.public_key),
                grace_period_ms=60_000,
            )
        ),
        at=rotated_at,
    ) == [(True, "")]
    found = chain.store.principal(dr)
    assert found is not None
    old_key, new_key = found.keys
    assert old_key.state == pb.KEY_STATE_GRACE
    assert key_valid_at(old_key, rotated_at + 59_000) and not key_valid_at(
        old_key, rotated_at + 61_000
    )
    assert new_key.state == pb.KEY_STATE_ACTIVE
    assert chain.commit(
        ADMIN,
        admin_key,
        identity_change_pb2.IdentityChange(
            revoke_key=identity_change_pb2.RevokeKey(
                principal=dr,
                key_id=new.public_key.key_id,
                reason=identity_change_pb2.KEY_REVOCATION_REASON_COMPROMISED,
            )
        ),
        identity_change_pb2.IdentityChange(
            revoke_key=identity_change_pb2.RevokeKey(
                principal=dr,
                key_id=new.public_key.key_id,
                reason=identity_change_pb2.KEY_REVOCATION_REASON_RETIRED,
            )
        ),
        identity_change_pb2.IdentityChange(
            revoke_principal=identity_change_pb2.RevokePrincipal(
                principal=dr, reason=identity_change_pb2.PRINCIPAL_REVOCATION_REASON_UNSPECIFIED
            )
        ),
    ) == [(True, ""), (False, "KEY_ALREADY_REVOKED"), (False, "BAD_REVOCATION_REASON")]
    revoked_admin = identity_change_pb2.IdentityChange(
        revoke_principal=identity_change_pb2.RevokePrincipal(
            principal=ADMIN, reason=identity_change_pb2.PRINCIPAL_REVOCATION_REASON_DEPARTED
        )
    )
    assert chain.commit(ADMIN, admin_key, revoked_admin) == [(True, "")]
    # A revoked administrator can sign nothing more; the validator key still can (recovery).
    again = register_principal_change(
        f"{ORG}/principals/late", 1, [], [SigningKey.generate().public_key]
    )
    assert chain.commit(ADMIN, admin_key, again) == [(False, "SIGNER_REVOKED")]
    assert chain.commit(ORG, chain.validators[ORG], again) == [(True, "")]


def test_replay_rebuilds_the_same_view(
    chain: Chain, tmp_path_factory: pytest.TempPathFactory
) -> None:
    admin_key: SigningKey = chain.admin_key  # type: ignore[attr-defined]
    for i in range(3):
        chain.commit(
            ADMIN,
            admin_key,
            register_principal_change(
                f"{ORG}/principals/p-{i}", 1, ["r"], [SigningKey.generate().public_key]
            ),
        )
    before = chain.store.list_principals(
        organisation=None, role="", kind=0, show_revoked=True, after="", limit=100
    )
    chain.store.reset_view()
    assert chain.store.height() == -1
    for block in chain.blocks:
        chain.store.apply_block(block.header.height, partial(_apply, chain.rules, block=block))
    after = chain.store.list_principals(
        organisation=None, role="", kind=0, show_revoked=True, after="", limit=100
    )
    assert [p.SerializeToString() for p in after] == [p.SerializeToString() for p in before]
    assert (
        len(
            chain.store.list_principals(
                organisation=ORG, role="r", kind=1, show_revoked=False, after="", limit=2
            )
        )
        == 2
    )
    with pytest.raises(ValueError, match="already applied"):
        chain.store.apply_block(1, lambda view: None)


def test_forged_signature_is_refused(chain: Chain) -> None:
    admin_key: SigningKey = chain.admin_key  # type: ignore[attr-defined]
    tx = tx_pb.Transaction()
    tx.ParseFromString(
        change_transaction(
            "c",
            ADMIN,
            admin_key,
            register_principal_change(
                f"{ORG}/principals/f", 1, [], [SigningKey.generate().public_key]
            ),
        )
    )
    tx.signature = bytes(64)
    chain.height += 1
    block = ledger_pb.Block(
        header=ledger_pb.BlockHeader(height=chain.height, timestamp_unix_ms=T0), transactions=[tx]
    )
    outcomes, _ = chain.store.apply_block(
        chain.height, lambda view: chain.rules.apply_block(view, block)
    )
    assert [(o.applied, o.reason) for o in outcomes] == [(False, "TX_BAD_SIGNATURE")]
