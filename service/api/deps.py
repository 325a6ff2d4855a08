"""Typed dependencies: the broker, and what a mutation request says about itself."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from ..operations.broker import Broker
from ..operations.handoff import Tickets
from ..operations.journal import Outcome, RequestMeta, etag


async def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


BrokerDep = Annotated[Broker, Depends(get_broker)]


@dataclass(frozen=True, slots=True)
class Handoff:
    """The export tickets and the socket they are redeemed on."""

    tickets: Tickets
    path: str


def get_handoff(request: Request) -> Handoff:
    handoff: Handoff = request.app.state.handoff
    return handoff


HandoffDep = Annotated[Handoff, Depends(get_handoff)]


async def request_meta(request: Request, idempotency_key: str | None, if_match: str | None) -> RequestMeta:
    fingerprint = None
    if idempotency_key is not None:
        raw = await request.body()
        try:
            canonical: Any = json.loads(raw) if raw else None
        except ValueError:
            canonical = raw.decode("latin-1")
        text = json.dumps([request.method, request.url.path, dict(request.query_params), canonical], sort_keys=True)
        fingerprint = hashlib.sha256(text.encode()).hexdigest()
    return RequestMeta(idempotency_key=idempotency_key, fingerprint=fingerprint, if_match=if_match)


@dataclass(frozen=True, slots=True)
class Mutating:
    """What a mutation route needs: the broker and the request's metadata, as one dependency.

    One dependency instead of two: FastAPI's per-request cost grows with each sub-dependency, and
    this is on the path of every convert.
    """

    broker: Broker
    meta: RequestMeta


async def mutating(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Replays the stored response for the same key and payload; 422 for another payload.",
        ),
    ] = None,
    if_match: Annotated[
        str | None,
        Header(alias="If-Match", description="The VM's ETag; a stale one gets 412 and changes nothing."),
    ] = None,
) -> Mutating:
    meta = await request_meta(request, idempotency_key, if_match)
    return Mutating(request.app.state.broker, meta)


MutatingDep = Annotated[Mutating, Depends(mutating)]


def respond(outcome: Outcome) -> JSONResponse:
    headers = dict(outcome.headers)
    if outcome.generation is not None:
        headers["ETag"] = etag(outcome.generation)
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


def with_etag(body: dict[str, Any], generation: int) -> JSONResponse:
    return JSONResponse(body, headers={"ETag": etag(generation)})
