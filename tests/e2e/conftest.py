"""Fixtures of the end-to-end tests (defined in stack_helpers)."""

from tests.e2e.stack_helpers import up_commands

__all__ = ["up_commands"]
