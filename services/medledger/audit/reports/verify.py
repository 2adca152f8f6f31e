"""Offline verification of a JSON audit report with only the validators' public keys.

Checks, in order, and stops at the first failure (its reason names the part that is wrong):
the validator set is the trusted one; the checkpoint signature; the anchor is final; the
anchoring block's header and finality certificate; the anchor transaction is in that block
and carries exactly this checkpoint, signed by the checkpoint's key; then every entry — its
leaf hash from its bytes, its readable fields from its bytes, and its inclusion proof against
the checkpoint root.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from medledger._gen.common.v1 import (
    audit_event_pb2,
    transaction_pb2,
    validator_pb2,
)
from medledger._gen.ledger.v1 import ledger_service_pb2
from medledger.audit.checkpoints import checkpoint_signature_valid
from medledger.audit.reports.content import (
    REPORT_FORMAT_VERSION,
    disclosure_fields,
    event_fields,
)
from medledger.crypto import SigningContext, VerifyKey
from medledger.crypto.errors import CryptoError
from medledger.ledgerclient import (
    LightClientError,
    header_hash,
    validator_set_hash,
    verify_certificate,
    verify_receipt,
)
from medledger.merkle import ProofError, leaf_hash, verify_inclusion

_FINAL = "FINAL"


class ReportVerificationError(Exception):
    """The report failed a check; `reason` names which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class VerifiedReport:
    kind: str
    entry_count: int
    log_id: str
    tree_size: int
    block_height: int
    block_hash: str


