"""Fixtures of the records integration tests (helpers live in records_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from medledger._gen.consent.v1 import consent_service_pb2 as consent_pb
from medledger.core.nats_bus import NatsBus
from tests.integration.records.records_harness import ConsentResponder


@pytest_asyncio.fixture
async def consent_responder(nats_bus: NatsBus) -> AsyncIterator[ConsentResponder]:
    responder = ConsentResponder()
    responder.subscription = await nats_bus.subscribe(
        "consent.check", consent_pb.CheckAccessRequest, responder.answer, queue="consent"
    )
    yield responder
    await responder.subscription.unsubscribe()
