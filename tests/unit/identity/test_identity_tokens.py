"""Access tokens: what a verifier accepts and every way a token is refused."""

from __future__ import annotations

import base64
import json

import pytest

from medledger.core.tokens import (
    MalformedJwk,
    TokenBadSignature,
    TokenClaims,
    TokenError,
    TokenExpired,
    TokenIssuer,
    TokenIssuerMismatch,
    TokenWrongAudience,
    jwk_of,
    read_unverified,
    verify_key_from_jwk,
    verify_token,
)
from medledger.crypto import SigningKey

ORG = "organisations/st-mary"
SUBJECT = f"{ORG}/principals/dr-1"
NOW = 1_800_000_000


def _issue(
    issuer: TokenIssuer, now: int = NOW, lifetime: int | None = None
) -> tuple[str, TokenClaims]:
    return issuer.issue(
        subject=SUBJECT,
        roles=["physician", "physician", "nurse"],
        kind="PRACTITIONER",
        principal_key_id="00112233aabbccdd",
        now=now,
        lifetime_seconds=lifetime,
    )


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def issuer(key: SigningKey) -> TokenIssuer:
    return TokenIssuer(ORG, key, lifetime_seconds=300)


def test_issued_token_verifies_with_its_claims(issuer: TokenIssuer, key: SigningKey) -> None:
    token, issued = _issue(issuer)
    claims = verify_token(token, key.public_key, audience="medledger", now=NOW + 10)
    assert claims == issued
    assert claims.subject == SUBJECT and claims.organisation_id == "st-mary"
    assert claims.roles == ("nurse", "physician")
    assert claims.expires_at == NOW + 300
    assert claims.key_id == key.public_key.key_id
    header = read_unverified(token)
    assert (header.key_id, header.issuer) == (key.public_key.key_id, ORG)


def test_lifetime_is_capped(issuer: TokenIssuer) -> None:
    _, claims = _issue(issuer, lifetime=10**6)
    assert claims.expires_at - claims.issued_at == issuer.max_lifetime_seconds


def test_expired_token_is_refused_after_the_leeway(issuer: TokenIssuer, key: SigningKey) -> None:
    token, _ = _issue(issuer)
    verify_token(token, key.public_key, audience="medledger", now=NOW + 300 + 29)
    with pytest.raises(TokenExpired):
        verify_token(token, key.public_key, audience="medledger", now=NOW + 300 + 31)


def test_wrong_audience_is_refused(issuer: TokenIssuer, key: SigningKey) -> None:
    token, _ = _issue(issuer)
    with pytest.raises(TokenWrongAudience):
        verify_token(token, key.public_key, audience="another-consortium", now=NOW)


def test_other_key_and_tampered_payload_are_refused(issuer: TokenIssuer, key: SigningKey) -> None:
    token, _ = _issue(issuer)
    with pytest.raises(TokenBadSignature):
        verify_token(token, SigningKey.generate().public_key, audience="medledger", now=NOW)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["administrator"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenBadSignature):
        verify_token(
            f"{header}.{forged}.{signature}", key.public_key, audience="medledger", now=NOW
        )


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30.e30.", "x" * 10_000])
def test_garbage_is_refused_as_unauthenticated(token: str, key: SigningKey) -> None:
    with pytest.raises(TokenError):
        verify_token(token, key.public_key, audience="medledger", now=NOW)


def test_issuer_only_signs_for_its_own_principals(issuer: TokenIssuer) -> None:
    with pytest.raises(TokenIssuerMismatch):
        issuer.issue(
            subject="organisations/other/principals/p-1",
            roles=[],
            kind="PATIENT",
            principal_key_id="k",
            now=NOW,
        )


def test_jwk_round_trip_and_malformed_jwks(key: SigningKey) -> None:
    jwk = jwk_of(key.public_key)
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA"
    assert verify_key_from_jwk(jwk) == key.public_key
    for bad in (
        {**jwk, "kty": "RSA"},
        {**jwk, "x": "not base64!"},
        {**jwk, "x": jwk["x"][:-4]},
        {**jwk, "kid": "0000000000000000"},
    ):
        with pytest.raises(MalformedJwk):
            verify_key_from_jwk(bad)
