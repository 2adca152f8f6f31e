"""The chart renders every value set into the objects the architecture needs, and lints clean."""

from __future__ import annotations

import ipaddress
from typing import Any

import helm_python as helm
import pytest

from tests.charts.chart_rendering import (
    CHART_DIR,
    containers,
    manifests_of,
    named,
    notes,
    of_kind,
    pod_spec,
    render_templates,
    rendered_manifests,
    value_sets,
    workloads,
)

VALUE_SETS = sorted(value_sets())
GRPC_PORTS = {
    "identity": 50051,
    "consent": 50052,
    "records": 50053,
    "ledger": 50054,
    "audit": 50055,
}
STATELESS = ("identity", "consent", "records", "audit")


def _name(component: str) -> str:
    return f"st-mary-medledger-{component}"


def test_the_value_sets_cover_the_required_configurations() -> None:
    assert {"defaults", "minimal", "tls", "postgresql", "infra-production", "infra-kind"} <= set(
        VALUE_SETS
    )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_component_is_a_workload_with_its_service(value_set: str) -> None:
    manifests = rendered_manifests(value_set)
    for component in STATELESS:
        deployment = named(manifests, "Deployment", _name(component))
        (container,) = pod_spec(deployment)["containers"]
        assert container["args"] == ["serve", component]
        service = named(manifests, "Service", _name(component))
        assert {"name": "grpc", "port": GRPC_PORTS[component]}.items() <= service["spec"]["ports"][
            0
        ].items()
    ledger = named(manifests, "StatefulSet", _name("ledger"))
    assert ledger["spec"]["replicas"] == 1
    (claim,) = ledger["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert named(manifests, "Service", _name("ledger") + "-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_containers_are_configured_by_medledger_settings(value_set: str) -> None:
    manifests = rendered_manifests(value_set)
    config = named(manifests, "ConfigMap", "st-mary-medledger-config")["data"]
    # Pods listen on every interface so their Service can reach them.
    assert ipaddress.ip_address(config["MEDLEDGER_GRPC_HOST"]).is_unspecified
    assert config["MEDLEDGER_DATA_DIR"] == "/data"
    assert config["MEDLEDGER_METRICS_PORT"] == "9464"
    assert all(key.startswith("MEDLEDGER_") for key in config)
    for workload in workloads(manifests):
        for container in containers(workload):
            for variable in container.get("env", []):
                assert variable["name"].startswith(("MEDLEDGER_", "PYTHON")), variable
    for component, port in GRPC_PORTS.items():
        kind = "StatefulSet" if component == "ledger" else "Deployment"
        (container,) = pod_spec(named(manifests, kind, _name(component)))["containers"]
        env = {variable["name"]: variable for variable in container["env"]}
        assert env["MEDLEDGER_GRPC_PORT"]["value"] == str(port)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                # Native gRPC probes: the kubelet speaks grpc.health.v1, no shell needed.
                assert container[probe]["grpc"] == {"port": port}


def test_ledger_gets_its_key_and_genesis_as_files() -> None:
    manifests = rendered_manifests("minimal")
    ledger = named(manifests, "StatefulSet", _name("ledger"))
    (container,) = pod_spec(ledger)["containers"]
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert env["MEDLEDGER_VALIDATOR_KEY_FILE"] == "/etc/medledger/validator/validator.key"
    assert env["MEDLEDGER_GENESIS_FILE"] == "/etc/medledger/genesis/genesis.json"
    volumes = {volume["name"]: volume for volume in pod_spec(ledger)["volumes"]}
    assert volumes["validator-key"]["secret"]["secretName"] == "validator-key"
    genesis = named(manifests, "ConfigMap", "st-mary-medledger-genesis")
    assert volumes["genesis"]["configMap"]["name"] == genesis["metadata"]["name"]
    assert '"chain_id": "medledger-dev"' in genesis["data"]["genesis.json"]


def _checksums(values: dict[str, Any]) -> dict[str, str]:
    deployment = named(manifests_of(render_templates(values)), "Deployment", _name("identity"))
    annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
    return {key: value for key, value in annotations.items() if key.startswith("checksum/")}


def test_pods_roll_when_their_settings_change_and_only_then() -> None:
    base = value_sets()["defaults"]
    before = _checksums(base)
    assert set(before) == {"checksum/config", "checksum/secrets"}
    assert (
        _checksums({**base, "config": {"logLevel": "debug"}})["checksum/config"]
        != before["checksum/config"]
    )
    assert _checksums(helm_merge(base, {"identity": {"replicaCount": 5}})) == before


def test_the_bootstrap_hook_runs_after_install_and_upgrade() -> None:
    manifests = rendered_manifests("infra-production")
    job = named(manifests, "Job", _name("bootstrap"))
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["admin", "bootstrap"]
    env = {variable["name"] for variable in container["env"]}
    assert "MEDLEDGER_DATABASE_URL" in env


def test_the_helm_test_pod_checks_every_component() -> None:
    manifests = rendered_manifests("tls")
    pod = named(manifests, "Pod", _name("helm-test"))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod_spec(pod)["containers"]
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    targets = dict(pair.split("=", 1) for pair in env["MEDLEDGER_TEST_TARGETS"].split(","))
    assert targets == {
        component: f"{_name(component)}.medledger.svc:{port}"
        for component, port in GRPC_PORTS.items()
    }
    assert env["MEDLEDGER_TEST_CERT_FILE"] == "/etc/medledger/tls/tls.crt"
    script = named(manifests, "ConfigMap", _name("helm-test"))["data"]["helm_test.py"]
    assert script == (CHART_DIR / "files" / "helm_test.py").read_text()


def test_stateless_services_scale_and_are_protected_from_disruption() -> None:
    manifests = rendered_manifests("infra-production")
    scaled = {
        hpa["spec"]["scaleTargetRef"]["name"]
        for hpa in of_kind(manifests, "HorizontalPodAutoscaler")
    }
    assert scaled == {_name("identity"), _name("consent"), _name("records")}
    for component in ("identity", "consent", "records"):
        assert "replicas" not in named(manifests, "Deployment", _name(component))["spec"]
    budgets = {pdb["metadata"]["name"] for pdb in of_kind(manifests, "PodDisruptionBudget")}
    assert budgets == {_name("identity"), _name("consent"), _name("records")}
    monitor = named(manifests, "ServiceMonitor", "st-mary-medledger")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_production_pins_the_image_by_digest() -> None:
    for workload in workloads(rendered_manifests("infra-production")):
        for container in containers(workload):
            assert "@sha256:" in container["image"]


def test_tls_comes_from_a_cert_manager_certificate_naming_every_service() -> None:
    manifests = rendered_manifests("tls")
    certificate = named(manifests, "Certificate", "st-mary-medledger")
    assert certificate["spec"]["secretName"] == "st-mary-medledger-tls"
    for component in GRPC_PORTS:
        assert f"{_name(component)}.medledger.svc" in certificate["spec"]["dnsNames"]
    for component, port in GRPC_PORTS.items():
        kind = "StatefulSet" if component == "ledger" else "Deployment"
        (container,) = pod_spec(named(manifests, kind, _name(component)))["containers"]
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        assert env["MEDLEDGER_TLS_CLIENT_CA_FILE"] == "/etc/medledger/tls/ca.crt", port
    # The bootstrap job serves no gRPC: it neither mounts nor names the serving certificate.
    (bootstrap,) = pod_spec(named(manifests, "Job", _name("bootstrap")))["containers"]
    assert not any(v["name"].startswith("MEDLEDGER_TLS_") for v in bootstrap["env"])
    config = named(manifests, "ConfigMap", "st-mary-medledger-config")["data"]
    assert not any(name.startswith("MEDLEDGER_TLS_") for name in config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"orgId": ""}, "orgId is required"),
        ({"chainId": ""}, "chainId is required"),
        (
            {"audit": {"signingKey": {"existingSecret": ""}}},
            "audit.signingKey.existingSecret is required",
        ),
        (
            {"identity": {"serviceKey": {"existingSecret": ""}}},
            "identity.serviceKey.existingSecret is required",
        ),
        (
            {"records": {"studyKey": {"existingSecret": ""}}},
            "records.studyKey.existingSecret is required",
        ),
        (
            {"records": {"kek": {"existingSecret": "", "value": "x", "previousKeys": ["old"]}}},
            "records.kek.previousKeys needs records.kek.existingSecret",
        ),
        (
            {"ledger": {"genesis": {"existingConfigMap": "", "json": '{"chain_id": "other"}'}}},
            'chainId "medledger-consortium" differs from the chain_id "other"',
        ),
        (
            {"ledger": {"validatorKey": {"existingSecret": ""}}},
            "ledger.validatorKey.existingSecret",
        ),
        ({"records": {"kek": {"existingSecret": ""}}}, "records key-encryption key is required"),
        ({"records": {"replicaCount": 3}}, "more than one records replica needs postgresql"),
        ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
        ({"postgresql": {"enabled": True}}, "postgresql.enabled needs postgresql.existingSecret"),
    ],
)
def test_missing_required_settings_fail_the_install_with_a_clear_message(
    change: dict[str, Any], message: str
) -> None:
    values = helm_merge(value_sets()["defaults"], change)
    with pytest.raises(helm.HelmRenderError, match=message):
        render_templates(values)


