"""The kvm broker refuses allocations the host cannot hold instead of letting the OOM killer end it.

The kernel does not refuse a guest_memfd fallocate past the host's memory. These tests never ask for
more than a few pages: a reserve larger than any host's memory makes the broker refuse them.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from service.backends.factory import make_backend
from service.backends.kvm.backend import KvmBackend
from service.settings import Settings

from ..api.helpers import BASE_GPA, MIB, PAGE, create_memfd, create_memslot, create_vm, ok, problem, snapshot
from ..conftest import RunningServer
from .conftest import KVM_DEVICE, broker_app, migrated_sqlite, require_kvm

EVERYTHING = 1 << 62  # a reserve no host has: every new page is more than the host can give


def test_allocations_past_the_reserve_are_507_and_change_nothing(tmp_path: Path) -> None:
    require_kvm()
    backend = KvmBackend(KVM_DEVICE, memory_reserve=EVERYTHING)
    assert backend.available_pages() == 0
    url = migrated_sqlite(tmp_path)
    with RunningServer(broker_app(url, backend, tmp_path / "h.sock")) as server, httpx.Client(base_url=server.url) as c:
        vm = create_vm(c, "default")
        memfd = create_memfd(c, vm["id"], MIB, ["mmap", "init_shared"])
        create_memslot(c, vm["id"], memfd["id"], size=MIB)
        private = [{"gpa": BASE_GPA, "size": MIB // 2, "to": "private"}]
        ok(c.post(f"/v1/vms/{vm['id']}/convert", json={"ranges": private}))
        before = snapshot(c, vm["id"])
        allocate = f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/allocate"
        doc = problem(c.post(allocate, json={"offset": 0, "length": 4 * PAGE}), 507, "insufficient-memory")
        assert doc["errno"] == "ENOMEM"
        populate = {"gpa": BASE_GPA + MIB // 2, "size": 4 * PAGE}
        problem(c.post(f"/v1/vms/{vm['id']}/shared/populate", json=populate), 507, "insufficient-memory")
        assert snapshot(c, vm["id"]) == before
        # Nothing new to allocate needs no memory: converting and punching still work.
        ok(c.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/punch-hole", json={"offset": 0, "length": PAGE}))


def test_the_default_reserve_leaves_small_allocations_alone(tmp_path: Path) -> None:
    require_kvm()
    backend = make_backend(Settings(backend="kvm", kvm_device=KVM_DEVICE))
    assert isinstance(backend, KvmBackend)
    available = backend.available_pages()
    assert available is not None
    assert available > 0
    url = migrated_sqlite(tmp_path)
    with RunningServer(broker_app(url, backend, tmp_path / "h.sock")) as server, httpx.Client(base_url=server.url) as c:
        vm = create_vm(c, "default")
        memfd = create_memfd(c, vm["id"], MIB)
        create_memslot(c, vm["id"], memfd["id"], size=MIB)
        ok(c.post(f"/v1/vms/{vm['id']}/convert", json={"ranges": [{"gpa": BASE_GPA, "size": MIB, "to": "private"}]}))
        allocate = f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/allocate"
        assert ok(c.post(allocate, json={"offset": 0, "length": MIB}))["pages_allocated"] == MIB // PAGE
        # With no memory to spare, re-allocating what is allocated still works (it needs no new page) and
        # one new page does not.
        backend._memory_reserve = EVERYTHING
        assert ok(c.post(allocate, json={"offset": 0, "length": MIB}))["pages_allocated"] == 0
        ok(c.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/punch-hole", json={"offset": 0, "length": PAGE}))
        problem(c.post(allocate, json={"offset": 0, "length": MIB}), 507, "insufficient-memory")
