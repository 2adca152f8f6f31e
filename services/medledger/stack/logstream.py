"""Follows the stack's log files and prints their new lines to the terminal, each prefixed by
the name of the process that wrote it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TextIO

# Enough for a burst of start-up logs; the rest is read on the next poll.
MAX_READ_BYTES = 256 * 1024


class LogTail:
    """New complete lines of one log file since this object was made."""

    def __init__(self, path: Path, label: str, keep: Callable[[str], bool] | None = None) -> None:
        self.path = path
        self.label = label
        self._keep = keep
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self._offset:  # truncated or replaced: start again from its beginning
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(MAX_READ_BYTES)
        self._offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        lines = [line.decode("utf-8", errors="replace").rstrip("\r") for line in complete]
        return [line for line in lines if self._keep(line)] if self._keep else lines


class LogStream:
    """Prints the new lines of every followed log as `label | line`."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tails: list[LogTail] = []
        self._width = 0

    def follow(self, tail: LogTail) -> None:
        self._tails.append(tail)
        self._width = max(self._width, len(tail.label))

    def pump(self) -> int:
        """Print what is new in every log; returns how many lines were printed."""
        printed = 0
        for tail in self._tails:
            for line in tail.new_lines():
                self._out.write(f"{tail.label:<{self._width}} | {line}\n")
                printed += 1
        if printed:
            self._out.flush()
        return printed
