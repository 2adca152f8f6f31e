"""The access decision as pure logic: consents compiled to match fast, the HL7 PurposeOfUse
hierarchy, the organisation's base policy and break-glass. No I/O, no clock: time is passed in.

Resolution rule (docs/consent.md): within a provision, nested provisions are exceptions
and are evaluated first; among siblings deny overrides permit; a provision none of whose
children applies decides by its own type. Among the consents that apply, deny overrides
permit. When no consent applies, the base policy decides; anything it does not permit is
denied by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import actor_pb2, consent_terms_pb2
from medledger._gen.consent.v1 import consent_service_pb2 as svc
from medledger.consent.terms import ANY_ORGANISATION

P = acc.PurposeOfUse

# HL7 v3 PurposeOfUse (2.16.840.1.113883.1.11.20448) specialisations: child -> parent.
PURPOSE_PARENT: Mapping[int, int] = {
    acc.PURPOSE_OF_USE_ETREAT: acc.PURPOSE_OF_USE_TREAT,
    acc.PURPOSE_OF_USE_BTG: acc.PURPOSE_OF_USE_ETREAT,
    acc.PURPOSE_OF_USE_POPHLTH: acc.PURPOSE_OF_USE_TREAT,
    acc.PURPOSE_OF_USE_CAREMGT: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_HCOMPL: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_HQUALIMP: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_HACCRED: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_HSYSADMIN: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_HLEGAL: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_PATSFTY: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_RECORDMGT: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_TRAIN: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_GOV: acc.PURPOSE_OF_USE_HOPERAT,
    acc.PURPOSE_OF_USE_COVERAGE: acc.PURPOSE_OF_USE_HPAYMT,
    acc.PURPOSE_OF_USE_CLINTRCH: acc.PURPOSE_OF_USE_HRESCH,
    acc.PURPOSE_OF_USE_FAMRQT: acc.PURPOSE_OF_USE_PATRQT,
    acc.PURPOSE_OF_USE_PWATRNY: acc.PURPOSE_OF_USE_PATRQT,
    acc.PURPOSE_OF_USE_SUPNWK: acc.PURPOSE_OF_USE_PATRQT,
    acc.PURPOSE_OF_USE_DISASTER: acc.PURPOSE_OF_USE_PUBHLTH,
    acc.PURPOSE_OF_USE_THREAT: acc.PURPOSE_OF_USE_PUBHLTH,
}


def _lineage(purpose: int) -> frozenset[int]:
    seen = [purpose]
    while seen[-1] in PURPOSE_PARENT:
        seen.append(PURPOSE_PARENT[seen[-1]])
    return frozenset(seen)


PURPOSE_LINEAGE: Mapping[int, frozenset[int]] = {p: _lineage(p) for p in P.values()}
"""Each purpose with every purpose it specialises: BTG -> {BTG, ETREAT, TREAT}."""


def purpose_within(purpose: int, general: int) -> bool:
    """Whether ``purpose`` is ``general`` or one of its specialisations."""
    return general in PURPOSE_LINEAGE.get(purpose, frozenset((purpose,)))


EMERGENCY_PURPOSES = frozenset({acc.PURPOSE_OF_USE_ETREAT, acc.PURPOSE_OF_USE_BTG})

SENSITIVE_LABELS = frozenset(
    {
        acc.SENSITIVITY_LABEL_PSY,
        acc.SENSITIVITY_LABEL_PSYTHPN,
        acc.SENSITIVITY_LABEL_MH,
        acc.SENSITIVITY_LABEL_BH,
        acc.SENSITIVITY_LABEL_SUD,
        acc.SENSITIVITY_LABEL_ETH,
        acc.SENSITIVITY_LABEL_HIV,
        acc.SENSITIVITY_LABEL_STD,
        acc.SENSITIVITY_LABEL_SEX,
        acc.SENSITIVITY_LABEL_SDV,
        acc.SENSITIVITY_LABEL_GDIS,
        acc.SENSITIVITY_LABEL_SICKLE,
    }
)

_READS = frozenset({acc.ACCESS_ACTION_READ, acc.ACCESS_ACTION_SEARCH})
_CLINICAL_WRITES = frozenset({acc.ACCESS_ACTION_CREATE, acc.ACCESS_ACTION_UPDATE})


# --- the question and the answer ----------------------------------------------------------


class AccessRequest(NamedTuple):
    """One access question, every fact resolved (record -> data class, actor -> patient).
    A tuple: one is made per decision, and tuples are the cheapest immutable record."""

    principal: str
    organisation: str
    patient: str
    action: int
    purpose: int
    now_ms: int
    roles: frozenset[str] = frozenset()
    kind: int = actor_pb2.PRINCIPAL_KIND_UNSPECIFIED
    category: int = acc.RECORD_CATEGORY_UNSPECIFIED
    labels: frozenset[int] = frozenset()
    record: str = ""
    data_time_ms: int = 0
    actor_patient: str = ""
    """The pseudonym the actor may act for, when the actor is a patient principal."""
    break_glass: BreakGlass | None = None


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """An emergency override asked for: a one-off justification or an open session."""

    session: str
    justification: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AccessDecision:
    permit: bool
    reason: str
    consent: tuple[str, int] | None = None
    policy_rule: str = ""
    break_glass: BreakGlass | None = None
    obligations: tuple[int, ...] = ()

    @property
    def basis(self) -> str:
        if self.consent is not None:
            return f"{self.consent[0]}@{self.consent[1]}"
        if self.break_glass is not None:
            return self.break_glass.session
        return self.policy_rule


# --- compiled consents --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartyMatcher:
    principal: str = ""
    organisation: str = ""
    role: str = ""

    @classmethod
    def of(cls, party: consent_terms_pb2.Party) -> PartyMatcher:
        kind = party.WhichOneof("party")
        if kind == "principal":
            return cls(principal=party.principal)
        if kind == "organisation":
            return cls(organisation=party.organisation)
        if kind == "role":
            return cls(organisation=party.role.organisation, role=party.role.role)
        return cls(principal="\x00never")

    @property
    def key(self) -> str:
        """The one request field a match needs equal: the principal, else the organisation."""
        return self.principal or self.organisation

    def matches(self, request: AccessRequest) -> bool:
        if self.principal:
            return self.principal == request.principal
        if self.role:
            return self.organisation == request.organisation and self.role in request.roles
        return self.organisation in (ANY_ORGANISATION, request.organisation)


def _period(period: consent_terms_pb2.TimePeriod) -> tuple[int, int] | None:
    if not period.start_unix_ms and not period.end_unix_ms:
        return None
    return (period.start_unix_ms, period.end_unix_ms)


def in_period(period: tuple[int, int] | None, at_ms: int) -> bool:
    if period is None:
        return True
    start, end = period
    return (start == 0 or at_ms >= start) and (end == 0 or at_ms < end)


SetSharing = Callable[[Iterable[Any]], frozenset[Any]]
_NOTHING: frozenset[Any] = frozenset()
"""Most criteria are left open: one empty set for all of them (CPython has no empty singleton)."""


def _own_set(values: Iterable[Any]) -> frozenset[Any]:
    return frozenset(values) or _NOTHING


@dataclass(frozen=True, slots=True)
class CompiledProvision:
    permit: bool
    actions: frozenset[int]
    categories: frozenset[int]
    labels: frozenset[int]
    purposes: frozenset[int]
    period: tuple[int, int] | None
    actors: tuple[PartyMatcher, ...]
    data_period: tuple[int, int] | None
    records: frozenset[str]
    children: tuple[CompiledProvision, ...]

    @classmethod
    def of(
        cls, provision: consent_terms_pb2.Provision, share: SetSharing | None = None
    ) -> CompiledProvision:
        """Compiled; ``share`` may hand back an equal set already held, to save memory."""
        one = share or _own_set
        return cls(
            permit=provision.type == consent_terms_pb2.PROVISION_TYPE_PERMIT,
            actions=one(provision.actions),
            categories=one(provision.categories),
            labels=one(provision.sensitivity_labels),
            purposes=one(provision.purposes),
            period=_period(provision.period),
            actors=tuple(PartyMatcher.of(a) for a in provision.actors),
            data_period=_period(provision.data_period),
            records=one(provision.records),
            children=tuple(cls.of(p, share) for p in provision.provisions),
        )

    def matches(self, request: AccessRequest) -> bool:
        if self.actions and request.action not in self.actions:
            return False
        if self.purposes and self.purposes.isdisjoint(PURPOSE_LINEAGE[request.purpose]):
            return False
        if self.actors and not any(a.matches(request) for a in self.actors):
            return False
        if not in_period(self.period, request.now_ms):
            return False
        if self.labels and self.labels.isdisjoint(request.labels):
            return False
        # Criteria about the data that the question leaves open (a class-level question has no
        # category, record or date) are resolved conservatively: a deny is assumed to reach
        # the data, a permit is not.
        if (
            self.categories
            and request.category not in self.categories
            and (request.category != acc.RECORD_CATEGORY_UNSPECIFIED or self.permit)
        ):
            return False
        if self.records and request.record not in self.records and (request.record or self.permit):
            return False
        if self.data_period is not None:
            if request.data_time_ms:
                if not in_period(self.data_period, request.data_time_ms):
                    return False
            elif self.permit:
                return False
        return True


_NOT_APPLICABLE = 0
_PERMIT = 1
_DENY = 2


class CompiledConsent(NamedTuple):
    """One active consent version, ready to answer questions. A tuple: a million of them
    are built at start and held, and tuples are the cheapest immutable record to make."""

    name: str
    version: int
    grantee: PartyMatcher
    period: tuple[int, int] | None
    root: CompiledProvision

    @classmethod
    def of(cls, name: str, version: int, terms: consent_terms_pb2.ConsentTerms) -> CompiledConsent:
        return cls(
            name,
            version,
            PartyMatcher.of(terms.grantee),
            _period(terms.period),
            CompiledProvision.of(terms.provision),
        )

    def evaluate(self, request: AccessRequest, sensitive: frozenset[int]) -> int:
        """PERMIT, DENY or NOT_APPLICABLE for this consent alone; ``sensitive`` is the
        request's labels that need explicit consent."""
        if not in_period(self.period, request.now_ms) or not self.grantee.matches(request):
            return _NOT_APPLICABLE
        return _evaluate(self.root, request, sensitive, frozenset())


