"""Server-sent events from the journal: order, exactly once, resume with Last-Event-ID, 410."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from service.operations.events import prune_journal

from ..conftest import RunningServer
from .helpers import BASE_GPA, MIB, PAGE, create_memfd, create_memslot, create_vm, guest, ok, problem
from .sim_host import own_database, sim_host


class Events:
    """Reads one server-sent event at a time off a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def next(self) -> dict[str, Any]:
        fields: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if "data" in fields:
                    data: dict[str, Any] = json.loads(fields["data"])
                    assert data["id"] == fields["id"]
                    assert data["kind"] == fields["event"]
                    return data
                fields.clear()
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        raise AssertionError("the stream ended")

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next() for _ in range(n)]


@contextmanager
def subscribe(server_url: str, path: str, **headers: str) -> Iterator[Events]:
    # A read timeout turns a missing event into a failure instead of a hang.
    timeout = httpx.Timeout(10.0)
    with httpx.Client(base_url=server_url, timeout=timeout) as c, c.stream("GET", path, headers=headers) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        yield Events(resp)


def last_operation(client: httpx.Client, vm_id: str) -> str:
    items = ok(client.get(f"/v1/vms/{vm_id}/operations", params={"limit": 1000}))["items"]
    op_id: str = items[-1]["id"]
    return op_id


def mutations(client: httpx.Client, vm_id: str, memfd_id: str) -> list[str]:
    """A mix of operations; returns their operation ids in the order they were acknowledged."""
    calls = [
        ("POST", f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", {"offset": 0, "length": MIB}),
        (
            "POST",
            f"/v1/vms/{vm_id}/convert",
            {"ranges": [{"gpa": BASE_GPA + 4 * PAGE, "size": 2 * PAGE, "to": "shared"}]},
        ),
        ("POST", f"/v1/vms/{vm_id}/migrate-page", {"gpa": BASE_GPA, "target_node": 1}),
        ("POST", f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", {"offset": 64 * PAGE, "length": PAGE}),
        ("PATCH", f"/v1/vms/{vm_id}", {"state": "running"}),
    ]
    ids = []
    for method, path, body in calls:
        ok(client.request(method, path, json=body))
        ids.append(last_operation(client, vm_id))
    return ids


def test_vm_stream_sends_each_operation_once_in_order(server: RunningServer, client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, size=4 * MIB, vm_type="tdx")
    with subscribe(server.url, f"/v1/vms/{vm_id}/events") as stream:
        # A refused request is not an event.
        problem(
            client.post(f"/v1/vms/{vm_id}/migrate-page", json={"gpa": BASE_GPA, "target_node": 1}), 409, "not-allocated"
        )
        ids = mutations(client, vm_id, memfd_id)
        events = stream.take(len(ids))
        assert [e["id"] for e in events] == ids
        assert [e["kind"] for e in events] == ["allocate", "convert", "migrate-page", "punch-hole", "set-state"]
        generations = [e["generation"] for e in events]
        assert generations == list(range(generations[0], generations[0] + len(ids)))
        convert = events[1]["ranges"]
        assert {
            "effect": "set-attributes",
            "gpa": BASE_GPA + 4 * PAGE,
            "size": 2 * PAGE,
            "attribute": "shared",
        } in convert
        assert any(r["effect"] == "punch-hole" and r["offset"] == 4 * PAGE for r in convert)
        (move,) = events[2]["ranges"]
        assert (move["effect"], move["gpa"], move["size"], move["node"]) == ("move-frames", BASE_GPA, PAGE, 1)
        # Exactly once: the next event is the next operation, not a repeat.
        nxt = ok(client.patch(f"/v1/vms/{vm_id}", json={"state": "stopped"}))
        assert stream.next()["generation"] == nxt["generation"]
    # Another VM's operations are not in this VM's stream.
    other, _ = guest(client, size=MIB)
    with subscribe(server.url, f"/v1/vms/{vm_id}/events") as stream:
        ok(client.patch(f"/v1/vms/{other}", json={"state": "running"}))
        last = ok(client.patch(f"/v1/vms/{vm_id}", json={"state": "running"}))
        assert stream.next()["generation"] == last["generation"]


def test_memfd_and_memslot_changes_are_events_with_their_ranges(server: RunningServer, client: httpx.Client) -> None:
    vm_id = create_vm(client, "sw_protected")["id"]
    with subscribe(server.url, f"/v1/vms/{vm_id}/events") as stream:
        memfd = create_memfd(client, vm_id, 16 * PAGE)
        create_memslot(client, vm_id, memfd["id"], slot=3, size=16 * PAGE)
        ok(client.delete(f"/v1/vms/{vm_id}/memslots/3"))
        ok(client.delete(f"/v1/vms/{vm_id}/memfds/{memfd['id']}"))
        events = stream.take(4)
    assert [e["kind"] for e in events] == ["create-memfd", "create-memslot", "delete-memslot", "delete-memfd"]
    assert [e["generation"] for e in events] == [2, 3, 4, 5]
    effects = [[r["effect"] for r in e["ranges"]] for e in events]
    assert effects == [
        ["create-memfd"],
        ["bind-memslot", "set-attributes"],
        ["unbind-memslot", "discard-shared"],
        ["close-memfd"],
    ]
    bound = events[1]["ranges"][0]
    assert (bound["slot"], bound["gpa"], bound["size"], bound["memfd_id"]) == (3, BASE_GPA, 16 * PAGE, memfd["id"])
    private = {"effect": "set-attributes", "gpa": BASE_GPA, "size": 16 * PAGE, "attribute": "private"}
    assert events[1]["ranges"][1] == private
    assert events[3]["ranges"] == [{"effect": "close-memfd", "memfd_id": memfd["id"]}]


def test_last_event_id_resumes_exactly_after_it(server: RunningServer, client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, size=4 * MIB, vm_type="sev_snp")
    path = f"/v1/vms/{vm_id}/events"
    with subscribe(server.url, path) as stream:
        first = mutations(client, vm_id, memfd_id)
        seen = stream.take(2)
    # Disconnected after two events: the rest happened, more happen while away.
    more = [ok(client.patch(f"/v1/vms/{vm_id}", json={"state": "stopped"}))["generation"]]
    with subscribe(server.url, path, **{"Last-Event-ID": seen[-1]["id"]}) as stream:
        resumed = stream.take(len(first) - 2 + 1)
        assert [e["id"] for e in resumed[:-1]] == first[2:]
        assert resumed[-1]["generation"] == more[0]
    # The query parameter does the same, for clients that cannot set headers.
    with subscribe(server.url, f"{path}?after={first[-1]}") as stream:
        assert stream.next()["generation"] == more[0]


def test_host_stream_carries_every_vm_in_journal_order(server: RunningServer, client: httpx.Client) -> None:
    a, memfd_a = guest(client, size=MIB)
    b, memfd_b = guest(client, size=MIB)
    with subscribe(server.url, "/v1/events") as stream:
        expected = []
        for vm_id, memfd_id in ((a, memfd_a), (b, memfd_b), (a, memfd_a)):
            body = ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": PAGE}))
            expected.append((vm_id, body["operation_id"]))
            ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json={"offset": 0, "length": PAGE}))
        events = stream.take(6)
        # Other tests' VMs do not run meanwhile (tests are sequential), so these are all the events.
        assert [(e["vm_id"], e["id"]) for e in events[::2]] == expected
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 6
    # The host-wide stream resumes like a VM's: right after the named event, across VMs, each once.
    with subscribe(server.url, "/v1/events", **{"Last-Event-ID": events[2]["id"]}) as stream:
        assert [e["id"] for e in stream.take(3)] == [e["id"] for e in events[3:]]


