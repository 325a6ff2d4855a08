"""The kvm broker over HTTP: the host, VM types, page contents, fd hand-off, and restarts."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, update

from service.backends.kvm.backend import KvmBackend
from service.client.handoff import HandoffRefused, fetch_memfd
from service.store.models import OperationRow

from ..api.helpers import BASE_GPA, MIB, PAGE, create_memfd, create_memslot, create_vm, ok, problem
from ..conftest import RunningServer
from .conftest import broker_app, migrated_sqlite, require_kvm

ROOT = Path(__file__).resolve().parents[2]


def kvm_of(server: RunningServer) -> KvmBackend:
    backend = server.app.state.broker.backend.wrapped  # under the metrics' timing proxy
    assert isinstance(backend, KvmBackend)
    return backend


def test_host_reports_the_live_kernel(kvm_client: httpx.Client) -> None:
    host = ok(kvm_client.get("/v1/host"))
    assert host["backend"] == "kvm"
    assert host["capabilities"]["api_version"] == 12
    assert {"guest_memfd", "guest_memfd_flags", "user_memory2", "memory_attributes", "vm_types"} <= set(
        host["capabilities"]
    )
    assert host["vm_types"] == ["default"]
    assert host["memfd_flags"] == ["mmap", "init_shared"]
    assert host["enforcement"]["memory_attributes"] == "broker"
    assert host["enforcement"]["guest_memfd"] == "kernel"
    assert host["kernel"]["release"] == os.uname().release
    assert host["numa_nodes"]
    assert host["page_size"] == PAGE
    assert host["vms"]["lost"] == 0


def test_vm_types_the_kernel_lacks_are_refused(kvm_client: httpx.Client) -> None:
    before = ok(kvm_client.get("/v1/vms"))
    doc = problem(kvm_client.post("/v1/vms", json={"vm_type": "sw_protected"}), 422, "unsupported-vm-type")
    assert doc["supported"] == ["default"]
    assert ok(kvm_client.get("/v1/vms")) == before
    assert create_vm(kvm_client, "default")["state"] == "created"


def test_pattern_then_punch_reads_zeros_through_the_kernel(kvm_client: httpx.Client, kvm_server: RunningServer) -> None:
    vm = create_vm(kvm_client, "default")
    memfd = create_memfd(kvm_client, vm["id"], MIB, ["init_shared", "mmap"])
    m = f"/v1/vms/{vm['id']}/memfds/{memfd['id']}"
    ok(kvm_client.post(f"{m}/allocate", json={"offset": 0, "length": 8 * PAGE}))
    pattern = os.urandom(PAGE)
    kvm_of(kvm_server).write_page(vm["id"], memfd["id"], 2, pattern)
    page = ok(kvm_client.get(f"{m}/pages/2"))
    assert base64.b64decode(page["data"]) == pattern
    assert page["allocated"] is True
    ok(kvm_client.post(f"{m}/punch-hole", json={"offset": 2 * PAGE, "length": PAGE}))
    page = ok(kvm_client.get(f"{m}/pages/2"))
    assert base64.b64decode(page["data"]) == bytes(PAGE)
    assert page["allocated"] is False
    # Reading the hole faulted a page in; the broker gave it back, so the kernel holds zeros and a hole.
    assert kvm_of(kvm_server).read_page(vm["id"], memfd["id"], 2) == bytes(PAGE)
    extents = ok(kvm_client.get(f"{m}/extents"))["items"]
    assert [e["state"] for e in extents] == ["allocated", "hole", "allocated", "hole"]


def test_private_pages_are_not_read(kvm_client: httpx.Client) -> None:
    vm = create_vm(kvm_client, "default")
    memfd = create_memfd(kvm_client, vm["id"], MIB, ["init_shared", "mmap"])
    create_memslot(kvm_client, vm["id"], memfd["id"], size=MIB)
    ranges = [{"gpa": BASE_GPA + 4 * PAGE, "size": PAGE, "to": "private"}]
    ok(kvm_client.post(f"/v1/vms/{vm['id']}/convert", json={"ranges": ranges}))
    m = f"/v1/vms/{vm['id']}/memfds/{memfd['id']}"
    problem(kvm_client.get(f"{m}/pages/4"), 409, "private-page")
    assert ok(kvm_client.get(f"{m}/pages/5"))["data"] == base64.b64encode(bytes(PAGE)).decode()


# -- fd hand-off ---------------------------------------------------------------------------------


def exported(client: httpx.Client, server: RunningServer, pattern: bytes) -> dict[str, Any]:
    vm = create_vm(client, "default")
    memfd = create_memfd(client, vm["id"], MIB, ["init_shared", "mmap"])
    ok(client.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/allocate", json={"offset": 0, "length": PAGE}))
    kvm_of(server).write_page(vm["id"], memfd["id"], 0, pattern)
    ticket = ok(client.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/export"), 201)
    assert (ticket["vm_id"], ticket["memfd_id"]) == (vm["id"], memfd["id"])
    return ticket


def receive(socket_path: str, ticket: str, pgoff: int = 0) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.kvm.receiver", socket_path, ticket, str(pgoff)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_a_separate_process_maps_the_handed_off_memfd(kvm_client: httpx.Client, kvm_server: RunningServer) -> None:
    pattern = os.urandom(PAGE)
    ticket = exported(kvm_client, kvm_server, pattern)
    assert ticket["size"] == MIB
    mode = os.stat(ticket["socket"]).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    got = receive(ticket["socket"], ticket["ticket"])
    assert got == {
        "size": MIB,
        "flags": ["init_shared", "mmap"],
        "sha256": hashlib.sha256(pattern).hexdigest(),
        "fallocate": "ok",
    }
    # A reused ticket is refused, and no fd comes with the refusal.
    assert receive(ticket["socket"], ticket["ticket"])["refused"] == "ticket-used"
    assert receive(ticket["socket"], "not-a-ticket")["refused"] == "ticket-unknown"


def test_an_expired_ticket_is_refused(kvm_client: httpx.Client, kvm_server: RunningServer) -> None:
    ticket = exported(kvm_client, kvm_server, bytes(PAGE))
    tickets = kvm_server.app.state.handoff.tickets
    clock = tickets._clock
    tickets._clock = lambda: clock() + tickets.ttl_seconds + 1
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(ticket["socket"])
            sock.sendall(f"REDEEM {ticket['ticket']}\n".encode())
            message, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        assert fds == []
        assert message.startswith(b"ERR ")
        assert json.loads(message[4:])["code"] == "ticket-expired"
        with pytest.raises(HandoffRefused) as refused:  # and it stays refused
            fetch_memfd(ticket["socket"], ticket["ticket"])
        assert refused.value.code == "ticket-expired"
    finally:
        tickets._clock = clock


def test_a_malformed_request_gets_no_fd(kvm_client: httpx.Client, kvm_server: RunningServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(kvm_server.app.state.handoff.path)
        sock.sendall(b"GIVE ME ALL\n")
        message, fds, _, _ = socket.recv_fds(sock, 4096, 1)
    assert fds == []
    assert json.loads(message[4:])["code"] == "bad-request"


def test_the_sim_has_no_fds_to_hand_off(clients: dict[str, httpx.Client], servers: dict[str, RunningServer]) -> None:
    assert not os.path.exists(servers["sim"].app.state.handoff.path)  # no listener without real fds
    client = clients["sim"]
    vm = create_vm(client, "default")
    memfd = create_memfd(client, vm["id"], MIB)
    problem(client.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/export"), 501, "not-supported-by-kernel")


# -- restart -------------------------------------------------------------------------------------


def test_after_a_restart_kvm_vms_are_lost_until_deleted(tmp_path: Path) -> None:
    require_kvm()
    url = migrated_sqlite(tmp_path)
    sock = tmp_path / "handoff.sock"
    with RunningServer(broker_app(url, KvmBackend(), sock)) as first, httpx.Client(base_url=first.url) as c:
        vm = create_vm(c, "default")
        memfd = create_memfd(c, vm["id"], MIB)
        create_memslot(c, vm["id"], memfd["id"], size=MIB)
        ranges = [{"gpa": BASE_GPA, "size": MIB // 2, "to": "private"}]
        ok(c.post(f"/v1/vms/{vm['id']}/convert", json={"ranges": ranges}))
        ok(c.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/allocate", json={"offset": 0, "length": 4 * PAGE}))
        extents = ok(c.get(f"/v1/vms/{vm['id']}/extents"))["items"]
    # As if the process died between the allocate's commit and its fallocate: it cannot be replayed.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(OperationRow).where(OperationRow.kind == "allocate").values(status="pending"))
    engine.dispose()
    with RunningServer(broker_app(url, KvmBackend(), sock)) as second, httpx.Client(base_url=second.url) as c:
        v = f"/v1/vms/{vm['id']}"
        assert ok(c.get(v))["state"] == "lost"
        assert ok(c.get("/v1/host"))["vms"]["lost"] == 1
        assert ok(c.get(f"{v}/extents"))["items"] == extents  # kept for inspection
        m = f"{v}/memfds/{memfd['id']}"
        for method, path, body in [
            ("POST", f"{m}/allocate", {"offset": 0, "length": PAGE}),
            ("POST", f"{m}/punch-hole", {"offset": 0, "length": PAGE}),
            ("POST", f"{v}/convert", {"ranges": [{"gpa": BASE_GPA, "size": PAGE, "to": "shared"}]}),
            ("PATCH", v, {"state": "running"}),
            ("POST", f"{v}/memfds", {"size": MIB}),
            ("DELETE", f"{v}/memslots/0", None),
            ("POST", f"{m}/export", None),
            ("GET", f"{m}/pages/0", None),
            ("POST", f"{v}/shared/populate", {"gpa": BASE_GPA + MIB // 2, "size": PAGE}),
            ("POST", f"{v}/memslots", {"slot": 1, "gpa": 2 * BASE_GPA, "size": PAGE, "memfd_id": memfd["id"]}),
            ("DELETE", m, None),
            ("POST", f"{v}/migrate-page", {"gpa": BASE_GPA + MIB // 2, "target_node": 0}),
        ]:
            problem(c.request(method, path, json=body), 409, "vm-lost")
        assert ok(c.get(f"{v}/extents"))["items"] == extents
        abandoned = [op for op in ok(c.get(f"{v}/operations"))["items"] if op["kind"] == "allocate"]
        assert [(op["status"], op["error"]["code"]) for op in abandoned] == [("failed", "vm-lost")]
        assert ok(c.get("/v1/host"))["vms"]["pending_replay"] == 0
        ok(c.delete(v))
        problem(c.get(v), 404, "not-found")
        assert ok(c.get("/v1/host"))["vms"]["lost"] == 0
        kinds = [op["kind"] for op in ok(c.get(f"{v}/operations"))["items"]]
        assert kinds[-2:] == ["mark-lost", "delete-vm"]


def test_export_honours_idempotency_key_and_if_match(kvm_client: httpx.Client) -> None:
    vm = create_vm(kvm_client, "default")
    memfd = create_memfd(kvm_client, vm["id"], MIB)
    path = f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/export"
    first = kvm_client.post(path, headers={"Idempotency-Key": f"export-{vm['id']}"})
    again = kvm_client.post(path, headers={"Idempotency-Key": f"export-{vm['id']}"})
    assert ok(again, 201)["ticket"] == ok(first, 201)["ticket"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert ok(kvm_client.post(path), 201)["ticket"] != first.json()["ticket"]
    problem(kvm_client.post(path, headers={"If-Match": '"999"'}), 412, "precondition-failed")
    assert ok(kvm_client.post(path, headers={"If-Match": first.headers["ETag"]}), 201)["ticket"]


def test_100_vms_created_and_deleted_through_the_api_leave_no_fd_open(kvm_client: httpx.Client) -> None:
    ok(kvm_client.get("/v1/host"))  # the keep-alive connection is open before counting
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        vm = create_vm(kvm_client, "default")
        memfd = create_memfd(kvm_client, vm["id"], MIB, ["init_shared", "mmap"])
        create_memslot(kvm_client, vm["id"], memfd["id"], size=MIB)
        ok(kvm_client.delete(f"/v1/vms/{vm['id']}", params={"force": "true"}))
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_factory_opens_the_configured_device(tmp_path: Path) -> None:
    from service.backends.factory import BackendUnavailable, make_backend
    from service.settings import Settings

    require_kvm()
    backend = make_backend(Settings(backend="kvm"))
    assert isinstance(backend, KvmBackend)
    backend.close()
    with pytest.raises(BackendUnavailable, match="ENOENT"):
        make_backend(Settings(backend="kvm", kvm_device=str(tmp_path / "no-kvm")))


def test_the_shared_backing_the_kernel_holds_matches_the_broker(
    kvm_client: httpx.Client, kvm_server: RunningServer
) -> None:
    from service.operations.recovery import reconcile

    vm = create_vm(kvm_client, "default")
    memfd = create_memfd(kvm_client, vm["id"], MIB)
    create_memslot(kvm_client, vm["id"], memfd["id"], size=MIB)
    v = f"/v1/vms/{vm['id']}"
    ok(kvm_client.post(f"{v}/shared/populate", json={"gpa": BASE_GPA, "size": 64 * PAGE}))
    ranges = [{"gpa": BASE_GPA + 16 * PAGE, "size": 8 * PAGE, "to": "private"}]
    ok(kvm_client.post(f"{v}/convert", json={"ranges": ranges}))
    gfn = BASE_GPA // PAGE
    # Read back from the shared memfd with SEEK_DATA/SEEK_HOLE: the converted pages were discarded.
    assert kvm_of(kvm_server).inventory()[vm["id"]].shared == [(gfn, gfn + 16), (gfn + 24, gfn + 64)]
    assert reconcile(kvm_server.app.state.broker) == []