def _evaluate(
    node: CompiledProvision,
    request: AccessRequest,
    sensitive: frozenset[int],
    named_above: frozenset[int],
) -> int:
    if not node.matches(request):
        return _NOT_APPLICABLE
    named = named_above | node.labels
    permitted = False
    for child in node.children:
        outcome = _evaluate(child, request, sensitive, named)
        if outcome == _DENY:
            return _DENY
        if outcome == _PERMIT:
            permitted = True
    if permitted:
        return _PERMIT
    if not node.permit:
        return _DENY
    # A permit reaches sensitive data only when it (or a provision above it) names every
    # sensitive label the data carries: sensitive classes are never shared by a general permit.
    return _PERMIT if sensitive <= named else _NOT_APPLICABLE


# --- the base policy ----------------------------------------------------------------------


@dataclass(frozen=True)
class BasePolicy:
    """An organisation's policy where no consent speaks, reflecting HIPAA by default.

    Inside a custodian organisation (one holding the patient's records, or where the
    patient is registered), treatment, payment and operations need no consent (implied
    consent, 45 CFR 164.506); other organisations, research and marketing need explicit
    consent; data carrying a label in ``explicit_consent_labels`` is never shared without a
    consent naming that label; patients may read their own data (164.524).
    """

    custodian_purposes: Mapping[int, frozenset[int]] = field(
        default_factory=lambda: {
            acc.PURPOSE_OF_USE_TREAT: _READS | _CLINICAL_WRITES,
            acc.PURPOSE_OF_USE_HPAYMT: _READS,
            acc.PURPOSE_OF_USE_HOPERAT: _READS,
        }
    )
    custodian_kinds: frozenset[int] = frozenset(
        {actor_pb2.PRINCIPAL_KIND_PRACTITIONER, actor_pb2.PRINCIPAL_KIND_SERVICE}
    )
    explicit_consent_labels: frozenset[int] = SENSITIVE_LABELS
    patient_self_access: bool = True
    break_glass_purposes: frozenset[int] = EMERGENCY_PURPOSES
    break_glass_kinds: frozenset[int] = frozenset({actor_pb2.PRINCIPAL_KIND_PRACTITIONER})
    break_glass_overrides_consent: bool = True
    break_glass_excluded_labels: frozenset[int] = frozenset()
    break_glass_actions: frozenset[int] = _READS


