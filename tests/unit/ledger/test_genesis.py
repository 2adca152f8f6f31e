"""Genesis files: generation for a local consortium, validation with clear errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medledger.crypto.keys import load_signing_key
from medledger.ledger.genesis import (
    GenesisError,
    consensus_genesis,
    create_consortium,
    load_genesis,
    replica_config,
    validator_index,
    validator_key_path,
)


def test_create_consortium_writes_keys_and_a_loadable_genesis(tmp_path: Path) -> None:
    orgs = ["org-a", "org-b", "org-c", "org-d"]
    genesis = create_consortium(tmp_path, orgs, "local-chain", 1_700_000_000_000)
    loaded = load_genesis(tmp_path / "genesis.json")
    assert loaded == genesis
    assert loaded.fault_tolerance == 1
    for index, org in enumerate(orgs):
        path = validator_key_path(tmp_path, org)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = load_signing_key(path)
        assert validator_index(loaded, key.public_key) == index
    cons = consensus_genesis(loaded)
    assert cons.validators.size == 4
    assert cons.validators.quorum == 3
    assert replica_config(loaded, 2).index == 2
    # The genesis holds public keys only.
    text = (tmp_path / "genesis.json").read_text()
    assert "PRIVATE" not in text


def test_bad_genesis_files_name_the_problem(tmp_path: Path) -> None:
    create_consortium(tmp_path, ["org-a", "org-b", "org-c", "org-d"], "c", 0)
    raw = json.loads((tmp_path / "genesis.json").read_text())
    raw["validators"][1]["public_key"] = raw["validators"][0]["public_key"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(GenesisError, match="public keys must be unique"):
        load_genesis(bad)
    raw["validators"][1]["public_key"] = "zz"
    bad.write_text(json.dumps(raw))
    with pytest.raises(GenesisError, match=r"validators\.1\.public_key"):
        load_genesis(bad)
    with pytest.raises(GenesisError, match="cannot read"):
        load_genesis(tmp_path / "missing.json")
    raw = json.loads((tmp_path / "genesis.json").read_text())
    raw["surprise"] = 1
    bad.write_text(json.dumps(raw))
    with pytest.raises(GenesisError, match="surprise"):
        load_genesis(bad)


def test_unknown_key_is_not_a_validator(tmp_path: Path) -> None:
    from medledger.crypto import SigningKey

    genesis = create_consortium(tmp_path, ["org-a"], "c", 0)
    with pytest.raises(GenesisError, match="not a validator key"):
        validator_index(genesis, SigningKey.generate().public_key)
