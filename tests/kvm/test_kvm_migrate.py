"""migrate-page on the kvm backend, over HTTP against the live kernel (issue 4, kvm part).

Shared pages move with move_pages(2); this machine has one NUMA node, so a move to node 0 is the
kernel's real no-op call and node 1 is not online. guest_memfd pages get 501.
"""

from __future__ import annotations

from typing import Any

import httpx

from service.backends.kvm import uapi

from ..api.helpers import BASE_GPA, MIB, PAGE, create_memfd, create_memslot, create_vm, ok, problem, snapshot
from ..conftest import RunningServer
from .test_kvm_api import kvm_of
from .test_move_pages_rules import offline_node

Ids = dict[str, str]


def shared_guest(client: httpx.Client, flags: list[str] | None = None) -> Ids:
    """A default VM (its gfns start shared), a 1 MiB memfd at BASE_GPA, 4 shared pages populated."""
    vm = create_vm(client, "default")
    memfd = create_memfd(client, vm["id"], MIB, flags)
    create_memslot(client, vm["id"], memfd["id"], size=MIB)
    ok(client.post(f"/v1/vms/{vm['id']}/shared/populate", json={"gpa": BASE_GPA, "size": 4 * PAGE}))
    return {"vm": vm["id"], "memfd": memfd["id"]}


