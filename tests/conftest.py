"""Shared pytest configuration: the medledger fixtures plugin (NATS, PostgreSQL, S3) and pytester,
which tests of the fixtures themselves use; tests marked slow run only when selected (-m slow)."""

from __future__ import annotations

import pytest

pytest_plugins = ["medledger.testing.fixtures", "pytester"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: select it with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
