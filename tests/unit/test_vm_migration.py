"""What the Vm aggregate says about moving pages: which backing a gfn uses, and how it may move."""

from __future__ import annotations

import pytest

from service.domain.errors import NotAllocated, OutOfRange
from service.domain.model import Attribute, BackedRun, Range, Vm, VmType

from .test_vm_model import NOW, add_memfd, add_slot, new_vm, refused


def bound_vm(vm_type: VmType, *, allocated: int, shared: tuple[int, int], populated: tuple[int, int]) -> Vm:
    """Memslot 0 binds gfns [100, 116) to memfd pages [0, 16); ``allocated`` memfd pages, then
    ``shared`` gfns converted and ``populated`` gfns given shared backing."""
    vm = new_vm(vm_type)
    add_memfd(vm)
    add_slot(vm, 0, 100, 16)
    vm.allocate("mfd_a", 0, allocated, NOW)
    vm.convert([Range(*shared, Attribute.SHARED)], NOW)
    vm.populate_shared(*populated, NOW)
    vm.drain_changes()
    return vm


@pytest.mark.parametrize(
    ("vm_type", "method", "agent"),
    [
        (VmType.TDX, "trusted-agent", "tdx-relocate"),
        (VmType.SEV_SNP, "trusted-agent", "snp-page-move"),
        (VmType.SW_PROTECTED, "copy", None),
    ],
)
def test_a_private_gfn_uses_its_memfd_page(vm_type: VmType, method: str, agent: str | None) -> None:
    vm = new_vm(vm_type)
    add_memfd(vm)
    add_slot(vm, 0, 100, 16, pgoff=8)
    vm.allocate("mfd_a", 8, 24, NOW)
    vm.drain_changes()
    assert vm.backed_page(103) == BackedRun(103, 1, "mfd_a", 11, method, agent)


def test_a_shared_gfn_uses_the_shared_backing_and_moves_by_copy() -> None:
    vm = bound_vm(VmType.TDX, allocated=4, shared=(104, 106), populated=(104, 106))
    assert vm.backed_page(105) == BackedRun(105, 1, None, 105, "copy", None)


def test_holes_and_gfns_outside_memslots_are_refused_without_change() -> None:
    vm = bound_vm(VmType.SEV_SNP, allocated=4, shared=(110, 112), populated=(111, 112))
    with refused(vm, NotAllocated):
        vm.backed_page(105)  # private, memfd page is a hole
    with refused(vm, NotAllocated):
        vm.backed_page(110)  # shared, shared backing is a hole
    with refused(vm, OutOfRange):
        vm.backed_page(99)


def test_backed_runs_cover_both_backings_and_skip_holes() -> None:
    vm = bound_vm(VmType.TDX, allocated=8, shared=(106, 110), populated=(108, 110))
    assert list(vm.backed_runs(0, 1 << 20)) == [
        BackedRun(100, 6, "mfd_a", 0, "trusted-agent", "tdx-relocate"),
        BackedRun(108, 2, None, 108, "copy", None),
    ]


def test_recording_a_migration_bumps_the_generation_once() -> None:
    vm = new_vm(VmType.TDX)
    generation = vm.generation
    vm.record_migration(NOW)
    vm.record_migration(NOW)
    changes = vm.drain_changes()
    assert changes is not None
    assert vm.generation == generation + 1
