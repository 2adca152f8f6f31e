"""The compiled decision index in memory: one PatientView per patient, either every patient
(complete: an absent patient has nothing on record) or a bounded LRU whose misses go to the
durable store. Hit and miss counts are kept so the bound can be sized from measurements."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from medledger.consent.policy import EMPTY_VIEW, PatientView


@dataclass(frozen=True, slots=True)
class ViewStats:
    patients: int
    hits: int
    misses: int
    evictions: int
    complete: bool

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 1.0


class PatientViews:
    """PatientViews by patient pseudonym. ``capacity`` None holds every patient; a number
    bounds the entries held and evicts the least recently used.

    Views are immutable and replaced whole, so a reader on another thread sees either the
    old or the new view of a patient, never a mixture. ``epoch`` counts changes: a view read
    from the store is only kept if no change happened while it was being read
    (``put_if_unchanged``), so a slow read can never reinstate a revoked consent.
    """

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        # Readers do not lock: a patient must never be missing from the mapping while their
        # view is replaced or moved, so views are replaced in place and a bounded cache
        # moves entries with OrderedDict.move_to_end, never by delete and insert.
        self._views: dict[str, PatientView] = {}
        self._recency: OrderedDict[str, PatientView] | None = None
        if capacity is not None:
            self._recency = OrderedDict()
            self._views = self._recency
        self._complete = False
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._epoch = 0
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def complete(self) -> bool:
        """Whether every patient the store knows is held (set by ``mark_complete``)."""
        return self._complete

    def mark_complete(self) -> None:
        """Declare that every patient with consents or custodians has been put; only
        possible while nothing has been evicted."""
        self._complete = self._evictions == 0

    def lookup(self, patient: str) -> PatientView | None:
        """The patient's view, or None when it has to be read from the store."""
        view = self._views.get(patient)
        if view is not None:
            self._hits += 1
            if self._recency is not None:
                with self._lock, contextlib.suppress(KeyError):
                    self._recency.move_to_end(patient)
            return view
        if self._complete:
            self._hits += 1
            return EMPTY_VIEW
        self._misses += 1
        return None

    def holds(self, patient: str) -> bool:
        return patient in self._views

    def in_memory(self, patient: str) -> bool:
        """Whether ``lookup`` would answer without the store (counts nothing)."""
        return self._complete or patient in self._views

    def put(self, patient: str, view: PatientView) -> None:
        """Hold the patient's current view (after a change, or when warming)."""
        with self._lock:
            self._epoch += 1
            self._put(patient, view)

    def put_if_unchanged(self, patient: str, view: PatientView, epoch: int) -> bool:
        """Hold a view read from the store when ``epoch`` was current, unless anything
        changed since; whether it was kept."""
        with self._lock:
            if self._epoch != epoch:
                return False
            self._put(patient, view)
            return True

    def fill(self, views: Iterable[tuple[str, PatientView]]) -> None:
        """Hold many views at once (warming from the store)."""
        with self._lock:
            self._epoch += 1
            for patient, view in views:
                self._put(patient, view)

    def _put(self, patient: str, view: PatientView) -> None:
        self._views[patient] = view
        if self._recency is None or self._capacity is None:
            return
        self._recency.move_to_end(patient)
        if len(self._recency) > self._capacity:
            # Incomplete first: an evicted patient must not read as having nothing on record.
            self._complete = False
            self._recency.popitem(last=False)
            self._evictions += 1

    def discard(self, patient: str) -> None:
        """Forget a patient whose state changed (a later lookup reads the store again)."""
        with self._lock:
            self._epoch += 1
            # Incomplete first: an absent patient would otherwise read as having nothing.
            self._complete = False
            self._views.pop(patient, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._complete = False
            self._views.clear()

    def stats(self) -> ViewStats:
        return ViewStats(
            len(self._views), self._hits, self._misses, self._evictions, self._complete
        )
