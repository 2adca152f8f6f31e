"""The decision engine: purpose hierarchy, nesting and deny-overrides, base policy, sensitive
classes, break-glass and obligations."""

from __future__ import annotations

from medledger._gen.common.v1 import access_pb2 as acc
from medledger._gen.common.v1 import actor_pb2
from medledger._gen.common.v1 import consent_terms_pb2 as ct
from medledger._gen.consent.v1 import consent_service_pb2 as svc
from medledger.consent.policy import BasePolicy, DecisionEngine, purpose_within
from tests.unit.consent.consent_helpers import (
    DOCTOR,
    HOME,
    OTHER,
    OUTSIDER,
    PATIENT,
    ask,
    compiled,
    decide,
    deny,
    ms,
    permit,
    terms,
)

P = acc


def test_purpose_hierarchy_follows_hl7() -> None:
    assert purpose_within(P.PURPOSE_OF_USE_BTG, P.PURPOSE_OF_USE_TREAT)
    assert purpose_within(P.PURPOSE_OF_USE_ETREAT, P.PURPOSE_OF_USE_TREAT)
    assert purpose_within(P.PURPOSE_OF_USE_CLINTRCH, P.PURPOSE_OF_USE_HRESCH)
    assert purpose_within(P.PURPOSE_OF_USE_HCOMPL, P.PURPOSE_OF_USE_HOPERAT)
    assert not purpose_within(P.PURPOSE_OF_USE_TREAT, P.PURPOSE_OF_USE_ETREAT)
    assert not purpose_within(P.PURPOSE_OF_USE_HRESCH, P.PURPOSE_OF_USE_CLINTRCH)


def test_a_treatment_consent_covers_emergency_treatment_but_not_research() -> None:
    consent = compiled("c", terms(permit(purposes=[P.PURPOSE_OF_USE_TREAT])))
    assert decide(ask(OUTSIDER, purpose=P.PURPOSE_OF_USE_ETREAT), consent).permit
    research = decide(ask(OUTSIDER, purpose=P.PURPOSE_OF_USE_CLINTRCH), consent)
    assert (research.permit, research.reason) == (False, "RESEARCH_REQUIRES_CONSENT")


def test_nested_deny_is_an_exception_and_deny_overrides_permit_at_the_same_level() -> None:
    nested = permit(provisions=[deny(categories=[P.RECORD_CATEGORY_GENOMIC])])
    consent = compiled("c", terms(nested))
    assert decide(ask(OUTSIDER, category=P.RECORD_CATEGORY_LABORATORY), consent).permit
    genomic = decide(ask(OUTSIDER, category=P.RECORD_CATEGORY_GENOMIC), consent)
    assert (genomic.permit, genomic.reason) == (False, "CONSENT_DENY")
    siblings = permit(
        provisions=[
            permit(categories=[P.RECORD_CATEGORY_IMAGING]),
            deny(categories=[P.RECORD_CATEGORY_IMAGING]),
        ]
    )
    assert not decide(
        ask(OUTSIDER, category=P.RECORD_CATEGORY_IMAGING), compiled("s", terms(siblings))
    ).permit


def test_a_nested_permit_is_an_exception_to_a_deny() -> None:
    consent = compiled(
        "c", terms(deny(provisions=[permit(categories=[P.RECORD_CATEGORY_ALLERGY])]))
    )
    assert decide(ask(OUTSIDER, category=P.RECORD_CATEGORY_ALLERGY), consent).permit
    assert (
        decide(ask(OUTSIDER, category=P.RECORD_CATEGORY_LABORATORY), consent).reason
        == "CONSENT_DENY"
    )


def test_across_consents_deny_overrides_permit() -> None:
    a = compiled("a-permit", terms(permit()))
    b = compiled("b-deny", terms(deny(categories=[P.RECORD_CATEGORY_LABORATORY])))
    decision = decide(ask(OUTSIDER), a, b)
    assert (decision.permit, decision.consent) == (False, ("consents/b-deny", 1))


def test_base_policy_implies_consent_for_treatment_inside_the_custodian_only() -> None:
    inside = decide(ask(DOCTOR))
    assert (inside.permit, inside.policy_rule) == (True, "base.custodian_treatment")
    outside = decide(ask(OUTSIDER))
    assert (outside.permit, outside.policy_rule) == (
        False,
        "base.other_organisation_requires_consent",
    )
    marketing = decide(ask(DOCTOR, purpose=P.PURPOSE_OF_USE_HMARKT))
    assert (marketing.permit, marketing.policy_rule) == (False, "base.deny_by_default")
    research = decide(ask(DOCTOR, purpose=P.PURPOSE_OF_USE_HRESCH))
    assert research.policy_rule == "base.research_requires_consent"
    nothing = decide(ask(DOCTOR, purpose=P.PURPOSE_OF_USE_UNSPECIFIED))
    assert not nothing.permit


