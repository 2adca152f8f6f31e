"""The compiled in-memory decision index: per-patient views indexed by grantee decide exactly
as a full scan would, the LRU counts and evicts, a read racing a change is never kept, and
the compiler shares identical provision trees."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger.consent.policy import (
    EMPTY_VIEW,
    ConsentCompiler,
    DecisionEngine,
    PatientView,
)
from medledger.consent.views import PatientViews
from tests.unit.consent.consent_helpers import (
    DOCTOR,
    HOME,
    OTHER,
    OUTSIDER,
    ask,
    compiled,
    deny,
    permit,
    terms,
)

READ_TREAT = {"actions": [acc.ACCESS_ACTION_READ], "purposes": [acc.PURPOSE_OF_USE_TREAT]}


def _many_consents_for_outsider() -> PatientView:
    """Twenty consents (past the scan limit) for other grantees, two for the outsider."""
    consents = [
        compiled(f"z-other-{n:02}", terms(permit(**READ_TREAT), grantee=ct.Party(principal=DOCTOR)))
        for n in range(20)
    ]
    consents.append(
        compiled("m-org", terms(permit(**READ_TREAT), grantee=ct.Party(organisation=OTHER)))
    )
    consents.append(
        compiled(
            "n-person",
            terms(
                deny(categories=[acc.RECORD_CATEGORY_IMAGING]),
                grantee=ct.Party(principal=OUTSIDER),
            ),
        )
    )
    return PatientView(consents, frozenset({HOME}))


def test_the_grantee_index_offers_only_consents_that_can_match_in_name_order() -> None:
    view = _many_consents_for_outsider()
    names = [c.name for c in view.candidates(ask(OUTSIDER))]
    assert names == ["consents/m-org", "consents/n-person"]
    assert len(view.candidates(ask(DOCTOR))) == 20
    assert [c.name for c in view.consents] == sorted(c.name for c in view.consents)


def test_indexed_and_scanned_views_decide_alike() -> None:
    indexed = _many_consents_for_outsider()
    scanned = PatientView(indexed.consents[-2:] + indexed.consents[:3], indexed.custodians)
    engine = DecisionEngine()
    for category in (acc.RECORD_CATEGORY_LABORATORY, acc.RECORD_CATEGORY_IMAGING):
        question = ask(OUTSIDER, category=category)
        assert engine.decide(question, indexed) == engine.decide(question, scanned)
    assert engine.decide(ask(OUTSIDER, category=acc.RECORD_CATEGORY_IMAGING), indexed).consent == (
        "consents/n-person",
        1,
    )
    assert engine.decide(ask(OUTSIDER), indexed).reason == "CONSENT_PERMIT"


def test_lru_counts_hits_and_misses_and_evicts_the_least_recent() -> None:
    views = PatientViews(capacity=2)
    a, b, c = PatientView(), PatientView(), PatientView()
    assert views.lookup("a") is None
    views.put("a", a)
    views.put("b", b)
    assert views.lookup("a") is a  # a is now the most recent
    views.put("c", c)  # evicts b
    assert views.lookup("b") is None and views.lookup("c") is c
    stats = views.stats()
    assert (stats.patients, stats.hits, stats.misses, stats.evictions) == (2, 2, 2, 1)
    assert stats.hit_rate == 0.5 and not stats.complete


def test_a_read_that_raced_a_change_is_not_kept() -> None:
    views = PatientViews(capacity=10)
    epoch = views.epoch
    stale = PatientView()
    views.discard("p")  # a block changed p while the store was being read
    assert not views.put_if_unchanged("p", stale, epoch)
    assert views.lookup("p") is None
    assert views.put_if_unchanged("p", stale, views.epoch)


def test_a_complete_index_answers_absent_patients_from_memory() -> None:
    views = PatientViews()
    views.put("p", PatientView())
    views.mark_complete()
    assert views.lookup("nobody") is EMPTY_VIEW and views.in_memory("nobody")
    views.discard("p")
    assert not views.complete and views.lookup("nobody") is None


def test_the_compiler_shares_identical_provision_trees_and_grantees() -> None:
    compiler = ConsentCompiler()
    first = compiler.compile("consents/a", 1, terms(permit(**READ_TREAT)))
    second = compiler.compile("consents/b", 1, terms(permit(**READ_TREAT)))
    other = compiler.compile("consents/c", 1, terms(deny(**READ_TREAT)))
    assert first.root is second.root and first.grantee is second.grantee
    assert other.root is not first.root
    assert first == compiled("a", terms(permit(**READ_TREAT)))


class WatchedViews(OrderedDict[str, PatientView]):
    """Notes every time a patient leaves the mapping: lock-free readers on other threads
    would see the patient as absent at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: list[str] = []

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.removed.append(key)
        return super().pop(key, *default)

    def __delitem__(self, key: str) -> None:
        self.removed.append(key)
        super().__delitem__(key)


def test_replacing_or_touching_a_view_never_takes_the_patient_out_of_the_mapping() -> None:
    for capacity in (None, 10):
        views = PatientViews(capacity)
        watched = WatchedViews()
        # The mapping readers consult without a lock (and, bounded, the recency order).
        views._views = watched
        if capacity is not None:
            views._recency = watched
        views.put("p", PatientView())
        views.mark_complete()
        views.put("p", PatientView())
        views.put_if_unchanged("p", PatientView(), views.epoch)
        views.fill([("p", PatientView()), ("q", PatientView())])
        assert views.lookup("p") is not None
        assert watched.removed == []
