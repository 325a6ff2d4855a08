"""migrate-page on the sim: frames per NUMA node, frame runs as rows, sealed contents, refusals."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.backends.protocol import MoveRequest, PageRef

from .helpers import BASE_GPA, GIB, MIB, PAGE, create_memfd, create_memslot, create_vm, guest, ok, problem, snapshot
from .sim_host import SimHost, own_database, sim_host, unique

FRAMES_PER_NODE = 1 << 16  # 256 MiB per node


@pytest.fixture(scope="module")
def host(db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimHost]:
    with sim_host(own_database(db_kind, request, tmp_path_factory), numa_nodes=2, frames_per_node=FRAMES_PER_NODE) as h:
        yield h


def private_guest(h: SimHost, vm_type: str, size: int = 4 * MIB, allocate: int = MIB) -> tuple[str, str]:
    vm_id, memfd_id = guest(h.client, size=size, vm_type=vm_type)
    ok(h.client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": allocate}))
    return vm_id, memfd_id


def migrate(h: SimHost, vm_id: str, **body: Any) -> httpx.Response:
    return h.client.post(f"/v1/vms/{vm_id}/migrate-page", json=body)


def state(h: SimHost, vm_id: str) -> dict[str, Any]:
    """Everything a refused migration must leave as it was: the VM, the host's frames, the rows."""
    return {
        "vm": snapshot(h.client, vm_id),
        "nodes": h.nodes(),
        "rows": h.frame_rows(vm_id),
        "pfns": [h.read(vm_id, BASE_GPA + i * PAGE)["pfn"] for i in range(4)],
    }


# -- the physical model ----------------------------------------------------------------------------


def test_host_reports_free_and_used_frames_per_node(host: SimHost) -> None:
    before = host.nodes()
    assert [n["id"] for n in before] == [0, 1]
    assert all(n["total_pages"] == FRAMES_PER_NODE for n in before)
    assert [n["first_pfn"] for n in before] == [0, FRAMES_PER_NODE]
    assert all(n["used_pages"] + n["free_pages"] == n["total_pages"] for n in before)
    private_guest(host, "sw_protected", allocate=MIB)
    after = host.nodes()
    assert sum(n["used_pages"] for n in after) - sum(n["used_pages"] for n in before) == 256


