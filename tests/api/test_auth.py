"""Who may do what: bearer tokens and scopes, and the limits on body size and batch count.

One broker with tokens and small limits, on a SQLite file (nothing here depends on the database).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from html import escape

import httpx
import pytest

from service.api.auth import (
    ADMIN,
    READ,
    WRITE,
    TokenConfigError,
    TokenTable,
    exposure_problem,
    is_loopback,
    parse_tokens,
)
from service.store.migrate import upgrade

from ..conftest import RunningServer, make_app
from .helpers import BASE_GPA, MIB, PAGE, create_vm, guest, ok, problem, snapshot
from .test_metrics import scrape, value

READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"
ADMINISTRATOR = "admin-token-0123456789ab"
TOKENS = f"{READER} read\n{WRITER} write ; {ADMINISTRATOR} admin  # the operator"
MAX_BODY = 4096
MAX_BATCH = 8


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'broker.db'}"
    upgrade(url)
    app = make_app(url, tokens=TOKENS, max_body_bytes=MAX_BODY, max_batch=MAX_BATCH, access_log=True)
    with RunningServer(app) as running:
        yield running.url


def as_(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


@pytest.fixture
def admin(broker_url: str) -> Iterator[httpx.Client]:
    with as_(broker_url, ADMINISTRATOR) as c:
        yield c


def test_no_token_is_401_with_a_challenge(broker_url: str) -> None:
    with as_(broker_url, None) as c:
        resp = c.get("/v1/vms", headers={"X-Request-ID": "no-token-1"})
    doc = problem(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"] == 'Bearer realm="gmem-broker"'
    assert doc["request_id"] == "no-token-1"
    assert resp.headers["x-request-id"] == "no-token-1"


@pytest.mark.parametrize("header", [f"Bearer {READER}x", f"Basic {READER}", "Bearer", f"bearer {READER[:-1]}"])
def test_wrong_token_is_401(broker_url: str, header: str) -> None:
    resp = httpx.get(f"{broker_url}/v1/vms", headers={"Authorization": header})
    problem(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"].startswith('Bearer realm="gmem-broker"')


def test_the_scheme_name_is_case_insensitive(broker_url: str) -> None:
    ok(httpx.get(f"{broker_url}/v1/vms", headers={"Authorization": f"bearer {READER}"}))


def test_read_scope_reads_but_does_not_write(broker_url: str, admin: httpx.Client) -> None:
    vm = create_vm(admin)
    before = snapshot(admin, vm["id"])
    with as_(broker_url, READER) as reader:
        ok(reader.get(f"/v1/vms/{vm['id']}"))
        resp = reader.post(f"/v1/vms/{vm['id']}/memfds", json={"size": MIB, "flags": []})
        doc = problem(resp, 403, "forbidden")
        assert "write" in doc["detail"]
        assert resp.headers["www-authenticate"].endswith('error="insufficient_scope", scope="write"')
        problem(reader.post("/v1/vms", json={"name": "vm-by-reader", "vm_type": "default"}), 403, "forbidden")
    assert snapshot(admin, vm["id"]) == before
    assert "vm-by-reader" not in {v["name"] for v in ok(admin.get("/v1/vms"))["items"]}


def test_write_scope_mutates_but_does_not_delete(broker_url: str, admin: httpx.Client) -> None:
    with as_(broker_url, WRITER) as writer:
        vm_id, _ = guest(writer, MIB)
        before = snapshot(admin, vm_id)
        problem(writer.delete(f"/v1/vms/{vm_id}?force=true"), 403, "forbidden")
        problem(writer.delete(f"/v1/vms/{vm_id}/memslots/0"), 403, "forbidden")
        assert snapshot(admin, vm_id) == before
    ok(admin.delete(f"/v1/vms/{vm_id}?force=true"))
    problem(admin.get(f"/v1/vms/{vm_id}"), 404, "not-found")


def test_allow_private_punch_needs_admin(broker_url: str, admin: httpx.Client) -> None:
    with as_(broker_url, WRITER) as writer:
        vm_id, memfd_id = guest(writer, MIB)
        ok(writer.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
        ok(writer.patch(f"/v1/vms/{vm_id}", json={"state": "running"}))
        before = snapshot(admin, vm_id)
        punch = {"offset": 0, "length": 16 * PAGE, "allow_private": True}
        doc = problem(writer.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json=punch), 403, "forbidden")
        assert "allow_private" in doc["detail"]
        assert snapshot(admin, vm_id) == before
        # without allow_private the write scope gets the broker's own answer, not an auth one
        plain = {"offset": 0, "length": 16 * PAGE}
        problem(writer.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json=plain), 409, "private-in-use")
    assert ok(admin.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json=punch))["pages_freed"] == 16


def test_memfd_export_needs_admin(broker_url: str, admin: httpx.Client) -> None:
    with as_(broker_url, WRITER) as writer:
        vm_id, memfd_id = guest(writer, MIB)
        doc = problem(writer.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/export"), 403, "forbidden")
        assert "export" in doc["detail"]
    # past the scope check, the sim's own answer: it has no fds to hand off
    problem(admin.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/export"), 501, "not-supported-by-kernel")
    schema = ok(httpx.get(f"{broker_url}/openapi.json"))
    assert schema["paths"]["/v1/vms/{vm_id}/memfds/{memfd_id}/export"]["post"]["security"] == [{"bearer": [ADMIN]}]


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc", "/problems/forbidden"]
)
def test_health_metrics_docs_and_problem_pages_need_no_token(broker_url: str, path: str) -> None:
    assert httpx.get(f"{broker_url}{path}").status_code == 200


def test_tokens_are_never_logged(broker_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gmem_broker"):
        for token in (READER, WRITER, ADMINISTRATOR, "not-a-token-0123456789"):
            httpx.get(f"{broker_url}/v1/vms", headers={"Authorization": f"Bearer {token}"})
    access = [r for r in caplog.records if r.name == "gmem_broker.access"]
    assert [getattr(r, "principal", None) for r in access[-4:]] == ["token-1", "token-2", "token-3", None]
    assert [getattr(r, "status", None) for r in access[-4:]] == [200, 200, 200, 401]
    for token in (READER, WRITER, ADMINISTRATOR, "not-a-token-0123456789"):
        assert token not in caplog.text


def test_refusals_before_routing_are_counted_and_logged_under_their_route(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    convert = "/v1/vms/{vm_id}/convert"
    labels = {"method": "POST", "route": convert}
    with as_(broker_url, ADMINISTRATOR) as c:
        before = scrape(c)
    body = {"ranges": [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]}
    with caplog.at_level(logging.INFO, logger="gmem_broker"):
        for token in (None, READER):
            with as_(broker_url, token) as c:
                c.post("/v1/vms/vm_x/convert", json=body)
        with as_(broker_url, WRITER) as c:
            c.post("/v1/vms/vm_x/convert", content=b"[" * (MAX_BODY + 1), headers={"content-type": "application/json"})
    with as_(broker_url, ADMINISTRATOR) as c:
        after = scrape(c)
    for status in ("401", "403", "413"):
        name = "gmem_broker_http_requests_total"
        assert value(after, name, **labels, status=status) == value(before, name, **labels, status=status) + 1
    access = [r for r in caplog.records if r.name == "gmem_broker.access" and r.getMessage().startswith("POST")]
    access = access[-3:]
    assert [(getattr(r, "status", None), getattr(r, "route", None)) for r in access] == [
        (401, convert),
        (403, convert),
        (413, convert),
    ]
    # The refused token's holder is named (by position, never the token).
    assert [getattr(r, "principal", None) for r in access] == [None, "token-1", "token-2"]


def test_oversize_body_is_413_and_changes_nothing(admin: httpx.Client) -> None:
    vm_id, _ = guest(admin, MIB)
    before = snapshot(admin, vm_id)
    ranges = [{"gpa": BASE_GPA + i * PAGE, "size": PAGE, "to": "shared"} for i in range(MAX_BODY // 40)]
    resp = admin.post(f"/v1/vms/{vm_id}/convert", json={"ranges": ranges}, headers={"X-Request-ID": "big-1"})
    doc = problem(resp, 413, "payload-too-large")
    assert doc["request_id"] == "big-1"
    assert str(MAX_BODY) in doc["detail"]
    assert snapshot(admin, vm_id) == before


def test_oversize_chunked_body_is_413_and_changes_nothing(admin: httpx.Client) -> None:
    vm_id, _ = guest(admin, MIB)
    before = snapshot(admin, vm_id)

    def chunks() -> Iterator[bytes]:
        yield b'{"ranges": ['
        for i in range(MAX_BODY // 40):
            yield b'{"gpa": %d, "size": 4096, "to": "shared"},' % (BASE_GPA + i * PAGE)
        yield b'{"gpa": 4294967296, "size": 4096, "to": "shared"}]}'

    resp = admin.post(f"/v1/vms/{vm_id}/convert", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    problem(resp, 413, "payload-too-large")
    assert snapshot(admin, vm_id) == before


def test_overcount_batch_is_422_and_changes_nothing(admin: httpx.Client) -> None:
    vm_id, _ = guest(admin, MIB)
    before = snapshot(admin, vm_id)
    ranges = [{"gpa": BASE_GPA + 2 * i * PAGE, "size": PAGE, "to": "shared"} for i in range(MAX_BATCH + 1)]
    doc = problem(admin.post(f"/v1/vms/{vm_id}/convert", json={"ranges": ranges}), 422, "batch-too-large")
    assert str(MAX_BATCH) in doc["detail"]
    assert snapshot(admin, vm_id) == before
    ok(admin.post(f"/v1/vms/{vm_id}/convert", json={"ranges": ranges[:MAX_BATCH]}))


def test_overcount_migrate_batch_is_422_and_changes_nothing(admin: httpx.Client) -> None:
    vm_id, memfd_id = guest(admin, MIB)
    ok(admin.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
    frames = ok(admin.get(f"/v1/vms/{vm_id}/frames"))
    before = snapshot(admin, vm_id)
    moves = [{"gpa": BASE_GPA + i * PAGE, "target_node": 1} for i in range(MAX_BATCH + 1)]
    doc = problem(admin.post(f"/v1/vms/{vm_id}/migrate-page", json={"moves": moves}), 422, "batch-too-large")
    assert str(MAX_BATCH) in doc["detail"]
    assert snapshot(admin, vm_id) == before
    assert ok(admin.get(f"/v1/vms/{vm_id}/frames")) == frames
    assert len(ok(admin.post(f"/v1/vms/{vm_id}/migrate-page", json={"moves": moves[:MAX_BATCH]}))["moves"]) == MAX_BATCH


def test_openapi_states_the_scheme_and_each_operations_scope(broker_url: str) -> None:
    schema = ok(httpx.get(f"{broker_url}/openapi.json"))
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    paths = schema["paths"]
    assert paths["/v1/vms"]["get"]["security"] == [{"bearer": [READ]}]
    assert paths["/v1/vms"]["post"]["security"] == [{"bearer": [WRITE]}]
    assert paths["/v1/vms/{vm_id}"]["delete"]["security"] == [{"bearer": [ADMIN]}]
    assert {"401", "403", "413"} <= paths["/v1/vms"]["post"]["responses"].keys()
    assert "security" not in paths["/healthz"]["get"]
    assert "security" not in paths["/metrics"]["get"]


class TestTokens:
    def test_scopes_imply_the_lesser_ones(self) -> None:
        entries = dict(parse_tokens(TOKENS, "test"))
        assert entries == {
            READER: {READ},
            WRITER: {READ, WRITE},
            ADMINISTRATOR: {READ, WRITE, ADMIN},
        }

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("tok-0123456789abcdef", "at least one scope"),
            ("tok-0123456789abcdef read root", "unknown scope(s) root"),
            ("short read", "at least 16 characters"),
        ],
    )
    def test_bad_entries_are_refused(self, text: str, message: str) -> None:
        with pytest.raises(TokenConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_tokens(text, "test")

    def test_lookup_finds_exactly_the_presented_token(self) -> None:
        table = TokenTable(parse_tokens(TOKENS, "test"))
        assert len(table) == 3
        found = table.lookup(WRITER)
        assert found is not None
        assert found.name == "token-2"
        assert WRITER not in repr(found)
        assert table.lookup(WRITER + " ") is None
        assert table.lookup(WRITER[:-1]) is None
        assert table.lookup("") is None


class TestExposure:
    @pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
    def test_loopback_may_go_without_tokens(self, host: str) -> None:
        assert is_loopback(host)
        assert exposure_problem(host, None) is None

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "broker.example"])
    def test_anything_else_needs_tokens(self, host: str) -> None:
        reason = exposure_problem(host, None)
        assert reason is not None
        assert "no tokens are configured" in reason
        assert exposure_problem(host, TokenTable(parse_tokens(TOKENS, "test"))) is None

    def test_a_unix_socket_may_go_without_tokens(self) -> None:
        assert exposure_problem(None, None) is None


def test_every_problem_type_has_a_page_without_a_token(broker_url: str) -> None:
    from service.api.problems import CATALOGUE

    for code, kind in CATALOGUE.items():
        doc = ok(httpx.get(f"{broker_url}/problems/{code}"))
        assert doc["type"] == f"/problems/{code}"
        assert (doc["title"], doc["status"], doc["description"]) == (kind.title, kind.status, kind.description)
        html = httpx.get(f"{broker_url}/problems/{code}", headers={"Accept": "text/html"})
        assert html.headers["content-type"].startswith("text/html")
        assert f"<h1>{escape(kind.title)}</h1><p>" in html.text
        assert f"<p>{escape(kind.description)}</p>" in html.text
