"""The direct path for well-formed JSON mutations (LeanRoute): same answers, same errors, same state.

A body sent as ``application/json`` takes the direct path; the same body as ``application/json;
charset=utf-8`` goes through FastAPI's own handler. Every comparison here sends both.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.api.deps import MutatingDep
from service.api.lean_route import LeanRoute, direct_plan
from service.api.routes import memfds, memory, memslots, vms

from .helpers import BASE_GPA, PAGE, all_extents, guest, ok

DIRECT = {"content-type": "application/json"}
FASTAPI = {"content-type": "application/json; charset=utf-8"}


def _route(router: APIRouter, path: str, method: str) -> Any:
    for route in router.routes:
        if getattr(route, "path", None) == path and method in getattr(route, "methods", ()):
            return route
    raise AssertionError(f"no {method} {path}")


@pytest.mark.parametrize(
    ("router", "path", "method"),
    [
        (memory.router, "/v1/vms/{vm_id}/convert", "POST"),
        (memory.router, "/v1/vms/{vm_id}/shared/populate", "POST"),
        (memfds.router, "/v1/vms/{vm_id}/memfds", "POST"),
        (memfds.router, "/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", "POST"),
        (memslots.router, "/v1/vms/{vm_id}/memslots", "POST"),
        (vms.router, "/v1/vms/{vm_id}", "PATCH"),
    ],
)
def test_the_hot_mutations_take_the_direct_path(router: APIRouter, path: str, method: str) -> None:
    assert direct_plan(_route(router, path, method)) is not None


class Body(BaseModel):
    n: int


def test_endpoints_of_other_shapes_keep_fastapis_handler() -> None:
    router = APIRouter(route_class=LeanRoute)

    @router.post("/a/{x}")
    async def shaped(x: str, body: Body, m: MutatingDep) -> JSONResponse:
        return JSONResponse({})

    @router.post("/b/{x}")
    async def query_param(x: str, body: Body, q: Annotated[int, Query()] = 0) -> JSONResponse:
        return JSONResponse({})

    @router.post("/c/{x}")
    async def int_path(x: int, body: Body) -> JSONResponse:
        return JSONResponse({})

    @router.post("/d")
    def sync_endpoint(body: Body) -> JSONResponse:
        return JSONResponse({})

    @router.post("/e")
    async def plain_value(body: Body) -> dict[str, int]:
        return {}

    @router.post("/f")
    async def takes_request(body: Body, request: Request) -> JSONResponse:
        return JSONResponse({})

    def sync_dependency(request: Request) -> int:
        return 1

    @router.post("/g")
    async def sync_dep(body: Body, n: Annotated[int, Depends(sync_dependency)]) -> JSONResponse:
        return JSONResponse({})

    @router.post("/h")
    async def no_body() -> JSONResponse:
        return JSONResponse({})

    plans = {route.path: direct_plan(route) for route in router.routes if isinstance(route, APIRoute)}
    assert plans.pop("/a/{x}") is not None
    assert plans == dict.fromkeys(("/b/{x}", "/c/{x}", "/d", "/e", "/f", "/g", "/h"))


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("request_id", "instance", "operation_id")}


def test_converts_answer_and_change_state_alike_on_both_paths(client: httpx.Client) -> None:
    vms = [guest(client, size=64 * PAGE)[0] for _ in range(2)]
    batches = [
        [{"gpa": BASE_GPA, "size": 4 * PAGE, "to": "shared"}],
        [
            {"gpa": BASE_GPA + 2 * PAGE, "size": 8 * PAGE, "to": "shared"},
            {"gpa": BASE_GPA + 20 * PAGE, "size": PAGE, "to": "shared"},
        ],
        [{"gpa": BASE_GPA + PAGE, "size": 2 * PAGE, "to": "private"}],
        [{"gpa": BASE_GPA + PAGE, "size": 2 * PAGE, "to": "private"}],  # again: converts nothing
    ]
    for ranges in batches:
        answers = []
        for vm_id, headers in zip(vms, (DIRECT, FASTAPI), strict=True):
            resp = client.post(f"/v1/vms/{vm_id}/convert", json={"ranges": ranges}, headers=headers)
            answers.append((resp.status_code, resp.headers["etag"], _comparable(ok(resp))))
        assert answers[0] == answers[1]
    assert all_extents(client, vms[0]) == all_extents(client, vms[1])
    ops = [ok(client.get(f"/v1/vms/{vm_id}/operations"))["items"] for vm_id in vms]
    converts = [
        [(o["request"], o["status"], o["result"]["pages_converted"]) for o in v if o["kind"] == "convert"] for v in ops
    ]
    assert converts[0] == converts[1]
    assert len(converts[0]) == len(batches)


@pytest.mark.parametrize(
    "content",
    [
        b'{"ranges": [{"gpa": 0, "size": 4096, "to": "shared"}',  # cut short
        b'{"ranges": [{"gpa": 0, "size": 4096, "to": "shared", "x": 1}]}',
        b'{"ranges": [{"gpa": -4096, "size": 4096, "to": "shared"}]}',
        b'{"ranges": [{"gpa": "zero", "size": 4096, "to": "shared"}]}',
        b'{"ranges": [{"gpa": 0, "size": 4096, "to": "plaid"}]}',
        b'{"ranges": []}',
        b"{}",
        b"[]",
        b"null",
        b"",
        b"\xff\xfe",
    ],
)
def test_refused_bodies_get_fastapis_own_problem_document(client: httpx.Client, content: bytes) -> None:
    vm_id, _ = guest(client, size=16 * PAGE)
    before = all_extents(client, vm_id)
    docs = []
    for headers in (DIRECT, FASTAPI):
        resp = client.post(f"/v1/vms/{vm_id}/convert", content=content, headers=headers)
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        docs.append(_comparable(resp.json()))
    assert docs[0] == docs[1]
    assert all_extents(client, vm_id) == before


def test_domain_refusals_and_headers_are_the_same_on_both_paths(client: httpx.Client) -> None:
    vm_id, _ = guest(client, size=16 * PAGE)
    cases: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"ranges": [{"gpa": BASE_GPA + 1, "size": PAGE, "to": "shared"}]}, {}),  # unaligned
        ({"ranges": [{"gpa": 0, "size": PAGE, "to": "shared"}]}, {}),  # outside every memslot
        ({"ranges": [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]}, {"if-match": '"stale"'}),
        ({"ranges": [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]}, {"idempotency-key": "k" * 256}),
    ]
    for body, extra in cases:
        docs = []
        for headers in (DIRECT, FASTAPI):
            resp = client.post(f"/v1/vms/{vm_id}/convert", json=body, headers={**headers, **extra})
            assert resp.status_code >= 400
            docs.append((resp.status_code, _comparable(resp.json())))
        assert docs[0] == docs[1]


def test_an_idempotent_retry_replays_across_the_paths(client: httpx.Client) -> None:
    vm_id, _ = guest(client, size=16 * PAGE)
    body = {"ranges": [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]}
    key = {"idempotency-key": "lean-1"}
    first = client.post(f"/v1/vms/{vm_id}/convert", json=body, headers={**DIRECT, **key})
    again = client.post(f"/v1/vms/{vm_id}/convert", json=body, headers={**FASTAPI, **key})
    assert ok(first) == ok(again)
    assert again.headers["idempotent-replayed"] == "true"


def test_dependency_overrides_are_honoured(db_url: str) -> None:
    from service.api.deps import Mutating, mutating
    from service.operations.journal import RequestMeta

    from ..conftest import RunningServer, make_app

    app = make_app(db_url)
    seen: list[str | None] = []

    async def overridden(request: Request) -> Mutating:
        seen.append(request.headers.get("x-probe"))
        return Mutating(request.app.state.broker, RequestMeta(idempotency_key=None, fingerprint=None, if_match=None))

    app.dependency_overrides[mutating] = overridden
    with RunningServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        vm_id, _ = guest(c, size=16 * PAGE)
        body = {"ranges": [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]}
        ok(c.post(f"/v1/vms/{vm_id}/convert", json=body, headers={**DIRECT, "x-probe": "direct"}))
    assert "direct" in seen
