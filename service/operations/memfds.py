"""Use cases: create and delete memfds, bind and unbind memslots."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..domain import effects as fx
from ..domain.model import Vm
from ..domain.units import PAGE_SIZE, to_pages
from .broker import Broker, new_id
from .journal import RequestMeta
from .lane import Job
from .mutation import plan
from .views import memfd_view, memslot_view


def create_memfd(broker: Broker, vm_id: str, *, size: int, flags: list[str], meta: RequestMeta) -> Job:
    supported = frozenset(broker.backend.host_info().memfd_flags)

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        memfd, effects = vm.create_memfd(new_id("mfd"), size, flags, now, supported_flags=supported)
        return {**memfd_view(memfd, vm), "operation_id": op_id, "generation": vm.generation}, effects

    return plan(vm_id, "create-memfd", {"size": size, "flags": flags}, meta, change, status_code=201)


def delete_memfd(broker: Broker, vm_id: str, memfd_id: str, *, meta: RequestMeta) -> Job:
    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        effects = vm.delete_memfd(memfd_id, now)
        return {"operation_id": op_id, "generation": vm.generation}, effects

    return plan(vm_id, "delete-memfd", {"memfd_id": memfd_id}, meta, change)


def create_memslot(
    broker: Broker, vm_id: str, *, slot: int, gpa: int, size: int, memfd_id: str, offset: int, meta: RequestMeta
) -> Job:
    gfn, gfn_end = to_pages(gpa, size, what="memslot")
    if offset % PAGE_SIZE:
        to_pages(offset, size, what="memslot offset")
    pgoff = offset // PAGE_SIZE
    max_gpa = broker.backend.host_info().max_gpa

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        memslot, effects = vm.create_memslot(slot, gfn, gfn_end, memfd_id, pgoff, now, max_gpa=max_gpa)
        return {**memslot_view(memslot), "operation_id": op_id, "generation": vm.generation}, effects

    request = {"slot": slot, "gpa": gpa, "size": size, "memfd_id": memfd_id, "offset": offset}
    return plan(vm_id, "create-memslot", request, meta, change, status_code=201)


def delete_memslot(broker: Broker, vm_id: str, slot: int, *, meta: RequestMeta) -> Job:
    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        effects = vm.delete_memslot(slot, now)
        return {"operation_id": op_id, "generation": vm.generation}, effects

    return plan(vm_id, "delete-memslot", {"slot": slot}, meta, change)
