"""One builder per operation of the API: what to send and how to read the answer.

The sync and async clients turn each builder into a method, so an operation is described once.
Integers are bytes (gpa, size, offset, length) unless named otherwise, as in the API.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from . import models as m

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Methods whose retry could apply a change twice unless the server recognises the repeat.
MUTATING = frozenset({"POST", "PATCH", "DELETE", "PUT"})


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    decode: Callable[[Any], T]
    json: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    text: bool = False  # the answer is text (Prometheus exposition), not JSON

    @property
    def mutating(self) -> bool:
        return self.method in MUTATING


def _one(model: type[M]) -> Callable[[Any], M]:
    return model.model_validate


def _items(model: type[M]) -> Callable[[Any], list[M]]:
    return lambda body: [model.model_validate(item) for item in body["items"]]


def _query(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _vm(vm_id: str) -> str:
    return f"/v1/vms/{vm_id}"


# -- host and health ---------------------------------------------------------------------------


def metrics() -> Call[str]:
    """The Prometheus exposition text of ``GET /metrics``."""
    return Call("GET", "/metrics", str, text=True)


def host() -> Call[m.Host]:
    """The backend, its capabilities, NUMA nodes and budget."""
    return Call("GET", "/v1/host", _one(m.Host))


def healthz() -> Call[m.Health]:
    return Call("GET", "/healthz", _one(m.Health))


def readyz() -> Call[m.Health]:
    return Call("GET", "/readyz", _one(m.Health))


def problem_type(code: str) -> Call[m.ProblemType]:
    """What a problem code means (``GET /problems/<code>``)."""
    return Call("GET", f"/problems/{code}", _one(m.ProblemType))


# -- VMs ---------------------------------------------------------------------------------------


def create_vm(name: str | None = None, vm_type: str = "default") -> Call[m.Vm]:
    return Call("POST", "/v1/vms", _one(m.Vm), json=_query(name=name, vm_type=vm_type))


def list_vms() -> Call[list[m.Vm]]:
    return Call("GET", "/v1/vms", _items(m.Vm))


def get_vm(vm_id: str) -> Call[m.Vm]:
    return Call("GET", _vm(vm_id), _one(m.Vm))


def set_vm_state(vm_id: str, state: str) -> Call[m.Vm]:
    """``created`` -> ``running`` | ``stopped``, ``running`` -> ``stopped``, ``stopped`` -> ``running``."""
    return Call("PATCH", _vm(vm_id), _one(m.Vm), json={"state": state})


def delete_vm(vm_id: str, force: bool = False) -> Call[m.Deleted]:
    """With ``force``, memslots then memfds are released first, as one operation."""
    return Call("DELETE", _vm(vm_id), _one(m.Deleted), params={"force": "true"} if force else {})


# -- memfds ------------------------------------------------------------------------------------


def create_memfd(vm_id: str, size: int, flags: Iterable[str] = ()) -> Call[m.Memfd]:
    return Call("POST", f"{_vm(vm_id)}/memfds", _one(m.Memfd), json={"size": size, "flags": list(flags)})


def list_memfds(vm_id: str) -> Call[list[m.Memfd]]:
    return Call("GET", f"{_vm(vm_id)}/memfds", _items(m.Memfd))


def get_memfd(vm_id: str, memfd_id: str) -> Call[m.Memfd]:
    return Call("GET", f"{_vm(vm_id)}/memfds/{memfd_id}", _one(m.Memfd))


def delete_memfd(vm_id: str, memfd_id: str) -> Call[m.Deleted]:
    return Call("DELETE", f"{_vm(vm_id)}/memfds/{memfd_id}", _one(m.Deleted))


def allocate(vm_id: str, memfd_id: str, offset: int, length: int, node: int | None = None) -> Call[m.Allocated]:
    """Populate private backing (fallocate KEEP_SIZE); pages already allocated stay. With ``node``, every new
    page lands on that NUMA node (static placement, as mbind gives it) or the request gets 507."""
    body: dict[str, int] = {"offset": offset, "length": length}
    if node is not None:
        body["node"] = node
    return Call("POST", f"{_vm(vm_id)}/memfds/{memfd_id}/allocate", _one(m.Allocated), json=body)


def punch_hole(vm_id: str, memfd_id: str, offset: int, length: int, allow_private: bool = False) -> Call[m.Punched]:
    """Free backing (fallocate PUNCH_HOLE); a running VM's private pages need ``allow_private``."""
    body = {"offset": offset, "length": length, "allow_private": allow_private}
    return Call("POST", f"{_vm(vm_id)}/memfds/{memfd_id}/punch-hole", _one(m.Punched), json=body)


def memfd_extents(
    vm_id: str, memfd_id: str, start: int = 0, end: int | None = None, limit: int = 1000, cursor: str | None = None
) -> Call[m.MemfdExtentPage]:
    params = _query(start=start, end=end, limit=limit, cursor=cursor)
    return Call("GET", f"{_vm(vm_id)}/memfds/{memfd_id}/extents", _one(m.MemfdExtentPage), params=params)


def read_page(vm_id: str, memfd_id: str, pgoff: int) -> Call[m.Page]:
    """Page ``pgoff`` of a shared (``mmap`` + ``init_shared``) memfd, as base64; private pages are refused."""
    return Call("GET", f"{_vm(vm_id)}/memfds/{memfd_id}/pages/{pgoff}", _one(m.Page))


