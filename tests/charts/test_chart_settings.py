"""Each workload passes exactly the settings its service reads.

The MEDLEDGER_* names a pod gets (from the shared ConfigMap and its own env) are checked
against the fields of that service's Settings class, imported from the code: no unknown
name, nothing required left unset. Then the settings are loaded the way the pod would load
them, with every mounted file laid out under a temporary root, so types, validators and the
paths of mounted Secrets are proven to agree with the code.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import pytest

from medledger.admin.cli import BootstrapSettings
from medledger.audit import main as audit_main
from medledger.consent import main as consent_main
from medledger.core.settings import ENV_PREFIX, SETTINGS_FILE_VARIABLE, CommonSettings
from medledger.crypto.keys import load_signing_key
from medledger.identity import main as identity_main
from medledger.ledger import main as ledger_main
from medledger.records import main as records_main
from tests.charts.chart_rendering import (
    Manifest,
    named,
    of_kind,
    pod_spec,
    rendered_manifests,
    value_sets,
    workloads,
)

VALUE_SETS = sorted(value_sets())

SETTINGS: dict[str, type[CommonSettings]] = {
    "identity": identity_main.Settings,
    "consent": consent_main.Settings,
    "records": records_main.Settings,
    "ledger": ledger_main.Settings,
    "audit": audit_main.Settings,
    "bootstrap": BootstrapSettings,
}

# Read by the settings machinery itself rather than a field.
MACHINERY_VARIABLES = {SETTINGS_FILE_VARIABLE}

# Settings whose code default is wrong in a pod even though the code accepts it: a relative
# path, a key the service would generate inside the pod, a local chain id, a loopback
# address. The chart must set each of them.
MUST_SET: dict[str, set[str]] = {
    "common": {"ORG_ID", "DATA_DIR", "GRPC_HOST", "NATS_URL"},
    "identity": {"GRPC_PORT", "CHAIN_ID", "SERVICE_KEY_FILE"},
    "consent": {"GRPC_PORT", "CHAIN_ID"},
    "records": {
        "GRPC_PORT",
        "CHAIN_ID",
        "SERVICE_KEY_FILE",
        "STUDY_KEY_FILE",
        "KEK_DIR",
        "CURRENT_KEK_ID",
        "STORAGE_BACKEND",
    },
    "ledger": {"GRPC_PORT", "GENESIS_FILE", "VALIDATOR_KEY_FILE"},
    # An empty chain id turns anchoring off; a missing key would be generated in the pod.
    "audit": {"GRPC_PORT", "CHAIN_ID", "SIGNING_KEY_FILE", "STREAM_REPLICAS"},
    "bootstrap": {"AUDIT_STREAM_REPLICAS"},
}

# What a secretKeyRef stands for while loading: any well-formed value of the setting.
SECRET_PLACEHOLDERS = {
    "MEDLEDGER_DATABASE_URL": "postgresql://medledger:placeholder@db.invalid:5432/medledger",
}


def _field_variables(settings: type[CommonSettings]) -> set[str]:
    return {ENV_PREFIX + name.upper() for name in settings.model_fields}


def _required_variables(settings: type[CommonSettings]) -> set[str]:
    return {
        ENV_PREFIX + name.upper()
        for name, field in settings.model_fields.items()
        if field.is_required()
    }


def _relative_path_defaults(settings: type[CommonSettings]) -> set[str]:
    return {
        ENV_PREFIX + name.upper()
        for name, field in settings.model_fields.items()
        if isinstance(field.default, PurePath) and not field.default.is_absolute()
    }


@dataclass(frozen=True)
class Variable:
    """One setting as the pod receives it: a literal, or a reference to a Secret key."""

    value: str | None
    secret: tuple[str, str] | None = None


def _component(workload: Manifest) -> str:
    labels = workload["metadata"]["labels"]
    return str(labels["app.kubernetes.io/component"])


def _environment(manifests: list[Manifest], container: dict[str, Any]) -> dict[str, Variable]:
    """The MEDLEDGER_* environment of a container, as the kubelet assembles it."""
    environment: dict[str, Variable] = {}
    for source in container.get("envFrom", []):
        config_map = named(manifests, "ConfigMap", source["configMapRef"]["name"])
        for name, value in config_map.get("data", {}).items():
            environment[name] = Variable(str(value))
    names = [variable["name"] for variable in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names in {container['name']}"
    for variable in container.get("env", []):
        assert variable["name"] not in environment, f"{variable['name']} also in the ConfigMap"
        if "value" in variable:
            environment[variable["name"]] = Variable(str(variable["value"]))
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            environment[variable["name"]] = Variable(None, (reference["name"], reference["key"]))
    return {
        name: variable for name, variable in environment.items() if name.startswith("MEDLEDGER")
    }


def _components(value_set: str) -> list[tuple[str, Manifest, dict[str, Any]]]:
    found = []
    for workload in workloads(rendered_manifests(value_set)):
        component = _component(workload)
        if component == "helm-test":
            continue
        (container,) = pod_spec(workload)["containers"]
        found.append((component, workload, container))
    return found


def test_every_component_of_the_chart_has_a_settings_class() -> None:
    seen = {component for value_set in VALUE_SETS for component, _, _ in _components(value_set)}
    assert seen == set(SETTINGS)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_names_are_fields_of_the_service_settings(value_set: str) -> None:
    manifests = rendered_manifests(value_set)
    for component, _, container in _components(value_set):
        settings = SETTINGS[component]
        given = set(_environment(manifests, container))
        unknown = given - _field_variables(settings) - MACHINERY_VARIABLES
        assert unknown == set(), f"{component}: {settings.__module__}.Settings has no {unknown}"
        missing = _required_variables(settings) - given
        assert missing == set(), f"{component}: required settings not set: {missing}"
        must_set = {ENV_PREFIX + name for name in MUST_SET["common"] | MUST_SET[component]}
        must_set |= _relative_path_defaults(settings)
        assert must_set - given == set(), f"{component}: unsafe defaults left: {must_set - given}"


def test_the_helm_test_pod_reads_only_its_own_variables() -> None:
    pod = named(rendered_manifests("tls"), "Pod", "st-mary-medledger-helm-test")
    (container,) = pod_spec(pod)["containers"]
    assert "envFrom" not in container
    names = {variable["name"] for variable in container["env"] if variable["name"].startswith("M")}
    assert names and all(name.startswith("MEDLEDGER_TEST_") for name in names)


class MountedFiles:
    """The files a pod sees under /etc/medledger, laid out beneath a temporary root."""

    def __init__(self, root: Path, manifests: list[Manifest], workload: Manifest) -> None:
        self.root = root
        self._manifests = manifests
        spec = pod_spec(workload)
        self._volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            self._volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": claim}
        (container,) = spec["containers"]
        self._mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}

    def place(self, name: str, path: str) -> Path:
        """Create the file or directory `path` names as its mount would, and return its copy."""
        mount_path = next(
            (m for m in self._mounts if path == m or path.startswith(m.rstrip("/") + "/")), None
        )
        assert mount_path is not None, f"{name}={path} is inside no volume mount"
        mount = self._mounts[mount_path]
        volume = self._volumes[mount["name"]]
        local = self.root / path.lstrip("/")
        if mount_path in {"/data", "/tmp"}:
            local.mkdir(parents=True, exist_ok=True)
            return local
        assert mount.get("readOnly") is True, f"{name}: {mount_path} must be mounted read-only"
        source = volume.get("secret") or volume.get("configMap")
        assert source is not None, f"{name}: {mount['name']} is neither a Secret nor a ConfigMap"
        relative = path[len(mount_path) :].lstrip("/")
        items = {item["path"]: item["key"] for item in source.get("items", [])}
        if not relative:
            local.mkdir(parents=True, exist_ok=True)
            for item_path, key in items.items():
                (local / item_path).write_bytes(self._content(source, key))
            return local
        if items:
            assert relative in items, f"{name}={path}: the volume projects only {sorted(items)}"
            key = items[relative]
        else:
            key = relative
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self._content(source, key))
        return local

    def _content(self, source: dict[str, Any], key: str) -> bytes:
        """A chart-made Secret's real content; for an existing Secret, 32 random bytes."""
        if "secretName" in source:
            for secret in of_kind(self._manifests, "Secret"):
                if secret["metadata"]["name"] == source["secretName"]:
                    return base64.b64decode(secret["data"][key])
        else:
            for config_map in of_kind(self._manifests, "ConfigMap"):
                if config_map["metadata"]["name"] == source["name"]:
                    return str(config_map["data"][key]).encode()
        return os.urandom(32)


