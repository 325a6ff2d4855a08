"""Use cases: create, change the state of, and delete a VM."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..domain import effects as fx
from ..domain.errors import NameTaken, UnsupportedVmType
from ..domain.model import Vm, VmState, VmType
from .broker import Broker, new_id
from .journal import Outcome, RequestMeta, stored_replay
from .lane import Job
from .mutation import plan, run
from .views import vm_view


def create_vm(broker: Broker, *, name: str | None, vm_type: str, meta: RequestMeta) -> Outcome:
    supported = broker.backend.host_info().vm_types
    if vm_type not in supported:
        raise UnsupportedVmType(
            f"VM type {vm_type!r} is not supported by the {broker.backend.name} backend; "
            f"supported: {', '.join(supported)}",
            supported=supported,
        )
    # One creation at a time: names are unique per host and a key may race with itself.
    with broker.create_lock:
        replay = stored_replay(broker, meta)
        if replay is not None:
            return replay
        vm_id = new_id("vm")
        name = name or vm_id
        with broker.uow() as uow:
            if uow.vms.name_taken(name):
                raise NameTaken(f"a VM named {name!r} exists on this host")
        vm, effects = Vm.create(id=vm_id, name=name, vm_type=VmType(vm_type), now=broker.clock())

        def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
            return vm_view(vm), effects

        request = {"name": name, "vm_type": vm_type}
        return run(broker, plan(vm_id, "create-vm", request, meta, change, status_code=201, new_vm=vm))


def set_vm_state(broker: Broker, vm_id: str, *, state: str, meta: RequestMeta) -> Job:
    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        vm.set_state(VmState(state), now)
        return vm_view(vm), []

    return plan(vm_id, "set-state", {"state": state}, meta, change)


def delete_vm(broker: Broker, vm_id: str, *, force: bool, meta: RequestMeta) -> Job:
    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        released = {"memslots": sorted(vm.memslots), "memfds": sorted(vm.memfds)}
        effects = vm.delete(force=force, now=now)
        return {"operation_id": op_id, "generation": vm.generation, "released": released}, effects

    return plan(vm_id, "delete-vm", {"force": force}, meta, change, allowed_when_lost=True)


def mark_lost(broker: Broker, vm_id: str) -> Outcome:
    """Record that the backend no longer holds the VM (a restart closed its fds)."""

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        vm.mark_lost(now)
        return vm_view(vm), []

    return run(broker, plan(vm_id, "mark-lost", {}, RequestMeta(), change, allowed_when_lost=True))