def helm_merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_nothing_renders_without_the_settings_only_the_operator_knows() -> None:
    with pytest.raises(helm.HelmRenderError, match="orgId is required"):
        render_templates({})


@pytest.mark.parametrize("value_set", VALUE_SETS)
@pytest.mark.parametrize("kube_version", ["v1.30.0", None])
def test_helm_lint_strict_is_clean(value_set: str, kube_version: str | None) -> None:
    report = helm.lint(
        CHART_DIR,
        value_sets()[value_set],
        strict=True,
        namespace="medledger",
        kube_version=kube_version,
    )
    assert report["errors"] == []
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert problems == []


def test_notes_tell_the_operator_how_to_reach_and_check_the_apis() -> None:
    text = notes("defaults")
    assert "st-mary-medledger-identity.medledger.svc:50051" in text
    assert "helm test st-mary" in text
    assert "PostgreSQL is off" in text
    assert "PostgreSQL is off" not in notes("infra-production")
    assert "schema per service" in notes("infra-production")
    assert 'of chain "medledger-consortium"' in text


def test_notes_warn_about_what_an_operator_could_lose_or_leak() -> None:
    assert "LOST when its pod is replaced" in notes("minimal")
    assert "LOST" not in notes("defaults")
    assert "stored in the Helm release" in notes("minimal")
    assert "stored in the Helm release" not in notes("defaults")
    assert "identity.bootstrapKey" in notes("full")
    assert "identity.bootstrapKey" not in notes("defaults")
    # With mTLS the way to reach an API names the certificate's DNS name and a client pair.
    assert "-cert client.crt -key client.key -servername st-mary-medledger-identity" in notes(
        "full"
    )
