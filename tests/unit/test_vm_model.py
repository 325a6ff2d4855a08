"""The Vm aggregate's rules, directly, without I/O (DESIGN sections 3 and 4).

Every refused call is checked to leave the VM exactly as it was: extents, attributes, population,
memslots, state and generation, with no change record opened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from service.domain import effects as fx
from service.domain.errors import (
    AttributeMismatch,
    DomainError,
    ForeignMemfd,
    InUse,
    InvalidLength,
    InvalidTransition,
    NotFound,
    OutOfRange,
    Overlap,
    PrivateInUse,
    SlotInUse,
    Unaligned,
    UnsupportedFlags,
)
from service.domain.extents import Extent
from service.domain.model import (
    MAX_MEMSLOTS,
    Attribute,
    Memfd,
    Population,
    Range,
    Vm,
    VmState,
    VmType,
    memfd_extents,
)
from service.domain.units import MAX_FILE_BYTES, PAGE_SIZE

T = TypeVar("T")

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALL_FLAGS = frozenset({"mmap", "init_shared"})
MEMFD_PAGES = 32
VIEW_END = 1 << 20


def new_vm(vm_type: VmType = VmType.SW_PROTECTED) -> Vm:
    vm, effects = Vm.create(id="vm_1", name="vm-1", vm_type=vm_type, now=NOW)
    assert effects == [fx.CreateVm("vm_1", vm_type.value)]
    changes = vm.drain_changes()
    assert changes is not None
    assert changes.created
    assert vm.generation == 1
    return vm


def add_memfd(vm: Vm, memfd_id: str = "mfd_a", npages: int = MEMFD_PAGES, flags: tuple[str, ...] = ()) -> Memfd:
    memfd, _ = vm.create_memfd(memfd_id, npages * PAGE_SIZE, flags, NOW, supported_flags=ALL_FLAGS)
    vm.drain_changes()
    return memfd


def add_slot(vm: Vm, slot: int, gfn: int, npages: int, memfd_id: str = "mfd_a", pgoff: int = 0) -> None:
    vm.create_memslot(slot, gfn, gfn + npages, memfd_id, pgoff, NOW)
    vm.drain_changes()


def snapshot(vm: Vm) -> dict[str, Any]:
    return {
        "generation": vm.generation,
        "state": vm.state,
        "updated_at": vm.updated_at,
        "attributes": list(vm.attributes),
        "shared": list(vm.shared),
        "population": {m.id: list(m.population) for m in vm.memfds.values()},
        "memfds": sorted(vm.memfds),
        "memslots": dict(vm.memslots),
        "extents": [(e.gfn, e.gfn_end, e.attribute, e.private_allocated, e.shared_allocated) for e in view(vm)],
    }


def view(vm: Vm) -> list[Any]:
    return list(vm.extents(0, VIEW_END))


@contextmanager
def refused(vm: Vm, error: type[DomainError], errno: str | None = None) -> Iterator[None]:
    """The call inside must raise ``error`` and leave ``vm`` untouched."""
    before = snapshot(vm)
    with pytest.raises(error) as info:
        yield
    assert type(info.value) is error
    if errno is not None:
        assert info.value.errno == errno
    assert snapshot(vm) == before
    assert vm.drain_changes() is None


def assert_invariant(vm: Vm) -> None:
    """No gfn has an allocated private page and an allocated shared page at once."""
    for e in view(vm):
        assert not (e.private_allocated and e.shared_allocated), e


def bumped(vm: Vm, call: Callable[[], T]) -> T:
    """Run an accepted mutation: one generation bump, a change record, the invariant kept."""
    gen = vm.generation
    result = call()
    assert vm.generation == gen + 1
    assert vm.drain_changes() is not None
    assert_invariant(vm)
    return result


# -- memfds -------------------------------------------------------------------------------------


def test_create_memfd() -> None:
    vm = new_vm()
    memfd, effects = vm.create_memfd("mfd_a", 16 * PAGE_SIZE, ["mmap"], NOW, supported_flags=ALL_FLAGS)
    assert memfd.npages == 16
    assert memfd.size == 16 * PAGE_SIZE
    assert effects == [fx.CreateMemfd("vm_1", "mfd_a", 16, ("mmap",))]
    assert vm.generation == 2
    changes = vm.drain_changes()
    assert changes is not None
    assert changes.memfds_added == [memfd]
    assert list(memfd_extents(memfd, 0, 16)) == [Extent(0, 16, "hole")]


@pytest.mark.parametrize(
    ("size", "error"),
    [(0, InvalidLength), (-PAGE_SIZE, InvalidLength), (PAGE_SIZE + 1, Unaligned), (100, Unaligned)],
)
def test_memfd_size_rules(size: int, error: type[DomainError]) -> None:
    vm = new_vm()
    with refused(vm, error, "EINVAL"):
        vm.create_memfd("mfd_a", size, [], NOW, supported_flags=ALL_FLAGS)


def test_memfd_larger_than_any_file_is_refused() -> None:
    vm = new_vm()
    with refused(vm, OutOfRange, "EINVAL"):
        vm.create_memfd("mfd_a", MAX_FILE_BYTES + PAGE_SIZE, [], NOW, supported_flags=ALL_FLAGS)


@pytest.mark.parametrize(
    ("vm_type", "flags", "supported"),
    [
        (VmType.DEFAULT, ["bogus"], ALL_FLAGS),
        (VmType.DEFAULT, ["init_shared"], frozenset({"mmap"})),
        (VmType.SW_PROTECTED, ["init_shared"], ALL_FLAGS),
        (VmType.TDX, ["mmap", "init_shared"], ALL_FLAGS),
    ],
)
def test_memfd_flag_rules(vm_type: VmType, flags: list[str], supported: frozenset[str]) -> None:
    vm = new_vm(vm_type)
    with refused(vm, UnsupportedFlags, "EINVAL"):
        vm.create_memfd("mfd_a", PAGE_SIZE, flags, NOW, supported_flags=supported)


def test_init_shared_is_offered_to_default_vms() -> None:
    vm = new_vm(VmType.DEFAULT)
    memfd = add_memfd(vm, flags=("init_shared", "mmap"))
    assert {f.value for f in memfd.flags} == {"init_shared", "mmap"}


def test_delete_memfd() -> None:
    vm = new_vm()
    add_memfd(vm)
    vm.allocate("mfd_a", 0, 4, NOW)
    vm.drain_changes()
    add_slot(vm, 0, 100, 8)
    with refused(vm, InUse):
        vm.delete_memfd("mfd_a", NOW)
    with refused(vm, NotFound):
        vm.delete_memfd("mfd_zzz", NOW)
    vm.delete_memslot(0, NOW)
    vm.drain_changes()
    effects = bumped(vm, lambda: vm.delete_memfd("mfd_a", NOW))
    assert effects == [fx.CloseMemfd("vm_1", "mfd_a")]
    assert vm.memfds == {}


# -- memslots -----------------------------------------------------------------------------------


def test_create_memslot_starts_private_on_private_vm_types() -> None:
    vm = new_vm(VmType.SW_PROTECTED)
    add_memfd(vm)
    memslot, effects = vm.create_memslot(3, 100, 116, "mfd_a", 8, NOW)
    assert (memslot.slot, memslot.gfn, memslot.gfn_end, memslot.pgoff, memslot.pgoff_end) == (3, 100, 116, 8, 24)
    assert effects == [
        fx.BindMemslot("vm_1", 3, 100, 16, "mfd_a", 8),
        fx.SetAttributes("vm_1", 100, 16, "private"),
    ]
    assert vm.generation == 3
    assert [(e.gfn, e.gfn_end, e.attribute, e.private_allocated, e.shared_allocated) for e in view(vm)] == [
        (100, 116, Attribute.PRIVATE, False, False)
    ]


@pytest.mark.parametrize(
    ("vm_type", "flags", "attribute"),
    [
        (VmType.DEFAULT, (), Attribute.SHARED),
        (VmType.DEFAULT, ("init_shared",), Attribute.SHARED),
        (VmType.SEV_SNP, ("mmap",), Attribute.PRIVATE),
        (VmType.TDX, (), Attribute.PRIVATE),
    ],
)
def test_initial_attribute_of_memslot_pages(vm_type: VmType, flags: tuple[str, ...], attribute: Attribute) -> None:
    vm = new_vm(vm_type)
    add_memfd(vm, flags=flags)
    add_slot(vm, 0, 0, 4)
    assert [e.attribute for e in view(vm)] == [attribute]


def test_overlapping_gpa_ranges_are_refused_with_eexist() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_memfd(vm, "mfd_b")
    add_slot(vm, 0, 100, 8)
    for gfn, gfn_end in [(100, 108), (96, 101), (107, 120), (102, 104), (90, 120)]:
        with refused(vm, Overlap, "EEXIST"):
            vm.create_memslot(1, gfn, gfn_end, "mfd_b", 0, NOW)
    # Touching is not overlapping.
    add_slot(vm, 1, 108, 4, "mfd_b")
    add_slot(vm, 2, 96, 4, "mfd_b", 4)


def test_overlapping_bindings_of_one_memfd_are_refused_with_einval() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 8, pgoff=8)
    for pgoff in (0 + 1, 8, 12, 15):
        with refused(vm, Overlap, "EINVAL"):
            vm.create_memslot(1, 200, 208, "mfd_a", pgoff, NOW)
    add_slot(vm, 1, 200, 8, pgoff=0)
    add_slot(vm, 2, 300, 8, pgoff=16)


def test_slot_reuse_is_refused() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 8)
    with refused(vm, SlotInUse, "EINVAL"):
        vm.create_memslot(0, 200, 208, "mfd_a", 16, NOW)
    # Even with exactly the same binding: a guest_memfd memslot cannot be changed.
    with refused(vm, SlotInUse, "EINVAL"):
        vm.create_memslot(0, 100, 108, "mfd_a", 0, NOW)


@pytest.mark.parametrize(("pgoff", "npages"), [(0, MEMFD_PAGES + 1), (1, MEMFD_PAGES), (MEMFD_PAGES, 1), (30, 4)])
def test_memslot_past_the_memfd_is_refused(pgoff: int, npages: int) -> None:
    vm = new_vm()
    add_memfd(vm)
    with refused(vm, OutOfRange, "EINVAL"):
        vm.create_memslot(0, 0, npages, "mfd_a", pgoff, NOW)


def test_memslot_id_range() -> None:
    vm = new_vm()
    add_memfd(vm)
    with refused(vm, OutOfRange, "EINVAL"):
        vm.create_memslot(MAX_MEMSLOTS, 0, 1, "mfd_a", 0, NOW)
    with refused(vm, OutOfRange, "EINVAL"):
        vm.create_memslot(-1, 0, 1, "mfd_a", 0, NOW)


def test_memfd_of_another_vm_is_refused() -> None:
    vm = new_vm()
    other, _ = Vm.create(id="vm_2", name="vm-2", vm_type=VmType.SW_PROTECTED, now=NOW)
    other.create_memfd("mfd_other", PAGE_SIZE * 4, [], NOW, supported_flags=ALL_FLAGS)
    other.drain_changes()
    with refused(vm, ForeignMemfd, "EINVAL"):
        vm.create_memslot(0, 0, 4, "mfd_other", 0, NOW)


def test_delete_memslot_drops_its_pages_from_the_view() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    add_slot(vm, 0, 100, 8)
    vm.populate_shared(100, 104, NOW)
    vm.drain_changes()
    vm.convert([Range(104, 108, Attribute.PRIVATE)], NOW)
    vm.allocate("mfd_a", 4, 8, NOW)
    vm.drain_changes()
    with refused(vm, NotFound):
        vm.delete_memslot(1, NOW)
    effects = bumped(vm, lambda: vm.delete_memslot(0, NOW))
    assert effects == [fx.UnbindMemslot("vm_1", 0), fx.DiscardShared("vm_1", 100, 8)]
    assert view(vm) == []
    assert list(vm.attributes) == []
    assert list(vm.shared) == []
    # The memfd keeps its pages: unbinding is not punching.
    assert vm.memfds["mfd_a"].population.count(0, MEMFD_PAGES, Population.ALLOCATED) == 4


def test_a_new_memslot_over_old_gfns_starts_fresh() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    add_slot(vm, 0, 0, 8)
    vm.populate_shared(0, 8, NOW)
    vm.drain_changes()
    vm.delete_memslot(0, NOW)
    vm.drain_changes()
    add_slot(vm, 0, 0, 8, pgoff=8)
    assert [(e.attribute, e.private_allocated, e.shared_allocated) for e in view(vm)] == [
        (Attribute.SHARED, False, False)
    ]


# -- allocate and punch-hole ----------------------------------------------------------------------


def test_allocate_is_idempotent_and_counts_new_pages() -> None:
    vm = new_vm()
    add_memfd(vm)
    added, effects = bumped(vm, lambda: vm.allocate("mfd_a", 0, 8, NOW))
    assert added == 8
    assert effects == [fx.Allocate("vm_1", "mfd_a", 0, 8)]
    added, _ = bumped(vm, lambda: vm.allocate("mfd_a", 4, 12, NOW))
    assert added == 4
    added, _ = bumped(vm, lambda: vm.allocate("mfd_a", 0, 12, NOW))
    assert added == 0
    assert [(e.start, e.end, e.value) for e in memfd_extents(vm.memfds["mfd_a"], 0, MEMFD_PAGES)] == [
        (0, 12, "allocated"),
        (12, 32, "hole"),
    ]


def test_allocate_past_the_end_is_refused() -> None:
    vm = new_vm()
    add_memfd(vm)
    with refused(vm, OutOfRange, "EINVAL"):
        vm.allocate("mfd_a", 30, 33, NOW)
    with refused(vm, NotFound):
        vm.allocate("mfd_zzz", 0, 1, NOW)


def test_allocate_is_refused_on_shared_gfns() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 16, pgoff=8)
    vm.convert([Range(110, 112, Attribute.SHARED)], NOW)
    vm.drain_changes()
    # pgoff 18 is gfn 110: shared.
    with refused(vm, AttributeMismatch):
        vm.allocate("mfd_a", 0, MEMFD_PAGES, NOW)
    with pytest.raises(AttributeMismatch) as info:
        vm.allocate("mfd_a", 17, 19, NOW)
    assert info.value.extra["gpa"] == 110 * PAGE_SIZE
    vm.drain_changes()
    # Private gfns and unbound pages are fine.
    added, _ = bumped(vm, lambda: vm.allocate("mfd_a", 0, 18, NOW))
    assert added == 18
    added, _ = bumped(vm, lambda: vm.allocate("mfd_a", 20, MEMFD_PAGES, NOW))
    assert added == 12


def test_allocate_unbound_pages_of_a_default_vm() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    add_slot(vm, 0, 0, 8)
    with refused(vm, AttributeMismatch):
        vm.allocate("mfd_a", 7, 9, NOW)
    added, _ = bumped(vm, lambda: vm.allocate("mfd_a", 8, 16, NOW))
    assert added == 8


def running_vm_with_private_pages() -> Vm:
    """sw_protected, running; memfd pages 0..8 bound to gfns 100..108, 4..8 allocated, 20..24 allocated unbound."""
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 8)
    vm.allocate("mfd_a", 4, 8, NOW)
    vm.allocate("mfd_a", 20, 24, NOW)
    vm.set_state(VmState.RUNNING, NOW)
    vm.drain_changes()
    return vm


def test_punch_of_private_pages_in_use_is_refused_in_a_running_vm() -> None:
    vm = running_vm_with_private_pages()
    with refused(vm, PrivateInUse):
        vm.punch_hole("mfd_a", 0, MEMFD_PAGES, NOW, allow_private=False)
    with pytest.raises(PrivateInUse) as info:
        vm.punch_hole("mfd_a", 6, 7, NOW, allow_private=False)
    assert info.value.extra["gpa"] == 106 * PAGE_SIZE
    assert vm.drain_changes() is None


def test_punch_of_holes_unbound_or_shared_pages_is_allowed_in_a_running_vm() -> None:
    vm = running_vm_with_private_pages()
    # Private but not allocated: nothing in use.
    freed, _ = bumped(vm, lambda: vm.punch_hole("mfd_a", 0, 4, NOW, allow_private=False))
    assert freed == 0
    # Allocated but bound to no memslot.
    freed, _ = bumped(vm, lambda: vm.punch_hole("mfd_a", 8, MEMFD_PAGES, NOW, allow_private=False))
    assert freed == 4


def test_punch_of_a_shared_gfns_private_page_is_allowed_in_a_running_vm() -> None:
    # A default VM binding a memfd that already has pages: shared gfns with private backing.
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    vm.allocate("mfd_a", 0, 4, NOW)
    vm.drain_changes()
    add_slot(vm, 0, 0, 8)
    vm.set_state(VmState.RUNNING, NOW)
    vm.drain_changes()
    assert [(e.attribute, e.private_allocated) for e in view(vm)] == [
        (Attribute.SHARED, True),
        (Attribute.SHARED, False),
    ]
    freed, _ = bumped(vm, lambda: vm.punch_hole("mfd_a", 0, 8, NOW, allow_private=False))
    assert freed == 4


def test_allow_private_overrides_private_in_use() -> None:
    vm = running_vm_with_private_pages()
    freed, effects = bumped(vm, lambda: vm.punch_hole("mfd_a", 0, MEMFD_PAGES, NOW, allow_private=True))
    assert freed == 8
    assert effects == [fx.PunchHole("vm_1", "mfd_a", 0, MEMFD_PAGES)]
    assert vm.memfds["mfd_a"].population.covered(0, MEMFD_PAGES) == 0


@pytest.mark.parametrize("state", [VmState.CREATED, VmState.STOPPED])
def test_punch_of_private_pages_is_allowed_when_not_running(state: VmState) -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 8)
    vm.allocate("mfd_a", 4, 8, NOW)
    vm.allocate("mfd_a", 20, 24, NOW)
    vm.set_state(state, NOW)
    vm.drain_changes()
    assert vm.state is state
    freed, _ = bumped(vm, lambda: vm.punch_hole("mfd_a", 0, MEMFD_PAGES, NOW, allow_private=False))
    assert freed == 8


def test_punch_past_the_end_is_refused() -> None:
    vm = running_vm_with_private_pages()
    with refused(vm, OutOfRange, "EINVAL"):
        vm.punch_hole("mfd_a", 30, 40, NOW, allow_private=True)


# -- the shared backing ---------------------------------------------------------------------------


def test_populate_shared_rules() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 8)
    vm.allocate("mfd_a", 0, 2, NOW)
    vm.drain_changes()
    with refused(vm, AttributeMismatch):  # private gfns
        vm.populate_shared(104, 106, NOW)
    with refused(vm, OutOfRange):  # outside every memslot
        vm.populate_shared(106, 110, NOW)
    vm.convert([Range(100, 108, Attribute.SHARED)], NOW)
    vm.drain_changes()
    added, _ = bumped(vm, lambda: vm.populate_shared(100, 108, NOW))
    assert added == 8
    added, _ = bumped(vm, lambda: vm.populate_shared(102, 104, NOW))
    assert added == 0


def test_populate_shared_refuses_a_gfn_with_private_backing() -> None:
    vm = new_vm(VmType.DEFAULT)
    add_memfd(vm)
    vm.allocate("mfd_a", 2, 3, NOW)
    vm.drain_changes()
    add_slot(vm, 0, 0, 8)
    with refused(vm, AttributeMismatch):
        vm.populate_shared(0, 8, NOW)
    added, _ = bumped(vm, lambda: vm.populate_shared(3, 8, NOW))
    assert added == 5


# -- convert ----------------------------------------------------------------------------------------


def test_convert_discards_the_backing_a_range_stops_using() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 16)
    vm.allocate("mfd_a", 0, 8, NOW)
    vm.drain_changes()
    outcome, effects = bumped(vm, lambda: vm.convert([Range(104, 112, Attribute.SHARED)], NOW))
    assert (outcome.pages_converted, outcome.private_pages_freed, outcome.shared_pages_freed) == (8, 4, 0)
    assert effects == [fx.SetAttributes("vm_1", 104, 8, "shared"), fx.PunchHole("vm_1", "mfd_a", 4, 8)]
    vm.populate_shared(104, 112, NOW)
    vm.drain_changes()
    outcome, effects = bumped(vm, lambda: vm.convert([Range(100, 108, Attribute.PRIVATE)], NOW))
    assert (outcome.pages_converted, outcome.private_pages_freed, outcome.shared_pages_freed) == (4, 0, 4)
    assert effects == [fx.SetAttributes("vm_1", 100, 8, "private"), fx.DiscardShared("vm_1", 100, 8)]
    assert [(e.gfn, e.gfn_end, e.attribute, e.private_allocated, e.shared_allocated) for e in view(vm)] == [
        (100, 104, Attribute.PRIVATE, True, False),
        (104, 108, Attribute.PRIVATE, False, False),
        (108, 112, Attribute.SHARED, False, True),
        (112, 116, Attribute.PRIVATE, False, False),
    ]


def test_convert_across_memslots_of_two_memfds() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_memfd(vm, "mfd_b")
    add_slot(vm, 0, 0, 8, "mfd_a", 24)
    add_slot(vm, 1, 8, 8, "mfd_b", 0)
    vm.allocate("mfd_a", 24, 32, NOW)
    vm.allocate("mfd_b", 0, 8, NOW)
    vm.drain_changes()
    # One item spans both memslots: extents are maximal across slot boundaries.
    assert [(e.gfn, e.gfn_end) for e in view(vm)] == [(0, 16)]
    outcome, _ = bumped(vm, lambda: vm.convert([Range(4, 12, Attribute.SHARED)], NOW))
    assert (outcome.pages_converted, outcome.private_pages_freed) == (8, 8)
    assert [(e.start, e.end) for e in vm.memfds["mfd_a"].population] == [(24, 28)]
    assert [(e.start, e.end) for e in vm.memfds["mfd_b"].population] == [(4, 8)]


def test_convert_batch_applies_ranges_in_order() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 0, 16)
    batch = [Range(0, 8, Attribute.SHARED), Range(4, 12, Attribute.PRIVATE), Range(10, 11, Attribute.SHARED)]
    outcome, _ = bumped(vm, lambda: vm.convert(batch, NOW))
    # 8 to shared, then 4 of them back to private, then 1 more to shared.
    assert outcome.pages_converted == 13
    assert [(e.start, e.end, e.value) for e in vm.attributes] == [
        (0, 4, Attribute.SHARED),
        (4, 10, Attribute.PRIVATE),
        (10, 11, Attribute.SHARED),
        (11, 16, Attribute.PRIVATE),
    ]


def test_convert_is_all_or_nothing() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 16)
    vm.allocate("mfd_a", 0, 16, NOW)
    vm.drain_changes()
    # The first ranges are valid and would free pages; the last leaves the memslot.
    batch = [Range(100, 104, Attribute.SHARED), Range(108, 110, Attribute.SHARED), Range(114, 118, Attribute.SHARED)]
    with refused(vm, OutOfRange):
        vm.convert(batch, NOW)
    with refused(vm, OutOfRange):
        vm.convert([Range(100, 101, Attribute.SHARED), Range(50, 51, Attribute.PRIVATE)], NOW)
    # A gap between memslots is outside them too.
    add_slot(vm, 1, 120, 4, pgoff=16)
    with refused(vm, OutOfRange):
        vm.convert([Range(110, 122, Attribute.SHARED)], NOW)


def test_convert_refusal_names_the_first_uncovered_gpa() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 100, 16)
    with pytest.raises(OutOfRange) as info:
        vm.convert([Range(100, 104, Attribute.SHARED), Range(114, 118, Attribute.SHARED)], NOW)
    assert info.value.extra["gpa"] == 116 * PAGE_SIZE


# -- lifecycle --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ([VmState.RUNNING], True),
        ([VmState.STOPPED], True),
        ([VmState.RUNNING, VmState.STOPPED, VmState.RUNNING], True),
        ([VmState.RUNNING, VmState.CREATED], False),
        ([VmState.STOPPED, VmState.CREATED], False),
    ],
)
def test_state_transitions(path: list[VmState], allowed: bool) -> None:
    vm = new_vm()
    for state in path[:-1]:
        assert vm.set_state(state, NOW)
        vm.drain_changes()
    if allowed:
        assert bumped(vm, lambda: vm.set_state(path[-1], NOW)) is True
        assert vm.state is path[-1]
    else:
        with refused(vm, InvalidTransition):
            vm.set_state(path[-1], NOW)


def test_same_state_changes_nothing() -> None:
    vm = new_vm()
    before = snapshot(vm)
    assert vm.set_state(VmState.CREATED, NOW) is False
    assert snapshot(vm) == before
    assert vm.drain_changes() is None


def test_delete_is_refused_while_memfds_exist_unless_forced() -> None:
    vm = new_vm()
    add_memfd(vm)
    with refused(vm, InUse):
        vm.delete(force=False, now=NOW)
    add_memfd(vm, "mfd_b")
    add_slot(vm, 5, 0, 4, "mfd_b")
    add_slot(vm, 2, 10, 4, "mfd_a")
    with refused(vm, InUse):
        vm.delete(force=False, now=NOW)
    effects = vm.delete(force=True, now=NOW)
    assert effects == [
        fx.UnbindMemslot("vm_1", 2),
        fx.DiscardShared("vm_1", 10, 4),
        fx.UnbindMemslot("vm_1", 5),
        fx.DiscardShared("vm_1", 0, 4),
        fx.CloseMemfd("vm_1", "mfd_a"),
        fx.CloseMemfd("vm_1", "mfd_b"),
        fx.DestroyVm("vm_1"),
    ]
    changes = vm.drain_changes()
    assert changes is not None
    assert changes.deleted
    # One mutation, one generation.
    assert vm.generation == changes.previous_generation + 1


def test_delete_of_an_empty_vm() -> None:
    vm = new_vm()
    assert vm.delete(force=False, now=NOW) == [fx.DestroyVm("vm_1")]


def test_one_mutation_bumps_generation_once_and_records_deltas() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 0, 16)
    vm.allocate("mfd_a", 0, 16, NOW)
    vm.drain_changes()
    gen = vm.generation
    vm.convert([Range(0, 4, Attribute.SHARED), Range(8, 12, Attribute.SHARED)], NOW)
    assert vm.generation == gen + 1
    changes = vm.drain_changes()
    assert changes is not None
    assert changes.previous_generation == gen
    assert set(changes.maps) == {("attribute", ""), ("population", "mfd_a")}
    attributes = changes.maps[("attribute", "")]
    assert attributes.removed == {Extent(0, 16, Attribute.PRIVATE)}
    assert attributes.added == {
        Extent(0, 4, Attribute.SHARED),
        Extent(4, 8, Attribute.PRIVATE),
        Extent(8, 12, Attribute.SHARED),
        Extent(12, 16, Attribute.PRIVATE),
    }


def test_counts() -> None:
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 0, 16)
    vm.allocate("mfd_a", 0, 4, NOW)
    vm.convert([Range(8, 16, Attribute.SHARED)], NOW)
    vm.populate_shared(8, 10, NOW)
    vm.drain_changes()
    assert vm.counts() == {
        "private_pages": 8,
        "shared_pages": 8,
        "allocated_private_pages": 4,
        "allocated_shared_pages": 2,
        "extents": 2 + 1 + 1,
    }


def test_a_groups_net_change_is_the_change_from_its_first_state_to_its_last() -> None:
    """``net_changes``: what a group commit writes for its mutations' extent maps, computed in place."""
    import random

    from service.domain.model import net_changes

    rng = random.Random(3)
    vm = new_vm()
    add_memfd(vm)
    add_slot(vm, 0, 0, MEMFD_PAGES)
    vm.allocate("mfd_a", 0, MEMFD_PAGES, NOW)
    vm.drain_changes()
    before: dict[str, set[Extent[Any]]] = {
        "attribute": set(vm.attributes),
        "population": set(vm.memfds["mfd_a"].population),
    }
    group = []
    for _ in range(12):  # pages flipped back and forth, so runs come and go within the group
        gfn = rng.randrange(MEMFD_PAGES - 2)
        to = rng.choice([Attribute.SHARED, Attribute.PRIVATE])
        vm.convert([Range(gfn, gfn + rng.randint(1, 2), to)], NOW)
        changes = vm.drain_changes()
        if changes is not None:
            group.append(changes)
    operands = [{key: (set(d.removed), set(d.added)) for key, d in c.maps.items()} for c in group]
    net = net_changes(group)
    assert net is not None
    after: dict[str, set[Extent[Any]]] = {
        "attribute": set(vm.attributes),
        "population": set(vm.memfds["mfd_a"].population),
    }
    for name, key in (("attribute", ("attribute", "")), ("population", ("population", "mfd_a"))):
        delta = net.maps[key]
        assert delta.removed == before[name] - after[name]
        assert delta.added == after[name] - before[name]
    # The mutations' own deltas are left as they were (the undo path reads them).
    assert [{key: (d.removed, d.added) for key, d in c.maps.items()} for c in group] == operands
