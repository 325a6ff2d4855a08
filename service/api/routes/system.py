"""The host, health, readiness, and the pages behind problem type URIs."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import text

from ...operations import queries
from .. import schemas
from ..deps import BrokerDep
from ..problems import CATALOGUE, problem_response, problem_uri, responses

router = APIRouter()


@router.get(
    "/v1/host",
    tags=["host"],
    response_model=schemas.Host,
    summary="The host: backend, capabilities, NUMA nodes, budget",
    responses=responses(),
)
def host(broker: BrokerDep) -> JSONResponse:
    return JSONResponse(queries.host(broker))


@router.get("/healthz", tags=["health"], response_model=schemas.Health, summary="Liveness")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    tags=["health"],
    response_model=schemas.Health,
    summary="Readiness: recovery done and the database answers",
    responses=responses("not-ready"),
)
def readyz(request: Request, broker: BrokerDep) -> JSONResponse:
    if not broker.ready:
        return problem_response(request, "not-ready", "start-up recovery has not finished")
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return problem_response(request, "not-ready", f"database unreachable: {type(exc).__name__}")
    return JSONResponse({"status": "ready"})


@router.get(
    "/problems/{code}",
    tags=["problems"],
    response_model=None,
    summary="What a problem type means",
    responses=responses("not-found"),
)
def problem_page(code: str, request: Request) -> HTMLResponse | JSONResponse:
    kind = CATALOGUE.get(code)
    if kind is None:
        return problem_response(request, "not-found", f"no problem type {code!r}")
    if "text/html" in request.headers.get("accept", ""):
        title, description = escape(kind.title), escape(kind.description)
        return HTMLResponse(
            f"<!doctype html><title>{title}</title><h1>{title}</h1>"
            f"<p>HTTP {kind.status} &middot; <code>{problem_uri(code)}</code></p><p>{description}</p>"
        )
    return JSONResponse(
        {"type": problem_uri(code), "title": kind.title, "status": kind.status, "description": kind.description}
    )
