"""Problem documents everywhere: 404, 405, 422, 500; unknown fields refused; request ids."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter

from .helpers import create_vm, problem


def test_unknown_route_and_method(client: httpx.Client) -> None:
    problem(client.get("/v1/nothing"), 404, "not-found")
    doc = problem(client.put("/v1/host"), 405, "method-not-allowed")
    assert doc["allow"] == "GET"


def test_unknown_vm(client: httpx.Client) -> None:
    doc = problem(client.get("/v1/vms/vm_nope/extents"), 404, "not-found")
    assert "vm_nope" in doc["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "vm_type": "default", "colour": "blue"},
        {"name": "has space"},
        "not json",
    ],
)
def test_request_validation(client: httpx.Client, body: object) -> None:
    if isinstance(body, str):
        resp = client.post("/v1/vms", content=body, headers={"content-type": "application/json"})
    else:
        resp = client.post("/v1/vms", json=body)
    doc = problem(resp, 422, "validation-error")
    assert doc["errors"]


def test_unknown_fields_refused_in_nested_bodies(client: httpx.Client) -> None:
    vm = create_vm(client)
    doc = problem(
        client.post(f"/v1/vms/{vm['id']}/convert", json={"ranges": [{"gpa": 0, "size": 4096, "to": "shared", "x": 1}]}),
        422,
        "validation-error",
    )
    assert any(e["type"] == "extra_forbidden" for e in doc["errors"])


def test_request_id_is_echoed_and_in_problems(client: httpx.Client) -> None:
    resp = client.get("/v1/vms/vm_nope", headers={"X-Request-ID": "trace-42"})
    assert resp.headers["x-request-id"] == "trace-42"
    assert resp.json()["request_id"] == "trace-42"
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32
    assert client.get("/healthz").headers["x-request-id"] != made
    # an unsafe id is replaced by a made one
    assert client.get("/healthz", headers={"X-Request-ID": "a b"}).headers["x-request-id"] != "a b"


def test_unexpected_exception_is_a_500_problem_without_trace(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from ..conftest import RunningServer, make_app

    app = make_app(db_url)
    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    app.include_router(router)
    with RunningServer(app) as server, httpx.Client(base_url=server.url) as c:
        resp = c.get("/boom", headers={"X-Request-ID": "req-500"})
    doc = problem(resp, 500, "internal-error")
    assert "secret internals" not in resp.text
    assert "Traceback" not in resp.text
    assert doc["request_id"] == "req-500"
    assert any("req-500" in r.getMessage() and getattr(r, "request_id", None) == "req-500" for r in caplog.records)


def test_problem_pages(client: httpx.Client) -> None:
    page = client.get("/problems/private-in-use")
    assert page.status_code == 200
    assert page.json()["status"] == 409
    html = client.get("/problems/overlap", headers={"accept": "text/html"})
    assert html.headers["content-type"].startswith("text/html")
    assert "Overlapping memslot" in html.text
    problem(client.get("/problems/no-such-code"), 404, "not-found")
