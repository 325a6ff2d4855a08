"""The VM aggregate: memfds, memslots, attributes and backings, and the rules that guard them.

A :class:`Vm` is the one consistency boundary: every mutation goes through one of its methods,
which checks every rule first and changes nothing if one fails, then changes state, bumps
``generation`` once, and returns the backend effects the change requires. The invariant it keeps
(DESIGN section 3): no gfn is ever backed by an allocated private page and an allocated shared
page at once.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any

from . import effects as fx
from .errors import (
    AttributeMismatch,
    ForeignMemfd,
    InUse,
    InvalidLength,
    InvalidTransition,
    NotAllocated,
    NotFound,
    OutOfRange,
    Overlap,
    PrivateInUse,
    PrivatePage,
    SlotInUse,
    Unaligned,
    UnsupportedFlags,
    VmLost,
)
from .extents import Delta, Extent, ExtentMap, sweep
from .units import GPA_LIMIT, MAX_FILE_BYTES, PAGE_SIZE, to_bytes


class VmType(StrEnum):
    DEFAULT = "default"
    SW_PROTECTED = "sw_protected"
    SEV_SNP = "sev_snp"
    TDX = "tdx"

    @property
    def has_private_memory(self) -> bool:
        return self is not VmType.DEFAULT

    @property
    def trusted_agent(self) -> str | None:
        """The firmware command that relocates an encrypted private page (None: not encrypted)."""
        return {VmType.SEV_SNP: "snp-page-move", VmType.TDX: "tdx-relocate"}.get(self)


class VmState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    # The broker restarted and the VM's kernel objects died with the old process.
    LOST = "lost"


TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    VmState.CREATED: frozenset({VmState.RUNNING, VmState.STOPPED}),
    VmState.RUNNING: frozenset({VmState.STOPPED}),
    VmState.STOPPED: frozenset({VmState.RUNNING}),
    VmState.LOST: frozenset(),
}


class Attribute(StrEnum):
    PRIVATE = "private"
    SHARED = "shared"


class Population(StrEnum):
    ALLOCATED = "allocated"


class MemfdFlag(StrEnum):
    MMAP = "mmap"
    INIT_SHARED = "init_shared"


# KVM_USER_MEM_SLOTS on x86 and KVM_MEM_MAX_NR_PAGES: the kernel's limits on one memslot.
MAX_MEMSLOTS = 32764
MAX_MEMSLOT_PAGES = (1 << 31) - 1


@dataclass(slots=True)
class Memfd:
    id: str
    vm_id: str
    npages: int
    flags: frozenset[MemfdFlag]
    created_at: datetime
    population: ExtentMap[Population] = field(default_factory=ExtentMap)

    @property
    def size(self) -> int:
        return to_bytes(self.npages)


@dataclass(frozen=True, slots=True)
class Memslot:
    slot: int
    gfn: int
    npages: int
    memfd_id: str
    pgoff: int
    created_at: datetime

    @property
    def gfn_end(self) -> int:
        return self.gfn + self.npages

    @property
    def pgoff_end(self) -> int:
        return self.pgoff + self.npages


@dataclass(frozen=True, slots=True)
class Range:
    """A gfn range and the attribute a convert request gives it."""

    gfn: int
    gfn_end: int
    to: Attribute


@dataclass(slots=True)
class VmExtent:
    gfn: int
    gfn_end: int
    attribute: Attribute
    private_allocated: bool
    shared_allocated: bool


@dataclass(frozen=True, slots=True)
class BackedRun:
    """Allocated pages ``[gfn, gfn + npages)`` and what backs them: memfd ``memfd_id`` from
    ``pgoff``, or (``memfd_id`` None) the shared backing, whose index is the gfn itself."""

    gfn: int
    npages: int
    memfd_id: str | None
    pgoff: int
    method: str
    agent: str | None


MapKey = tuple[str, str]  # ("attribute" | "shared", "") or ("population", memfd_id)


@dataclass(slots=True)
class Changes:
    """What one mutation changed, for the store to write as O(changed extents) rows."""

    vm: Vm
    previous_generation: int
    previous_state: VmState
    previous_updated_at: datetime
    created: bool = False
    deleted: bool = False
    memfds_added: list[Memfd] = field(default_factory=list)
    memfds_removed: list[Memfd] = field(default_factory=list)
    memslots_added: list[Memslot] = field(default_factory=list)
    memslots_removed: list[Memslot] = field(default_factory=list)
    maps: dict[MapKey, Delta[Any]] = field(default_factory=dict)


_slot_gfn = attrgetter("gfn")


def net_changes(group: list[Changes]) -> Changes | None:
    """One VM's consecutive changes as one, when all of them only change extent maps.

    A group of mutations is written in one transaction; its extents are written as the group's net
    change (a run one mutation adds and the next removes is never written). None when any of them
    creates or deletes the VM, a memfd or a memslot: those are written one by one.
    """
    first = group[0]
    merged: dict[MapKey, Delta[Any]] = {}
    # Keys whose merged delta is a copy of our own, changed in place: composing copies into a new
    # delta each time made a group of n mutations cost O(n^2).
    owned: set[MapKey] = set()
    for changes in group:
        if (
            changes.created
            or changes.deleted
            or changes.memfds_added
            or changes.memfds_removed
            or changes.memslots_added
            or changes.memslots_removed
            or changes.vm is not first.vm
        ):
            return None
        for key, delta in changes.maps.items():
            before = merged.get(key)
            if before is None:
                merged[key] = delta  # the mutation's own, copied only if a later one composes with it
            elif key in owned:
                before.absorb(delta)
            else:
                merged[key] = before.then(delta)
                owned.add(key)
    return Changes(
        vm=first.vm,
        previous_generation=first.previous_generation,
        previous_state=first.previous_state,
        previous_updated_at=first.previous_updated_at,
        maps=merged,
    )


@dataclass(slots=True)
class ConvertOutcome:
    pages_converted: int = 0
    private_pages_freed: int = 0
    shared_pages_freed: int = 0


class Vm:
    """A guest and all the private-memory state the broker keeps for it."""

    def __init__(
        self,
        *,
        id: str,
        name: str,
        vm_type: VmType,
        state: VmState,
        generation: int,
        created_at: datetime,
        updated_at: datetime,
        memfds: Iterable[Memfd] = (),
        memslots: Iterable[Memslot] = (),
        attributes: ExtentMap[Attribute] | None = None,
        shared: ExtentMap[Population] | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.vm_type = vm_type
        self.state = state
        self.generation = generation
        self.created_at = created_at
        self.updated_at = updated_at
        self.memfds: dict[str, Memfd] = {m.id: m for m in memfds}
        self.memslots: dict[int, Memslot] = {s.slot: s for s in memslots}
        # Memslots in gfn order: a VM has a handful, and every mutation of its memory looks them up
        # (more than once), so a plain sorted list and bisect serve.
        self._by_gfn: list[Memslot] = sorted(self.memslots.values(), key=_slot_gfn)
        self.attributes: ExtentMap[Attribute] = attributes if attributes is not None else ExtentMap()
        self.shared: ExtentMap[Population] = shared if shared is not None else ExtentMap()
        self._changes: Changes | None = None
        self._touched: set[str] = set()

    @classmethod
    def create(cls, *, id: str, name: str, vm_type: VmType, now: datetime) -> tuple[Vm, list[fx.Effect]]:
        vm = cls(
            id=id,
            name=name,
            vm_type=vm_type,
            state=VmState.CREATED,
            generation=0,
            created_at=now,
            updated_at=now,
        )
        vm._begin(now).created = True
        return vm, [fx.CreateVm(vm.id, vm.vm_type.value)]

    # -- change tracking -------------------------------------------------------------------------

    def _begin(self, now: datetime) -> Changes:
        """Open this mutation's record and bump the generation, once per mutation."""
        if self._changes is None:
            self._changes = Changes(self, self.generation, self.state, self.updated_at)
            self.generation += 1
            self.updated_at = now
        return self._changes

    def drain_changes(self) -> Changes | None:
        changes, self._changes = self._changes, None
        if changes is None:
            return None
        for key, emap in self._touched_maps():
            delta = emap.drain()
            if delta and not any(m.id == key[1] for m in changes.memfds_added):
                changes.maps[key] = delta
        self._touched.clear()
        return changes

    def _touched_maps(self) -> Iterator[tuple[MapKey, ExtentMap[Any]]]:
        # Only the memfds this mutation touched: draining every memfd would make each mutation
        # cost O(memfds of the VM).
        yield ("attribute", ""), self.attributes
        yield ("shared", ""), self.shared
        for memfd_id in sorted(self._touched):
            memfd = self.memfds.get(memfd_id)
            if memfd is not None:
                yield ("population", memfd.id), memfd.population

    # -- lookups ---------------------------------------------------------------------------------

    def memfd(self, memfd_id: str) -> Memfd:
        try:
            return self.memfds[memfd_id]
        except KeyError:
            raise NotFound(f"memfd {memfd_id!r} not found in VM {self.id!r}") from None

    def memslot(self, slot: int) -> Memslot:
        try:
            return self.memslots[slot]
        except KeyError:
            raise NotFound(f"memslot {slot} not found in VM {self.id!r}") from None

    def slots_in(self, gfn: int, gfn_end: int) -> Iterator[Memslot]:
        """Memslots overlapping ``[gfn, gfn_end)``, in gfn order."""
        slots = self._by_gfn
        i = max(bisect_right(slots, gfn, key=_slot_gfn) - 1, 0)
        while i < len(slots):
            slot = slots[i]
            if slot.gfn >= gfn_end:
                break
            if slot.gfn_end > gfn:
                yield slot
            i += 1

    def bindings_of(self, memfd_id: str, pgoff: int, pgoff_end: int) -> Iterator[tuple[Memslot, int, int]]:
        """Memslots binding pages of ``[pgoff, pgoff_end)`` of a memfd, with the gfns they bind."""
        for slot in self.memslots.values():
            if slot.memfd_id != memfd_id:
                continue
            lo, hi = max(pgoff, slot.pgoff), min(pgoff_end, slot.pgoff_end)
            if lo < hi:
                yield slot, slot.gfn + (lo - slot.pgoff), slot.gfn + (hi - slot.pgoff)

    def _require_covered(self, gfn: int, gfn_end: int, what: str) -> list[Memslot]:
        slots = list(self.slots_in(gfn, gfn_end))
        pos = gfn
        for slot in slots:
            if slot.gfn > pos:
                break
            pos = slot.gfn_end
        if pos < gfn_end:
            raise OutOfRange(
                f"{what}: gpa {to_bytes(pos):#x} is not in any memslot of VM {self.id!r}",
                gpa=to_bytes(pos),
            )
        return slots

    # -- VM lifecycle ----------------------------------------------------------------------------

    def require_not_lost(self) -> None:
        """Refuse every mutation but deletion of a VM whose kernel objects are gone."""
        if self.state is VmState.LOST:
            raise VmLost(
                f"VM {self.id!r} lost its kernel objects when the broker restarted; its extents are kept "
                "for inspection and it can only be deleted"
            )

    def mark_lost(self, now: datetime) -> bool:
        """The backend no longer holds this VM; returns False when it was already marked."""
        if self.state is VmState.LOST:
            return False
        self._begin(now)
        self.state = VmState.LOST
        return True

    def set_state(self, state: VmState, now: datetime) -> bool:
        """Move to ``state``; returns False (and changes nothing) when already there."""
        if state == self.state:
            return False
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"VM {self.id!r} cannot go from {self.state} to {state}")
        self._begin(now)
        self.state = state
        return True

    def delete(self, *, force: bool, now: datetime) -> list[fx.Effect]:
        """Release everything in order (memslots, memfds, the VM); refused while in use unless forced.

        A lost VM holds nothing in the kernel any more: it is deleted without force and without
        backend calls.
        """
        lost = self.state is VmState.LOST
        if not force and not lost and (self.memslots or self.memfds):
            raise InUse(
                f"VM {self.id!r} still has {len(self.memslots)} memslot(s) and {len(self.memfds)} "
                "memfd(s); delete them first or pass force=true",
            )
        effects: list[fx.Effect] = []
        for slot in sorted(self.memslots):
            effects += self.delete_memslot(slot, now)
        for memfd_id in sorted(self.memfds):
            effects += self.delete_memfd(memfd_id, now)
        self._begin(now).deleted = True
        effects.append(fx.DestroyVm(self.id))
        return [] if lost else effects

    # -- memfds ----------------------------------------------------------------------------------

    def create_memfd(
        self, memfd_id: str, size: int, flags: Iterable[str], now: datetime, *, supported_flags: frozenset[str]
    ) -> tuple[Memfd, list[fx.Effect]]:
        flag_set = set(flags)
        unknown = flag_set - {f.value for f in MemfdFlag}
        if unknown or not flag_set <= supported_flags:
            raise UnsupportedFlags(
                f"memfd flags {sorted(flag_set - supported_flags)} are not supported; this host "
                f"takes {sorted(supported_flags)}",
                errno="EINVAL",
            )
        if MemfdFlag.INIT_SHARED in flag_set and self.vm_type.has_private_memory:
            raise UnsupportedFlags(
                f"init_shared is offered only to VM types without private memory, not {self.vm_type}",
                errno="EINVAL",
            )
        if size <= 0 or size % PAGE_SIZE:
            cls = Unaligned if size % PAGE_SIZE else InvalidLength
            raise cls(f"memfd size {size} must be > 0 and a multiple of {PAGE_SIZE}", errno="EINVAL")
        if size > MAX_FILE_BYTES:
            raise OutOfRange(f"memfd size {size} exceeds the largest file ({MAX_FILE_BYTES})", errno="EINVAL")
        memfd = Memfd(
            id=memfd_id,
            vm_id=self.id,
            npages=size // PAGE_SIZE,
            flags=frozenset(MemfdFlag(f) for f in flag_set),
            created_at=now,
        )
        self._begin(now).memfds_added.append(memfd)
        self.memfds[memfd.id] = memfd
        return memfd, [fx.CreateMemfd(self.id, memfd.id, memfd.npages, tuple(sorted(flag_set)))]

    def delete_memfd(self, memfd_id: str, now: datetime) -> list[fx.Effect]:
        memfd = self.memfd(memfd_id)
        bound = sorted(s.slot for s in self.memslots.values() if s.memfd_id == memfd_id)
        if bound:
            raise InUse(f"memfd {memfd_id!r} is bound by memslot(s) {bound}; delete them first")
        changes = self._begin(now)
        del self.memfds[memfd_id]
        memfd.population.drain()
        changes.memfds_removed.append(memfd)
        return [fx.CloseMemfd(self.id, memfd_id)]

    # -- memslots --------------------------------------------------------------------------------

    def create_memslot(
        self, slot: int, gfn: int, gfn_end: int, memfd_id: str, pgoff: int, now: datetime, *, max_gpa: int = GPA_LIMIT
    ) -> tuple[Memslot, list[fx.Effect]]:
        npages = gfn_end - gfn
        if not 0 <= slot < MAX_MEMSLOTS:
            raise OutOfRange(f"memslot id {slot} must be in [0, {MAX_MEMSLOTS})", errno="EINVAL")
        if npages > MAX_MEMSLOT_PAGES:
            raise OutOfRange(f"a memslot holds at most {MAX_MEMSLOT_PAGES} pages", errno="EINVAL")
        if to_bytes(gfn_end) > max_gpa:
            raise OutOfRange(
                f"gpa + size {to_bytes(gfn_end):#x} is past the guest physical address space ({max_gpa:#x})",
                errno="EINVAL",
            )
        if slot in self.memslots:
            raise SlotInUse(f"memslot {slot} exists; a guest_memfd memslot cannot be changed", errno="EINVAL")
        memfd = self.memfds.get(memfd_id)
        if memfd is None:
            raise ForeignMemfd(
                f"memfd {memfd_id!r} does not belong to VM {self.id!r}; a memfd binds only to "
                "memslots of the VM that created it",
                errno="EINVAL",
            )
        if pgoff + npages > memfd.npages:
            raise OutOfRange(
                f"offset + size {to_bytes(pgoff + npages):#x} exceeds memfd size {memfd.size:#x}",
                errno="EINVAL",
            )
        for other in self.slots_in(gfn, gfn_end):
            raise Overlap(
                f"gpa range overlaps memslot {other.slot} [{to_bytes(other.gfn):#x}, {to_bytes(other.gfn_end):#x})",
                errno="EEXIST",
            )
        for other, _, _ in self.bindings_of(memfd_id, pgoff, pgoff + npages):
            raise Overlap(
                f"memfd range overlaps its binding by memslot {other.slot}",
                errno="EINVAL",
            )
        memslot = Memslot(slot, gfn, npages, memfd_id, pgoff, now)
        self._begin(now).memslots_added.append(memslot)
        self.memslots[slot] = memslot
        insort(self._by_gfn, memslot, key=_slot_gfn)
        starts_private = self.vm_type.has_private_memory and MemfdFlag.INIT_SHARED not in memfd.flags
        attribute = Attribute.PRIVATE if starts_private else Attribute.SHARED
        self.attributes.set(gfn, gfn_end, attribute)
        self.shared.set(gfn, gfn_end, None)
        return memslot, [
            fx.BindMemslot(self.id, slot, gfn, npages, memfd_id, pgoff),
            fx.SetAttributes(self.id, gfn, npages, attribute.value),
        ]

    def delete_memslot(self, slot: int, now: datetime) -> list[fx.Effect]:
        memslot = self.memslot(slot)
        changes = self._begin(now)
        del self.memslots[slot]
        self._by_gfn.remove(memslot)
        changes.memslots_removed.append(memslot)
        # The attribute array outlives memslots in KVM, but the broker's view covers memslots only.
        self.attributes.set(memslot.gfn, memslot.gfn_end, None)
        self.shared.set(memslot.gfn, memslot.gfn_end, None)
        return [
            fx.UnbindMemslot(self.id, slot),
            fx.DiscardShared(self.id, memslot.gfn, memslot.npages),
        ]

    # -- population ------------------------------------------------------------------------------

    def _require_in_file(self, memfd: Memfd, pgoff: int, pgoff_end: int, what: str) -> None:
        if pgoff_end > memfd.npages:
            raise OutOfRange(
                f"{what}: range ends at {to_bytes(pgoff_end):#x}, past the end of memfd {memfd.id!r} ({memfd.size:#x})",
                errno="EINVAL",
            )

    def allocate(
        self, memfd_id: str, pgoff: int, pgoff_end: int, now: datetime, *, node: int | None = None
    ) -> tuple[int, list[fx.Effect]]:
        memfd = self.memfd(memfd_id)
        self._require_in_file(memfd, pgoff, pgoff_end, "allocate")
        for slot, gfn, gfn_end in self.bindings_of(memfd_id, pgoff, pgoff_end):
            for ext in self.attributes.extents_in(gfn, gfn_end):
                if ext.value is Attribute.SHARED:
                    raise AttributeMismatch(
                        f"gpa {to_bytes(ext.start):#x} (memslot {slot.slot}) is shared; private "
                        "backing is populated only for private gfns",
                        gpa=to_bytes(ext.start),
                    )
        self._begin(now)
        self._touched.add(memfd_id)
        added = memfd.population.set(pgoff, pgoff_end, Population.ALLOCATED)
        return added, [fx.Allocate(self.id, memfd_id, pgoff, pgoff_end - pgoff, node)]

    def punch_hole(
        self, memfd_id: str, pgoff: int, pgoff_end: int, now: datetime, *, allow_private: bool
    ) -> tuple[int, list[fx.Effect]]:
        memfd = self.memfd(memfd_id)
        # The kernel accepts a punch past EOF; a control plane refuses a range it does not own.
        self._require_in_file(memfd, pgoff, pgoff_end, "punch-hole")
        if self.state is VmState.RUNNING and not allow_private:
            for slot, gfn, _gfn_end in self.bindings_of(memfd_id, pgoff, pgoff_end):
                shift = slot.pgoff - slot.gfn
                lo, hi = gfn + shift, _gfn_end + shift
                for start, _end, (attr, pop) in sweep(
                    (self.attributes, -shift), (memfd.population, 0), start=lo, end=hi
                ):
                    if attr is Attribute.PRIVATE and pop is Population.ALLOCATED:
                        raise PrivateInUse(
                            f"gpa {to_bytes(start - shift):#x} is private and allocated in running VM "
                            f"{self.id!r}; pass allow_private=true to punch it anyway",
                            gpa=to_bytes(start - shift),
                        )
        self._begin(now)
        self._touched.add(memfd_id)
        freed = memfd.population.set(pgoff, pgoff_end, None)
        return freed, [fx.PunchHole(self.id, memfd_id, pgoff, pgoff_end - pgoff)]

    def populate_shared(self, gfn: int, gfn_end: int, now: datetime) -> tuple[int, list[fx.Effect]]:
        """The VMM touched the shared backing of ``[gfn, gfn_end)``."""
        for slot in self._require_covered(gfn, gfn_end, "populate-shared"):
            lo, hi = max(gfn, slot.gfn), min(gfn_end, slot.gfn_end)
            shift = slot.pgoff - slot.gfn
            population = self.memfds[slot.memfd_id].population
            for start, _end, (attr, pop) in sweep((self.attributes, 0), (population, shift), start=lo, end=hi):
                if attr is not Attribute.SHARED:
                    raise AttributeMismatch(
                        f"gpa {to_bytes(start):#x} is private; shared backing is populated only for shared gfns",
                        gpa=to_bytes(start),
                    )
                if pop is Population.ALLOCATED:
                    raise AttributeMismatch(
                        f"gpa {to_bytes(start):#x} still has allocated private backing; punch it first",
                        gpa=to_bytes(start),
                    )
        self._begin(now)
        added = self.shared.set(gfn, gfn_end, Population.ALLOCATED)
        return added, [fx.PopulateShared(self.id, gfn, gfn_end - gfn)]

    # -- conversion ------------------------------------------------------------------------------

    def convert(self, ranges: list[Range], now: datetime) -> tuple[ConvertOutcome, list[fx.Effect]]:
        """Set attributes for a batch of ranges and discard the backing each range stops using.

        All ranges are checked before any is applied: a batch is all-or-nothing.
        """
        for r in ranges:
            self._require_covered(r.gfn, r.gfn_end, "convert")
        self._begin(now)
        outcome = ConvertOutcome()
        effects: list[fx.Effect] = []
        for r in ranges:
            npages = r.gfn_end - r.gfn
            outcome.pages_converted += self.attributes.set(r.gfn, r.gfn_end, r.to)
            effects.append(fx.SetAttributes(self.id, r.gfn, npages, r.to.value))
            if r.to is Attribute.SHARED:
                for slot in self.slots_in(r.gfn, r.gfn_end):
                    lo, hi = max(r.gfn, slot.gfn), min(r.gfn_end, slot.gfn_end)
                    pgoff = slot.pgoff + (lo - slot.gfn)
                    population = self.memfds[slot.memfd_id].population
                    self._touched.add(slot.memfd_id)
                    outcome.private_pages_freed += population.set(pgoff, pgoff + hi - lo, None)
                    effects.append(fx.PunchHole(self.id, slot.memfd_id, pgoff, hi - lo))
            else:
                outcome.shared_pages_freed += self.shared.set(r.gfn, r.gfn_end, None)
                effects.append(fx.DiscardShared(self.id, r.gfn, npages))
        return outcome, effects

    # -- contents --------------------------------------------------------------------------------

    def readable_page(self, memfd_id: str, pgoff: int) -> bool:
        """Check that the host may read memfd page ``pgoff``; returns whether it is allocated.

        Only shared pages of an ``mmap`` + ``init_shared`` memfd may be touched by the host: a
        private one raises SIGBUS in the reader (DESIGN rule 7).
        """
        memfd = self.memfd(memfd_id)
        if not 0 <= pgoff < memfd.npages:
            raise OutOfRange(f"page {pgoff} is outside memfd {memfd_id!r} ({memfd.npages} pages)", errno="EINVAL")
        if not {MemfdFlag.MMAP, MemfdFlag.INIT_SHARED} <= memfd.flags:
            raise PrivatePage(
                f"memfd {memfd_id!r} was not created with mmap and init_shared: its pages are private to the guest"
            )
        for slot, gfn, _ in self.bindings_of(memfd_id, pgoff, pgoff + 1):
            if self.attributes.get(gfn) is Attribute.PRIVATE:
                raise PrivatePage(
                    f"page {pgoff} of memfd {memfd_id!r} backs gpa {to_bytes(gfn):#x} (memslot {slot.slot}), "
                    "which is private",
                    gpa=to_bytes(gfn),
                )
        return memfd.population.get(pgoff) is not None

    # -- migration -------------------------------------------------------------------------------

    def _move_method(self, memfd_id: str | None) -> tuple[str, str | None]:
        agent = self.vm_type.trusted_agent if memfd_id is not None else None
        return ("trusted-agent", agent) if agent is not None else ("copy", None)

    def backed_page(self, gfn: int) -> BackedRun:
        """The allocated page a gfn uses now: private gfns use the memfd, shared ones the shared backing."""
        slots = list(self.slots_in(gfn, gfn + 1))
        if not slots:
            raise OutOfRange(f"gpa {to_bytes(gfn):#x} is not in any memslot of VM {self.id!r}", gpa=to_bytes(gfn))
        slot = slots[0]
        if self.attributes.get(gfn) is Attribute.PRIVATE:
            pgoff = slot.pgoff + (gfn - slot.gfn)
            if self.memfds[slot.memfd_id].population.get(pgoff) is None:
                raise NotAllocated(
                    f"gpa {to_bytes(gfn):#x} is private and its page of memfd {slot.memfd_id!r} is not allocated",
                    gpa=to_bytes(gfn),
                )
            return BackedRun(gfn, 1, slot.memfd_id, pgoff, *self._move_method(slot.memfd_id))
        if self.shared.get(gfn) is None:
            raise NotAllocated(
                f"gpa {to_bytes(gfn):#x} is shared and its shared backing is not allocated", gpa=to_bytes(gfn)
            )
        return BackedRun(gfn, 1, None, gfn, *self._move_method(None))

    def backed_runs(self, gfn: int, gfn_end: int) -> Iterator[BackedRun]:
        """Every allocated page of ``[gfn, gfn_end)`` (either backing), as runs, in gfn order."""
        for slot in self.slots_in(gfn, gfn_end):
            lo, hi = max(gfn, slot.gfn), min(gfn_end, slot.gfn_end)
            shift = slot.pgoff - slot.gfn
            population = self.memfds[slot.memfd_id].population
            for start, end, (shared, pop) in sweep((self.shared, 0), (population, shift), start=lo, end=hi):
                if pop is not None:
                    yield BackedRun(start, end - start, slot.memfd_id, start + shift, *self._move_method(slot.memfd_id))
                if shared is not None:
                    yield BackedRun(start, end - start, None, start, *self._move_method(None))

    def record_migration(self, now: datetime) -> None:
        """Frames are the backend's business; moving pages changes the VM's mapping, so its generation."""
        self._begin(now)

    # -- views -----------------------------------------------------------------------------------

    def extents(self, gfn: int, gfn_end: int) -> Iterator[VmExtent]:
        """Maximal runs of (attribute, private backing, shared backing) over memslot pages."""
        pending: VmExtent | None = None
        for slot in self.slots_in(gfn, gfn_end):
            lo, hi = max(gfn, slot.gfn), min(gfn_end, slot.gfn_end)
            population = self.memfds[slot.memfd_id].population
            for start, end, (attr, shared, pop) in sweep(
                (self.attributes, 0), (self.shared, 0), (population, slot.pgoff - slot.gfn), start=lo, end=hi
            ):
                ext = VmExtent(start, end, attr, pop is not None, shared is not None)
                if (
                    pending is not None
                    and pending.gfn_end == start
                    and (pending.attribute, pending.private_allocated, pending.shared_allocated)
                    == (attr, ext.private_allocated, ext.shared_allocated)
                ):
                    pending.gfn_end = end
                    continue
                if pending is not None:
                    yield pending
                pending = ext
        if pending is not None:
            yield pending

    def counts(self) -> dict[str, int]:
        private = sum(e.npages for e in self.attributes if e.value is Attribute.PRIVATE)
        shared = sum(e.npages for e in self.attributes if e.value is Attribute.SHARED)
        return {
            "private_pages": private,
            "shared_pages": shared,
            "allocated_private_pages": sum(e.npages for m in self.memfds.values() for e in m.population),
            "allocated_shared_pages": sum(e.npages for e in self.shared),
            "extents": len(self.attributes) + len(self.shared) + sum(len(m.population) for m in self.memfds.values()),
        }


def memfd_extents(memfd: Memfd, pgoff: int, pgoff_end: int) -> Iterator[Extent[str]]:
    """A memfd's population over ``[pgoff, pgoff_end)``, holes included, maximal."""
    for seg in memfd.population.segments(pgoff, pgoff_end):
        yield Extent(seg.start, seg.end, "allocated" if seg.value is not None else "hole")
