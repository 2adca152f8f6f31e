"""docs/signing.md states the exact signed bytes; check every value in it against the code."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from medledger.crypto import (
    SigningContext,
    SigningKey,
    signed_bytes,
    verify_key_from_pem,
    verify_key_to_pem,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "signing.md"
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PAYLOAD = bytes.fromhex("0a0474782d3110011a0568656c6c6f")


def _doc() -> str:
    return DOC.read_text()


def _table_value(text: str, item: str) -> str:
    match = re.search(rf"^\| {re.escape(item)} \| `([^`]+)`", text, re.MULTILINE)
    assert match, f"no row {item!r} in {DOC}"
    return match.group(1)


def test_every_context_is_documented_with_its_prefix() -> None:
    text = _doc()
    for context in SigningContext:
        assert f"| `{context.name}` | `{context.value}` |" in text
        prefix = (context.value.encode("ascii") + b"\x00").hex()
        assert f"| `{context.name}` | `{prefix}` |" in text


def test_worked_example_values() -> None:
    text = _doc()
    key = SigningKey.from_seed(SEED)
    context = SigningContext(_table_value(text, "context"))
    assert bytes.fromhex(_table_value(text, "payload (hex)")) == PAYLOAD
    assert _table_value(text, "public key (raw, hex)") == key.public_key.raw.hex()
    assert _table_value(text, "key id") == key.public_key.key_id
    assert _table_value(text, "signed bytes (hex)") == signed_bytes(context, PAYLOAD).hex()
    signature = bytes.fromhex(_table_value(text, "signature (hex)"))
    assert signature == key.sign(context, PAYLOAD)
    key.public_key.verify(context, PAYLOAD, signature)
    pem_body = _table_value(text, "public key (PEM)")
    assert pem_body in verify_key_to_pem(key.public_key).decode()
    pem = f"-----BEGIN PUBLIC KEY-----\n{pem_body}\n-----END PUBLIC KEY-----\n".encode()
    assert verify_key_from_pem(pem) == key.public_key


def test_worked_example_script_prints_the_documented_values() -> None:
    text = _doc()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(blocks[0], str(DOC), "exec"), {})  # noqa: S102 (our own document)
    lines = output.getvalue().split()
    assert lines == [
        _table_value(text, "public key (raw, hex)"),
        _table_value(text, "key id"),
        _table_value(text, "signed bytes (hex)"),
        _table_value(text, "signature (hex)"),
    ]