def migrate(client: httpx.Client, ids: Ids, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/v1/vms/{ids['vm']}/migrate-page", json=body)


def kernel_nodes(server: RunningServer, vm_id: str, gfn: int, npages: int) -> list[int]:
    """Where the kernel says the broker's shared pages are, asked directly (move_pages, nodes=NULL)."""
    slot = kvm_of(server)._vms[vm_id].slots[0]
    addr = slot.shared_addr + (gfn - slot.gfn) * PAGE
    return uapi.move_pages([addr + i * PAGE for i in range(npages)], None, 0, "query")[1]


def operations(client: httpx.Client, vm_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(client.get(f"/v1/vms/{vm_id}/operations"))["items"]
    return items


def test_the_host_says_move_pages_is_there(kvm_client: httpx.Client) -> None:
    host = ok(kvm_client.get("/v1/host"))
    assert host["kernel"]["move_pages"] is True


def test_a_populated_shared_page_moves_to_node_0_with_a_real_call(
    kvm_client: httpx.Client, kvm_server: RunningServer
) -> None:
    ids = shared_guest(kvm_client)
    before = ok(kvm_client.get(f"/v1/vms/{ids['vm']}"))["generation"]
    # On this one-node machine the page is on node 0 already (status 0); elsewhere it may not be.
    (where,) = kernel_nodes(kvm_server, ids["vm"], BASE_GPA // PAGE + 1, 1)
    body = ok(migrate(kvm_client, ids, {"gpa": BASE_GPA + PAGE, "target_node": 0}))
    assert {k: v for k, v in body.items() if k not in {"operation_id"}} == {
        "generation": before + 1,
        "gpa": BASE_GPA + PAGE,
        "backing": "shared",
        "old_pfn": None,
        "new_pfn": None,
        "node": 0,
        "method": "move_pages",
        "agent": None,
        "kernel_status": [where],
    }
    assert kernel_nodes(kvm_server, ids["vm"], BASE_GPA // PAGE + 1, 1) == [0]
    (op,) = [o for o in operations(kvm_client, ids["vm"]) if o["id"] == body["operation_id"]]
    assert (op["kind"], op["status"]) == ("migrate-page", "applied")


def test_a_batch_then_an_evacuation_with_nothing_left_to_move(
    kvm_client: httpx.Client, kvm_server: RunningServer
) -> None:
    ids = shared_guest(kvm_client)
    where = kernel_nodes(kvm_server, ids["vm"], BASE_GPA // PAGE, 4)
    moves = [{"gpa": BASE_GPA + i * PAGE, "target_node": 0} for i in range(4)]
    body = ok(migrate(kvm_client, ids, {"moves": moves}))
    assert [(m["gpa"], m["size"], m["method"], m["kernel_status"]) for m in body["moves"]] == [
        (BASE_GPA + i * PAGE, PAGE, "move_pages", [where[i]]) for i in range(4)
    ]
    # Every page is on node 0 now: an evacuation there has nothing to move, and journals nothing.
    generation = body["generation"]
    body = ok(migrate(kvm_client, ids, {"gpa": BASE_GPA, "size": MIB, "target_node": 0}))
    assert body == {
        "operation_id": None,
        "generation": generation,
        "pages_moved": 0,
        "moves": [],
    }


def test_a_node_that_is_not_online_is_refused_and_nothing_changes(
    kvm_client: httpx.Client, kvm_server: RunningServer
) -> None:
    ids = shared_guest(kvm_client)
    before, ops = snapshot(kvm_client, ids["vm"]), operations(kvm_client, ids["vm"])
    node = offline_node()
    for body in (
        {"gpa": BASE_GPA, "target_node": node},
        {"moves": [{"gpa": BASE_GPA, "target_node": 0}, {"gpa": BASE_GPA + PAGE, "target_node": node}]},
        {"gpa": BASE_GPA, "size": MIB, "target_node": node},
    ):
        doc = problem(migrate(kvm_client, ids, body), 422, "unknown-node")
        assert doc["errno"] == "ENODEV"
        assert f"node {node}" in doc["detail"]
    assert snapshot(kvm_client, ids["vm"]) == before
    assert operations(kvm_client, ids["vm"]) == ops
    assert kernel_nodes(kvm_server, ids["vm"], BASE_GPA // PAGE, 1) == [0]


def private_page(client: httpx.Client, flags: list[str] | None = None) -> Ids:
    ids = shared_guest(client, flags)
    gpa = BASE_GPA + 16 * PAGE
    ok(client.post(f"/v1/vms/{ids['vm']}/convert", json={"ranges": [{"gpa": gpa, "size": PAGE, "to": "private"}]}))
    ok(client.post(f"/v1/vms/{ids['vm']}/memfds/{ids['memfd']}/allocate", json={"offset": 16 * PAGE, "length": PAGE}))
    return ids


def test_a_private_page_is_501_naming_what_the_kernel_lacks(kvm_client: httpx.Client) -> None:
    for flags, unmapped in (([], True), (["mmap"], False)):
        ids = private_page(kvm_client, flags)
        before, ops = snapshot(kvm_client, ids["vm"]), operations(kvm_client, ids["vm"])
        for body in (
            {"gpa": BASE_GPA + 16 * PAGE, "target_node": 0},
            {"gpa": BASE_GPA, "size": MIB, "target_node": 0},  # the range holds the private page
        ):
            doc = problem(migrate(kvm_client, ids, body), 501, "not-supported-by-kernel")
            assert doc["errno"] == "EOPNOTSUPP"
            assert "no KVM_CAP_* migrates guest_memfd folios" in doc["detail"]
            assert ("GUEST_MEMFD_FLAG_MMAP" in doc["detail"]) is unmapped
        assert snapshot(kvm_client, ids["vm"]) == before
        assert operations(kvm_client, ids["vm"]) == ops


def test_a_chosen_frame_is_501_and_a_shared_hole_is_not_allocated(kvm_client: httpx.Client) -> None:
    ids = shared_guest(kvm_client)
    before = snapshot(kvm_client, ids["vm"])
    doc = problem(migrate(kvm_client, ids, {"gpa": BASE_GPA, "target_pfn": 4096}), 501, "not-supported-by-kernel")
    assert "picks frames itself" in doc["detail"]
    problem(migrate(kvm_client, ids, {"gpa": BASE_GPA + 8 * PAGE, "target_node": 0}), 409, "not-allocated")
    assert snapshot(kvm_client, ids["vm"]) == before


def test_sim_and_kvm_answer_a_move_to_node_0_alike(clients: dict[str, httpx.Client]) -> None:
    """What both can do: move a populated shared page to node 0, and evacuate a range there. Frames
    (the sim's) and the kernel's status (kvm's) are what each backend alone can say."""
    answers = {}
    for kind, client in clients.items():
        ids = shared_guest(client)
        single = ok(migrate(client, ids, {"gpa": BASE_GPA + PAGE, "target_node": 0}))
        rest = [{"gpa": BASE_GPA + i * PAGE, "target_node": 0} for i in (0, 2, 3)]
        ok(migrate(client, ids, {"moves": rest}))
        evacuated = ok(migrate(client, ids, {"gpa": BASE_GPA, "size": MIB, "target_node": 0}))
        ops = [(o["kind"], o["status"]) for o in operations(client, ids["vm"])]
        answers[kind] = (
            {k: single[k] for k in ("generation", "gpa", "backing", "node", "agent")},
            {k: v for k, v in evacuated.items() if k != "operation_id"},
            ops[-1],
        )
        frames = (single["old_pfn"], single["new_pfn"])
        if kind == "kvm":
            assert (single["method"], frames, len(single["kernel_status"])) == ("move_pages", (None, None), 1)
        else:
            assert (single["method"], single["kernel_status"]) == ("copy", None)
            assert None not in frames
    assert answers["sim"] == answers["kvm"]
