"""Plain JSON views of domain objects: the bodies the API returns and the journal stores."""

from __future__ import annotations

from typing import Any

from ..domain.model import Memfd, Memslot, Vm
from ..domain.units import to_bytes


def vm_view(vm: Vm) -> dict[str, Any]:
    return {
        "id": vm.id,
        "name": vm.name,
        "vm_type": vm.vm_type.value,
        "state": vm.state.value,
        "generation": vm.generation,
        "created_at": vm.created_at.isoformat(),
        "updated_at": vm.updated_at.isoformat(),
        "memfds": len(vm.memfds),
        "memslots": len(vm.memslots),
    }


def memfd_view(memfd: Memfd, vm: Vm) -> dict[str, Any]:
    return {
        "id": memfd.id,
        "vm_id": memfd.vm_id,
        "size": memfd.size,
        "flags": sorted(f.value for f in memfd.flags),
        "allocated": to_bytes(sum(e.npages for e in memfd.population)),
        "memslots": sorted(s.slot for s in vm.memslots.values() if s.memfd_id == memfd.id),
        "created_at": memfd.created_at.isoformat(),
    }


def memslot_view(slot: Memslot) -> dict[str, Any]:
    return {
        "slot": slot.slot,
        "gpa": to_bytes(slot.gfn),
        "size": to_bytes(slot.npages),
        "memfd_id": slot.memfd_id,
        "offset": to_bytes(slot.pgoff),
        "created_at": slot.created_at.isoformat(),
    }
