"""ConsentService over gRPC: translate, authorise, delegate to the domain service."""

from __future__ import annotations

import grpc

from medledger._gen.common.v1 import actor_pb2
from medledger._gen.consent.v1 import consent_service_pb2 as pb
from medledger._gen.consent.v1 import consent_service_pb2_grpc as pb_grpc
from medledger.consent.errors import ConsentForbidden, ConsentInvalid
from medledger.consent.service import ConsentService
from medledger.core.auth import (
    ANY_AUTHENTICATED,
    AuthorisationTable,
    CallerIdentity,
    current_caller,
)
from medledger.core.grpc_server import GrpcService

SERVICE_NAME = "medledger.consent.v1.ConsentService"

RECORDER_ROLE = "consent_recorder"
"""Staff who record consents on patients' behalf (signed by the service's custodian key)."""
READER_ROLES = frozenset({RECORDER_ROLE, "consent_reader", "auditor", "privacy_officer"})
DECIDER_ROLE = "access_decider"
"""Services (records, EHR gateways) that ask on behalf of an actor they authenticated."""


def _method(name: str) -> str:
    return f"/{SERVICE_NAME}/{name}"


# Who may call what; finer rules (a patient reads only their own consents, an actor asks
# only about themself unless it is a decider) are applied in the servicer.
AUTHORISATION = AuthorisationTable.of(
    {
        _method("CreateConsent"): [ANY_AUTHENTICATED],
        _method("RevokeConsent"): [ANY_AUTHENTICATED],
        _method("GetConsent"): [ANY_AUTHENTICATED],
        _method("ListConsents"): [ANY_AUTHENTICATED],
        _method("CheckAccess"): [ANY_AUTHENTICATED],
        _method("BreakGlass"): [ANY_AUTHENTICATED],
        _method("ImportFhirConsent"): [RECORDER_ROLE],
        _method("ExportFhirConsent"): sorted(READER_ROLES),
    }
)

Context = grpc.aio.ServicerContext[object, object]

_KINDS = {
    name.removeprefix("PRINCIPAL_KIND_"): value for name, value in actor_pb2.PrincipalKind.items()
}


def actor_of(caller: CallerIdentity) -> actor_pb2.Actor:
    """The caller as an Actor (principal, organisation, roles, token id, kind)."""
    kind = _KINDS.get(caller.kind.upper().removeprefix("PRINCIPAL_KIND_"), 0)
    return actor_pb2.Actor(
        principal=caller.principal_id,
        organisation=f"organisations/{caller.org_id.removeprefix('organisations/')}",
        roles=sorted(caller.roles),
        token_id=caller.token_id,
        kind=kind,  # type: ignore[arg-type]
    )


class ConsentApi(pb_grpc.ConsentServiceServicer):
    def __init__(self, service: ConsentService) -> None:
        self._service = service

    async def _patient_scope(self, caller: CallerIdentity, patient: str) -> None:
        """Readers see any patient; a patient principal only their own pseudonym."""
        if caller.has_any_role(READER_ROLES):
            return
        facts = await self._service.principal(caller.principal_id)
        if facts is not None and facts.patient and facts.patient == patient:
            return
        raise ConsentForbidden("NOT_YOUR_PATIENT", "the caller may not see this patient's consents")

    async def CreateConsent(  # noqa: N802 -- gRPC method name
        self, request: pb.CreateConsentRequest, context: Context
    ) -> pb.Consent:
        caller = current_caller()
        signed = request.signed_transaction if request.HasField("signed_transaction") else None
        if signed is None and not caller.has_any_role([RECORDER_ROLE]):
            raise ConsentForbidden(
                "RECORDER_ROLE_REQUIRED",
                "without a grantor-signed transaction only consent recorders may grant",
            )
        if not request.HasField("consent"):
            raise ConsentInvalid("CONSENT_REQUIRED", "consent is required", {"field": "consent"})
        return await self._service.create_consent(
            request.consent_id, request.consent.terms, signed, request.request_id
        )

    async def RevokeConsent(  # noqa: N802
        self, request: pb.RevokeConsentRequest, context: Context
    ) -> pb.Consent:
        caller = current_caller()
        signed = request.signed_transaction if request.HasField("signed_transaction") else None
        if signed is None and not caller.has_any_role([RECORDER_ROLE]):
            raise ConsentForbidden(
                "RECORDER_ROLE_REQUIRED",
                "without a grantor-signed transaction only consent recorders may revoke",
            )
        return await self._service.revoke_consent(
            request.name,
            request.version,
            request.reason,
            request.evidence,
            signed,
            request.request_id,
        )

    async def GetConsent(  # noqa: N802
        self, request: pb.GetConsentRequest, context: Context
    ) -> pb.Consent:
        consent = await self._service.get_consent(request.name, request.version)
        await self._patient_scope(current_caller(), consent.terms.patient_pseudonym)
        return consent

    async def ListConsents(  # noqa: N802
        self, request: pb.ListConsentsRequest, context: Context
    ) -> pb.ListConsentsResponse:
        caller = current_caller()
        if not caller.has_any_role(READER_ROLES) or request.patient_pseudonym:
            await self._patient_scope(caller, request.patient_pseudonym)
        return await self._service.list_consents(
            request.patient_pseudonym, request.state, request.page_size, request.page_token
        )

    async def CheckAccess(  # noqa: N802
        self, request: pb.CheckAccessRequest, context: Context
    ) -> pb.CheckAccessResponse:
        caller = current_caller()
        if not caller.has_any_role([DECIDER_ROLE]):
            # Anyone else asks about themself, as their token says they are.
            request.actor.CopyFrom(actor_of(caller))
        return await self._service.check(request)

    async def BreakGlass(  # noqa: N802
        self, request: pb.BreakGlassRequest, context: Context
    ) -> pb.BreakGlassSession:
        seconds = (
            request.requested_duration.seconds if request.HasField("requested_duration") else 0
        )
        return await self._service.break_glass(
            actor_of(current_caller()), request.session, seconds, request.request_id
        )

    async def ImportFhirConsent(  # noqa: N802
        self, request: pb.ImportFhirConsentRequest, context: Context
    ) -> pb.Consent:
        return await self._service.import_fhir(
            request.fhir_consent_json, request.validate_only, request.request_id
        )

    async def ExportFhirConsent(  # noqa: N802
        self, request: pb.ExportFhirConsentRequest, context: Context
    ) -> pb.ExportFhirConsentResponse:
        return pb.ExportFhirConsentResponse(
            fhir_consent_json=await self._service.export_fhir(request.name, request.version)
        )


def consent_grpc_service(service: ConsentService) -> GrpcService:
    return GrpcService.from_servicer(
        SERVICE_NAME,
        pb_grpc.add_ConsentServiceServicer_to_server,
        ConsentApi(service),
        AUTHORISATION,
    )
