"""The plaintext commitment: incremental equals one-shot, opens only to its plaintext."""

from __future__ import annotations

import os

from medledger.records.commitment import PlaintextCommitment, commitment_key, open_commitment


def test_commitment_opens_to_its_plaintext_only() -> None:
    data_key, plaintext = os.urandom(32), os.urandom(5000)
    commitment = PlaintextCommitment.for_record(data_key, "rec-1")
    for at in range(0, len(plaintext), 333):
        commitment.update(plaintext[at : at + 333])
    value = commitment.digest()
    key = commitment_key(data_key, "rec-1")
    assert open_commitment(key, plaintext, value)
    assert not open_commitment(key, plaintext + b"x", value)
    assert not open_commitment(commitment_key(data_key, "rec-2"), plaintext, value)
    assert key != data_key