def _by_name(consent: CompiledConsent) -> str:
    return consent.name


_SCAN_LIMIT = 8
"""Up to this many consents a patient's view is scanned; beyond, it is indexed by grantee."""


class PatientView:
    """What the index knows about one patient when a question comes in: the active consents,
    compiled and ordered by name (so the deciding consent is deterministic), indexed by the
    grantee they can match, and the patient's custodian organisations. Immutable."""

    __slots__ = ("_by_grantee", "consents", "custodians")

    def __init__(
        self,
        consents: Iterable[CompiledConsent] = (),
        custodians: frozenset[str] = frozenset(),
    ) -> None:
        self.consents: tuple[CompiledConsent, ...] = tuple(sorted(consents, key=_by_name))
        self.custodians = custodians
        self._by_grantee: dict[str, tuple[CompiledConsent, ...]] | None = None
        if len(self.consents) > _SCAN_LIMIT:
            grouped: dict[str, list[CompiledConsent]] = {}
            for consent in self.consents:
                grouped.setdefault(consent.grantee.key, []).append(consent)
            self._by_grantee = {key: tuple(group) for key, group in grouped.items()}

    def candidates(self, request: AccessRequest) -> Sequence[CompiledConsent]:
        """The consents whose grantee may match the request's actor, in name order."""
        by_grantee = self._by_grantee
        if by_grantee is None:
            return self.consents
        found = (
            by_grantee.get(request.principal, ())
            + by_grantee.get(request.organisation, ())
            + by_grantee.get(ANY_ORGANISATION, ())
        )
        return sorted(found, key=_by_name)

    def __repr__(self) -> str:
        return f"PatientView({len(self.consents)} consents, custodians={sorted(self.custodians)})"


