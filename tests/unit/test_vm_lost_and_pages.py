"""The Vm aggregate's rules added with the kvm backend: lost VMs, readable pages, the gpa limit."""

from __future__ import annotations

import pytest

from service.domain import effects as fx
from service.domain.errors import InvalidTransition, OutOfRange, PrivatePage, VmLost
from service.domain.model import Attribute, Range, VmState, VmType

from .test_vm_model import NOW, add_memfd, add_slot, new_vm, refused


def test_a_lost_vm_is_marked_once_and_refuses_mutations() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    add_slot(vm, 0, 100, 32)
    generation = vm.generation
    assert vm.mark_lost(NOW)
    assert vm.state is VmState.LOST
    assert vm.generation == generation + 1
    vm.drain_changes()
    assert not vm.mark_lost(NOW)
    assert vm.drain_changes() is None
    with refused(vm, VmLost):
        vm.require_not_lost()
    with refused(vm, InvalidTransition):
        vm.set_state(VmState.RUNNING, NOW)


def test_a_lost_vm_is_deleted_without_force_and_without_backend_calls() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    add_slot(vm, 0, 100, 32)
    vm.mark_lost(NOW)
    vm.drain_changes()
    assert vm.delete(force=False, now=NOW) == []
    changes = vm.drain_changes()
    assert changes is not None
    assert changes.deleted
    assert [m.id for m in changes.memfds_removed] == ["mfd_a"]
    assert [s.slot for s in changes.memslots_removed] == [0]


def test_a_live_vm_deletes_through_the_backend() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    effects = vm.delete(force=True, now=NOW)
    assert effects == [fx.CloseMemfd("vm_1", "mfd_a"), fx.DestroyVm("vm_1")]


def test_only_shared_pages_of_mappable_init_shared_memfds_are_readable() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm, "plain")
    add_memfd(vm, "open", flags=("init_shared", "mmap"))
    add_slot(vm, 0, 100, 16, "open")
    vm.convert([Range(104, 105, Attribute.PRIVATE)], NOW)
    vm.drain_changes()
    with refused(vm, PrivatePage):
        vm.readable_page("plain", 0)
    with refused(vm, PrivatePage):
        vm.readable_page("open", 4)
    with refused(vm, OutOfRange, "EINVAL"):
        vm.readable_page("open", 32)
    assert vm.readable_page("open", 5) is False
    vm.allocate("open", 20, 21, NOW)  # bound to no memslot: unconstrained
    vm.drain_changes()
    assert vm.readable_page("open", 20) is True


@pytest.mark.parametrize(("gfn", "accepted"), [((1 << 40) - 32, True), ((1 << 40) - 31, False)])
def test_memslots_end_inside_the_guest_address_space(gfn: int, accepted: bool) -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    max_gpa = (1 << 40) * 4096
    if accepted:
        vm.create_memslot(0, gfn, gfn + 32, "mfd_a", 0, NOW, max_gpa=max_gpa)
        return
    with refused(vm, OutOfRange, "EINVAL"):
        vm.create_memslot(0, gfn, gfn + 32, "mfd_a", 0, NOW, max_gpa=max_gpa)
