"""Every rendered manifest is a valid Kubernetes object for 1.30 and the newest schema bundled."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.charts.chart_rendering import Manifest, rendered_manifests, value_sets

KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

# Custom resources have no schema in kubernetes-validate; their required fields are checked here.
CUSTOM_RESOURCE_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("cert-manager.io/v1", "Certificate"): ("secretName", "issuerRef", "dnsNames"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints"),
}


def _validate(manifest: Manifest, version: str) -> str | None:
    """None when valid, else a message naming the object and the offending field."""
    key = (manifest["apiVersion"], manifest["kind"])
    if key in CUSTOM_RESOURCE_FIELDS:
        spec: dict[str, Any] = manifest.get("spec", {})
        missing = [field for field in CUSTOM_RESOURCE_FIELDS[key] if not spec.get(field)]
        return f"{manifest['kind']} misses {missing}" if missing else None
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(part) for part in error.path)
        return f"{manifest['kind']}/{manifest['metadata']['name']} at {path}: {error.message}"
    return None


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(value_sets()))
def test_rendered_manifests_validate_strictly(value_set: str, version: str) -> None:
    manifests = rendered_manifests(value_set)
    assert manifests
    problems = [problem for m in manifests if (problem := _validate(m, version)) is not None]
    assert problems == []


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = dict(rendered_manifests("defaults")[0])
    broken["spec"] = {"notAField": True}
    assert _validate(broken, KUBERNETES_VERSIONS[0]) is not None