EMPTY_VIEW = PatientView()


class ConsentCompiler:
    """Compiles consent terms, sharing identical provision trees and grantees between
    consents: consents made from the same form compile to one tree, which keeps a million
    compiled consents small. The sharing tables are bounded; past the bound new entries are
    compiled unshared."""

    def __init__(self, max_shared: int = 200_000) -> None:
        self._provisions: dict[bytes, CompiledProvision] = {}
        self._parties: dict[bytes, PartyMatcher] = {}
        self._sets: dict[frozenset[Any], frozenset[Any]] = {}
        self._max_shared = max_shared

    def _share_set(self, values: Iterable[Any]) -> frozenset[Any]:
        found = frozenset(values)
        if not found:
            return _NOTHING
        held = self._sets.get(found)
        if held is not None:
            return held
        if len(self._sets) < self._max_shared:
            self._sets[found] = found
        return found

    def compile(
        self, name: str, version: int, terms: consent_terms_pb2.ConsentTerms
    ) -> CompiledConsent:
        key = terms.provision.SerializeToString(deterministic=True)
        root = self._provisions.get(key)
        if root is None:
            root = CompiledProvision.of(terms.provision, self._share_set)
            if len(self._provisions) < self._max_shared:
                self._provisions[key] = root
        party = terms.grantee.SerializeToString(deterministic=True)
        grantee = self._parties.get(party)
        if grantee is None:
            grantee = PartyMatcher.of(terms.grantee)
            if len(self._parties) < self._max_shared:
                self._parties[party] = grantee
        period = _period(terms.period) if terms.HasField("period") else None
        return CompiledConsent(name, version, grantee, period, root)