def trusted_validators_from_genesis(path: Path) -> tuple[ledger_service_pb2.ValidatorSet, str]:
    """The initial validator set and chain id named by a genesis file."""
    raw = _load_json(path, "genesis")
    try:
        validators = [
            validator_pb2.Validator(
                organisation="organisations/" + str(v["organisation"]),
                name=str(v["name"]),
                public_key=bytes.fromhex(str(v["public_key"])),
                power=int(v.get("power", 1)),
            )
            for v in raw["validators"]
        ]
        chain_id = str(raw["chain_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportVerificationError("BAD_TRUST_ROOT", f"{path} is not a genesis file") from exc
    return _validator_set(validators), chain_id


def trusted_validators_from_file(path: Path) -> ledger_service_pb2.ValidatorSet:
    """A ValidatorSet in protobuf JSON (as GetValidatorSet returns it)."""
    raw = _load_json(path, "validator set")
    try:
        parsed = json_format.ParseDict(raw, ledger_service_pb2.ValidatorSet())
    except json_format.ParseError as exc:
        raise ReportVerificationError("BAD_TRUST_ROOT", f"{path}: {exc}") from exc
    return _validator_set(list(parsed.validators))


def _validator_set(validators: list[validator_pb2.Validator]) -> ledger_service_pb2.ValidatorSet:
    result = ledger_service_pb2.ValidatorSet(
        validators=validators, total_power=sum(v.power for v in validators)
    )
    result.hash = validator_set_hash(result)
    return result


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportVerificationError(
            "BAD_TRUST_ROOT", f"cannot read {what} {path}: {exc}"
        ) from exc


def _fail(reason: str, message: str) -> ReportVerificationError:
    return ReportVerificationError(reason, message)


def _hex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise _fail("REPORT_MALFORMED", f"{what} is not hex") from None


def verify_report(
    report: Any,
    trusted: ledger_service_pb2.ValidatorSet,
    chain_id: str | None = None,
) -> VerifiedReport:
    """Verify a parsed JSON report; raises ReportVerificationError at the first failure."""
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT_VERSION:
        raise _fail("REPORT_MALFORMED", f"not a {REPORT_FORMAT_VERSION} report")
    try:
        checkpoint = report["checkpoint"]
        anchor = report["anchor"]
        entries = report["entries"]
        summary = report["summary"]
        log_id = str(checkpoint["log_id"])
        tree_size = int(checkpoint["tree_size"])
        root = _hex(checkpoint["root_hash"], "checkpoint root")
        time_ms = int(checkpoint["time_unix_ms"])
        signer_key = _hex(checkpoint["signer_public_key"], "checkpoint key")
        signature = _hex(checkpoint["signature"], "checkpoint signature")
        signer = str(checkpoint["signer"])
        signer_key_id = str(checkpoint["signer_key_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail("REPORT_MALFORMED", f"missing or bad field {exc}") from exc

    _check_validator_set(report.get("validator_set"), trusted)

    if not checkpoint_signature_valid(signer_key, signature, log_id, tree_size, root, time_ms):
        raise _fail("BAD_CHECKPOINT_SIGNATURE", "the checkpoint signature does not verify")
    try:
        key_id = VerifyKey(signer_key).key_id
    except CryptoError as exc:
        raise _fail("BAD_CHECKPOINT_SIGNATURE", str(exc)) from exc
    if key_id != signer_key_id:
        raise _fail("BAD_CHECKPOINT_SIGNATURE", "signer key id does not match the public key")

    if not isinstance(anchor, dict) or anchor.get("state") != _FINAL or "receipt" not in anchor:
        raise _fail("UNANCHORED_CHECKPOINT", "the checkpoint has no final anchor on the ledger")
    try:
        receipt = json_format.ParseDict(anchor["receipt"], ledger_service_pb2.TransactionReceipt())
    except json_format.ParseError as exc:
        raise _fail("REPORT_MALFORMED", f"anchor receipt: {exc}") from exc
    block_hash = _check_block(receipt, trusted, chain_id)
    _check_anchor_transaction(
        receipt, log_id, tree_size, root, time_ms, signer, signer_key_id, signer_key, signature
    )

    if not isinstance(entries, list):
        raise _fail("REPORT_MALFORMED", "entries is not a list")
    accounting_report = report.get("kind") == "ACCOUNTING_OF_DISCLOSURES"
    parameters = report.get("parameters") or {}
    seen: set[int] = set()
    for position, entry in enumerate(entries):
        index = _check_entry(entry, position, tree_size, root, accounting_report, parameters)
        if index in seen:
            raise _fail("DUPLICATE_ENTRY", f"entry {position}: leaf {index} appears twice")
        seen.add(index)
    if not isinstance(summary, dict) or summary.get("entry_count") != len(entries):
        raise _fail("ENTRY_COUNT_MISMATCH", "the summary's entry count differs from the entries")
    return VerifiedReport(
        kind=str(report.get("kind", "")),
        entry_count=len(entries),
        log_id=log_id,
        tree_size=tree_size,
        block_height=receipt.height,
        block_hash=block_hash.hex(),
    )


def _check_validator_set(carried: Any, trusted: ledger_service_pb2.ValidatorSet) -> None:
    if carried is None:
        return
    try:
        parsed = json_format.ParseDict(carried, ledger_service_pb2.ValidatorSet())
    except json_format.ParseError as exc:
        raise _fail("REPORT_MALFORMED", f"validator set: {exc}") from exc
    if validator_set_hash(parsed) != validator_set_hash(trusted):
        raise _fail("UNTRUSTED_VALIDATOR_SET", "the report's validator set is not the trusted one")


_CERTIFICATE_REASONS = {
    "BAD_SIGNATURE",
    "NO_QUORUM",
    "BAD_SIGNER",
    "BAD_VALIDATOR_KEY",
    "WRONG_CHAIN",
    "WRONG_HEIGHT",
}


def _check_block(
    receipt: ledger_service_pb2.TransactionReceipt,
    trusted: ledger_service_pb2.ValidatorSet,
    chain_id: str | None,
) -> bytes:
    if chain_id is not None and receipt.header.chain_id != chain_id:
        raise _fail("WRONG_CHAIN", f"the anchor is on chain {receipt.header.chain_id!r}")
    try:
        block_hash = verify_certificate(receipt.header, receipt.finality_certificate, trusted)
    except LightClientError as exc:
        if exc.reason == "HEADER_HASH_MISMATCH":
            raise _fail("BLOCK_HEADER_TAMPERED", exc.detail) from exc
        if exc.reason == "WRONG_VALIDATOR_SET":
            raise _fail("UNTRUSTED_VALIDATOR_SET", exc.detail) from exc
        if exc.reason in _CERTIFICATE_REASONS:
            raise _fail("BAD_FINALITY_CERTIFICATE", f"{exc.reason}: {exc.detail}") from exc
        raise _fail("BAD_ANCHOR_BLOCK", str(exc)) from exc
    try:
        verify_receipt(receipt, trusted)
    except LightClientError as exc:
        raise _fail("ANCHOR_NOT_IN_BLOCK", f"{exc.reason}: {exc.detail}") from exc
    if header_hash(receipt.header) != block_hash:  # pragma: no cover - verify_certificate's job
        raise _fail("BLOCK_HEADER_TAMPERED", "header hash changed")
    return block_hash


def _check_anchor_transaction(
    receipt: ledger_service_pb2.TransactionReceipt,
    log_id: str,
    tree_size: int,
    root: bytes,
    time_ms: int,
    signer: str,
    signer_key_id: str,
    signer_key: bytes,
    signature: bytes,
) -> None:
    tx = receipt.transaction
    try:
        VerifyKey(tx.signer_public_key).verify(SigningContext.TRANSACTION, tx.body, tx.signature)
        body = transaction_pb2.TransactionBody.FromString(tx.body)
    except (CryptoError, DecodeError) as exc:
        raise _fail(
            "ANCHOR_MISMATCH", f"the anchor transaction is not validly signed: {exc}"
        ) from exc
    if tx.signer_public_key != signer_key:
        raise _fail("ANCHOR_MISMATCH", "the anchor was signed by another key than the checkpoint")
    if not body.HasField("audit_checkpoint_anchor"):
        raise _fail("ANCHOR_MISMATCH", "the anchoring transaction anchors no checkpoint")
    a = body.audit_checkpoint_anchor
    expected = (log_id, tree_size, root, time_ms, signer, signer_key_id, signature)
    actual = (
        a.log_id,
        a.tree_size,
        a.root_hash,
        a.checkpoint_time_unix_ms,
        a.signer,
        a.signer_key_id,
        a.signature,
    )
    if actual != expected:
        raise _fail("ANCHOR_MISMATCH", "the anchored checkpoint differs from the report's")


def _check_entry(
    entry: Any,
    position: int,
    tree_size: int,
    root: bytes,
    accounting_report: bool,
    parameters: dict[str, Any],
) -> int:
    where = f"entry {position}"
    try:
        index = int(entry["leaf_index"])
        data = base64.b64decode(entry["leaf_data"], validate=True)
        claimed_hash = _hex(entry["leaf_hash"], f"{where} leaf hash")
        proof = [_hex(h, f"{where} proof") for h in entry["inclusion_proof"]]
        shown = entry["event"]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _fail("REPORT_MALFORMED", f"{where}: missing or bad field {exc}") from exc
    if leaf_hash(data) != claimed_hash:
        raise _fail("ENTRY_TAMPERED", f"{where} (leaf {index}): its bytes do not hash to its leaf")
    try:
        event = audit_event_pb2.AuditEvent.FromString(data)
    except DecodeError as exc:
        raise _fail("ENTRY_TAMPERED", f"{where} (leaf {index}): not an audit event") from exc
    if shown != event_fields(event):
        raise _fail("ENTRY_TAMPERED", f"{where} (leaf {index}): shown fields differ from its bytes")
    if accounting_report and entry.get("disclosure") != disclosure_fields(event):
        raise _fail("ENTRY_TAMPERED", f"{where} (leaf {index}): disclosure fields were altered")
    patient = parameters.get("patient_pseudonym")
    if patient and event.patient_pseudonym != patient:
        raise _fail("ENTRY_OUTSIDE_REPORT", f"{where} (leaf {index}) is about another patient")
    principal = parameters.get("principal")
    if principal and event.actor.principal != principal:
        raise _fail("ENTRY_OUTSIDE_REPORT", f"{where} (leaf {index}) is by another principal")
    try:
        verify_inclusion(claimed_hash, index, tree_size, proof, root)
    except ProofError as exc:
        raise _fail(
            "BAD_INCLUSION_PROOF", f"{where} (leaf {index}) is not in the checkpoint: {exc}"
        ) from exc
    return index
