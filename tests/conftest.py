"""Shared pytest configuration: the medledger fixtures plugin (NATS, PostgreSQL, S3) and pytester,
which tests of the fixtures themselves use."""

pytest_plugins = ["medledger.testing.fixtures", "pytester"]
