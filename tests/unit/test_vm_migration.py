"""What the Vm aggregate says about moving pages: which backing a gfn uses, and how it may move."""

from __future__ import annotations

import pytest

from service.domain.errors import NotAllocated, OutOfRange
from service.domain.model import Attribute, BackedRun, Range, VmType

from .test_vm_model import NOW, add_memfd, add_slot, new_vm, refused


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
    vm = new_vm(VmType.TDX)
    add_memfd(vm)
    add_slot(vm, 0, 100, 16)
    vm.convert([Range(104, 106, Attribute.SHARED)], NOW)
    vm.populate_shared(104, 106, NOW)
    vm.drain_changes()
    assert vm.backed_page(105) == BackedRun(105, 1, None, 105, "copy", None)


def test_holes_and_gfns_outside_memslots_are_refused_without_change() -> None:
    vm = new_vm(VmType.SEV_SNP)
    add_memfd(vm)
    add_slot(vm, 0, 100, 16)
    vm.allocate("mfd_a", 0, 4, NOW)
    vm.convert([Range(110, 111, Attribute.SHARED)], NOW)
    vm.drain_changes()
    with refused(vm, NotAllocated):
        vm.backed_page(105)  # private, memfd page is a hole
    with refused(vm, NotAllocated):
        vm.backed_page(110)  # shared, shared backing is a hole
    with refused(vm, OutOfRange):
        vm.backed_page(99)


def test_backed_runs_cover_both_backings_and_skip_holes() -> None:
    vm = new_vm(VmType.TDX)
    add_memfd(vm)
    add_slot(vm, 0, 100, 16)
    vm.allocate("mfd_a", 0, 8, NOW)
    vm.convert([Range(106, 110, Attribute.SHARED)], NOW)
    vm.populate_shared(108, 110, NOW)
    vm.drain_changes()
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
