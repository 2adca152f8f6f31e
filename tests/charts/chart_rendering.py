"""Renders the medledger chart with the real Helm SDK for the value sets the chart checks use."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "medledger"
VALUES_DIR = Path(__file__).resolve().parent / "values"
INFRA_DIR = REPO_ROOT / "infra"
RELEASE = "st-mary"
NAMESPACE = "medledger"

Manifest = dict[str, Any]

_DOCUMENT_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)

# The helmfile environments feed the chart from values/<environment>.yaml's `medledger.values`.
INFRA_ENVIRONMENTS = ("production", "kind")


def load_yaml(path: Path) -> dict[str, Any]:
    """One YAML document, parsed by Helm's own parser (the one `-f values.yaml` uses)."""
    return helm.values_from_yaml(path.read_text())


def value_sets() -> dict[str, dict[str, Any]]:
    """Every value set the chart is proven with, by name."""
    sets = {path.stem: load_yaml(path) for path in sorted(VALUES_DIR.glob("*.yaml"))}
    for environment in INFRA_ENVIRONMENTS:
        environment_values = load_yaml(INFRA_DIR / "values" / f"{environment}.yaml")
        sets[f"infra-{environment}"] = environment_values["medledger"]["values"]
    return sets


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render_templates(values: dict[str, Any]) -> dict[str, str]:
    """Template path to rendered text, as `helm template` would produce for an install."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def split_documents(text: str) -> Iterator[Manifest]:
    for document in _DOCUMENT_SEPARATOR.split(text):
        if document.strip():
            parsed = helm.values_from_yaml(document)
            if parsed:
                yield parsed


def manifests_of(templates: dict[str, str]) -> list[Manifest]:
    manifests: list[Manifest] = []
    for path, text in sorted(templates.items()):
        if not path.endswith(".txt"):
            manifests.extend(split_documents(text))
    return manifests


@functools.cache
def _rendered(name: str) -> tuple[dict[str, str], tuple[Manifest, ...]]:
    templates = render_templates(value_sets()[name])
    return templates, tuple(manifests_of(templates))


def rendered_manifests(name: str) -> list[Manifest]:
    return list(_rendered(name)[1])


def rendered_text(name: str) -> str:
    """All manifests of one value set as one multi-document YAML stream."""
    templates = _rendered(name)[0]
    return "\n---\n".join(
        text for path, text in sorted(templates.items()) if not path.endswith(".txt")
    )


def notes(name: str) -> str:
    return next(text for path, text in _rendered(name)[0].items() if path.endswith("NOTES.txt"))


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    return next(m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name)


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "Pod")


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]
    return spec if workload["kind"] == "Pod" else spec["template"]["spec"]


def pod_labels(workload: Manifest) -> dict[str, str]:
    if workload["kind"] == "Pod":
        labels: dict[str, str] = workload["metadata"]["labels"]
        return labels
    template_labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return template_labels


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [manifest for manifest in manifests if manifest["kind"] in WORKLOAD_KINDS]


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    found: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    return found
