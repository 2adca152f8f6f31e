"""A simulated network between validators: loss, delay, duplication, reordering and
partitions, every choice drawn from the simulation's one random source."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass


@dataclass(slots=True)
class LinkConditions:
    """How the network behaves in the current phase."""

    loss: float
    duplicate: float
    min_delay: float
    max_delay: float
    slow: float
    """Probability a message takes up to ten times `max_delay` (forces reordering)."""


class SimulatedNetwork:
    def __init__(self, rng: random.Random, size: int, faults: Counter[str]) -> None:
        self._rng = rng
        self._size = size
        self._faults = faults
        self.conditions = LinkConditions(0.0, 0.0, 0.001, 0.01, 0.0)
        self._side: list[int] = [0] * size
        self._last_arrival: dict[tuple[int, int], float] = {}

    @property
    def partitioned(self) -> bool:
        return len(set(self._side)) > 1

    def partition(self, group: set[int]) -> None:
        """Cut `group` off from everyone else until `heal`."""
        self._side = [1 if i in group else 0 for i in range(self._size)]
        self._faults["partition"] += 1

    def heal(self) -> None:
        self._side = [0] * self._size

    def arrivals(self, source: int, destination: int, now: float) -> list[float]:
        """When copies of one message from `source` reach `destination` (none if lost)."""
        if self._side[source] != self._side[destination]:
            self._faults["partition_drop"] += 1
            return []
        c = self.conditions
        if c.loss and self._rng.random() < c.loss:
            self._faults["loss"] += 1
            return []
        copies = 1
        if c.duplicate and self._rng.random() < c.duplicate:
            copies = 2
            self._faults["duplicate"] += 1
        times = []
        for _ in range(copies):
            delay = self._rng.uniform(c.min_delay, c.max_delay)
            if c.slow and self._rng.random() < c.slow:
                delay *= self._rng.uniform(2.0, 10.0)
                self._faults["delay"] += 1
            arrival = now + delay
            link = (source, destination)
            if arrival < self._last_arrival.get(link, 0.0):
                self._faults["reorder"] += 1
            self._last_arrival[link] = max(arrival, self._last_arrival.get(link, 0.0))
            times.append(arrival)
        return times
