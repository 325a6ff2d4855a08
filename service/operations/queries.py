"""Read-only use cases: VMs, memfds, memslots, extent maps with paging, the journal, the host."""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from ..domain.errors import InvalidCursor, OutOfRange
from ..domain.model import VmState, memfd_extents
from ..domain.units import PAGE_SIZE, to_bytes, to_pages
from .broker import Broker
from .views import memfd_view, memslot_view, vm_view

GPA_END = 1 << 64


def encode_cursor(position: int) -> str:
    return f"p{position:x}"


def decode_cursor(cursor: str) -> int:
    if not cursor.startswith("p"):
        raise InvalidCursor(f"cursor {cursor!r} was not issued by this service")
    try:
        return int(cursor[1:], 16)
    except ValueError:
        raise InvalidCursor(f"cursor {cursor!r} was not issued by this service") from None


def list_vms(broker: Broker) -> list[dict[str, Any]]:
    return [vm_view(vm) for vm in broker.vms()]


def get_vm(broker: Broker, vm_id: str) -> dict[str, Any]:
    with broker.locked(vm_id):
        return vm_view(broker.vm(vm_id))


def list_memfds(broker: Broker, vm_id: str) -> list[dict[str, Any]]:
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        return [memfd_view(m, vm) for m in sorted(vm.memfds.values(), key=lambda m: m.created_at)]


def get_memfd(broker: Broker, vm_id: str, memfd_id: str) -> dict[str, Any]:
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        return memfd_view(vm.memfd(memfd_id), vm)


def list_memslots(broker: Broker, vm_id: str) -> list[dict[str, Any]]:
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        return [memslot_view(vm.memslots[s]) for s in sorted(vm.memslots)]


def _window(start: int, end: int | None, cursor: str | None, limit_end: int) -> tuple[int, int]:
    first = decode_cursor(cursor) if cursor else start
    last = limit_end if end is None else end
    if first % PAGE_SIZE or last % PAGE_SIZE:
        to_pages(first, max(last - first, PAGE_SIZE), what="extents window")
    if last > limit_end or first < 0:
        raise OutOfRange(f"window [{first:#x}, {last:#x}) exceeds [0, {limit_end:#x})")
    return first // PAGE_SIZE, last // PAGE_SIZE


def vm_extents(
    broker: Broker, vm_id: str, *, start: int, end: int | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    gfn, gfn_end = _window(start, end, cursor, GPA_END)
    items: list[dict[str, Any]] = []
    next_cursor = None
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        for ext in vm.extents(gfn, gfn_end):
            if len(items) == limit:
                next_cursor = encode_cursor(to_bytes(ext.gfn))
                break
            items.append(
                {
                    "gpa": to_bytes(ext.gfn),
                    "size": to_bytes(ext.gfn_end - ext.gfn),
                    "attribute": ext.attribute.value,
                    "private_backing": "allocated" if ext.private_allocated else "hole",
                    "shared_backing": "allocated" if ext.shared_allocated else "hole",
                }
            )
        generation = vm.generation
    return {"items": items, "next_cursor": next_cursor, "generation": generation}


def memfd_extents_page(
    broker: Broker, vm_id: str, memfd_id: str, *, start: int, end: int | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        memfd = vm.memfd(memfd_id)
        pgoff, pgoff_end = _window(start, end, cursor, memfd.size)
        items: list[dict[str, Any]] = []
        next_cursor = None
        for ext in memfd_extents(memfd, pgoff, pgoff_end):
            if len(items) == limit:
                next_cursor = encode_cursor(to_bytes(ext.start))
                break
            items.append({"offset": to_bytes(ext.start), "size": to_bytes(ext.npages), "state": ext.value})
        generation = vm.generation
    return {"items": items, "next_cursor": next_cursor, "generation": generation}


def list_operations(broker: Broker, vm_id: str, *, limit: int, cursor: str | None) -> dict[str, Any]:
    after = decode_cursor(cursor) if cursor else 0
    with broker.uow() as uow:
        ops = uow.journal.list(vm_id, after_seq=after, limit=limit + 1)
    if not ops:
        # The journal outlives a deleted VM; an unknown VM with no journal is not found.
        with broker.locked(vm_id):
            broker.vm(vm_id)
    more = len(ops) > limit
    ops = ops[:limit]
    items = [
        {
            "id": op.id,
            "seq": op.seq,
            "kind": op.kind,
            "status": op.status.value,
            "generation": op.generation,
            "request": op.request,
            "result": op.result,
            "error": op.error,
            "created_at": op.created_at.isoformat(),
            "finished_at": op.finished_at.isoformat() if op.finished_at else None,
        }
        for op in ops
    ]
    next_cursor = encode_cursor(ops[-1].seq or 0) if more and ops else None
    return {"items": items, "next_cursor": next_cursor}


def host(broker: Broker) -> dict[str, Any]:
    info = broker.backend.host_info()
    vms = broker.vms()
    return {
        "backend": info.backend,
        "page_size": info.page_size,
        "max_gpa": info.max_gpa,
        "vm_types": info.vm_types,
        "memfd_flags": info.memfd_flags,
        "capabilities": info.capabilities,
        "enforcement": info.enforcement,
        "numa_nodes": [{**asdict(n), "used_pages": n.total_pages - n.free_pages} for n in info.numa_nodes],
        "budget": {
            "total_pages": sum(n.total_pages for n in info.numa_nodes),
            "free_pages": sum(n.free_pages for n in info.numa_nodes),
        },
        "kernel": info.details,
        "vms": {
            "total": len(vms),
            "pending_replay": len(broker.needs_replay),
            "lost": sum(vm.state is VmState.LOST for vm in vms),
        },
        "reconcile": broker.reconcile_report,
    }


def read_page(broker: Broker, vm_id: str, memfd_id: str, pgoff: int) -> dict[str, Any]:
    """One shared page of an mmap + init_shared memfd, read through the backend's mapping."""
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        vm.require_not_lost()
        allocated = vm.readable_page(memfd_id, pgoff)
        data = broker.backend.read_page(vm_id, memfd_id, pgoff)
        if not allocated:
            # Touching a hole through a mapping faults a page in; give it back so a read changes nothing.
            broker.backend.punch_hole(vm_id, memfd_id, pgoff, 1)
        generation = vm.generation
    return {
        "memfd_id": memfd_id,
        "pgoff": pgoff,
        "offset": to_bytes(pgoff),
        "allocated": allocated,
        "data": base64.b64encode(data).decode("ascii"),
        "generation": generation,
    }