def test_vm_stream_ends_with_the_vm_and_unknown_vm_is_404(server: RunningServer, client: httpx.Client) -> None:
    vm_id, _ = guest(client, size=MIB)
    with subscribe(server.url, f"/v1/vms/{vm_id}/events") as stream:
        deleted = ok(client.delete(f"/v1/vms/{vm_id}", params={"force": "true"}))
        assert stream.next()["id"] == deleted["operation_id"]
        with pytest.raises(AssertionError, match="the stream ended"):
            stream.next()
    problem(client.get("/v1/vms/vm_unknown/events"), 404, "not-found")
    problem(client.get("/v1/events", headers={"Last-Event-ID": "op_never_issued"}), 410, "events-expired")


def test_an_event_older_than_the_retained_journal_is_410(
    db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with sim_host(own_database(db_kind, request, tmp_path_factory)) as h:
        vm_id, memfd_id = guest(h.client, size=4 * MIB)
        ids = mutations(h.client, vm_id, memfd_id)
        other, _ = guest(h.client, size=MIB)
        problem(
            h.client.get(f"/v1/vms/{other}/events", headers={"Last-Event-ID": ids[0]}), 410, "events-expired"
        )  # another VM's event
        assert prune_journal(h.broker.uow, keep=3) > 0
        doc = problem(h.client.get(f"/v1/vms/{vm_id}/events", headers={"Last-Event-ID": ids[0]}), 410, "events-expired")
        assert "re-read the extent map" in doc["detail"]
        # The journal's newest operations are still there to resume from.
        ops = ok(h.client.get("/v1/vms/" + other + "/operations"))["items"]
        with subscribe(h.server.url, f"/v1/vms/{other}/events", **{"Last-Event-ID": ops[-1]["id"]}) as stream:
            last = ok(h.client.patch(f"/v1/vms/{other}", json={"state": "running"}))
            assert stream.next()["generation"] == last["generation"]
            assert h.broker.events.subscribers == 1
        # A client that goes away stops being woken.
        deadline = time.monotonic() + 10
        while h.broker.events.subscribers and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h.broker.events.subscribers == 0


def test_streams_wait_at_a_pending_operation_until_it_is_applied(
    db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with sim_host(own_database(db_kind, request, tmp_path_factory)) as h:
        a, memfd_a = guest(h.client, size=MIB)
        b, _ = guest(h.client, size=MIB)
        ok(h.client.post(f"/v1/vms/{a}/memfds/{memfd_a}/allocate", json={"offset": 0, "length": MIB}))
        with subscribe(h.server.url, "/v1/events") as stream:
            # A's convert is journalled, but the backend fails after its first call: it stays pending.
            h.sim.inject_fault("punch_hole", "EIO")
            ranges = [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]
            stuck = problem(h.client.post(f"/v1/vms/{a}/convert", json={"ranges": ranges}), 503, "replay-pending")
            # A stream opened while the operation is in flight does not miss it either.
            with subscribe(h.server.url, "/v1/events") as late, subscribe(h.server.url, f"/v1/vms/{a}/events") as of_a:
                later_b = ok(h.client.patch(f"/v1/vms/{b}", json={"state": "running"}))
                # A's next mutation replays the pending one first; only then do events flow, in journal order.
                later_a = ok(h.client.patch(f"/v1/vms/{a}", json={"state": "running"}))
                events = stream.take(3)
                assert events[0]["id"] == stuck["operation_id"]
                assert [(e["vm_id"], e["generation"]) for e in events[1:]] == [
                    (b, later_b["generation"]),
                    (a, later_a["generation"]),
                ]
                assert late.take(3) == events
                assert of_a.take(2) == [events[0], events[2]]
