"""The journal: idempotency keys, backend failures, replay at start-up, the operations listing."""

from __future__ import annotations

import httpx
from sqlalchemy import create_engine, select, update

from service.backends.sim import SimBackend
from service.store.models import OperationRow

from ..conftest import RunningServer, make_app
from .helpers import BASE_GPA, MIB, PAGE, all_extents, guest, memfd_extents, ok, problem, snapshot


def test_idempotency_key_replays_the_stored_response(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    path = f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate"
    key = {"Idempotency-Key": f"alloc-{vm_id}"}
    first = client.post(path, json={"offset": 0, "length": MIB}, headers=key)
    body = ok(first)
    generation = body["generation"]
    second = client.post(path, json={"offset": 0, "length": MIB}, headers=key)
    assert ok(second) == body
    assert second.headers["idempotent-replayed"] == "true"
    assert ok(client.get(f"/v1/vms/{vm_id}"))["generation"] == generation
    before = snapshot(client, vm_id)
    problem(client.post(path, json={"offset": 0, "length": 2 * MIB}, headers=key), 422, "idempotency-key-reused")
    assert snapshot(client, vm_id) == before


def test_an_idempotency_key_over_255_characters_is_refused(client: httpx.Client) -> None:
    vm_id, _ = guest(client, MIB)
    before = snapshot(client, vm_id)
    convert = {"ranges": [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]}
    doc = problem(
        client.post(f"/v1/vms/{vm_id}/convert", json=convert, headers={"Idempotency-Key": "k" * 256}),
        422,
        "validation-error",
    )
    assert doc["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert doc["errors"][0]["type"] == "string_too_long"
    assert snapshot(client, vm_id) == before
    ok(client.post(f"/v1/vms/{vm_id}/convert", json=convert, headers={"Idempotency-Key": "k" * 255}))


def test_idempotent_vm_creation(client: httpx.Client) -> None:
    key = {"Idempotency-Key": "create-once-" + str(id(client))}
    a = ok(client.post("/v1/vms", json={"vm_type": "tdx"}, headers=key), 201)
    b = ok(client.post("/v1/vms", json={"vm_type": "tdx"}, headers=key), 201)
    assert a == b
    problem(client.post("/v1/vms", json={"vm_type": "sev_snp"}, headers=key), 422, "idempotency-key-reused")


def test_operations_listing(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": PAGE}))
    ops = ok(client.get(f"/v1/vms/{vm_id}/operations"))["items"]
    assert [o["kind"] for o in ops] == ["create-vm", "create-memfd", "create-memslot", "allocate"]
    assert [o["generation"] for o in ops] == [1, 2, 3, 4]
    assert all(o["status"] == "applied" for o in ops)
    assert ops[-1]["result"]["pages_allocated"] == 1
    first = ok(client.get(f"/v1/vms/{vm_id}/operations", params={"limit": 2}))
    rest = ok(client.get(f"/v1/vms/{vm_id}/operations", params={"cursor": first["next_cursor"]}))
    assert [o["id"] for o in first["items"] + rest["items"]] == [o["id"] for o in ops]


def test_out_of_memory_changes_nothing_and_is_journalled_failed(fresh_db_url: str) -> None:
    backend = SimBackend(numa_nodes=2, frames_per_node=64)
    with RunningServer(make_app(fresh_db_url, backend)) as server, httpx.Client(base_url=server.url) as c:
        vm_id, memfd_id = guest(c, MIB)
        ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": 100 * PAGE}))
        before = snapshot(c, vm_id)
        host_before = ok(c.get("/v1/host"))["budget"]
        key = {"Idempotency-Key": "oom-1"}
        doc = problem(
            c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}, headers=key),
            507,
            "insufficient-memory",
        )
        assert doc["errno"] == "ENOMEM"
        assert snapshot(c, vm_id) == before
        assert ok(c.get("/v1/host"))["budget"] == host_before
        ops = ok(c.get(f"/v1/vms/{vm_id}/operations"))["items"]
        assert ops[-1]["status"] == "failed"
        assert ops[-1]["error"]["code"] == "insufficient-memory"
        # the same key replays the same refusal
        problem(
            c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}, headers=key),
            507,
            "insufficient-memory",
        )
        # and the aggregate still works from the restored state
        assert (
            ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json={"offset": 0, "length": MIB}))[
                "pages_freed"
            ]
            == 100
        )


def test_backend_failure_midway_is_replayed(fresh_db_url: str) -> None:
    backend = SimBackend()
    with RunningServer(make_app(fresh_db_url, backend)) as server, httpx.Client(base_url=server.url) as c:
        vm_id, memfd_id = guest(c, MIB)
        ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
        # set-attributes applies, then the punch of the private pages fails
        backend.inject_fault("punch_hole", "EIO")
        doc = problem(
            c.post(f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": BASE_GPA, "size": 16 * PAGE, "to": "shared"}]}),
            503,
            "replay-pending",
        )
        ops = ok(c.get(f"/v1/vms/{vm_id}/operations"))["items"]
        assert ops[-1]["id"] == doc["operation_id"]
        assert ops[-1]["status"] == "pending"
        assert ok(c.get("/v1/host"))["vms"]["pending_replay"] == 1
        # the next mutation of the VM replays it first
        ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json={"offset": MIB - PAGE, "length": PAGE}))
        ops = ok(c.get(f"/v1/vms/{vm_id}/operations"))["items"]
        assert [o["status"] for o in ops[-2:]] == ["applied", "applied"]
        assert backend.inventory()[vm_id].memfds[memfd_id] == [(16, 255)]


def test_pending_operations_replay_at_start_up(fresh_db_url: str) -> None:
    with RunningServer(make_app(fresh_db_url)) as server, httpx.Client(base_url=server.url) as c:
        vm_id, memfd_id = guest(c, MIB)
        ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
        expected_extents = all_extents(c, vm_id)
        expected_memfd = memfd_extents(c, vm_id, memfd_id)
    # as if the process died between the database commit and the backend call
    engine = create_engine(fresh_db_url)
    with engine.begin() as conn:
        conn.execute(update(OperationRow).where(OperationRow.kind == "allocate").values(status="pending"))
    backend = SimBackend()
    with RunningServer(make_app(fresh_db_url, backend)) as server, httpx.Client(base_url=server.url) as c:
        assert ok(c.get("/readyz"))["status"] == "ready"
        assert all_extents(c, vm_id) == expected_extents
        assert memfd_extents(c, vm_id, memfd_id) == expected_memfd
        assert backend.inventory()[vm_id].memfds[memfd_id] == [(0, 256)]
        assert ok(c.get("/v1/host"))["reconcile"] == []
    with engine.connect() as conn:
        statuses = conn.execute(select(OperationRow.status)).scalars().all()
    engine.dispose()
    assert set(statuses) == {"applied"}