def _load(
    monkeypatch: pytest.MonkeyPatch,
    root: Path,
    manifests: list[Manifest],
    component: str,
    workload: Manifest,
    container: dict[str, Any],
) -> CommonSettings:
    files = MountedFiles(root, manifests, workload)
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, variable in _environment(manifests, container).items():
        if variable.secret is not None:
            value = SECRET_PLACEHOLDERS.get(name, "placeholder")
        else:
            assert variable.value is not None
            value = variable.value
            if value.startswith("/"):
                value = str(files.place(name, value))
        monkeypatch.setenv(name, value)
    return SETTINGS[component]()


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_component_loads_its_rendered_settings(
    value_set: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    manifests = rendered_manifests(value_set)
    values = value_sets()[value_set]
    for component, workload, container in _components(value_set):
        settings = _load(
            monkeypatch, tmp_path / component, manifests, component, workload, container
        )
        assert settings.org_id == values["orgId"]
        if component == "bootstrap":
            continue
        assert (
            settings.grpc_port == pod_spec(workload)["containers"][0]["ports"][0]["containerPort"]
        )
        assert settings.tls_enabled == bool(values.get("tls", {}).get("enabled"))
        if component != "ledger":
            assert settings.model_dump()["chain_id"] == values["chainId"]
        if isinstance(settings, records_main.Settings):
            # The KEK directory holds exactly the projected keys and names the current one.
            provider = records_main.key_provider(settings)
            assert provider.current_kek_id == values["records"]["kek"].get("key", "kek")
            expected = "s3" if values.get("objectStore", {}).get("endpoint") else "dir"
            assert settings.storage_backend == expected


@pytest.mark.parametrize("value_set", ["postgresql", "infra-production"])
def test_one_shared_database_url_puts_each_service_in_its_own_schema(
    value_set: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    manifests = rendered_manifests(value_set)
    references: set[tuple[str, str]] = set()
    dsns: dict[str, str] = {}
    for component, workload, container in _components(value_set):
        variable = _environment(manifests, container).get("MEDLEDGER_DATABASE_URL")
        if component == "ledger":
            assert variable is None, "the validator keeps its own block store"
            continue
        assert variable is not None and variable.secret is not None, component
        references.add(variable.secret)
        settings = _load(
            monkeypatch, tmp_path / component, manifests, component, workload, container
        )
        dsns[component] = settings.database_dsn
    assert len(references) == 1, "one Secret holds the DSN every service reads"
    for service in ("identity", "consent", "records", "audit"):
        assert f"search_path={service}" in dsns[service]


def test_keys_from_chart_made_secrets_load_where_the_services_look(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    manifests = rendered_manifests("minimal")
    loaded = {
        component: _load(monkeypatch, tmp_path / component, manifests, component, workload, c)
        for component, workload, c in _components("minimal")
    }
    audit = loaded["audit"]
    assert isinstance(audit, audit_main.Settings) and audit.signing_key_file is not None
    before = sorted(p.name for p in (tmp_path / "audit" / "data").iterdir())
    audit_main.signing_key(audit)
    # The checkpoint key came from the Secret: nothing was generated in the data dir.
    assert sorted(p.name for p in (tmp_path / "audit" / "data").iterdir()) == before
    identity = loaded["identity"]
    assert isinstance(identity, identity_main.Settings)
    load_signing_key(identity.service_key_file)
    records = loaded["records"]
    assert isinstance(records, records_main.Settings)
    assert records.service_key_file is not None and records.study_key_file is not None
    records_main.signing_key(records)
    assert len(records_main.study_key(records)) == 32
    records_main.key_provider(records)
    assert list((tmp_path / "records" / "data").iterdir()) == []
