"""The identity directory asks again when an identity view lags, and never caches absence."""

from __future__ import annotations

import pytest

from medledger._gen.identity.v1 import identity_service_pb2 as identity_pb
from medledger.core import jwt_auth
from medledger.core.errors import NotFound
from medledger.core.jwt_auth import PRINCIPAL_SUBJECT, NatsIdentityDirectory
from medledger.testing.memory_bus import InMemoryBus

NAME = "organisations/org-a/principals/dr-1"


async def test_a_lagging_view_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwt_auth, "UNKNOWN_PRINCIPAL_RETRY_SECONDS", 0.01)
    bus = InMemoryBus()
    answers = {"calls": 0, "known_after": 3}

    async def answer(request: identity_pb.GetPrincipalRequest) -> identity_pb.Principal:
        answers["calls"] += 1
        if answers["calls"] < answers["known_after"]:
            raise NotFound("PRINCIPAL_NOT_FOUND", "not in this view yet")
        return identity_pb.Principal(name=request.name)

    await bus.subscribe(PRINCIPAL_SUBJECT, identity_pb.GetPrincipalRequest, answer)
    directory = NatsIdentityDirectory(bus)
    status = await directory.principal(NAME)
    assert status.exists
    assert answers["calls"] == 3


async def test_absence_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwt_auth, "UNKNOWN_PRINCIPAL_RETRY_SECONDS", 0.0)
    bus = InMemoryBus()
    registered = {"yes": False}

    async def answer(request: identity_pb.GetPrincipalRequest) -> identity_pb.Principal:
        if not registered["yes"]:
            raise NotFound("PRINCIPAL_NOT_FOUND", "unknown")
        return identity_pb.Principal(name=request.name)

    await bus.subscribe(PRINCIPAL_SUBJECT, identity_pb.GetPrincipalRequest, answer)
    directory = NatsIdentityDirectory(bus)
    assert not (await directory.principal(NAME)).exists
    registered["yes"] = True
    assert (await directory.principal(NAME)).exists