def export_memfd(vm_id: str, memfd_id: str) -> Call[m.ExportTicket]:
    """A single-use ticket to redeem for the memfd's fd with ``handoff.fetch_memfd`` (admin scope)."""
    return Call("POST", f"{_vm(vm_id)}/memfds/{memfd_id}/export", _one(m.ExportTicket))


# -- memslots ----------------------------------------------------------------------------------


def create_memslot(vm_id: str, slot: int, gpa: int, size: int, memfd_id: str, offset: int = 0) -> Call[m.Memslot]:
    body = {"slot": slot, "gpa": gpa, "size": size, "memfd_id": memfd_id, "offset": offset}
    return Call("POST", f"{_vm(vm_id)}/memslots", _one(m.Memslot), json=body)


def list_memslots(vm_id: str) -> Call[list[m.Memslot]]:
    return Call("GET", f"{_vm(vm_id)}/memslots", _items(m.Memslot))


def delete_memslot(vm_id: str, slot: int) -> Call[m.Deleted]:
    return Call("DELETE", f"{_vm(vm_id)}/memslots/{slot}", _one(m.Deleted))


# -- memory: convert, the shared backing, migration, the extent map, the journal ----------------


def convert(vm_id: str, ranges: Iterable[tuple[int, int, str]]) -> Call[m.Converted]:
    """Convert ``(gpa, size, to)`` ranges, ``to`` being ``private`` or ``shared``; all-or-nothing."""
    body = {"ranges": [{"gpa": gpa, "size": size, "to": to} for gpa, size, to in ranges]}
    return Call("POST", f"{_vm(vm_id)}/convert", _one(m.Converted), json=body)


def populate_shared(vm_id: str, gpa: int, size: int) -> Call[m.Allocated]:
    """What a VMM's first touch of shared memory does."""
    return Call("POST", f"{_vm(vm_id)}/shared/populate", _one(m.Allocated), json={"gpa": gpa, "size": size})


def _target(target_node: int | None, target_pfn: int | None) -> dict[str, int]:
    if target_node is not None and target_pfn is None:
        return {"target_node": target_node}
    if target_pfn is not None and target_node is None:
        return {"target_pfn": target_pfn}
    raise ValueError("give exactly one of target_node and target_pfn")


def migrate_page(
    vm_id: str, gpa: int, target_node: int | None = None, target_pfn: int | None = None
) -> Call[m.Migrated]:
    """Move one allocated page to a free frame on ``target_node``, or to frame ``target_pfn``."""
    body = {"gpa": gpa, **_target(target_node, target_pfn)}
    return Call("POST", f"{_vm(vm_id)}/migrate-page", _one(m.Migrated), json=body)


def migrate_pages(vm_id: str, moves: Iterable[tuple[int, int | None, int | None]]) -> Call[m.Migrated]:
    """A batch of ``(gpa, target_node, target_pfn)`` moves, one of the targets None; all-or-nothing."""
    body = {"moves": [{"gpa": gpa, **_target(node, pfn)} for gpa, node, pfn in moves]}
    return Call("POST", f"{_vm(vm_id)}/migrate-page", _one(m.Migrated), json=body)


def evacuate(vm_id: str, gpa: int, size: int, target_node: int) -> Call[m.Migrated]:
    """Move every allocated page of ``[gpa, gpa+size)`` to ``target_node`` (NUMA rebalancing, offlining)."""
    body = {"gpa": gpa, "size": size, "target_node": target_node}
    return Call("POST", f"{_vm(vm_id)}/migrate-page", _one(m.Migrated), json=body)


def frames(vm_id: str, limit: int = 1000, cursor: str | None = None) -> Call[m.FrameRunPage]:
    """Which host frames back the VM's pages, as stored runs (sim; empty on kvm)."""
    return Call("GET", f"{_vm(vm_id)}/frames", _one(m.FrameRunPage), params=_query(limit=limit, cursor=cursor))


def read_gfn(vm_id: str, gfn: int, view: str = "guest") -> Call[m.GuestPage]:
    """A guest page as the guest reads it, or (``view="host"``) its frame's raw bytes: ciphertext when sealed."""
    return Call("GET", f"{_vm(vm_id)}/gfns/{gfn}", _one(m.GuestPage), params={"view": view})


def write_gfn(vm_id: str, gfn: int, data: bytes, offset: int = 0, view: str = "guest") -> Call[m.GuestPage]:
    """Write ``data`` into a guest page at ``offset``, as the guest (sealed for its frame) or as the host."""
    body = {"data": base64.b64encode(data).decode(), "offset": offset}
    return Call("PUT", f"{_vm(vm_id)}/gfns/{gfn}", _one(m.GuestPage), json=body, params={"view": view})


def vm_extents(
    vm_id: str, start: int = 0, end: int | None = None, limit: int = 1000, cursor: str | None = None
) -> Call[m.VmExtentPage]:
    params = _query(start=start, end=end, limit=limit, cursor=cursor)
    return Call("GET", f"{_vm(vm_id)}/extents", _one(m.VmExtentPage), params=params)


def operations(vm_id: str, limit: int = 100, cursor: str | None = None) -> Call[m.OperationPage]:
    """The VM's journal, oldest first."""
    return Call("GET", f"{_vm(vm_id)}/operations", _one(m.OperationPage), params=_query(limit=limit, cursor=cursor))
