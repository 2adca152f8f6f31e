"""medledger.crypto.signing: plain Ed25519 over context-prefixed bytes, one context per use."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medledger.crypto import (
    SignatureError,
    SigningContext,
    SigningKey,
    VerifyKey,
    signed_bytes,
)

# RFC 8032 §7.1, TEST 1: the empty message.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

KEY = SigningKey.from_seed(RFC8032_SEED)
PAYLOAD = b"\x0a\x03abc\x10\x01"


def test_rfc8032_test_1_with_the_raw_primitive() -> None:
    raw = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)
    assert raw.sign(b"") == RFC8032_SIGNATURE
    Ed25519PublicKey.from_public_bytes(RFC8032_PUBLIC).verify(RFC8032_SIGNATURE, b"")
    assert KEY.public_key.raw == RFC8032_PUBLIC
    assert KEY.seed == RFC8032_SEED


@pytest.mark.parametrize("context", list(SigningContext))
def test_sign_is_plain_ed25519_over_the_documented_bytes(context: SigningContext) -> None:
    expected_message = context.value.encode("ascii") + b"\x00" + PAYLOAD
    assert signed_bytes(context, PAYLOAD) == expected_message
    signature = KEY.sign(context, PAYLOAD)
    assert signature == Ed25519PrivateKey.from_private_bytes(RFC8032_SEED).sign(expected_message)
    Ed25519PublicKey.from_public_bytes(RFC8032_PUBLIC).verify(signature, expected_message)
    KEY.public_key.verify(context, PAYLOAD, signature)


@pytest.mark.parametrize(
    ("signed_in", "checked_in"), list(itertools.permutations(SigningContext, 2))
)
def test_a_signature_never_verifies_in_another_context(
    signed_in: SigningContext, checked_in: SigningContext
) -> None:
    signature = KEY.sign(signed_in, PAYLOAD)
    with pytest.raises(SignatureError) as caught:
        KEY.public_key.verify(checked_in, PAYLOAD, signature)
    assert caught.value.reason == "BAD_SIGNATURE"
    assert not KEY.public_key.is_valid(checked_in, PAYLOAD, signature)


def test_contexts_are_unambiguous_prefixes() -> None:
    values = [context.value for context in SigningContext]
    assert len(set(values)) == len(values)
    for value in values:
        assert value.isascii()
        assert value.startswith("medledger/v1/")
        # No NUL inside a context, so the 0x00 separator makes the prefixes prefix-free.
        assert "\x00" not in value


def test_a_raw_signature_without_context_does_not_verify() -> None:
    bare = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED).sign(PAYLOAD)
    for context in SigningContext:
        assert not KEY.public_key.is_valid(context, PAYLOAD, bare)


def test_tampering_is_detected() -> None:
    context = SigningContext.TRANSACTION
    signature = KEY.sign(context, PAYLOAD)
    assert KEY.public_key.is_valid(context, PAYLOAD, signature)
    assert not KEY.public_key.is_valid(context, PAYLOAD + b"\x00", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not KEY.public_key.is_valid(context, PAYLOAD, flipped)
    other = SigningKey.generate().public_key
    assert not other.is_valid(context, PAYLOAD, signature)
    with pytest.raises(SignatureError, match="64 bytes"):
        KEY.public_key.verify(context, PAYLOAD, signature[:-1])


def test_signatures_are_deterministic() -> None:
    assert KEY.sign(SigningContext.VOTE, PAYLOAD) == KEY.sign(SigningContext.VOTE, PAYLOAD)


def test_verify_key_identity() -> None:
    assert VerifyKey(RFC8032_PUBLIC) == KEY.public_key
    assert hash(VerifyKey(RFC8032_PUBLIC)) == hash(KEY.public_key)
    assert len(KEY.public_key.key_id) == 16
