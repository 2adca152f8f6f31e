"""values.schema.json rejects wrong types and unknown keys, and every value is documented."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import pytest

from tests.charts.chart_rendering import CHART_DIR, chart, render_templates, value_sets


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        (
            {"identity": {"replicaCount": "two"}},
            "at '/identity/replicaCount': got string, want integer",
        ),
        ({"identity": {"service": {"port": 70000}}}, "at '/identity/service/port'"),
        ({"image": {"digest": "latest"}}, "at '/image/digest'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"containerSecurityContext": {"readOnlyRootFilesystem": False}}, "value must be true"),
        ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "value must be false"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "at '/podSecurityContext/runAsNonRoot'"),
        ({"audit": {"replicaCount": 2}}, "at '/audit/replicaCount'"),
        ({"nats": {"url": "http://nats:4222"}}, "at '/nats/url'"),
        (
            {"networkPolicy": {"enabled": "yes"}},
            "at '/networkPolicy/enabled': got string, want boolean",
        ),
        ({"config": {"extraEnv": {"LOG_LEVEL": "debug"}}}, "'LOG_LEVEL' does not match pattern"),
        (
            {"records": {"kek": {"secretName": "x"}}},
            "additional properties 'secretName' not allowed",
        ),
        # The services read an http(s) URL, not host:port (MEDLEDGER_S3_ENDPOINT).
        ({"objectStore": {"endpoint": "minio:9000"}}, "at '/objectStore/endpoint'"),
        ({"objectStore": {"secure": True}}, "additional properties 'secure' not allowed"),
        ({"config": {"otlpEndpoint": "otel:4317"}}, "at '/config/otlpEndpoint'"),
        # A KEK id is a file name the service must not skip as hidden.
        ({"records": {"kek": {"key": ".kek"}}}, "at '/records/kek/key'"),
        ({"audit": {"checkpointIntervalSeconds": 0}}, "at '/audit/checkpointIntervalSeconds'"),
        ({"nats": {"streamReplicas": 7}}, "at '/nats/streamReplicas'"),
        ({"ledger": {"mempoolCapacity": "big"}}, "at '/ledger/mempoolCapacity'"),
        (
            {"identity": {"serviceKey": {"path": "/keys"}}},
            "additional properties 'path' not allowed",
        ),
    ],
)
def test_bad_values_are_rejected_with_a_message_naming_the_key(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart().validate_schema(values)
    # An install validates the same way before rendering anything.
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render_templates({**value_sets()["defaults"], **values})


@pytest.mark.parametrize("value_set", sorted(value_sets()))
def test_every_value_set_passes_the_schema(value_set: str) -> None:
    chart().validate_schema(value_sets()[value_set])


def test_the_chart_defaults_pass_the_schema() -> None:
    chart().validate_schema(chart().values)


def _leaf_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths |= _leaf_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def test_every_value_is_documented_with_a_param_line() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    documented = set(re.findall(r"^## @param (\S+) \S", text, flags=re.MULTILINE))
    leaves = _leaf_paths(chart().values)
    assert leaves - documented == set(), "values without ## @param"
    assert documented - leaves == set(), "## @param lines for values that do not exist"


def test_every_top_level_value_has_a_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(chart().values) == set(schema["properties"])
