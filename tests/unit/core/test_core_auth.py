"""Authenticators and the authorisation table, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.core.auth import (
    ANY_AUTHENTICATED,
    AllowAll,
    AuthorisationTable,
    CallerIdentity,
    RejectAll,
    StaticTokens,
    bearer_token,
)
from medledger.core.errors import PermissionDenied, Unauthenticated

NURSE = CallerIdentity("prn-n1", "org-a", frozenset({"nurse"}))
TABLE = AuthorisationTable.of(
    {"/p.S/Read": {"nurse", "physician"}, "/p.S/Whoami": {ANY_AUTHENTICATED}},
    public=["/p.S/Challenge"],
)


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc.def")]) == "abc.def"
    assert bearer_token([("Authorization", b"bearer xyz")]) == "xyz"
    assert bearer_token([("x-other", "1")]) is None
    with pytest.raises(Unauthenticated) as raised:
        bearer_token([("authorization", "Basic dXNlcjpwdw==")])
    assert raised.value.reason == "INVALID_TOKEN"


async def test_static_tokens() -> None:
    authenticator = StaticTokens({"t-nurse": NURSE})
    assert (
        await authenticator.authenticate("/p.S/Read", [("authorization", "Bearer t-nurse")])
        == NURSE
    )
    with pytest.raises(Unauthenticated) as missing:
        await authenticator.authenticate("/p.S/Read", [])
    assert missing.value.reason == "MISSING_TOKEN"
    with pytest.raises(Unauthenticated) as wrong:
        await authenticator.authenticate("/p.S/Read", [("authorization", "Bearer t-nurs")])
    assert wrong.value.reason == "INVALID_TOKEN"


async def test_allow_all_and_reject_all() -> None:
    assert await AllowAll(NURSE).authenticate("/p.S/Read", []) == NURSE
    with pytest.raises(Unauthenticated):
        await RejectAll().authenticate("/p.S/Read", [("authorization", "Bearer x")])


def test_table_denies_by_default_and_checks_roles() -> None:
    TABLE.authorise("/p.S/Read", NURSE)
    TABLE.authorise("/p.S/Whoami", CallerIdentity("prn-x", "org-b"))
    with pytest.raises(PermissionDenied) as unlisted:
        TABLE.authorise("/p.S/Delete", NURSE)
    assert unlisted.value.reason == "METHOD_NOT_AUTHORISED"
    with pytest.raises(PermissionDenied) as role:
        TABLE.authorise("/p.S/Read", CallerIdentity("prn-a", "org-a", frozenset({"auditor"})))
    assert role.value.reason == "ROLE_NOT_ALLOWED"


def test_public_methods() -> None:
    assert TABLE.is_public("/p.S/Challenge")
    assert TABLE.is_public("/grpc.health.v1.Health/Check")
    assert TABLE.is_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not TABLE.is_public("/p.S/Read")


def test_table_rejects_malformed_and_duplicate_methods() -> None:
    with pytest.raises(ValueError, match="full method name"):
        AuthorisationTable.of({"Read": {"nurse"}})
    with pytest.raises(ValueError, match="authorised twice"):
        TABLE.merge(AuthorisationTable.of({"/p.S/Read": {"admin"}}))


def test_static_tokens_file_loads_and_bad_files_are_named(tmp_path: Path) -> None:
    import json

    from medledger.core.auth import load_static_tokens
    from medledger.core.errors import SettingsError

    good = tmp_path / "tokens.json"
    good.write_text(
        json.dumps(
            {"t-1": {"principal": "p/1", "org": "org-a", "roles": ["auditor"], "kind": "auditor"}}
        )
    )
    tokens = load_static_tokens(good)
    assert isinstance(tokens, StaticTokens)
    bad = tmp_path / "bad.json"
    bad.write_text('{"t-1": {"org": "org-a"}}')
    with pytest.raises(SettingsError, match="MEDLEDGER_API_TOKENS_FILE") as info:
        load_static_tokens(bad)
    assert info.value.reason == "BAD_API_TOKENS_FILE"
