"""Errors of the local stack; each names the port, process or log a person should look at.

StackError              STACK_FAILED
├── PortTaken           PORT_IN_USE
├── DataDirError        BAD_DATA_DIR
├── ProcessFailed       PROCESS_FAILED
├── StackNotRunning     STACK_NOT_RUNNING
├── Interrupted         INTERRUPTED
└── DemoStepFailed      DEMO_STEP_FAILED
"""

# Named for what happened, as the core hierarchy is, so no "Error" suffix.
# ruff: noqa: N818

from __future__ import annotations

from medledger.core.errors import FailedPrecondition


class StackError(FailedPrecondition):
    reason = "STACK_FAILED"


class PortTaken(StackError):
    reason = "PORT_IN_USE"


class DataDirError(StackError):
    reason = "BAD_DATA_DIR"


class ProcessFailed(StackError):
    reason = "PROCESS_FAILED"


class StackNotRunning(StackError):
    reason = "STACK_NOT_RUNNING"


class Interrupted(StackError):
    """Ctrl-C or SIGTERM arrived while the stack was still starting."""

    reason = "INTERRUPTED"


class DemoStepFailed(StackError):
    """A step of the demo did not turn out as the story says it must."""

    reason = "DEMO_STEP_FAILED"
