"""Mutations of one VM are serialized; mutations of different VMs do not wait for each other."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from ..conftest import RunningServer
from .helpers import BASE_GPA, MIB, PAGE, all_extents, guest, ok


def test_one_vm_serialized_under_concurrent_requests(client: httpx.Client, server: RunningServer) -> None:
    vm_id, _ = guest(client, MIB)
    start = ok(client.get(f"/v1/vms/{vm_id}"))["generation"]

    def flip(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            rng = {"gpa": BASE_GPA + i * PAGE, "size": PAGE, "to": "shared"}
            body = ok(c.post(f"/v1/vms/{vm_id}/convert", json={"ranges": [rng]}))
            return int(body["generation"])

    with ThreadPoolExecutor(8) as pool:
        generations = list(pool.map(flip, range(64)))
    # every mutation got its own generation: none was lost or interleaved
    assert sorted(generations) == list(range(start + 1, start + 65))
    items = all_extents(client, vm_id)
    assert items[0] == {
        "gpa": BASE_GPA,
        "size": 64 * PAGE,
        "attribute": "shared",
        "private_backing": "hole",
        "shared_backing": "hole",
    }
    ops = ok(client.get(f"/v1/vms/{vm_id}/operations", params={"limit": 1000}))["items"]
    assert [o["generation"] for o in ops] == list(range(1, start + 65))


def test_other_vms_are_not_blocked(client: httpx.Client, server: RunningServer) -> None:
    busy_vm, _ = guest(client, MIB)
    free_vm, free_memfd = guest(client, MIB)
    broker = server.app.state.broker
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with broker.locked(busy_vm):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    waiting = threading.Event()

    def blocked_request() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            ok(c.patch(f"/v1/vms/{busy_vm}", json={"state": "running"}))
        waiting.set()

    blocked = threading.Thread(target=blocked_request)
    blocked.start()
    try:
        # while busy_vm is locked, the other VM's mutation completes
        ok(client.post(f"/v1/vms/{free_vm}/memfds/{free_memfd}/allocate", json={"offset": 0, "length": PAGE}))
        assert not waiting.is_set()
    finally:
        release.set()
        holder.join()
        blocked.join(30)
    assert waiting.is_set()
    assert ok(client.get(f"/v1/vms/{busy_vm}"))["state"] == "running"