class DecisionEngine:
    """Answers AccessRequests against a PatientView under a BasePolicy. Pure and thread-safe."""

    def __init__(self, policy: BasePolicy | None = None) -> None:
        self.policy = policy or BasePolicy()

    def decide(self, request: AccessRequest, view: PatientView) -> AccessDecision:
        decision = self._decide(request, view)
        if not decision.permit and request.break_glass is not None:
            overridden = self._break_glass(request, decision)
            if overridden is not None:
                return overridden
        return decision

    def _decide(self, request: AccessRequest, view: PatientView) -> AccessDecision:
        if (
            request.action == acc.ACCESS_ACTION_UNSPECIFIED
            or request.purpose == acc.PURPOSE_OF_USE_UNSPECIFIED
        ):
            return AccessDecision(False, "INCOMPLETE_QUESTION", policy_rule="base.incomplete")
        sensitive = request.labels & self.policy.explicit_consent_labels
        permit_by: CompiledConsent | None = None
        for consent in view.candidates(request):
            outcome = consent.evaluate(request, sensitive)
            if outcome == _DENY:
                return AccessDecision(False, "CONSENT_DENY", (consent.name, consent.version))
            if outcome == _PERMIT and permit_by is None:
                permit_by = consent
        if permit_by is not None:
            return AccessDecision(
                True,
                "CONSENT_PERMIT",
                (permit_by.name, permit_by.version),
                obligations=self._obligations(request),
            )
        return self._base(request, view)

    def _base(self, request: AccessRequest, view: PatientView) -> AccessDecision:
        policy = self.policy
        if (
            policy.patient_self_access
            and request.kind == actor_pb2.PRINCIPAL_KIND_PATIENT
            and request.actor_patient == request.patient
            and purpose_within(request.purpose, acc.PURPOSE_OF_USE_PATRQT)
            and request.action in _READS | {acc.ACCESS_ACTION_EXPORT}
        ):
            return AccessDecision(True, "PATIENT_ACCESS", policy_rule="base.patient_access")
        sensitive = request.labels & policy.explicit_consent_labels
        inside = request.organisation in view.custodians
        if inside and request.kind in policy.custodian_kinds:
            for general, actions in policy.custodian_purposes.items():
                if purpose_within(request.purpose, general) and request.action in actions:
                    if sensitive:
                        return AccessDecision(
                            False,
                            "SENSITIVE_REQUIRES_CONSENT",
                            policy_rule="base.sensitive_requires_consent",
                        )
                    reason, rule = _CUSTODIAN_RULES.get(
                        general, ("SAME_ORGANISATION", "base.custodian_implied_consent")
                    )
                    return AccessDecision(
                        True, reason, policy_rule=rule, obligations=self._obligations(request)
                    )
        if purpose_within(request.purpose, acc.PURPOSE_OF_USE_HRESCH):
            return AccessDecision(
                False, "RESEARCH_REQUIRES_CONSENT", policy_rule="base.research_requires_consent"
            )
        if not inside:
            return AccessDecision(
                False,
                "OTHER_ORGANISATION_REQUIRES_CONSENT",
                policy_rule="base.other_organisation_requires_consent",
            )
        return AccessDecision(False, "NO_MATCHING_CONSENT", policy_rule="base.deny_by_default")

    def _break_glass(self, request: AccessRequest, denied: AccessDecision) -> AccessDecision | None:
        policy = self.policy
        glass = request.break_glass
        if glass is None or request.purpose not in policy.break_glass_purposes:
            return None
        if request.kind not in policy.break_glass_kinds:
            return None
        if request.action not in policy.break_glass_actions:
            return None
        if denied.consent is not None and not policy.break_glass_overrides_consent:
            return None
        if request.labels & policy.break_glass_excluded_labels:
            return None
        obligations: set[int] = {svc.OBLIGATION_REVIEW, svc.OBLIGATION_NOTIFY_PATIENT}
        obligations.update(self._obligations(request))
        return AccessDecision(
            True, "BREAK_GLASS", break_glass=glass, obligations=tuple(sorted(obligations))
        )

    def _obligations(self, request: AccessRequest) -> tuple[int, ...]:
        duties: set[int] = set()
        if request.labels & self.policy.explicit_consent_labels:
            duties.add(svc.OBLIGATION_NO_REDISCLOSURE)
            duties.add(svc.OBLIGATION_ENCRYPT)
        elif not request.labels and not request.record:
            # A class-level question may return labelled items the answer did not cover.
            duties.add(svc.OBLIGATION_MASK_SENSITIVE)
        if purpose_within(request.purpose, acc.PURPOSE_OF_USE_HRESCH) or purpose_within(
            request.purpose, acc.PURPOSE_OF_USE_PUBHLTH
        ):
            duties.add(svc.OBLIGATION_DEIDENTIFY)
        return tuple(sorted(duties))


_CUSTODIAN_RULES: Mapping[int, tuple[str, str]] = {
    acc.PURPOSE_OF_USE_TREAT: ("SAME_ORGANISATION_TREATMENT", "base.custodian_treatment"),
    acc.PURPOSE_OF_USE_HPAYMT: ("SAME_ORGANISATION_PAYMENT", "base.custodian_payment"),
    acc.PURPOSE_OF_USE_HOPERAT: ("SAME_ORGANISATION_OPERATIONS", "base.custodian_operations"),
}


def compile_consents(
    entries: Iterable[tuple[str, int, consent_terms_pb2.ConsentTerms]],
) -> tuple[CompiledConsent, ...]:
    return tuple(CompiledConsent.of(name, version, terms) for name, version, terms in entries)
