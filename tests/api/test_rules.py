"""DESIGN section 4 over HTTP: each refusal has its problem type and errno, and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .helpers import BASE_GPA, MIB, PAGE, create_memfd, create_memslot, create_vm, guest, ok, problem, snapshot


def refused(
    client: httpx.Client, vm_id: str, method: str, path: str, body: Any, status: int, code: str, errno: str | None
) -> dict[str, Any]:
    before = snapshot(client, vm_id)
    doc = problem(client.request(method, path, json=body), status, code)
    if errno is not None:
        assert doc["errno"] == errno
        assert doc["detail"].startswith(f"{errno}:")
    assert snapshot(client, vm_id) == before
    return doc


# -- rule 1: memfd size and flags -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"size": 0}, 422, "invalid-length"),
        ({"size": 4097}, 422, "unaligned"),
        ({"size": MIB, "flags": ["huge"]}, 422, "unsupported-flags"),
        ({"size": MIB, "flags": ["init_shared"]}, 422, "unsupported-flags"),  # rule 9: private VM type
    ],
)
def test_memfd_rules(client: httpx.Client, body: dict[str, Any], status: int, code: str) -> None:
    vm = create_vm(client, "sw_protected")
    refused(client, vm["id"], "POST", f"/v1/vms/{vm['id']}/memfds", body, status, code, "EINVAL")


def test_memfd_flags_accepted_where_the_kernel_takes_them(client: httpx.Client) -> None:
    vm = create_vm(client, "default")
    memfd = create_memfd(client, vm["id"], MIB, ["mmap", "init_shared"])
    assert memfd["flags"] == ["init_shared", "mmap"]
    assert memfd["size"] == MIB


def test_one_tib_memfd_is_one_row_of_nothing(client: httpx.Client) -> None:
    vm = create_vm(client)
    memfd = create_memfd(client, vm["id"], 1 << 40)
    page = ok(client.get(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/extents"))
    assert page["items"] == [{"offset": 0, "size": 1 << 40, "state": "hole"}]


# -- rules 2 and 3: fallocate ranges ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "body", "status", "code", "errno"),
    [
        ("allocate", {"offset": 1, "length": PAGE}, 422, "unaligned", "EINVAL"),
        ("allocate", {"offset": 0, "length": 100}, 422, "unaligned", "EINVAL"),
        ("allocate", {"offset": 0, "length": 0}, 422, "invalid-length", "EINVAL"),
        ("allocate", {"offset": 15 * MIB, "length": 2 * MIB}, 422, "out-of-range", "EINVAL"),
        ("punch-hole", {"offset": 0, "length": 0}, 422, "invalid-length", "EINVAL"),
        ("punch-hole", {"offset": PAGE, "length": 3}, 422, "unaligned", "EINVAL"),
        # the kernel accepts a punch past EOF; the broker refuses a range it does not own
        ("punch-hole", {"offset": 16 * MIB, "length": PAGE}, 422, "out-of-range", "EINVAL"),
    ],
)
def test_fallocate_range_rules(
    client: httpx.Client, op: str, body: dict[str, Any], status: int, code: str, errno: str
) -> None:
    vm_id, memfd_id = guest(client)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
    refused(client, vm_id, "POST", f"/v1/vms/{vm_id}/memfds/{memfd_id}/{op}", body, status, code, errno)


# -- rule 4: memslots ---------------------------------------------------------------------------------


def test_memslot_rules(client: httpx.Client) -> None:
    vm = create_vm(client)
    vm_id = vm["id"]
    a = create_memfd(client, vm_id, 4 * MIB)
    b = create_memfd(client, vm_id, 4 * MIB)
    create_memslot(client, vm_id, a["id"], slot=0, gpa=BASE_GPA, size=2 * MIB)
    path = f"/v1/vms/{vm_id}/memslots"

    def body(**kw: Any) -> dict[str, Any]:
        return {"slot": 1, "gpa": BASE_GPA + 64 * MIB, "size": MIB, "memfd_id": b["id"], "offset": 0, **kw}

    refused(client, vm_id, "POST", path, body(gpa=BASE_GPA + 1), 422, "unaligned", "EINVAL")
    refused(client, vm_id, "POST", path, body(offset=100), 422, "unaligned", "EINVAL")
    refused(client, vm_id, "POST", path, body(size=0), 422, "invalid-length", "EINVAL")
    refused(client, vm_id, "POST", path, body(offset=3 * MIB, size=2 * MIB), 422, "out-of-range", "EINVAL")
    refused(client, vm_id, "POST", path, body(gpa=BASE_GPA + MIB), 409, "overlap", "EEXIST")
    refused(client, vm_id, "POST", path, body(memfd_id=a["id"], offset=MIB), 409, "overlap", "EINVAL")
    refused(client, vm_id, "POST", path, body(slot=0), 409, "slot-in-use", "EINVAL")
    refused(client, vm_id, "POST", path, body(gpa=(1 << 64) - MIB, size=2 * MIB), 422, "out-of-range", "EINVAL")
    other = create_vm(client)
    foreign = create_memfd(client, other["id"], MIB)
    refused(client, vm_id, "POST", path, body(memfd_id=foreign["id"]), 422, "foreign-memfd", "EINVAL")
    # a second, non-overlapping binding of the same memfd is fine
    create_memslot(client, vm_id, a["id"], slot=1, gpa=BASE_GPA + 64 * MIB, size=MIB, offset=2 * MIB)


def test_memslot_pages_start_by_vm_type(client: httpx.Client) -> None:
    vm_id, _ = guest(client, MIB, "sw_protected")
    assert [e["attribute"] for e in ok(client.get(f"/v1/vms/{vm_id}/extents"))["items"]] == ["private"]
    vm_id, _ = guest(client, MIB, "default")
    assert [e["attribute"] for e in ok(client.get(f"/v1/vms/{vm_id}/extents"))["items"]] == ["shared"]
    vm = create_vm(client, "default")
    memfd = create_memfd(client, vm["id"], MIB, ["init_shared", "mmap"])
    create_memslot(client, vm["id"], memfd["id"], size=MIB)
    assert ok(client.get(f"/v1/vms/{vm['id']}/extents"))["items"][0]["attribute"] == "shared"


def test_memfd_bound_by_a_memslot_cannot_be_deleted(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    refused(client, vm_id, "DELETE", f"/v1/vms/{vm_id}/memfds/{memfd_id}", None, 409, "in-use", None)
    ok(client.delete(f"/v1/vms/{vm_id}/memslots/0"))
    ok(client.delete(f"/v1/vms/{vm_id}/memfds/{memfd_id}"))
    problem(client.get(f"/v1/vms/{vm_id}/memfds/{memfd_id}"), 404, "not-found")


# -- rule 5: set-attributes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rng", "status", "code", "errno"),
    [
        ({"gpa": BASE_GPA, "size": 0, "to": "shared"}, 422, "invalid-length", "EINVAL"),
        ({"gpa": BASE_GPA + 8, "size": PAGE, "to": "shared"}, 422, "unaligned", "EINVAL"),
        ({"gpa": BASE_GPA, "size": PAGE, "to": "encrypted"}, 422, "unsupported-attribute", "EINVAL"),
        ({"gpa": BASE_GPA - PAGE, "size": 2 * PAGE, "to": "shared"}, 422, "out-of-range", None),
    ],
)
def test_convert_rules(client: httpx.Client, rng: dict[str, Any], status: int, code: str, errno: str | None) -> None:
    vm_id, _ = guest(client, MIB)
    refused(client, vm_id, "POST", f"/v1/vms/{vm_id}/convert", {"ranges": [rng]}, status, code, errno)


def test_convert_batch_is_all_or_nothing(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
    batch = {
        "ranges": [
            {"gpa": BASE_GPA, "size": 4 * PAGE, "to": "shared"},
            {"gpa": BASE_GPA + MIB, "size": PAGE, "to": "shared"},  # outside the memslot
        ]
    }
    refused(client, vm_id, "POST", f"/v1/vms/{vm_id}/convert", batch, 422, "out-of-range", None)


# -- DESIGN section 3: allocate and punch guards -----------------------------------------------------


def test_allocate_refused_on_shared_gfns(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    ok(
        client.post(
            f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": BASE_GPA + 8 * PAGE, "size": PAGE, "to": "shared"}]}
        )
    )
    doc = refused(
        client,
        vm_id,
        "POST",
        f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate",
        {"offset": 0, "length": 16 * PAGE},
        409,
        "attribute-mismatch",
        None,
    )
    assert doc["gpa"] == BASE_GPA + 8 * PAGE
    # pages bound to private gfns, and unbound pages, allocate fine
    assert (
        ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": 8 * PAGE}))[
            "pages_allocated"
        ]
        == 8
    )


def test_unbound_memfd_pages_are_unconstrained(client: httpx.Client) -> None:
    vm = create_vm(client)
    memfd = create_memfd(client, vm["id"], MIB)
    body = ok(client.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/allocate", json={"offset": 0, "length": MIB}))
    assert body["pages_allocated"] == 256


def test_punch_private_in_running_vm(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": 16 * PAGE}))
    ok(client.patch(f"/v1/vms/{vm_id}", json={"state": "running"}))
    path = f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole"
    refused(client, vm_id, "POST", path, {"offset": 0, "length": 16 * PAGE}, 409, "private-in-use", None)
    # holes of private gfns punch fine: nothing in use is freed
    assert ok(client.post(path, json={"offset": 32 * PAGE, "length": 16 * PAGE}))["pages_freed"] == 0
    body = ok(client.post(path, json={"offset": 0, "length": 16 * PAGE, "allow_private": True}))
    assert body["pages_freed"] == 16
    # a stopped VM's private pages punch without the override
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": PAGE}))
    ok(client.patch(f"/v1/vms/{vm_id}", json={"state": "stopped"}))
    assert ok(client.post(path, json={"offset": 0, "length": PAGE}))["pages_freed"] == 1


def test_populate_shared_guards(client: httpx.Client) -> None:
    vm = create_vm(client, "default")
    vm_id = vm["id"]
    memfd_id = create_memfd(client, vm_id, MIB)["id"]
    # allocated while unbound, then bound to gfns that start shared on a default VM
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
    create_memslot(client, vm_id, memfd_id, size=MIB)
    path = f"/v1/vms/{vm_id}/shared/populate"
    # shared gfn whose private page is still allocated: populating would back it twice
    refused(client, vm_id, "POST", path, {"gpa": BASE_GPA, "size": PAGE}, 409, "attribute-mismatch", None)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json={"offset": 0, "length": PAGE}))
    assert ok(client.post(path, json={"gpa": BASE_GPA, "size": PAGE}))["pages_allocated"] == 1
    ok(
        client.post(
            f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": BASE_GPA + PAGE, "size": PAGE, "to": "private"}]}
        )
    )
    refused(client, vm_id, "POST", path, {"gpa": BASE_GPA + PAGE, "size": PAGE}, 409, "attribute-mismatch", None)
