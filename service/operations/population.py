"""Use cases: allocate, punch-hole, populate the shared backing, convert."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..domain import effects as fx
from ..domain.errors import BatchTooLarge, InsufficientMemory, InvalidLength, UnknownNode, UnsupportedAttribute
from ..domain.model import Attribute, Population, Range, Vm
from ..domain.units import to_pages
from .broker import Broker
from .journal import RequestMeta
from .lane import Job
from .mutation import plan


def allocate(
    broker: Broker,
    vm_id: str,
    memfd_id: str,
    *,
    offset: int,
    length: int,
    meta: RequestMeta,
    node: int | None = None,
) -> Job:
    pgoff, pgoff_end = to_pages(offset, length, what="allocate")
    if node is not None and node not in {n.id for n in broker.backend.host_info().numa_nodes}:
        raise UnknownNode(f"NUMA node {node} is not online on this host", errno="ENODEV")

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        holes = pgoff_end - pgoff - vm.memfd(memfd_id).population.count(pgoff, pgoff_end, Population.ALLOCATED)
        _require_memory(broker, holes, "allocate")
        added, effects = vm.allocate(memfd_id, pgoff, pgoff_end, now, node=node)
        return {"operation_id": op_id, "generation": vm.generation, "pages_allocated": added}, effects

    request: dict[str, Any] = {"memfd_id": memfd_id, "offset": offset, "length": length}
    if node is not None:
        request["node"] = node
    return plan(vm_id, "allocate", request, meta, change)


def _require_memory(broker: Broker, npages: int, what: str) -> None:
    """Refuse, changing nothing, an allocation of more new pages than the host can give now."""
    if npages <= 0:
        return
    available = broker.backend.available_pages()
    if available is not None and npages > available:
        raise InsufficientMemory(
            f"{what}: {npages} new pages, but the host can give {available} now (MemAvailable less the reserve, "
            "GMEM_BROKER_KVM_MEMORY_RESERVE)",
            errno="ENOMEM",
        )


def punch_hole(
    broker: Broker, vm_id: str, memfd_id: str, *, offset: int, length: int, allow_private: bool, meta: RequestMeta
) -> Job:
    pgoff, pgoff_end = to_pages(offset, length, what="punch-hole")

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        freed, effects = vm.punch_hole(memfd_id, pgoff, pgoff_end, now, allow_private=allow_private)
        return {"operation_id": op_id, "generation": vm.generation, "pages_freed": freed}, effects

    request = {"memfd_id": memfd_id, "offset": offset, "length": length, "allow_private": allow_private}
    return plan(vm_id, "punch-hole", request, meta, change)


def populate_shared(broker: Broker, vm_id: str, *, gpa: int, size: int, meta: RequestMeta) -> Job:
    gfn, gfn_end = to_pages(gpa, size, what="populate-shared")

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        _require_memory(broker, gfn_end - gfn - vm.shared.count(gfn, gfn_end, Population.ALLOCATED), "populate-shared")
        added, effects = vm.populate_shared(gfn, gfn_end, now)
        return {"operation_id": op_id, "generation": vm.generation, "pages_allocated": added}, effects

    return plan(vm_id, "populate-shared", {"gpa": gpa, "size": size}, meta, change)


def convert(broker: Broker, vm_id: str, *, ranges: list[dict[str, Any]], meta: RequestMeta) -> Job:
    if not ranges:
        raise InvalidLength("a convert batch needs at least one range")
    if len(ranges) > broker.max_batch:
        raise BatchTooLarge(f"{len(ranges)} ranges in one batch; the limit is {broker.max_batch}")
    parsed: list[Range] = []
    for i, r in enumerate(ranges):
        gfn, gfn_end = to_pages(r["gpa"], r["size"], what=f"ranges[{i}]")
        try:
            to = Attribute(r["to"])
        except ValueError:
            raise UnsupportedAttribute(
                f"ranges[{i}]: attribute {r['to']!r} is not one of private, shared", errno="EINVAL"
            ) from None
        parsed.append(Range(gfn, gfn_end, to))

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        outcome, effects = vm.convert(parsed, now)
        return {
            "operation_id": op_id,
            "generation": vm.generation,
            "pages_converted": outcome.pages_converted,
            "private_pages_freed": outcome.private_pages_freed,
            "shared_pages_freed": outcome.shared_pages_freed,
        }, effects

    return plan(vm_id, "convert", {"ranges": ranges}, meta, change)
