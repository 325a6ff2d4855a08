"""allocate / punch-hole / convert over HTTP: counts, the extent map, paging, scale."""

from __future__ import annotations

import itertools

import httpx
from sqlalchemy import create_engine, func, select

from service.store.models import ExtentRow

from .helpers import (
    BASE_GPA,
    MIB,
    PAGE,
    all_extents,
    create_memfd,
    create_memslot,
    create_vm,
    guest,
    memfd_extents,
    ok,
    problem,
)

TIB = 1 << 40


def test_boot_story_counts_and_extents(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, 16 * MIB)
    alloc = ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB}))
    assert alloc["pages_allocated"] == 256
    again = ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": 2 * MIB}))
    assert again["pages_allocated"] == 256
    assert again["generation"] == alloc["generation"] + 1
    conv = ok(
        client.post(f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": BASE_GPA, "size": 65536, "to": "shared"}]})
    )
    assert (conv["pages_converted"], conv["private_pages_freed"], conv["shared_pages_freed"]) == (16, 16, 0)
    ok(client.post(f"/v1/vms/{vm_id}/shared/populate", json={"gpa": BASE_GPA, "size": 8 * PAGE}))
    back = ok(
        client.post(f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": BASE_GPA, "size": 65536, "to": "private"}]})
    )
    assert (back["pages_converted"], back["private_pages_freed"], back["shared_pages_freed"]) == (16, 0, 8)
    punch = ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/punch-hole", json={"offset": MIB, "length": 65536}))
    assert punch["pages_freed"] == 16
    items = all_extents(client, vm_id)
    total = sum(e["size"] for e in items)
    assert total == 16 * MIB
    for a, b in itertools.pairwise(items):
        assert a["gpa"] + a["size"] == b["gpa"]
        assert (a["attribute"], a["private_backing"], a["shared_backing"]) != (
            b["attribute"],
            b["private_backing"],
            b["shared_backing"],
        )
    allocated = [e for e in memfd_extents(client, vm_id, memfd_id) if e["state"] == "allocated"]
    assert allocated == [
        {"offset": 65536, "size": MIB - 65536, "state": "allocated"},
        {"offset": MIB + 65536, "size": MIB - 65536, "state": "allocated"},
    ]


def test_extents_are_exact(client: httpx.Client) -> None:
    vm_id, memfd_id = guest(client, MIB)
    ok(client.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": 8 * PAGE}))
    ok(
        client.post(
            f"/v1/vms/{vm_id}/convert",
            json={"ranges": [{"gpa": BASE_GPA + 4 * PAGE, "size": 8 * PAGE, "to": "shared"}]},
        )
    )

    def ext(gpa: int, size: int, attr: str, priv: str) -> dict[str, object]:
        return {
            "gpa": BASE_GPA + gpa * PAGE,
            "size": size * PAGE,
            "attribute": attr,
            "private_backing": priv,
            "shared_backing": "hole",
        }

    assert all_extents(client, vm_id) == [
        ext(0, 4, "private", "allocated"),
        ext(4, 8, "shared", "hole"),
        ext(12, 244, "private", "hole"),
    ]


def test_adjacent_memslots_merge_in_the_view_and_gaps_are_absent(client: httpx.Client) -> None:
    vm = create_vm(client)
    a = create_memfd(client, vm["id"], MIB)
    b = create_memfd(client, vm["id"], MIB)
    create_memslot(client, vm["id"], a["id"], slot=0, gpa=BASE_GPA, size=MIB)
    create_memslot(client, vm["id"], b["id"], slot=1, gpa=BASE_GPA + MIB, size=MIB)
    c = create_memfd(client, vm["id"], MIB)
    create_memslot(client, vm["id"], c["id"], slot=2, gpa=BASE_GPA + 8 * MIB, size=MIB)
    items = all_extents(client, vm["id"])
    # slots 0 and 1 touch and merge into one extent; the gap up to slot 2 is not in the view
    assert items == [
        {"gpa": BASE_GPA, "size": 2 * MIB, "attribute": "private", "private_backing": "hole", "shared_backing": "hole"},
        {
            "gpa": BASE_GPA + 8 * MIB,
            "size": MIB,
            "attribute": "private",
            "private_backing": "hole",
            "shared_backing": "hole",
        },
    ]


def extent_rows(db_url: str, vm_id: str) -> int:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(ExtentRow).where(ExtentRow.vm_id == vm_id)).scalar_one()
    engine.dispose()
    return int(count)


def test_one_tib_guest_2000_scattered_pages_make_4001_extents(client: httpx.Client, db_url: str) -> None:
    vm = create_vm(client, "sev_snp")
    memfd = create_memfd(client, vm["id"], TIB)
    # a 1 TiB memfd is stored as no rows at all: it is one hole
    assert extent_rows(db_url, vm["id"]) == 0
    # one memslot holds at most 2^31 - 1 pages (8 TiB): a 1 TiB one is fine
    create_memslot(client, vm["id"], memfd["id"], size=TIB)
    stride = (TIB // 2000) // PAGE * PAGE
    ranges = [{"gpa": BASE_GPA + i * stride + PAGE, "size": PAGE, "to": "shared"} for i in range(2000)]
    body = ok(client.post(f"/v1/vms/{vm['id']}/convert", json={"ranges": ranges}))
    assert body["pages_converted"] == 2000
    items = all_extents(client, vm["id"], limit=1000)
    assert len(items) == 4001
    assert sum(1 for e in items if e["attribute"] == "shared") == 2000
    assert sum(e["size"] for e in items) == TIB
    # stored as extents too: 4,001 attribute runs, no population rows, nothing per page
    assert extent_rows(db_url, vm["id"]) == 4001


def test_paging_with_windows_and_cursors(client: httpx.Client) -> None:
    vm_id, _ = guest(client, MIB)
    ranges = [{"gpa": BASE_GPA + 2 * i * PAGE, "size": PAGE, "to": "shared"} for i in range(50)]
    ok(client.post(f"/v1/vms/{vm_id}/convert", json={"ranges": ranges}))
    full = all_extents(client, vm_id)
    assert len(full) == 100  # 50 shared pages, 49 private gaps between them, one private tail
    paged = all_extents(client, vm_id, limit=7)
    assert paged == full
    window = ok(
        client.get(f"/v1/vms/{vm_id}/extents", params={"start": BASE_GPA + 3 * PAGE, "end": BASE_GPA + 6 * PAGE})
    )
    assert [(e["gpa"] - BASE_GPA) // PAGE for e in window["items"]] == [3, 4, 5]
    problem(client.get(f"/v1/vms/{vm_id}/extents", params={"cursor": "garbage"}), 422, "invalid-cursor")
    problem(client.get(f"/v1/vms/{vm_id}/extents", params={"start": 7}), 422, "unaligned")


def test_memfd_extents_paging(client: httpx.Client) -> None:
    vm = create_vm(client)
    memfd = create_memfd(client, vm["id"], MIB)
    for i in range(0, 64, 2):
        ok(client.post(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/allocate", json={"offset": i * PAGE, "length": PAGE}))
    items = memfd_extents(client, vm["id"], memfd["id"])
    assert len(items) == 64
    assert items[-1] == {"offset": 63 * PAGE, "size": MIB - 63 * PAGE, "state": "hole"}
    page = ok(client.get(f"/v1/vms/{vm['id']}/memfds/{memfd['id']}/extents", params={"limit": 10}))
    assert len(page["items"]) == 10
    assert page["next_cursor"]
