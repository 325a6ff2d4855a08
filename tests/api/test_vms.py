"""VM lifecycle, generation and ETag, force delete, listing."""

from __future__ import annotations

import httpx
from sqlalchemy import create_engine, select

from service.store.models import OperationRow

from .helpers import MIB, create_memfd, create_vm, guest, ok, problem, snapshot


def test_create_read_list(client: httpx.Client) -> None:
    vm = create_vm(client, "tdx")
    assert vm["state"] == "created"
    assert vm["generation"] == 1
    assert vm["vm_type"] == "tdx"
    got = client.get(f"/v1/vms/{vm['id']}")
    assert got.headers["etag"] == '"1"'
    assert ok(got) == vm
    assert vm["id"] in [v["id"] for v in ok(client.get("/v1/vms"))["items"]]


def test_names_are_unique_and_types_checked(client: httpx.Client) -> None:
    vm = create_vm(client)
    problem(client.post("/v1/vms", json={"name": vm["name"]}), 409, "name-taken")
    doc = problem(client.post("/v1/vms", json={"vm_type": "snp"}), 422, "unsupported-vm-type")
    assert "sev_snp" in doc["supported"]


def test_state_transitions(client: httpx.Client) -> None:
    vm = create_vm(client)
    path = f"/v1/vms/{vm['id']}"
    running = ok(client.patch(path, json={"state": "running"}))
    assert running["state"] == "running"
    assert running["generation"] == 2
    # asking for the state it is in changes nothing
    assert ok(client.patch(path, json={"state": "running"}))["generation"] == 2
    before = snapshot(client, vm["id"])
    problem(client.patch(path, json={"state": "created"}), 409, "invalid-transition")
    assert snapshot(client, vm["id"]) == before
    ok(client.patch(path, json={"state": "stopped"}))
    ok(client.patch(path, json={"state": "running"}))
    assert ok(client.get(path))["generation"] == 4
    assert before["vm"]["generation"] == 2


def test_invalid_transition(client: httpx.Client) -> None:
    vm = create_vm(client)
    path = f"/v1/vms/{vm['id']}"
    ok(client.patch(path, json={"state": "stopped"}))
    # an unknown state is a schema error
    problem(client.patch(path, json={"state": "paused"}), 422, "validation-error")


def test_stale_if_match_gets_412_and_changes_nothing(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    etag = client.get(f"/v1/vms/{vm_id}").headers["etag"]
    resp = client.post(
        f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}, headers={"If-Match": etag}
    )
    assert ok(resp)["pages_allocated"] == 256
    new_etag = resp.headers["etag"]
    assert new_etag != etag
    before = snapshot(client, vm_id)
    for method, path, body in [
        ("POST", f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", {"offset": 0, "length": MIB}),
        ("PATCH", f"/v1/vms/{vm_id}", {"state": "running"}),
        ("DELETE", f"/v1/vms/{vm_id}?force=true", None),
    ]:
        problem(client.request(method, path, json=body, headers={"If-Match": etag}), 412, "precondition-failed")
    assert snapshot(client, vm_id) == before
    ok(client.patch(f"/v1/vms/{vm_id}", json={"state": "running"}, headers={"If-Match": new_etag}))
    ok(client.patch(f"/v1/vms/{vm_id}", json={"state": "stopped"}, headers={"If-Match": "*"}))


def test_delete_refused_while_in_use_then_forced(client: httpx.Client, db_url: str) -> None:
    vm_id, memfd_id = guest(client, MIB)
    extra = create_memfd(client, vm_id, MIB)
    before = snapshot(client, vm_id)
    problem(client.delete(f"/v1/vms/{vm_id}"), 409, "in-use")
    assert snapshot(client, vm_id) == before
    body = ok(client.delete(f"/v1/vms/{vm_id}", params={"force": "true"}))
    assert body["released"] == {"memslots": [0], "memfds": sorted([memfd_id, extra["id"]])}
    problem(client.get(f"/v1/vms/{vm_id}"), 404, "not-found")
    # the journal outlives the VM and records the release, in order
    ops = ok(client.get(f"/v1/vms/{vm_id}/operations"))["items"]
    last = ops[-1]
    assert last["kind"] == "delete-vm"
    assert last["status"] == "applied"
    assert last["request"] == {"force": True}
    engine = create_engine(db_url)
    with engine.connect() as conn:
        effects = conn.execute(select(OperationRow.effects).where(OperationRow.id == last["id"])).scalar_one()
    engine.dispose()
    calls = [e["call"] for e in effects]
    assert calls == ["unbind-memslot", "discard-shared", "close-memfd", "close-memfd", "destroy-vm"]


def test_empty_vm_deletes_without_force(client: httpx.Client) -> None:
    vm = create_vm(client)
    ok(client.delete(f"/v1/vms/{vm['id']}"))
    problem(client.delete(f"/v1/vms/{vm['id']}"), 404, "not-found")