def test_a_fresh_gib_is_one_frame_run_and_a_migration_splits_it(
    db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = own_database(db_kind, request, tmp_path_factory)
    with sim_host(url, numa_nodes=2, frames_per_node=1 << 19) as h:
        vm_id, memfd_id = private_guest(h, "tdx", size=GIB, allocate=GIB)
        (run,) = h.frame_rows(vm_id)
        assert (run.owner, run.start, run.npages) == (memfd_id, 0, GIB // PAGE)
        (item,) = ok(h.client.get(f"/v1/vms/{vm_id}/frames"))["items"]
        assert item == {
            "backing": "private",
            "memfd_id": memfd_id,
            "offset": 0,
            "gpa": None,
            "size": GIB,
            "pfn": run.pfn,
        }
        first = h.read(vm_id, BASE_GPA)["pfn"]
        assert first == run.pfn
        middle = BASE_GPA + 1000 * PAGE
        assert h.read(vm_id, middle)["pfn"] == run.pfn + 1000

        moved = ok(migrate(h, vm_id, gpa=middle, target_node=1))
        rows = sorted((r.start, r.npages, r.pfn) for r in h.frame_rows(vm_id))
        assert rows == [
            (0, 1000, run.pfn),
            (1000, 1, moved["new_pfn"]),
            (1001, GIB // PAGE - 1001, run.pfn + 1001),
        ]
        # The same runs through the API, a page at a time.
        seen, cursor = [], None
        while True:
            page = ok(
                h.client.get(f"/v1/vms/{vm_id}/frames", params={"limit": 1, **({"cursor": cursor} if cursor else {})})
            )
            seen += [(i["offset"] // PAGE, i["size"] // PAGE, i["pfn"]) for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == rows
        problem(h.client.get(f"/v1/vms/{vm_id}/frames", params={"cursor": "zz"}), 422, "invalid-cursor")


def test_frame_runs_and_placement_survive_a_restart(
    db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = own_database(db_kind, request, tmp_path_factory)
    with sim_host(url, frames_per_node=FRAMES_PER_NODE) as h:
        vm_id, _ = private_guest(h, "sev_snp")
        ok(migrate(h, vm_id, gpa=BASE_GPA + PAGE, target_node=1))
        pfns = [h.read(vm_id, BASE_GPA + i * PAGE)["pfn"] for i in range(3)]
        rows, nodes = h.frame_rows(vm_id), h.nodes()
    with sim_host(url, frames_per_node=FRAMES_PER_NODE) as h:
        assert [h.read(vm_id, BASE_GPA + i * PAGE)["pfn"] for i in range(3)] == pfns
        assert h.frame_rows(vm_id) == rows
        assert h.nodes() == nodes
        assert ok(h.client.get("/v1/host"))["reconcile"] == []


# -- migrate-page ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vm_type", "method", "agent"),
    [
        ("tdx", "trusted-agent", "tdx-relocate"),
        ("sev_snp", "trusted-agent", "snp-page-move"),
        ("sw_protected", "copy", None),
    ],
)
def test_migrate_moves_the_page_and_keeps_what_the_guest_sees(
    host: SimHost, vm_type: str, method: str, agent: str | None
) -> None:
    vm_id, _ = private_guest(host, vm_type)
    gpa = BASE_GPA + 3 * PAGE
    secret = unique("guest-secret")
    host.write(vm_id, gpa, secret)
    before = host.read(vm_id, gpa)
    raw_before = host.data(vm_id, gpa, "host")
    nodes_before = host.nodes()
    target = 1 - before["pfn"] // FRAMES_PER_NODE

    moved = ok(migrate(host, vm_id, gpa=gpa, target_node=target))
    assert moved["old_pfn"] == before["pfn"]
    assert moved["new_pfn"] // FRAMES_PER_NODE == moved["node"] == target
    assert (moved["method"], moved["agent"], moved["backing"]) == (method, agent, "private")
    assert moved["generation"] == before["generation"] + 1
    assert host.read(vm_id, gpa)["pfn"] == moved["new_pfn"]
    assert host.data(vm_id, gpa).startswith(secret)
    raw_after = host.data(vm_id, gpa, "host")
    if method == "trusted-agent":
        # Sealed for its frame: never plaintext to the host, and re-sealed for the new frame.
        assert secret not in raw_before
        assert secret not in raw_after
        assert raw_after != raw_before
    else:
        assert raw_after.startswith(secret)
    # The old frame went back to its pool, the new one came from the target's.
    after = host.nodes()
    source = 1 - target
    assert after[source]["used_pages"] == nodes_before[source]["used_pages"] - 1
    assert after[target]["used_pages"] == nodes_before[target]["used_pages"] + 1
    op = ok(host.client.get(f"/v1/vms/{vm_id}/operations"))["items"][-1]
    assert (op["kind"], op["status"], op["id"]) == ("migrate-page", "applied", moved["operation_id"])


def test_a_plain_copy_of_an_encrypted_private_page_corrupts_it_and_the_agent_does_not(host: SimHost) -> None:
    vm_id, memfd_id = private_guest(host, "tdx")
    gpa = BASE_GPA + 7 * PAGE
    secret = unique("tdx-private")
    host.write(vm_id, gpa, secret)
    ciphertext = host.data(vm_id, gpa, "host")
    old_pfn = host.read(vm_id, gpa)["pfn"]

    # The test-only path: what a host memcpy to another frame would do.
    (plan,) = host.sim.plan_moves(vm_id, [MoveRequest(PageRef(memfd_id, 7), 1, target_node=1)])
    host.sim.move_frames(vm_id, plan, "copy")
    assert host.read(vm_id, gpa)["pfn"] == plan.new_pfn
    assert host.data(vm_id, gpa, "host") == ciphertext  # the bytes moved verbatim ...
    assert not host.data(vm_id, gpa).startswith(secret)  # ... and the guest reads garbage
    assert old_pfn != plan.new_pfn

    # The trusted agent re-seals for the destination: the guest's view survives.
    other = BASE_GPA + 8 * PAGE
    host.write(vm_id, other, secret)
    moved = ok(migrate(host, vm_id, gpa=other, target_node=1))
    assert moved["method"] == "trusted-agent"
    assert host.data(vm_id, other).startswith(secret)


def test_migrate_to_a_target_frame_and_the_shared_backing(host: SimHost) -> None:
    vm_id, _ = private_guest(host, "sev_snp")
    shared_gpa = BASE_GPA + 2 * MIB
    ok(
        host.client.post(
            f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": shared_gpa, "size": PAGE, "to": "shared"}]}
        )
    )
    ok(host.client.post(f"/v1/vms/{vm_id}/shared/populate", json={"gpa": shared_gpa, "size": PAGE}))
    text = unique("swiotlb")
    host.write(vm_id, shared_gpa, text)
    assert host.data(vm_id, shared_gpa, "host").startswith(text)  # shared pages are plaintext

    free = next(p for p in range(FRAMES_PER_NODE * 2 - 1, 0, -1) if host.sim._pool.is_free(p))
    moved = ok(migrate(host, vm_id, gpa=shared_gpa, target_pfn=free))
    assert (moved["new_pfn"], moved["method"], moved["backing"], moved["agent"]) == (free, "copy", "shared", None)
    assert host.data(vm_id, shared_gpa).startswith(text)


def test_batch_moves_all_pages_in_one_operation(host: SimHost) -> None:
    vm_id, _ = private_guest(host, "tdx")
    pages = [BASE_GPA + i * PAGE for i in (1, 5, 9)]
    for gpa in pages:
        host.write(vm_id, gpa, gpa.to_bytes(8, "little"))
    body = ok(migrate(host, vm_id, moves=[{"gpa": g, "target_node": 1} for g in pages]))
    assert [m["gpa"] for m in body["moves"]] == pages
    assert all(m["node"] == 1 and m["method"] == "trusted-agent" for m in body["moves"])
    for gpa, m in zip(pages, body["moves"], strict=True):
        assert host.read(vm_id, gpa)["pfn"] == m["new_pfn"]
        assert host.data(vm_id, gpa).startswith(gpa.to_bytes(8, "little"))
    ops = ok(host.client.get(f"/v1/vms/{vm_id}/operations"))["items"]
    assert [o["kind"] for o in ops].count("migrate-page") == 1


def test_evacuate_moves_every_allocated_page_of_a_range_to_a_node(host: SimHost) -> None:
    vm_id, memfd_id = private_guest(host, "sev_snp", allocate=MIB)
    # A hole in the middle: evacuation moves allocated pages only.
    ok(
        host.client.post(
            f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json={"offset": 64 * PAGE, "length": 64 * PAGE}
        )
    )
    host.write(vm_id, BASE_GPA, b"first page")
    start_node = host.read(vm_id, BASE_GPA)["pfn"] // FRAMES_PER_NODE
    target = 1 - start_node
    body = ok(migrate(host, vm_id, gpa=BASE_GPA, size=4 * MIB, target_node=target))
    assert body["pages_moved"] == 256 - 64
    assert sum(m["size"] for m in body["moves"]) == (256 - 64) * PAGE
    assert {m["node"] for m in body["moves"]} == {target}
    assert all(r.pfn // FRAMES_PER_NODE == target for r in host.frame_rows(vm_id))
    assert host.data(vm_id, BASE_GPA).startswith(b"first page")
    # Nothing left to move: no operation, no new generation.
    again = ok(migrate(host, vm_id, gpa=BASE_GPA, size=4 * MIB, target_node=target))
    assert (again["pages_moved"], again["operation_id"], again["generation"]) == (0, None, body["generation"])


# -- refusals ----------------------------------------------------------------------------------------


def test_refusals_change_nothing(host: SimHost) -> None:
    vm_id, _memfd_id = private_guest(host, "tdx", allocate=4 * PAGE)
    other_vm, _ = private_guest(host, "tdx", allocate=PAGE)
    busy = host.read(other_vm, BASE_GPA)["pfn"]
    before = state(host, vm_id)
    cases = [
        ({"gpa": BASE_GPA + 8 * PAGE, "target_node": 1}, 409, "not-allocated"),
        ({"gpa": BASE_GPA + 64 * MIB, "target_node": 1}, 422, "out-of-range"),
        ({"gpa": BASE_GPA + 1, "target_node": 1}, 422, "unaligned"),
        ({"gpa": BASE_GPA, "target_node": 2}, 422, "unknown-node"),
        ({"gpa": BASE_GPA, "target_pfn": busy}, 409, "frame-in-use"),
        ({"gpa": BASE_GPA, "target_pfn": before["pfns"][1]}, 409, "frame-in-use"),
        ({"gpa": BASE_GPA, "target_pfn": 2 * FRAMES_PER_NODE}, 422, "out-of-range"),
        ({"gpa": BASE_GPA, "target_node": 1, "target_pfn": 5}, 422, "validation-error"),
        ({"gpa": BASE_GPA}, 422, "validation-error"),
        # All or nothing: a good move next to a bad one does not happen either.
        (
            {"moves": [{"gpa": BASE_GPA, "target_node": 1}, {"gpa": BASE_GPA + PAGE, "target_node": 7}]},
            422,
            "unknown-node",
        ),
        ({"moves": [{"gpa": BASE_GPA, "target_node": 1}, {"gpa": BASE_GPA, "target_node": 0}]}, 409, "conflict"),
        (
            {"moves": [{"gpa": BASE_GPA, "target_node": 1}, {"gpa": BASE_GPA + 4 * PAGE, "target_node": 1}]},
            409,
            "not-allocated",
        ),
        ({"gpa": BASE_GPA, "size": 4 * PAGE, "target_node": 9}, 422, "unknown-node"),
        # A range with nothing allocated to move still names a node the host must have.
        ({"gpa": BASE_GPA + 8 * PAGE, "size": 4 * PAGE, "target_node": 9}, 422, "unknown-node"),
    ]
    for body, status, code in cases:
        problem(migrate(host, vm_id, **body), status, code)
        assert state(host, vm_id) == before, body
    problem(migrate(host, "vm_nope", gpa=BASE_GPA, target_node=0), 404, "not-found")
    problem(host.client.get(f"/v1/vms/{vm_id}/gfns/{(BASE_GPA >> 12) + 9}"), 409, "not-allocated")
    problem(host.client.get(f"/v1/vms/{vm_id}/gfns/1"), 422, "out-of-range")
    problem(host.client.get(f"/v1/vms/{vm_id}/gfns/{BASE_GPA >> 12}", params={"view": "x"}), 422, "validation-error")
    page = f"/v1/vms/{vm_id}/gfns/{BASE_GPA >> 12}"
    problem(host.client.put(page, json={"data": "not base64!"}), 422, "validation-error")
    problem(host.client.put(page, json={"data": "QUJD", "offset": PAGE - 2}), 422, "out-of-range")
    problem(host.client.put(page, json={"data": "QUJD", "offset": PAGE}), 422, "validation-error")
    assert state(host, vm_id) == before


def test_a_full_target_node_is_507_and_changes_nothing(
    db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = own_database(db_kind, request, tmp_path_factory)
    with sim_host(url, numa_nodes=2, frames_per_node=64) as h:
        vm = create_vm(h.client, "tdx")
        memfd = create_memfd(h.client, vm["id"], 128 * PAGE)
        create_memslot(h.client, vm["id"], memfd["id"], size=128 * PAGE)
        allocate = f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/allocate"
        ok(h.client.post(allocate, json={"offset": 0, "length": 100 * PAGE}))
        # Fill both nodes, then try to move a page.
        ok(h.client.post(allocate, json={"offset": 100 * PAGE, "length": 28 * PAGE}))
        assert [n["free_pages"] for n in h.nodes()] == [0, 0]
        before = state(h, vm["id"])
        problem(migrate(h, vm["id"], gpa=BASE_GPA, target_node=1), 507, "insufficient-memory")
        problem(migrate(h, vm["id"], gpa=BASE_GPA, size=128 * PAGE, target_node=0), 507, "insufficient-memory")
        assert state(h, vm["id"]) == before


def test_concurrent_migrations_and_mutations_serialize_and_never_corrupt(host: SimHost) -> None:
    vm_id, memfd_id = private_guest(host, "tdx", allocate=64 * PAGE)
    for i in range(64):
        host.write(vm_id, BASE_GPA + i * PAGE, i.to_bytes(4, "little") * 8)
    errors: list[str] = []

    def mover(seed: int) -> None:
        with httpx.Client(base_url=host.server.url, timeout=60) as c:
            for k in range(12):
                gpa = BASE_GPA + ((seed * 7 + k * 5) % 64) * PAGE
                r = c.post(f"/v1/vms/{vm_id}/migrate-page", json={"gpa": gpa, "target_node": (seed + k) % 2})
                if r.status_code != 200:
                    errors.append(r.text)

    def evacuator() -> None:
        with httpx.Client(base_url=host.server.url, timeout=60) as c:
            for node in (1, 0, 1):
                r = c.post(
                    f"/v1/vms/{vm_id}/migrate-page", json={"gpa": BASE_GPA, "size": 64 * PAGE, "target_node": node}
                )
                if r.status_code != 200:
                    errors.append(r.text)

    def puncher() -> None:
        # Pages 60..63 come and go; a move that finds one gone is refused cleanly.
        with httpx.Client(base_url=host.server.url, timeout=60) as c:
            for _ in range(6):
                for path, ok_codes in (("punch-hole", (200,)), ("allocate", (200,))):
                    r = c.post(
                        f"/v1/vms/{vm_id}/memfds/{memfd_id}/{path}", json={"offset": 60 * PAGE, "length": 4 * PAGE}
                    )
                    if r.status_code not in ok_codes:
                        errors.append(r.text)

    threads = [threading.Thread(target=mover, args=(s,)) for s in range(3)]
    threads += [threading.Thread(target=evacuator), threading.Thread(target=puncher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Only clean refusals: a page punched under a mover is not-allocated, nothing else.
    assert all('"/problems/not-allocated"' in e for e in errors), errors
    for i in range(60):
        assert host.data(vm_id, BASE_GPA + i * PAGE).startswith(i.to_bytes(4, "little") * 8)
    runs = host.sim._vms[vm_id].memfds[memfd_id].frames
    assert sorted((r.start, r.npages, r.pfn) for r in host.frame_rows(vm_id)) == sorted(
        (e.start, e.npages, e.start + e.value) for e in runs
    )
    pfns = [host.read(vm_id, BASE_GPA + i * PAGE)["pfn"] for i in range(64)]
    assert len(set(pfns)) == 64


def test_allocate_on_a_chosen_node_and_507_when_it_is_full(
    db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = own_database(db_kind, request, tmp_path_factory)
    with sim_host(url, numa_nodes=2, frames_per_node=64) as h:
        vm_id, memfd_id = guest(h.client, size=128 * PAGE, vm_type="sev_snp")
        allocate = f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate"
        ok(h.client.post(allocate, json={"offset": 0, "length": 40 * PAGE, "node": 1}))
        assert [n["used_pages"] for n in h.nodes()] == [0, 40]
        assert {r.pfn // 64 for r in h.frame_rows(vm_id)} == {1}
        before = state(h, vm_id)
        # 30 more fit on the host (node 0 is empty) but not on node 1: refused whole.
        doc = problem(
            h.client.post(allocate, json={"offset": 40 * PAGE, "length": 30 * PAGE, "node": 1}),
            507,
            "insufficient-memory",
        )
        assert "node 1" in doc["detail"]
        problem(h.client.post(allocate, json={"offset": 40 * PAGE, "length": PAGE, "node": 2}), 422, "unknown-node")
        assert state(h, vm_id) == before
        # Unpinned, the same request lands on the emptiest node.
        ok(h.client.post(allocate, json={"offset": 40 * PAGE, "length": 30 * PAGE}))
        assert [n["used_pages"] for n in h.nodes()] == [30, 40]


def test_frame_records_a_smaller_host_cannot_honour_are_replaced(
    db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = own_database(db_kind, request, tmp_path_factory)
    with sim_host(url, numa_nodes=2, frames_per_node=1024) as h:
        vm_id, _ = private_guest(h, "tdx", allocate=16 * PAGE)
        ok(migrate(h, vm_id, gpa=BASE_GPA, size=16 * PAGE, target_node=1))
        assert all(r.pfn >= 1024 for r in h.frame_rows(vm_id))
    # Restarted with a single node: frames 1024 and up no longer exist.
    with sim_host(url, numa_nodes=1, frames_per_node=1024) as h:
        rows = h.frame_rows(vm_id)
        assert sum(r.npages for r in rows) == 16
        assert all(r.pfn < 1024 for r in rows)
        assert h.read(vm_id, BASE_GPA)["pfn"] == rows[0].pfn
        assert ok(h.client.get("/v1/host"))["reconcile"] == []


def test_a_frame_taken_between_plan_and_move_is_a_clean_refusal(host: SimHost) -> None:
    """Another VM may take the planned frame before the move runs: the move is undone, not doubled."""
    vm_id, _ = private_guest(host, "tdx", allocate=4 * PAGE)
    before = state(host, vm_id)
    host.sim.inject_fault("move_frames", "EBUSY")
    doc = problem(migrate(host, vm_id, gpa=BASE_GPA, target_node=1), 409, "frame-in-use")
    assert state(host, vm_id) == before
    op = ok(host.client.get(f"/v1/vms/{vm_id}/operations"))["items"][-1]
    assert (op["kind"], op["status"], op["error"]["code"]) == ("migrate-page", "failed", "frame-in-use")
    assert doc["errno"] == "EBUSY"
    # Two VMs racing for one frame: one gets it, the other a refusal, and the frame backs one page.
    other, _ = private_guest(host, "tdx", allocate=PAGE)
    target = next(p for p in range(2 * FRAMES_PER_NODE - 1, 0, -1) if host.sim._pool.is_free(p))
    results: list[int] = []

    def race(vm: str) -> None:
        with httpx.Client(base_url=host.server.url, timeout=60) as c:
            results.append(
                c.post(f"/v1/vms/{vm}/migrate-page", json={"gpa": BASE_GPA, "target_pfn": target}).status_code
            )

    threads = [threading.Thread(target=race, args=(v,)) for v in (vm_id, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409]
    assert sorted(host.read(v, BASE_GPA)["pfn"] == target for v in (vm_id, other)) == [False, True]
