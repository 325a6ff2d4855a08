"""Every rule of DESIGN section 4 over HTTP, asked of a sim broker and a kvm broker: same answer.

Each refusal must come back with the same status, problem type and errno from both backends, the
errno must be the one the live kernel gives (``rules.KERNEL_ERRNO``, checked raw in
``test_kernel_rules``), and the refused request must change nothing. Accepted requests must give
the same bodies too, ids and times aside. The VMs are of the ``default`` type, the one type this
kernel offers, so the kvm broker tracks private/shared itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ..api.helpers import BASE_GPA, MIB, PAGE, create_memfd, create_memslot, create_vm, ok, snapshot
from .rules import KERNEL_ERRNO

Ids = dict[str, str]
Request = tuple[str, str, Any]


def bound_guest(client: httpx.Client, flags: list[str] | None = None) -> Ids:
    """A default VM with a 1 MiB memfd bound at BASE_GPA by memslot 0, its first 64 KiB private."""
    vm = create_vm(client, "default")
    memfd = create_memfd(client, vm["id"], MIB, flags)
    create_memslot(client, vm["id"], memfd["id"], size=MIB)
    ranges = [{"gpa": BASE_GPA, "size": 16 * PAGE, "to": "private"}]
    ok(client.post(f"/v1/vms/{vm['id']}/convert", json={"ranges": ranges}))
    return {"vm": vm["id"], "memfd": memfd["id"]}


def loose_memfd(client: httpx.Client) -> Ids:
    vm = create_vm(client, "default")
    return {"vm": vm["id"], "memfd": create_memfd(client, vm["id"], MIB)["id"]}


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[httpx.Client], Ids]
    request: Callable[[Ids], Request]
    status: int
    code: str
    # The KERNEL_ERRNO entry the refusal mirrors; None where the rule is the broker's alone.
    kernel: str | None
    errno: str | None = None


def memfds(ids: Ids, body: Any) -> Request:
    return ("POST", f"/v1/vms/{ids['vm']}/memfds", body)


def alloc(body: Any) -> Callable[[Ids], Request]:
    return lambda ids: ("POST", f"/v1/vms/{ids['vm']}/memfds/{ids['memfd']}/allocate", body)


def punch(body: Any) -> Callable[[Ids], Request]:
    return lambda ids: ("POST", f"/v1/vms/{ids['vm']}/memfds/{ids['memfd']}/punch-hole", body)


def slot(**fields: Any) -> Callable[[Ids], Request]:
    def request(ids: Ids) -> Request:
        body = {"slot": 1, "gpa": 2 * BASE_GPA, "size": PAGE, "memfd_id": ids["memfd"], "offset": MIB - PAGE}
        body.update({k: ids[v[1:]] if isinstance(v, str) and v.startswith("$") else v for k, v in fields.items()})
        return ("POST", f"/v1/vms/{ids['vm']}/memslots", body)

    return request


def convert(*ranges: dict[str, Any]) -> Callable[[Ids], Request]:
    return lambda ids: ("POST", f"/v1/vms/{ids['vm']}/convert", {"ranges": list(ranges)})


def page(pgoff: int) -> Callable[[Ids], Request]:
    return lambda ids: ("GET", f"/v1/vms/{ids['vm']}/memfds/{ids['memfd']}/pages/{pgoff}", None)


def running_with_private_pages(client: httpx.Client) -> Ids:
    ids = bound_guest(client)
    ok(client.post(f"/v1/vms/{ids['vm']}/memfds/{ids['memfd']}/allocate", json={"offset": 0, "length": 4 * PAGE}))
    ok(client.patch(f"/v1/vms/{ids['vm']}", json={"state": "running"}))
    return ids


def populated_shared(client: httpx.Client) -> Ids:
    """bound_guest with the shared backing of the 4 pages after its private window populated."""
    ids = bound_guest(client)
    ok(client.post(f"/v1/vms/{ids['vm']}/shared/populate", json={"gpa": BASE_GPA + 16 * PAGE, "size": 4 * PAGE}))
    return ids


def migrate(body: Any) -> Callable[[Ids], Request]:
    return lambda ids: ("POST", f"/v1/vms/{ids['vm']}/migrate-page", body)


def foreign_memfd(client: httpx.Client) -> Ids:
    ids = bound_guest(client)
    other = create_vm(client, "default")
    ids["foreign"] = create_memfd(client, other["id"], MIB)["id"]
    return ids


CASES = [
    Case("size 0", loose_memfd, lambda i: memfds(i, {"size": 0}), 422, "invalid-length", "1 memfd size zero"),
    Case("size 4097", loose_memfd, lambda i: memfds(i, {"size": 4097}), 422, "unaligned", "1 memfd size unaligned"),
    Case(
        "flag huge",
        loose_memfd,
        lambda i: memfds(i, {"size": MIB, "flags": ["huge"]}),
        422,
        "unsupported-flags",
        "1 memfd unknown flag",
    ),
    Case(
        "alloc offset 1",
        loose_memfd,
        alloc({"offset": 1, "length": PAGE}),
        422,
        "unaligned",
        "3 allocate unaligned offset",
    ),
    Case(
        "alloc length 100",
        loose_memfd,
        alloc({"offset": 0, "length": 100}),
        422,
        "unaligned",
        "3 allocate unaligned length",
    ),
    Case(
        "alloc length 0",
        loose_memfd,
        alloc({"offset": 0, "length": 0}),
        422,
        "invalid-length",
        "3 allocate zero length",
    ),
    Case(
        "alloc past end",
        loose_memfd,
        alloc({"offset": MIB - PAGE, "length": 2 * PAGE}),
        422,
        "out-of-range",
        "3 allocate past the end",
    ),
    Case(
        "punch length 0", loose_memfd, punch({"offset": 0, "length": 0}), 422, "invalid-length", "3 punch zero length"
    ),
    Case(
        "punch length 3",
        loose_memfd,
        punch({"offset": PAGE, "length": 3}),
        422,
        "unaligned",
        "3 punch unaligned length",
    ),
    Case(
        "punch past end (the kernel accepts it)",
        loose_memfd,
        punch({"offset": MIB, "length": PAGE}),
        422,
        "out-of-range",
        None,
        "EINVAL",
    ),
    Case("slot gpa unaligned", bound_guest, slot(gpa=2 * BASE_GPA + 1), 422, "unaligned", "4 memslot unaligned gpa"),
    Case(
        "slot past memfd",
        bound_guest,
        slot(offset=MIB - PAGE, size=2 * PAGE),
        422,
        "out-of-range",
        "4 memslot offset+size past the memfd",
    ),
    Case(
        "slot past the guest address space",
        bound_guest,
        slot(gpa=1 << 60),
        422,
        "out-of-range",
        "4 memslot past the guest address space",
    ),
    Case("slot gpa overlap", bound_guest, slot(gpa=BASE_GPA + PAGE), 409, "overlap", "4 memslot gpa overlap"),
    Case("slot memfd overlap", bound_guest, slot(offset=0), 409, "overlap", "4 memslot memfd overlap"),
    Case(
        "slot foreign",
        foreign_memfd,
        slot(memfd_id="$foreign", offset=0),
        422,
        "foreign-memfd",
        "4 memslot foreign memfd",
    ),
    Case("slot exists", bound_guest, slot(slot=0), 409, "slot-in-use", "8 memslot moved"),
    # Closing a memfd zaps its bindings in the kernel; the broker refuses to close a bound one instead.
    Case(
        "close a bound memfd",
        bound_guest,
        lambda ids: ("DELETE", f"/v1/vms/{ids['vm']}/memfds/{ids['memfd']}", None),
        409,
        "in-use",
        None,
    ),
    Case(
        "convert gpa+size overflow",
        bound_guest,
        convert({"gpa": (1 << 64) - PAGE, "size": 2 * PAGE, "to": "shared"}),
        422,
        "out-of-range",
        None,
    ),
    Case(
        "convert size 0",
        bound_guest,
        convert({"gpa": BASE_GPA, "size": 0, "to": "shared"}),
        422,
        "invalid-length",
        None,
        "EINVAL",
    ),
    Case(
        "convert unaligned",
        bound_guest,
        convert({"gpa": BASE_GPA + 1, "size": PAGE, "to": "shared"}),
        422,
        "unaligned",
        None,
        "EINVAL",
    ),
    Case(
        "convert attribute",
        bound_guest,
        convert({"gpa": BASE_GPA, "size": PAGE, "to": "encrypted"}),
        422,
        "unsupported-attribute",
        None,
        "EINVAL",
    ),
    Case(
        "convert outside memslots",
        bound_guest,
        convert({"gpa": 3 * BASE_GPA, "size": PAGE, "to": "shared"}),
        422,
        "out-of-range",
        None,
    ),
    Case(
        "allocate on shared gfns",
        bound_guest,
        alloc({"offset": 16 * PAGE, "length": PAGE}),
        409,
        "attribute-mismatch",
        None,
    ),
    Case(
        "punch private pages of a running VM",
        running_with_private_pages,
        punch({"offset": 0, "length": PAGE}),
        409,
        "private-in-use",
        None,
    ),
    Case("page of a memfd without mmap", bound_guest, page(16), 409, "private-page", None),
    Case(
        "page of a private gfn",
        lambda c: bound_guest(c, ["init_shared", "mmap"]),
        page(0),
        409,
        "private-page",
        None,
    ),
    Case(
        "page outside the memfd",
        lambda c: bound_guest(c, ["init_shared", "mmap"]),
        page(256),
        422,
        "out-of-range",
        None,
        "EINVAL",
    ),
    # migrate-page: what the sim and kvm both refuse (the sim has node 1; neither has node 64).
    Case(
        "migrate to a node not online",
        populated_shared,
        migrate({"gpa": BASE_GPA + 16 * PAGE, "target_node": 64}),
        422,
        "unknown-node",
        "migrate to a node not online",
    ),
    Case(
        "migrate a shared hole",
        populated_shared,
        migrate({"gpa": BASE_GPA + 32 * PAGE, "target_node": 0}),
        409,
        "not-allocated",
        None,
    ),
    Case(
        "migrate an unaligned gpa",
        populated_shared,
        migrate({"gpa": BASE_GPA + 1, "target_node": 0}),
        422,
        "unaligned",
        None,
        "EINVAL",
    ),
    Case(
        "migrate outside every memslot",
        populated_shared,
        migrate({"gpa": 2 * BASE_GPA, "target_node": 0}),
        422,
        "out-of-range",
        None,
    ),
]


def answer(client: httpx.Client, case: Case) -> tuple[int, str, str | None]:
    ids = case.setup(client)
    before = snapshot(client, ids["vm"])
    method, path, body = case.request(ids)
    resp = client.request(method, path, json=body)
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    assert snapshot(client, ids["vm"]) == before, "a refused request changed state"
    doc = resp.json()
    return resp.status_code, doc["type"].rsplit("/", 1)[-1], doc.get("errno")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_both_backends_refuse_alike(clients: dict[str, httpx.Client], case: Case) -> None:
    answers = {kind: answer(client, case) for kind, client in clients.items()}
    errno = KERNEL_ERRNO[case.kernel] if case.kernel else case.errno
    assert answers["sim"] == answers["kvm"] == (case.status, case.code, errno)


def _strip(body: Any) -> Any:
    """A body without what differs by design between two brokers: ids and times."""
    if isinstance(body, dict):
        return {
            k: _strip(v)
            for k, v in body.items()
            if k not in {"id", "vm_id", "memfd_id", "operation_id"} and not k.endswith("_at")
        }
    if isinstance(body, list):
        return [_strip(v) for v in body]
    return body


def walk(client: httpx.Client) -> list[Any]:
    """The README's walk on a default VM; every answer, ids and times stripped."""
    out: list[Any] = []
    vm = create_vm(client, "default")
    v = f"/v1/vms/{vm['id']}"
    memfd = create_memfd(client, vm["id"], 4 * MIB, ["init_shared", "mmap"])
    m = f"{v}/memfds/{memfd['id']}"
    out.append(create_memslot(client, vm["id"], memfd["id"], size=4 * MIB))
    steps: list[Request] = [
        ("POST", f"{v}/convert", {"ranges": [{"gpa": BASE_GPA, "size": MIB, "to": "private"}]}),
        ("POST", f"{m}/allocate", {"offset": 0, "length": MIB}),
        ("POST", f"{v}/convert", {"ranges": [{"gpa": BASE_GPA, "size": 64 * PAGE, "to": "shared"}]}),
        ("POST", f"{v}/shared/populate", {"gpa": BASE_GPA, "size": 32 * PAGE}),
        ("POST", f"{v}/convert", {"ranges": [{"gpa": BASE_GPA + 16 * PAGE, "size": 32 * PAGE, "to": "private"}]}),
        ("POST", f"{m}/allocate", {"offset": 16 * PAGE, "length": 8 * PAGE}),
        ("POST", f"{m}/punch-hole", {"offset": 0, "length": 2 * MIB}),
        ("GET", f"{m}/pages/{MIB // PAGE + 1}", None),
        ("GET", f"{v}/extents", None),
        ("GET", f"{m}/extents", None),
        ("DELETE", f"{v}/memslots/0", None),
        ("DELETE", m, None),
        ("DELETE", v, None),
    ]
    for method, path, body in steps:
        out.append(ok(client.request(method, path, json=body)))
    stripped: list[Any] = _strip(out)
    return stripped


def test_the_same_walk_gives_the_same_answers(clients: dict[str, httpx.Client]) -> None:
    assert walk(clients["sim"]) == walk(clients["kvm"])
