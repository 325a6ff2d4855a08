"""GET /metrics: request, operation and backend figures, per-VM gauges, the journal's pending count."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.backends.sim import SimBackend
from service.logs import RequestIdFilter

from ..conftest import RunningServer, make_app
from .helpers import BASE_GPA, MIB, PAGE, guest, ok, problem

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_and_timed_per_route_template_and_status(client: httpx.Client) -> None:
    vm_id, _ = guest(client, MIB)
    route = "/v1/vms/{vm_id}"
    before = scrape(client)
    for _ in range(3):
        ok(client.get(f"/v1/vms/{vm_id}"))
    problem(client.get("/v1/vms/vm_nope"), 404, "not-found")
    problem(client.get("/no/such/path"), 404, "not-found")
    after = scrape(client)
    ok200 = {"method": "GET", "route": route, "status": "200"}
    assert (
        value(after, "gmem_broker_http_requests_total", **ok200)
        - value(before, "gmem_broker_http_requests_total", **ok200)
        == 3
    )
    nf = {"method": "GET", "route": route, "status": "404"}
    assert (
        value(after, "gmem_broker_http_requests_total", **nf) - value(before, "gmem_broker_http_requests_total", **nf)
        == 1
    )
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert value(after, "gmem_broker_http_requests_total", **unmatched) >= 1
    count = "gmem_broker_http_request_duration_seconds_count"
    assert value(after, count, **ok200) - value(before, count, **ok200) == 3
    inf = value(after, "gmem_broker_http_request_duration_seconds_bucket", **ok200, le="+Inf")
    assert inf == value(after, count, **ok200)
    assert value(after, "gmem_broker_http_request_duration_seconds_sum", **ok200) > 0
    # paths with ids never become label values
    assert not any(vm_id in dict(labels).get("route", "") for _, labels in after)


def test_operations_are_counted_with_their_pages(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    before = scrape(client)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
    ok(client.post(f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": BASE_GPA, "size": 16 * PAGE, "to": "shared"}]}))
    punch = {"offset": MIB - 4 * PAGE, "length": 4 * PAGE}
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json=punch))
    # allocating what is already allocated is an operation that allocates no page
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": MIB // 2, "length": PAGE}))
    after = scrape(client)

    def delta(name: str, kind: str) -> float:
        return value(after, name, kind=kind) - value(before, name, kind=kind)

    assert delta("gmem_broker_operations_total", "allocate") == 2
    assert delta("gmem_broker_operation_pages_total", "allocate") == 256
    assert delta("gmem_broker_operations_total", "convert") == 1
    assert delta("gmem_broker_operation_pages_total", "convert") == 16
    assert delta("gmem_broker_operations_total", "punch-hole") == 1
    assert delta("gmem_broker_operation_pages_total", "punch-hole") == 4
    calls = "gmem_broker_backend_call_duration_seconds_count"
    assert value(after, calls, call="set_attributes") - value(before, calls, call="set_attributes") == 1
    assert value(after, calls, call="punch_hole") - value(before, calls, call="punch_hole") == 2


def test_migrations_are_counted_with_their_pages(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": 16 * PAGE, "node": 0}))
    before = scrape(client)
    migrate = f"/v1/vms/{vm_id}/migrate-page"
    ok(client.post(migrate, json={"gpa": BASE_GPA, "target_node": 1}))
    moves = [{"gpa": BASE_GPA + i * PAGE, "target_node": 1} for i in (1, 2, 3)]
    ok(client.post(migrate, json={"moves": moves}))
    ok(client.post(migrate, json={"gpa": BASE_GPA, "size": 16 * PAGE, "target_node": 1}))
    after = scrape(client)

    def delta(name: str, kind: str) -> float:
        return value(after, name, kind=kind) - value(before, name, kind=kind)

    assert delta("gmem_broker_operations_total", "migrate-page") == 2
    assert delta("gmem_broker_operation_pages_total", "migrate-page") == 1 + 3
    assert delta("gmem_broker_operations_total", "migrate-range") == 1
    assert delta("gmem_broker_operation_pages_total", "migrate-range") == 16 - 4


def test_per_vm_gauges_follow_the_extent_map(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB // 2}))
    ok(client.post(f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": BASE_GPA, "size": 16 * PAGE, "to": "shared"}]}))
    ok(client.post(f"/v1/vms/{vm_id}/shared/populate", json={"gpa": BASE_GPA, "size": 8 * PAGE}))
    name = ok(client.get(f"/v1/vms/{vm_id}"))["name"]
    samples = scrape(client)

    def gauge(key: str) -> float:
        return value(samples, f"gmem_broker_vm_{key}", vm_id=vm_id, vm_name=name)

    assert gauge("private_pages") == 256 - 16
    assert gauge("shared_pages") == 16
    assert gauge("allocated_private_pages") == 128 - 16
    assert gauge("allocated_shared_pages") == 8
    # attributes: shared 16 | private 240; shared backing: 8; memfd population: hole 16 | allocated 112
    assert gauge("extents") == 2 + 1 + 1


def test_journal_pending_count(fresh_db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    backend = SimBackend()
    with RunningServer(make_app(fresh_db_url, backend)) as server, httpx.Client(base_url=server.url) as c:
        vm_id, memfd_id = guest(c, MIB)
        ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
        assert value(scrape(c), "gmem_broker_journal_pending_operations") == 0
        backend.inject_fault("punch_hole", "EIO")
        convert = {"ranges": [{"gpa": BASE_GPA, "size": 16 * PAGE, "to": "shared"}]}
        with caplog.at_level(logging.ERROR, logger="gmem_broker"):
            resp = c.post(f"/v1/vms/{vm_id}/convert", json=convert, headers={"X-Request-ID": "req-pending"})
        problem(resp, 503, "replay-pending")
        # logged by the operations layer in a worker thread, yet carrying the request's id
        failed = [r for r in caplog.records if "backend failed after" in r.getMessage()]
        assert [getattr(r, "request_id", None) for r in failed] == ["req-pending"]
        samples = scrape(c)
        assert value(samples, "gmem_broker_journal_pending_operations") == 1
        assert value(samples, "gmem_broker_vms_awaiting_replay") == 1
        # a pending operation is not counted as applied
        assert value(samples, "gmem_broker_operations_total", kind="convert") == 0
        ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json={"offset": MIB - PAGE, "length": PAGE}))
        assert value(scrape(c), "gmem_broker_journal_pending_operations") == 0


def test_a_group_is_counted_per_kind_in_one_go() -> None:
    """What a group commit reports at once: mixed kinds, pages summed per kind, no-page operations counted."""
    from service.api.metrics import Metrics

    m = Metrics()
    m.operations_applied(
        [
            ("convert", {"operation_id": "op_a", "generation": 2, "pages_converted": 3, "private_pages_freed": 1}),
            ("allocate", {"operation_id": "op_b", "generation": 3, "pages_allocated": 5}),
            ("convert", {"operation_id": "op_c", "generation": 4, "pages_converted": 2, "private_pages_freed": 0}),
            ("migrate-page", {"operation_id": "op_d", "generation": 5, "moves": [{}, {}]}),
            ("update-vm", {"operation_id": "op_e", "generation": 6}),
        ]
    )
    m.operations_applied([("convert", {"operation_id": "op_f", "generation": 7, "pages_converted": 1})])
    value = m.registry.get_sample_value
    assert value("gmem_broker_operations_total", {"kind": "convert"}) == 3
    assert value("gmem_broker_operation_pages_total", {"kind": "convert"}) == 6  # the pages_* fields only
    assert value("gmem_broker_operations_total", {"kind": "allocate"}) == 1
    assert value("gmem_broker_operation_pages_total", {"kind": "allocate"}) == 5
    assert value("gmem_broker_operation_pages_total", {"kind": "migrate-page"}) == 2
    assert value("gmem_broker_operations_total", {"kind": "update-vm"}) == 1
    assert value("gmem_broker_operation_pages_total", {"kind": "update-vm"}) == 0
