"""The stack's data directory: created with a consortium genesis and keys on the first run,
reused on the next, wiped by --reset, and locked so two stacks never share it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medledger.crypto import SigningKey
from medledger.crypto.keys import load_signing_key, save_signing_key
from medledger.ledger.genesis import ConsensusParameters, Genesis, create_consortium, load_genesis
from medledger.stack.errors import DataDirError
from medledger.stack.topology import CHAIN_ID, HOSPITALS, ORGANISATIONS, DataLayout

MANIFEST_FORMAT = 1
# Quicker than the production defaults so a local consent is final within a second or two,
# with an idle block a second rather than many: a laptop should not fill its disk overnight.
LOCAL_PARAMETERS = ConsensusParameters(
    round_timeout_ms=2000, max_round_timeout_ms=10_000, idle_block_interval_ms=1000
)
# Keys each hospital holds: its first administrator's and its services' signing keys.
HOSPITAL_KEYS = ("admin", "identity", "consent", "records", "audit")
# Symmetric keys: the records service's key-encryption key and study-id key.
HOSPITAL_SECRETS = ("records-kek", "records-study")


@dataclass(frozen=True)
class PreparedData:
    genesis: Genesis
    created: bool


def prepare_data_dir(layout: DataLayout, *, reset: bool = False) -> PreparedData:
    """Make `layout.root` ready: wiped first with `reset`, created when new, else reused."""
    if reset:
        wipe_data_dir(layout)
    created = False
    if not layout.manifest.exists():
        _refuse_foreign_directory(layout.root)
        layout.root.mkdir(parents=True, exist_ok=True)
        # Written first, so an interrupted first run still marks the directory as ours.
        manifest = {
            "format": MANIFEST_FORMAT,
            "chain_id": CHAIN_ID,
            "organisations": list(ORGANISATIONS),
            "created_unix_ms": int(time.time() * 1000),
        }
        layout.manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _check_manifest(layout)
    if not layout.genesis_path.exists():
        shutil.rmtree(layout.consortium_dir, ignore_errors=True)
        create_consortium(
            layout.consortium_dir,
            list(ORGANISATIONS),
            CHAIN_ID,
            int(time.time() * 1000),
            parameters=LOCAL_PARAMETERS,
        )
        created = True
    for organisation in HOSPITALS:
        layout.registration_marker(organisation, "organisation").parent.mkdir(
            parents=True, exist_ok=True
        )
        for name in HOSPITAL_KEYS:
            ensure_signing_key(layout.key(organisation, name))
        for name in HOSPITAL_SECRETS:
            ensure_secret_file(layout.secret(organisation, name))
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    return PreparedData(load_genesis(layout.genesis_path), created)


def wipe_data_dir(layout: DataLayout) -> None:
    """Empty the data directory, but only one that medledger made (or an empty one); the run
    directory stays, since it holds the lock of the stack doing the wiping."""
    if not layout.root.exists():
        return
    if not layout.manifest.exists():
        _refuse_foreign_directory(layout.root)
    for entry in layout.root.iterdir():
        if entry == layout.run_dir:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def ensure_signing_key(path: Path) -> SigningKey:
    """The Ed25519 key in `path`, generated (mode 0600) if the file does not exist yet."""
    if path.exists():
        return load_signing_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    save_signing_key(path, key)
    return key


def ensure_secret_file(path: Path, size: int = 32) -> Path:
    """A file of `size` random bytes (mode 0600), created if missing: a local KEK or similar."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(os.urandom(size))
    return path


def refuse_foreign_directory(layout: DataLayout) -> None:
    """DataDirError unless the directory is absent, empty, or made by medledger."""
    if not layout.manifest.exists():
        _refuse_foreign_directory(layout.root)


def _refuse_foreign_directory(root: Path) -> None:
    if root.exists() and (
        not root.is_dir() or any(entry.name != "run" for entry in root.iterdir())
    ):
        raise DataDirError(
            f"{root} exists and is not a medledger data directory (no stack.json); "
            "choose another --data-dir"
        )


def _check_manifest(layout: DataLayout) -> None:
    try:
        manifest = json.loads(layout.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataDirError(
            f"cannot read {layout.manifest}: {exc}; start fresh with --reset"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataDirError(
            f"{layout.root} was made by another medledger version; start fresh with --reset"
        )


class DataDirLock:
    """An exclusive lock on the data directory for as long as a stack runs from it."""

    def __init__(self, layout: DataLayout) -> None:
        self._path = layout.lock_file
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DataDirError(
                f"{self._path.parent.parent} is in use by another `medledger up` "
                f"(pid {holder}); stop it first or choose another --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
