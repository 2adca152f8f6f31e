"""First-run registration of each hospital on the ledger: the organisation, its first
administrator and its identity service's key, signed by the hospital's validator key; then the
hospital's other service principals, signed by that administrator."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from medledger.core.nats_bus import NatsBus
from medledger.crypto.keys import load_signing_key
from medledger.ledgerclient import LedgerClient
from medledger.stack.topology import CHAIN_ID, DISPLAY_NAMES, DataLayout

# Services that sign what they put on the ledger, registered as principals under these ids
# with these roles (the consent service records consents on a patient's behalf).
SIGNING_SERVICES: dict[str, tuple[str, ...]] = {
    "consent": ("consent_custodian",),
    "records": (),
    "audit": (),
}


def admin_principal(organisation: str) -> str:
    return f"organisations/{organisation}/principals/admin"


def service_principal(organisation: str, service: str) -> str:
    return f"organisations/{organisation}/principals/{service}"


def pending_registrations(
    layout: DataLayout, organisations: Sequence[str], services: Sequence[str]
) -> dict[str, list[str]]:
    """What is not registered on this data directory's chain yet: by organisation, the
    principals to register ("organisation" for the organisation itself)."""
    pending: dict[str, list[str]] = {}
    for organisation in organisations:
        wanted = ["organisation", *(s for s in SIGNING_SERVICES if s in services)]
        missing = [p for p in wanted if not layout.registration_marker(organisation, p).exists()]
        if missing:
            pending[organisation] = missing
    return pending


async def bootstrap_hospitals(
    layout: DataLayout, nats_url: str, pending: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Register what is pending, the hospitals concurrently; the transaction ids, by
    organisation."""
    bus = await NatsBus.connect(nats_url, name="medledger-up-bootstrap")
    try:
        ledger = LedgerClient(bus, CHAIN_ID)
        results = await asyncio.gather(
            *(_register(layout, ledger, org, what) for org, what in pending.items())
        )
    finally:
        await bus.close()
    return dict(zip(pending, results, strict=True))


async def _register(
    layout: DataLayout, ledger: LedgerClient, organisation: str, what: Sequence[str]
) -> list[str]:
    # The identity package owns the shape of registry changes; imported here, once the stack
    # knows the identity service exists.
    from medledger._gen.common.v1 import actor_pb2
    from medledger.identity.cli import (
        bootstrap_organisation,
        register_principal_change,
        submit_changes,
    )

    admin_key = load_signing_key(layout.key(organisation, "admin"))
    tx_ids: list[str] = []
    if "organisation" in what:
        tx_ids += await bootstrap_organisation(
            ledger,
            organisation_id=organisation,
            display_name=DISPLAY_NAMES[organisation],
            validator_key=load_signing_key(layout.validator_key(organisation)),
            admin_key=admin_key.public_key,
            service_key=load_signing_key(layout.key(organisation, "identity")).public_key,
        )
        layout.registration_marker(organisation, "organisation").write_text("\n".join(tx_ids))

    async def register_service(service: str) -> list[str]:
        change = register_principal_change(
            service_principal(organisation, service),
            actor_pb2.PRINCIPAL_KIND_SERVICE,
            SIGNING_SERVICES[service],
            [load_signing_key(layout.key(organisation, service)).public_key],
        )
        ids = await submit_changes(ledger, admin_principal(organisation), admin_key, [change])
        layout.registration_marker(organisation, service).write_text("\n".join(ids))
        return ids

    # Once the administrator is final, the services' registrations are independent.
    services = [service for service in what if service != "organisation"]
    for ids in await asyncio.gather(*(register_service(s) for s in services)):
        tx_ids += ids
    return tx_ids