def test_sensitive_classes_need_a_consent_naming_them() -> None:
    for label in (
        P.SENSITIVITY_LABEL_PSY,
        P.SENSITIVITY_LABEL_SUD,
        P.SENSITIVITY_LABEL_HIV,
        P.SENSITIVITY_LABEL_SEX,
        P.SENSITIVITY_LABEL_ETH,
    ):
        inside = decide(ask(DOCTOR, labels=(label,)))
        assert (inside.permit, inside.reason) == (False, "SENSITIVE_REQUIRES_CONSENT")
        general = compiled("general", terms(permit(), grantee=ct.Party(organisation=HOME)))
        assert not decide(ask(DOCTOR, labels=(label,)), general).permit
        explicit = compiled(
            "explicit",
            terms(permit(sensitivity_labels=[label]), grantee=ct.Party(organisation=HOME)),
        )
        allowed = decide(ask(DOCTOR, labels=(label,)), explicit)
        assert allowed.permit
        assert svc.OBLIGATION_NO_REDISCLOSURE in allowed.obligations


def test_grantee_kinds_principal_organisation_and_role() -> None:
    by_role = compiled(
        "r",
        terms(
            permit(),
            grantee=ct.Party(role=ct.RoleInOrganisation(organisation=OTHER, role="pharmacist")),
        ),
    )
    assert decide(ask(OUTSIDER, roles=("pharmacist",)), by_role).permit
    assert not decide(ask(OUTSIDER, roles=("physician",)), by_role).permit
    by_principal = compiled("p", terms(permit(), grantee=ct.Party(principal=OUTSIDER)))
    assert decide(ask(OUTSIDER), by_principal).permit
    assert not decide(ask("organisations/org-b/principals/other"), by_principal).permit


def test_periods_bound_consents_and_provisions() -> None:
    period = ct.TimePeriod(
        start_unix_ms=ms("2024-01-01T00:00:00"), end_unix_ms=ms("2024-02-01T00:00:00")
    )
    consent = compiled("c", terms(permit(), period=period))
    assert decide(ask(OUTSIDER, now_ms=ms("2024-01-15T00:00:00")), consent).permit
    assert not decide(ask(OUTSIDER, now_ms=ms("2024-02-01T00:00:00")), consent).permit


def test_patient_reads_their_own_data() -> None:
    me = "organisations/f001/principals/patient-1"
    kind = actor_pb2.PRINCIPAL_KIND_PATIENT
    own = decide(ask(me, kind=kind, purpose=P.PURPOSE_OF_USE_PATRQT, actor_patient=PATIENT))
    assert (own.permit, own.policy_rule) == (True, "base.patient_access")
    other = decide(ask(me, kind=kind, purpose=P.PURPOSE_OF_USE_PATRQT, actor_patient="someone"))
    assert not other.permit


def test_break_glass_overrides_with_review_obligations_where_policy_allows() -> None:
    no = compiled("no", terms(deny(), grantee=ct.Party(organisation="organisations/-")))
    plain = decide(ask(OUTSIDER, purpose=P.PURPOSE_OF_USE_ETREAT), no)
    assert plain.reason == "CONSENT_DENY"
    glass = decide(ask(OUTSIDER, purpose=P.PURPOSE_OF_USE_ETREAT, justification="coma"), no)
    assert (glass.permit, glass.reason) == (True, "BREAK_GLASS")
    assert {svc.OBLIGATION_REVIEW, svc.OBLIGATION_NOTIFY_PATIENT} <= set(glass.obligations)
    # Not for routine treatment, not for a nurse-less service account, not where policy forbids.
    assert not decide(ask(OUTSIDER, purpose=P.PURPOSE_OF_USE_TREAT, justification="x"), no).permit
    service = ask(
        OUTSIDER,
        purpose=P.PURPOSE_OF_USE_BTG,
        justification="x",
        kind=actor_pb2.PRINCIPAL_KIND_SERVICE,
    )
    assert not decide(service, no).permit
    strict = DecisionEngine(BasePolicy(break_glass_overrides_consent=False))
    assert not decide(
        ask(OUTSIDER, purpose=P.PURPOSE_OF_USE_BTG, justification="x"), no, engine=strict
    ).permit


def test_research_permit_obliges_deidentification() -> None:
    research = compiled("r", terms(permit(purposes=[P.PURPOSE_OF_USE_HRESCH])))
    decision = decide(ask(OUTSIDER, purpose=P.PURPOSE_OF_USE_CLINTRCH), research)
    assert decision.permit and svc.OBLIGATION_DEIDENTIFY in decision.obligations
