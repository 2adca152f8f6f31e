"""infra/helmfile.yaml installs NATS and MinIO from their official charts beside this chart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.charts.chart_rendering import CHART_DIR, INFRA_DIR, load_yaml, split_documents

HELMFILE = INFRA_DIR / "helmfile.yaml"
ENVIRONMENTS = ("production", "kind")


def _helmfile() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for document in split_documents(HELMFILE.read_text()):
        merged.update(document)
    return merged


def _release(name: str) -> dict[str, Any]:
    release: dict[str, Any] = next(r for r in _helmfile()["releases"] if r["name"] == name)
    return release


def _environment_values(environment: str) -> dict[str, Any]:
    return load_yaml(INFRA_DIR / "values" / f"{environment}.yaml")


def _release_values(release: str, environment: str) -> dict[str, Any]:
    """What helmfile passes to a release: its plain files, then the environment's section."""
    merged: dict[str, Any] = {}
    for entry in _release(release)["values"]:
        path = INFRA_DIR / entry
        if path.suffix == ".gotmpl":
            key = re.search(r"\.Values\.(\w+)\.values", path.read_text())
            assert key, f"{entry} does not select an environment section"
            layer = _environment_values(environment)[key.group(1)]["values"]
        else:
            layer = load_yaml(path)
        merged = _deep_merge(merged, layer)
    return merged


def _deep_merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_releases_come_from_the_official_charts() -> None:
    repositories = {repo["name"]: repo["url"] for repo in _helmfile()["repositories"]}
    assert repositories["nats"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert repositories["minio"] == "https://charts.min.io/"
    assert _release("nats")["chart"] == "nats/nats"
    assert _release("minio")["chart"] == "minio/minio"
    for name in ("nats", "minio", "cert-manager"):
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", _release(name)["version"])
    assert (INFRA_DIR / _release("medledger")["chart"]).resolve() == CHART_DIR
    assert set(_release("medledger")["needs"]) == {
        "medledger-platform/nats",
        "medledger-platform/minio",
    }


def test_every_values_file_exists() -> None:
    environments = _helmfile()["environments"]
    assert set(environments) == set(ENVIRONMENTS)
    for environment in environments.values():
        for entry in environment["values"]:
            assert (INFRA_DIR / entry).is_file(), entry
    for release in _helmfile()["releases"]:
        for entry in release["values"]:
            assert (INFRA_DIR / entry).is_file(), entry


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_nats_is_a_three_node_jetstream_cluster_with_tls(environment: str) -> None:
    values = _release_values("nats", environment)
    assert values["config"]["cluster"]["enabled"] is True
    assert values["config"]["cluster"]["replicas"] == 3
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert values["config"]["nats"]["tls"]["enabled"] is True
    assert values["config"]["cluster"]["tls"]["enabled"] is True
    certificates = {
        resource["spec"]["secretName"]
        for resource in values["extraResources"]
        if resource["kind"] == "Certificate"
    }
    assert values["config"]["nats"]["tls"]["secretName"] in certificates


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_minio_holds_the_records_bucket_over_tls(environment: str) -> None:
    values = _release_values("minio", environment)
    assert values["existingSecret"]
    assert values["tls"]["enabled"] is True
    medledger = _environment_values(environment)["medledger"]["values"]
    assert {"name": medledger["objectStore"].get("bucket", "medledger-records")}.items() <= values[
        "buckets"
    ][0].items()
    endpoint = urlsplit(medledger["objectStore"]["endpoint"])
    # MinIO serves TLS, so the records service must speak https to it.
    assert endpoint.scheme == "https"
    assert str(endpoint.hostname).startswith("minio.medledger-platform.svc")


def test_production_runs_distributed_minio_and_postgresql() -> None:
    assert _release_values("minio", "production")["mode"] == "distributed"
    assert _environment_values("production")["medledger"]["values"]["postgresql"]["enabled"] is True


def test_kind_cluster_enforces_network_policies_and_runs_kubernetes_1_30() -> None:
    config = load_yaml(INFRA_DIR / "kind-config.yaml")
    assert config["kind"] == "Cluster"
    # kindnet ignores NetworkPolicies; the chart's default-deny must be real on kind too.
    assert config["networking"]["disableDefaultCNI"] is True
    images = {node["image"] for node in config["nodes"]}
    assert all(re.fullmatch(r"kindest/node:v1\.30\.\d+", image) for image in images)
    assert len(config["nodes"]) >= 3


def test_gotmpl_files_only_select_their_environment_section() -> None:
    for template in Path(INFRA_DIR / "values").glob("*.gotmpl"):
        body = [line for line in template.read_text().splitlines() if not line.startswith("{{/*")]
        assert len(body) == 1 and re.fullmatch(
            r"\{\{ \.Values\.\w+\.values \| toYaml \}\}", body[0]
        )
