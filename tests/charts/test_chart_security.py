"""Security properties asserted directly on the rendered objects of every value set."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.charts.chart_rendering import (
    Manifest,
    containers,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    rendered_manifests,
    rendered_text,
    value_sets,
    workloads,
)

VALUE_SETS = sorted(value_sets())

# Settings whose values are secrets: never a literal `value` in a pod spec.
SECRET_SETTINGS = {
    "MEDLEDGER_DATABASE_URL",
    "MEDLEDGER_S3_ACCESS_KEY",
    "MEDLEDGER_S3_SECRET_KEY",
    "MEDLEDGER_VALIDATOR_KEY_PASSPHRASE",
    "MEDLEDGER_SERVICE_KEY_PASSPHRASE",
    "MEDLEDGER_CUSTODIAN_KEY_PASSPHRASE",
    "MEDLEDGER_SIGNING_KEY_PASSPHRASE",
}

# Key files every value set mounts from a Secret: (values section, key) pairs.
KEY_FILES = (
    ("ledger", "validatorKey"),
    ("identity", "serviceKey"),
    ("records", "kek"),
    ("records", "serviceKey"),
    ("records", "studyKey"),
    ("audit", "signingKey"),
)

# Value sets in which every secret comes from an existingSecret.
EXISTING_SECRET_SETS = ("defaults", "tls", "full", "infra-production", "infra-kind")


def _effective(container: dict[str, Any], pod: dict[str, Any], key: str) -> Any:
    """A container's security setting, falling back to the pod's as the kubelet does."""
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_is_locked_down(value_set: str) -> None:
    manifests = rendered_manifests(value_set)
    assert workloads(manifests)
    for workload in workloads(manifests):
        spec = pod_spec(workload)
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, name
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), name
        assert all("hostPath" not in volume for volume in spec.get("volumes", [])), name
        for container in containers(workload):
            context = container["securityContext"]
            assert _effective(container, spec, "runAsNonRoot") is True, name
            assert _effective(container, spec, "runAsUser") >= 10000, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context.get("privileged", False) is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in context["capabilities"], name
            assert _effective(container, spec, "seccompProfile") == {"type": "RuntimeDefault"}, name
            assert {"limits", "requests"} <= set(container["resources"]), name


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_only_writable_paths_are_data_and_tmp_volumes(value_set: str) -> None:
    for workload in workloads(rendered_manifests(value_set)):
        volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": claim}
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                writable = not mount.get("readOnly", False) and "configMap" not in volume
                if writable:
                    assert mount["mountPath"] in {"/data", "/tmp"}, mount


def _env_of_all_containers(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [
        variable
        for workload in workloads(manifests)
        for container in containers(workload)
        for variable in container.get("env", [])
    ]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_secret_settings_are_referenced_never_inlined(value_set: str) -> None:
    manifests = rendered_manifests(value_set)
    for variable in _env_of_all_containers(manifests):
        if variable["name"] in SECRET_SETTINGS:
            assert "value" not in variable, variable
            assert "secretKeyRef" in variable["valueFrom"], variable
    for config_map in of_kind(manifests, "ConfigMap"):
        assert not SECRET_SETTINGS & set(config_map.get("data", {})), config_map["metadata"]["name"]


@pytest.mark.parametrize("value_set", EXISTING_SECRET_SETS)
def test_with_existing_secrets_the_chart_renders_no_secret_and_points_at_them(
    value_set: str,
) -> None:
    values = value_sets()[value_set]
    manifests = rendered_manifests(value_set)
    assert of_kind(manifests, "Secret") == []
    wanted = {values[section][key]["existingSecret"] for section, key in KEY_FILES}
    for section in ("postgresql", "objectStore"):
        if values.get(section, {}).get("existingSecret"):
            wanted.add(values[section]["existingSecret"])
    if values.get("nats", {}).get("credentials", {}).get("existingSecret"):
        wanted.add(values["nats"]["credentials"]["existingSecret"])
    if values.get("consent", {}).get("custodian", {}).get("existingSecret"):
        wanted.add(values["consent"]["custodian"]["existingSecret"])
    referenced = {
        volume["secret"]["secretName"]
        for workload in workloads(manifests)
        for volume in pod_spec(workload).get("volumes", [])
        if "secret" in volume
    } | {
        variable["valueFrom"]["secretKeyRef"]["name"]
        for variable in _env_of_all_containers(manifests)
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert wanted <= referenced


def test_chart_made_key_secrets_hold_their_values_and_nothing_else_shows_them() -> None:
    values = value_sets()["minimal"]
    manifests = rendered_manifests("minimal")
    text = rendered_text("minimal")
    for section, key, suffix in (
        ("identity", "serviceKey", "identity-key"),
        ("records", "serviceKey", "records-key"),
        ("records", "studyKey", "records-study-key"),
        ("audit", "signingKey", "audit-key"),
        ("records", "kek", "kek"),
    ):
        value = values[section][key]["value"]
        secret = named(manifests, "Secret", f"st-mary-medledger-{suffix}")
        (content,) = secret["data"].values()
        assert base64.b64decode(content).decode() == value
        # Signing keys and KEKs outlive a release: uninstalling must not destroy them.
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        body = value.strip().splitlines()[len(value.strip().splitlines()) // 2]
        assert body not in text


def test_a_generated_secret_holds_the_value_and_nothing_else_shows_it() -> None:
    values = value_sets()["postgresql"]
    dsn = values["postgresql"]["url"]
    manifests = rendered_manifests("postgresql")
    secret = named(manifests, "Secret", "st-mary-medledger-postgresql")
    assert base64.b64decode(secret["data"]["database-url"]).decode() == dsn
    assert dsn not in rendered_text("postgresql")
    assert "not-a-real-password" not in rendered_text("postgresql")


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "the chart only selects by labels"
    match: dict[str, str] = selector.get("matchLabels", {})
    return all(labels.get(key) == value for key, value in match.items())


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_network_policies_deny_by_default_and_open_only_named_flows(value_set: str) -> None:
    manifests = rendered_manifests(value_set)
    policies = of_kind(manifests, "NetworkPolicy")
    for workload in workloads(manifests):
        labels = pod_labels(workload)
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        deny_all = [
            p for p in selecting if "ingress" not in p["spec"] and "egress" not in p["spec"]
        ]
        assert deny_all, f"no default-deny policy selects {name}"
        assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in selecting)
        assert len(selecting) >= 2, f"no policy opens the flows of {name}"
    for policy in policies:
        # An empty peer list means "everyone": every rule must name its peers and ports.
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from") and rule.get("ports"), policy["metadata"]["name"]
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to") and rule.get("ports"), policy["metadata"]["name"]


def test_records_alone_may_reach_the_object_store() -> None:
    manifests = rendered_manifests("infra-production")
    object_store_port = 9000
    for policy in of_kind(manifests, "NetworkPolicy"):
        ports = {
            port["port"] for rule in policy["spec"].get("egress", []) for port in rule["ports"]
        }
        reaches = object_store_port in ports
        assert reaches == (policy["metadata"]["name"] == "st-mary-medledger-records")
