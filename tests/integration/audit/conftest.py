"""Fixtures of the audit integration tests (defined in audit_helpers)."""

from tests.integration.audit.audit_helpers import audit_process

__all__ = ["audit_process"]
