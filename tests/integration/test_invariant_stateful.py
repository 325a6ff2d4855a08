"""Stateful property test of the operations layer against a naive page-by-page model.

Hypothesis drives one VM (``sw_protected`` or ``default``) with two small memfds through random
allocate, punch-hole, convert batches, shared-backing population, memslot create/delete and state
changes, each through ``service.operations`` with a real SQLite store and the sim backend. A model
keeping one entry per gfn and per memfd page predicts, from the rules of DESIGN sections 3 and 4,
every refusal (its exact error) and every count the broker reports. After every step the broker's
extent views must equal the model's, the invariant must hold (no gfn with allocated private and
allocated shared backing), and every few steps the cached aggregate is dropped so that the state
reloaded from the database is compared too, along with the sim backend's inventory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from service.backends.sim import SimBackend
from service.domain.errors import (
    AttributeMismatch,
    DomainError,
    ForeignMemfd,
    InvalidTransition,
    NotAllocated,
    NotFound,
    OutOfRange,
    Overlap,
    PrivateInUse,
    SlotInUse,
    UnknownNode,
)
from service.domain.units import PAGE_SIZE
from service.operations import memfds as memfd_ops
from service.operations import migration, mutation, population, queries
from service.operations import vms as vm_ops
from service.operations.broker import Broker
from service.operations.journal import Outcome, RequestMeta
from service.operations.lane import Job
from service.operations.recovery import reconcile
from service.store.db import make_engine
from service.store.migrate import upgrade
from service.store.uow import SqlUnitOfWork

MEMFD_PAGES = 32
GFN_SPACE = 96  # memslots land in gfns [0, GFN_SPACE); requests may reach a little past it
SLOTS = 4
RELOAD_EVERY = 4
VIEW_LIMIT = 100_000
META = RequestMeta()
BOGUS_MEMFD = "mfd_not_of_this_vm"

TRANSITIONS = {"created": {"running", "stopped"}, "running": {"stopped"}, "stopped": {"running"}}

Error = type[DomainError]


@dataclass(slots=True)
class Slot:
    gfn: int
    npages: int
    memfd: str
    pgoff: int

    @property
    def gfns(self) -> range:
        return range(self.gfn, self.gfn + self.npages)

    @property
    def pgoffs(self) -> range:
        return range(self.pgoff, self.pgoff + self.npages)


@dataclass(slots=True)
class Model:
    """The broker's state, page by page, updated from the rules as DESIGN states them."""

    has_private_memory: bool
    state: str = "created"
    generation: int = 0
    npages: dict[str, int] = field(default_factory=dict)
    init_shared: dict[str, bool] = field(default_factory=dict)
    slots: dict[int, Slot] = field(default_factory=dict)
    attribute: dict[int, str] = field(default_factory=dict)  # gfn -> private | shared, memslot gfns only
    shared: set[int] = field(default_factory=set)  # gfns with allocated shared backing
    allocated: dict[str, set[int]] = field(default_factory=dict)  # memfd -> allocated pgoffs

    # -- lookups -----------------------------------------------------------------------------------

    def slot_of_gfn(self, gfn: int) -> Slot | None:
        return next((s for s in self.slots.values() if gfn in s.gfns), None)

    def gfn_of(self, memfd: str, pgoff: int) -> int | None:
        for s in self.slots.values():
            if s.memfd == memfd and pgoff in s.pgoffs:
                return s.gfn + pgoff - s.pgoff
        return None

    def private_allocated(self, gfn: int) -> bool:
        s = self.slot_of_gfn(gfn)
        assert s is not None
        return (s.pgoff + gfn - s.gfn) in self.allocated[s.memfd]

    def page_state(self, gfn: int) -> tuple[str, bool, bool]:
        return self.attribute[gfn], self.private_allocated(gfn), gfn in self.shared

    def covered(self, gfns: Iterable[int]) -> bool:
        return all(g in self.attribute for g in gfns)

    # -- predictions (None: accepted) and changes --------------------------------------------------

    def check_allocate(self, memfd: str, lo: int, hi: int) -> Error | None:
        if hi > self.npages[memfd]:
            return OutOfRange
        for p in range(lo, hi):
            gfn = self.gfn_of(memfd, p)
            if gfn is not None and self.attribute[gfn] == "shared":
                return AttributeMismatch
        return None

    def allocate(self, memfd: str, lo: int, hi: int) -> int:
        new = set(range(lo, hi)) - self.allocated[memfd]
        self.allocated[memfd] |= new
        return len(new)

    def check_punch(self, memfd: str, lo: int, hi: int, allow_private: bool) -> Error | None:
        if hi > self.npages[memfd]:
            return OutOfRange
        if self.state == "running" and not allow_private:
            for p in range(lo, hi):
                gfn = self.gfn_of(memfd, p)
                if gfn is not None and self.attribute[gfn] == "private" and p in self.allocated[memfd]:
                    return PrivateInUse
        return None

    def punch(self, memfd: str, lo: int, hi: int) -> int:
        freed = self.allocated[memfd] & set(range(lo, hi))
        self.allocated[memfd] -= freed
        return len(freed)

    def check_populate_shared(self, lo: int, hi: int) -> Error | None:
        if not self.covered(range(lo, hi)):
            return OutOfRange
        for g in range(lo, hi):
            if self.attribute[g] != "shared" or self.private_allocated(g):
                return AttributeMismatch
        return None

    def populate_shared(self, lo: int, hi: int) -> int:
        new = set(range(lo, hi)) - self.shared
        self.shared |= new
        return len(new)

    def check_convert(self, ranges: list[tuple[int, int, str]]) -> Error | None:
        if not all(self.covered(range(lo, hi)) for lo, hi, _ in ranges):
            return OutOfRange
        return None

    def convert(self, ranges: list[tuple[int, int, str]]) -> dict[str, int]:
        counts = {"pages_converted": 0, "private_pages_freed": 0, "shared_pages_freed": 0}
        for lo, hi, to in ranges:
            for g in range(lo, hi):
                if self.attribute[g] != to:
                    counts["pages_converted"] += 1
                    self.attribute[g] = to
                if to == "shared":
                    s = self.slot_of_gfn(g)
                    assert s is not None
                    pgoff = s.pgoff + g - s.gfn
                    if pgoff in self.allocated[s.memfd]:
                        self.allocated[s.memfd].discard(pgoff)
                        counts["private_pages_freed"] += 1
                elif g in self.shared:
                    self.shared.discard(g)
                    counts["shared_pages_freed"] += 1
        return counts

    def check_create_slot(self, slot: int, new: Slot) -> Error | None:
        if slot in self.slots:
            return SlotInUse
        if new.memfd not in self.npages:
            return ForeignMemfd
        if new.pgoff + new.npages > self.npages[new.memfd]:
            return OutOfRange
        if any(set(new.gfns) & set(s.gfns) for s in self.slots.values()):
            return Overlap
        if any(s.memfd == new.memfd and set(new.pgoffs) & set(s.pgoffs) for s in self.slots.values()):
            return Overlap
        return None

    def create_slot(self, slot: int, new: Slot) -> None:
        self.slots[slot] = new
        private = self.has_private_memory and not self.init_shared[new.memfd]
        for g in new.gfns:
            self.attribute[g] = "private" if private else "shared"
            self.shared.discard(g)

    def delete_slot(self, slot: int) -> None:
        s = self.slots.pop(slot)
        for g in s.gfns:
            del self.attribute[g]
            self.shared.discard(g)

    def check_state(self, state: str) -> Error | None:
        if state != self.state and state not in TRANSITIONS[self.state]:
            return InvalidTransition
        return None

    # -- views -------------------------------------------------------------------------------------

    def vm_view(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        prev: tuple[int, tuple[str, str, str]] | None = None
        for g in sorted(self.attribute):
            state = (
                self.attribute[g],
                "allocated" if self.private_allocated(g) else "hole",
                "allocated" if g in self.shared else "hole",
            )
            if prev is not None and prev == (g - 1, state):
                items[-1]["size"] += PAGE_SIZE
            else:
                items.append(
                    {
                        "gpa": g * PAGE_SIZE,
                        "size": PAGE_SIZE,
                        "attribute": state[0],
                        "private_backing": state[1],
                        "shared_backing": state[2],
                    }
                )
            prev = (g, state)
        return items

    def memfd_view(self, memfd: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        pos = 0
        for allocated, group in groupby(range(self.npages[memfd]), key=lambda p: p in self.allocated[memfd]):
            n = len(list(group))
            items.append(
                {"offset": pos * PAGE_SIZE, "size": n * PAGE_SIZE, "state": "allocated" if allocated else "hole"}
            )
            pos += n
        return items


def runs_of(pages: dict[int, Any]) -> list[tuple[int, int, Any]]:
    """Maximal runs of consecutive pages holding equal values."""
    out: list[tuple[int, int, Any]] = []
    for p in sorted(pages):
        if out and out[-1][1] == p and out[-1][2] == pages[p]:
            out[-1] = (out[-1][0], p + 1, pages[p])
        else:
            out.append((p, p + 1, pages[p]))
    return out


# -- strategies ---------------------------------------------------------------------------------

memfd_index = st.integers(0, 1)
pgoff = st.integers(0, MEMFD_PAGES + 1)
length = st.integers(1, 12)
gfn = st.integers(0, GFN_SPACE + 4)
attribute = st.sampled_from(["private", "shared"])
FLAG_SETS = [[], ["mmap"], ["init_shared"], ["init_shared", "mmap"]]


class BrokerMachine(RuleBasedStateMachine):
    """One VM of ``vm_type`` on a fresh copy of the migrated ``template`` database per example."""

    template: Path
    vm_type: str

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gmem-stateful-"))
        db = self.dir / "broker.db"
        shutil.copyfile(self.template, db)
        self.engine = make_engine(f"sqlite:///{db}", pool_size=2)
        self.backend = SimBackend(numa_nodes=2, frames_per_node=1 << 12)
        engine = self.engine
        self.broker = Broker(uow=lambda: SqlUnitOfWork(engine), backend=self.backend)
        self.vm_id = ""
        self.memfds: list[str] = []
        self.model: Model | None = None
        self.steps = 0

    def teardown(self) -> None:
        self.backend.close()
        self.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    # -- plumbing ------------------------------------------------------------------------------------

    def observe(self) -> dict[str, Any]:
        """What the broker shows of the VM, through the read use cases."""
        vm = queries.get_vm(self.broker, self.vm_id)
        extents = queries.vm_extents(self.broker, self.vm_id, start=0, end=None, limit=VIEW_LIMIT, cursor=None)
        assert extents["next_cursor"] is None
        memfds = {
            mid: queries.memfd_extents_page(
                self.broker, self.vm_id, mid, start=0, end=None, limit=VIEW_LIMIT, cursor=None
            )["items"]
            for mid in self.memfds
        }
        slots = {
            s["slot"]: (s["gpa"], s["size"], s["memfd_id"], s["offset"])
            for s in queries.list_memslots(self.broker, self.vm_id)
        }
        return {
            "state": vm["state"],
            "generation": vm["generation"],
            "extents": extents["items"],
            "memfds": memfds,
            "memslots": slots,
        }

    def expected(self) -> dict[str, Any]:
        m = self.m
        return {
            "state": m.state,
            "generation": m.generation,
            "extents": m.vm_view(),
            "memfds": {mid: m.memfd_view(mid) for mid in self.memfds},
            "memslots": {
                n: (s.gfn * PAGE_SIZE, s.npages * PAGE_SIZE, s.memfd, s.pgoff * PAGE_SIZE) for n, s in m.slots.items()
            },
        }

    def attempt(self, predicted: Error | None, call: Callable[[], Job]) -> Outcome | None:
        """Plan and run ``call``: a refusal must be the predicted one and change nothing; else it must succeed."""
        before = self.observe()
        refusal: DomainError | None = None
        try:
            outcome = mutation.run(self.broker, call())
        except DomainError as err:
            refusal = err
        if refusal is not None:
            why = f"{refusal.code}: {refusal.detail}"
            assert predicted is not None, f"the model accepts, the broker refused: {why}"
            assert type(refusal) is predicted, f"predicted {predicted.__name__}, broker refused with {why}"
            assert self.observe() == before, "a refused request changed the VM"
            return None
        assert predicted is None, f"the model predicts {predicted.__name__}, the broker accepted: {outcome.body}"
        return outcome

    def bumped(self, outcome: Outcome) -> None:
        self.m.generation += 1
        assert outcome.generation == self.m.generation
        assert outcome.body["generation"] == self.m.generation
        assert outcome.body["operation_id"].startswith("op_")

    def memfd(self, index: int) -> str:
        return self.memfds[index]

    def draw_gfn_range(self, data: st.DataObject) -> tuple[int, int]:
        """Anywhere, inside one memslot, or around a gfn in an unusual state (where rules bite)."""
        m = self.m
        where = data.draw(st.integers(0, 5), label="where")
        if where >= 4:
            usual = "private" if m.has_private_memory else "shared"
            odd = [g for g in sorted(m.attribute) if g in m.shared or m.private_allocated(g) or m.attribute[g] != usual]
            if odd:
                g = data.draw(st.sampled_from(odd), label="gfn")
                s = m.slot_of_gfn(g)
                assert s is not None
                if where == 4:
                    # Within the run of gfns in the same state as g.
                    lo, hi = g, g + 1
                    while lo > s.gfn and m.page_state(lo - 1) == m.page_state(g):
                        lo -= 1
                    while hi < s.gfn + s.npages and m.page_state(hi) == m.page_state(g):
                        hi += 1
                else:
                    lo, hi = max(s.gfn, g - 3), min(s.gfn + s.npages, g + 4)
                lo = data.draw(st.integers(lo, g), label="gfn")
                return lo, data.draw(st.integers(g + 1, hi), label="gfn_end")
        if m.slots and where >= 1:
            s = data.draw(st.sampled_from(sorted(m.slots.values(), key=lambda s: s.gfn)), label="slot")
            lo = data.draw(st.integers(s.gfn, s.gfn + s.npages - 1), label="gfn")
            hi = data.draw(st.integers(lo + 1, s.gfn + s.npages), label="gfn_end")
            return lo, hi
        lo = data.draw(gfn, label="gfn")
        return lo, lo + data.draw(length, label="npages")

    def draw_pgoff_range(self, data: st.DataObject, memfd: str) -> tuple[int, int]:
        """Anywhere (up to a little past the end), in pages no memslot binds, inside a piece a
        memslot binds, or around a page that is allocated or bound to a shared gfn."""
        m = self.m
        where = data.draw(st.integers(0, 5), label="where")
        if where == 1:
            free = [p for p in range(m.npages[memfd]) if m.gfn_of(memfd, p) is None]
            if free:
                lo = data.draw(st.sampled_from(free), label="pgoff")
                hi = lo + 1
                while hi < m.npages[memfd] and m.gfn_of(memfd, hi) is None:
                    hi += 1
                return lo, data.draw(st.integers(lo + 1, hi), label="pgoff_end")
        if where >= 4:
            odd = [
                p
                for p in range(m.npages[memfd])
                if p in m.allocated[memfd] or ((g := m.gfn_of(memfd, p)) is not None and m.attribute[g] == "shared")
            ]
            if odd:
                p = data.draw(st.sampled_from(odd), label="pgoff")
                lo = max(0, p - data.draw(st.integers(0, 3), label="before"))
                return lo, p + 1 + data.draw(st.integers(0, 3), label="after")
        bound = sorted((s for s in m.slots.values() if s.memfd == memfd), key=lambda s: s.pgoff)
        if bound and where >= 2:
            s = data.draw(st.sampled_from(bound), label="slot")
            lo = data.draw(st.integers(s.pgoff, s.pgoff + s.npages - 1), label="pgoff")
            hi = data.draw(st.integers(lo + 1, s.pgoff + s.npages), label="pgoff_end")
            return lo, hi
        lo = data.draw(pgoff, label="pgoff")
        return lo, lo + data.draw(length, label="npages")

    # -- set-up --------------------------------------------------------------------------------------

    @initialize(flags=st.tuples(st.sampled_from(FLAG_SETS), st.sampled_from(FLAG_SETS)), data=st.data())
    def create_vm(self, flags: tuple[list[str], list[str]], data: st.DataObject) -> None:
        """The VM, its two memfds, maybe pages allocated before any binding, usually a first memslot,
        and half the time a running VM: so the rules start from states where they bite."""
        has_private = self.vm_type != "default"
        out = vm_ops.create_vm(self.broker, name=None, vm_type=self.vm_type, meta=META)
        self.vm_id = out.body["id"]
        self.model = Model(has_private_memory=has_private, generation=out.body["generation"])
        assert self.model.generation == 1
        for f in flags:
            f = [x for x in f if x != "init_shared"] if has_private else f
            out = mutation.run(
                self.broker,
                memfd_ops.create_memfd(self.broker, self.vm_id, size=MEMFD_PAGES * PAGE_SIZE, flags=f, meta=META),
            )
            self.bumped(out)
            mid = out.body["id"]
            self.memfds.append(mid)
            self.m.npages[mid] = MEMFD_PAGES
            self.m.init_shared[mid] = "init_shared" in f
            self.m.allocated[mid] = set()
        for index in range(len(self.memfds)):
            if data.draw(st.booleans(), label="allocate before binding"):
                self.allocate(data, index)
        if data.draw(st.integers(0, 3), label="first memslot") > 0:
            self.create_fitting_memslot(data)
        if data.draw(st.booleans(), label="running"):
            self.set_state("running")

    # -- rules ---------------------------------------------------------------------------------------

    @rule(data=st.data(), index=memfd_index)
    def allocate(self, data: st.DataObject, index: int) -> None:
        mid = self.memfd(index)
        lo, hi = self.draw_pgoff_range(data, mid)
        out = self.attempt(
            self.m.check_allocate(mid, lo, hi),
            lambda: population.allocate(
                self.broker, self.vm_id, mid, offset=lo * PAGE_SIZE, length=(hi - lo) * PAGE_SIZE, meta=META
            ),
        )
        if out is not None:
            self.bumped(out)
            assert out.body["pages_allocated"] == self.m.allocate(mid, lo, hi)

    @rule(data=st.data(), index=memfd_index, allow_private=st.booleans())
    def punch_hole(self, data: st.DataObject, index: int, allow_private: bool) -> None:
        mid = self.memfd(index)
        lo, hi = self.draw_pgoff_range(data, mid)
        self.punch(mid, lo, hi, allow_private)

    @rule(data=st.data(), allow_private=st.booleans())
    def punch_private_page(self, data: st.DataObject, allow_private: bool) -> None:
        """Aim a punch at an allocated private page of a memslot: what private-in-use guards."""
        m = self.m
        targets = [
            (mid, p)
            for mid in self.memfds
            for p in sorted(m.allocated[mid])
            if (g := m.gfn_of(mid, p)) is not None and m.attribute[g] == "private"
        ]
        if not targets:
            return
        mid, p = data.draw(st.sampled_from(targets), label="page")
        lo = max(0, p - data.draw(st.integers(0, 2), label="before"))
        hi = min(MEMFD_PAGES, p + 1 + data.draw(st.integers(0, 2), label="after"))
        self.punch(mid, lo, hi, allow_private)

    def punch(self, mid: str, lo: int, hi: int, allow_private: bool) -> None:
        """Punch pgoffs [lo, hi) of a memfd through the broker; the model predicts refusal and count."""
        out = self.attempt(
            self.m.check_punch(mid, lo, hi, allow_private),
            lambda: population.punch_hole(
                self.broker,
                self.vm_id,
                mid,
                offset=lo * PAGE_SIZE,
                length=(hi - lo) * PAGE_SIZE,
                allow_private=allow_private,
                meta=META,
            ),
        )
        if out is not None:
            self.bumped(out)
            assert out.body["pages_freed"] == self.m.punch(mid, lo, hi)

    @rule(data=st.data())
    def populate_shared(self, data: st.DataObject) -> None:
        lo, hi = self.draw_gfn_range(data)
        out = self.attempt(
            self.m.check_populate_shared(lo, hi),
            lambda: population.populate_shared(
                self.broker, self.vm_id, gpa=lo * PAGE_SIZE, size=(hi - lo) * PAGE_SIZE, meta=META
            ),
        )
        if out is not None:
            self.bumped(out)
            assert out.body["pages_allocated"] == self.m.populate_shared(lo, hi)

    @rule(data=st.data(), n=st.integers(1, 3))
    def convert(self, data: st.DataObject, n: int) -> None:
        ranges = [(*self.draw_gfn_range(data), data.draw(attribute, label="to")) for _ in range(n)]
        body = [{"gpa": lo * PAGE_SIZE, "size": (hi - lo) * PAGE_SIZE, "to": to} for lo, hi, to in ranges]
        out = self.attempt(
            self.m.check_convert(ranges),
            lambda: population.convert(self.broker, self.vm_id, ranges=body, meta=META),
        )
        if out is not None:
            self.bumped(out)
            counts = self.m.convert(ranges)
            assert {k: out.body[k] for k in counts} == counts

    @rule(
        slot=st.integers(0, SLOTS - 1),
        gfn=st.integers(0, GFN_SPACE - 1),
        npages=st.integers(1, 24),
        index=st.integers(0, 2),
        pgoff=st.integers(0, MEMFD_PAGES - 1),
    )
    def create_memslot(self, slot: int, gfn: int, npages: int, index: int, pgoff: int) -> None:
        mid = self.memfds[index] if index < len(self.memfds) else BOGUS_MEMFD
        self._create_memslot(slot, Slot(gfn, npages, mid, pgoff))

    @rule(data=st.data())
    def create_fitting_memslot(self, data: st.DataObject) -> None:
        """A memslot that fits: a free slot id, a free gpa range, an unbound piece of a memfd."""
        m = self.m
        free_ids = [n for n in range(SLOTS) if n not in m.slots]
        if not free_ids:
            return
        mid = self.memfd(data.draw(memfd_index, label="memfd"))
        bound = {p for s in m.slots.values() if s.memfd == mid for p in s.pgoffs}
        free_pg = [p for p in range(MEMFD_PAGES) if p not in bound]
        free_gfn = [g for g in range(GFN_SPACE) if g not in m.attribute]
        if not free_pg or not free_gfn:
            return
        start_pg = data.draw(st.sampled_from(free_pg), label="pgoff")
        start_gfn = data.draw(st.sampled_from(free_gfn), label="gfn")
        room = 0
        while (
            start_pg + room < MEMFD_PAGES
            and start_pg + room not in bound
            and start_gfn + room < GFN_SPACE
            and start_gfn + room not in m.attribute
        ):
            room += 1
        npages = data.draw(st.integers(1, room), label="npages")
        self._create_memslot(data.draw(st.sampled_from(free_ids), label="slot"), Slot(start_gfn, npages, mid, start_pg))

    def _create_memslot(self, slot: int, new: Slot) -> None:
        out = self.attempt(
            self.m.check_create_slot(slot, new),
            lambda: memfd_ops.create_memslot(
                self.broker,
                self.vm_id,
                slot=slot,
                gpa=new.gfn * PAGE_SIZE,
                size=new.npages * PAGE_SIZE,
                memfd_id=new.memfd,
                offset=new.pgoff * PAGE_SIZE,
                meta=META,
            ),
        )
        if out is not None:
            self.bumped(out)
            assert out.status_code == 201
            assert (out.body["slot"], out.body["gpa"], out.body["size"]) == (
                slot,
                new.gfn * PAGE_SIZE,
                new.npages * PAGE_SIZE,
            )
            self.m.create_slot(slot, new)

    @rule(data=st.data())
    def delete_memslot(self, data: st.DataObject) -> None:
        """Mostly a memslot that exists; sometimes any id."""
        if self.m.slots and data.draw(st.integers(0, 3), label="existing") > 0:
            slot = data.draw(st.sampled_from(sorted(self.m.slots)), label="slot")
        else:
            slot = data.draw(st.integers(0, SLOTS - 1), label="slot")
        out = self.attempt(
            None if slot in self.m.slots else NotFound,
            lambda: memfd_ops.delete_memslot(self.broker, self.vm_id, slot, meta=META),
        )
        if out is not None:
            self.bumped(out)
            self.m.delete_slot(slot)

    @rule(state=st.sampled_from(["created", "running", "stopped"]))
    def set_state(self, state: str) -> None:
        out = self.attempt(
            self.m.check_state(state),
            lambda: vm_ops.set_vm_state(self.broker, self.vm_id, state=state, meta=META),
        )
        if out is None:
            return
        if state == self.m.state:
            assert out.generation == self.m.generation, "a request that changes nothing bumped the generation"
        else:
            self.m.generation += 1
            self.m.state = state
            assert out.generation == out.body["generation"] == self.m.generation
        assert out.body["state"] == state

    @rule(data=st.data(), node=st.integers(0, 2))
    def migrate_page(self, data: st.DataObject, node: int) -> None:
        """Move the page a gfn uses; the model has no frames, check_sim compares the stored runs."""
        m = self.m
        if not m.attribute:
            return
        g = data.draw(st.sampled_from(sorted(m.attribute)), label="gfn")
        backed = m.private_allocated(g) if m.attribute[g] == "private" else g in m.shared
        predicted = None if backed and node < 2 else (UnknownNode if backed else NotAllocated)
        move = migration.Move(g * PAGE_SIZE, node, None)
        out = self.attempt(
            predicted, lambda: migration.migrate_pages(self.broker, self.vm_id, moves=[move], batch=False, meta=META)
        )
        if out is not None:
            self.bumped(out)
            assert out.body["node"] == node

    @rule()
    def drop_cache(self) -> None:
        self.broker.forget(self.vm_id)

    # -- checks --------------------------------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        if self.model is None:
            return
        seen = self.observe()
        assert seen == self.expected()
        for item in seen["extents"]:
            assert not (item["private_backing"] == "allocated" and item["shared_backing"] == "allocated"), item
        self.check_aggregate()
        self.steps += 1
        if self.steps % RELOAD_EVERY == 0:
            # The database's copy, loaded afresh, must be the same VM.
            self.broker.forget(self.vm_id)
            assert self.observe() == seen
            self.check_aggregate()
            assert reconcile(self.broker) == []
            self.check_sim()

    def check_aggregate(self) -> None:
        """The aggregate's own maps hold exactly the model's maximal runs: O(extents) state, no more.

        The views coalesce neighbouring pieces themselves, so a map that failed to merge two runs
        shows only here (and as extra rows in the database).
        """
        m = self.m
        with self.broker.locked(self.vm_id):
            vm = self.broker.vm(self.vm_id)
        assert [(e.start, e.end, e.value.value) for e in vm.attributes] == runs_of(m.attribute)
        assert [(e.start, e.end) for e in vm.shared] == [(s, e) for s, e, _ in runs_of(dict.fromkeys(m.shared, 1))]
        for mid in self.memfds:
            population = dict.fromkeys(m.allocated[mid], 1)
            assert [(e.start, e.end) for e in vm.memfds[mid].population] == [(s, e) for s, e, _ in runs_of(population)]

    def check_sim(self) -> None:
        """The sim's own model of the VM: attributes of memslot gfns and the shared backing."""
        m = self.m
        sim = self.backend._vms[self.vm_id]
        assert {g: sim.attributes.get(g) for g in m.attribute} == m.attribute
        assert {g for e in sim.shared for g in range(e.start, e.end)} == m.shared
        assert set(sim.slots) == set(m.slots)
        for mid in self.memfds:
            assert {p for e in sim.memfds[mid].frames for p in range(e.start, e.end)} == m.allocated[mid]
        # The frame runs stored in the database mirror the sim's, one row per run of consecutive frames.
        runs = [(mid, e.start, e.npages, e.start + e.value) for mid, f in sim.memfds.items() for e in f.frames]
        runs += [("", e.start, e.npages, e.start + e.value) for e in sim.shared]
        with self.broker.uow() as uow:
            stored = [(r.owner, r.start, r.npages, r.pfn) for r in uow.frames.of_vm(self.vm_id)]
        assert sorted(stored) == sorted(runs)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each example runs on a fresh copy of it."""
    path = tmp_path_factory.mktemp("template") / "broker.db"
    upgrade(f"sqlite:///{path}")
    return path


def run(template: Path, vm_type: str, *, max_examples: int, steps: int) -> None:
    machine = type(f"BrokerMachine_{vm_type}", (BrokerMachine,), {"template": template, "vm_type": vm_type})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# A failure shrinks for up to five minutes (Hypothesis's own cap) on top of generation: let it finish
# and print the minimal example rather than dying at the suite's default timeout.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("vm_type", ["sw_protected", "default"])
def test_operations_keep_the_invariant_and_match_the_model(template_db: Path, vm_type: str) -> None:
    run(template_db, vm_type, max_examples=150, steps=30)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("vm_type", ["sw_protected", "default"])
def test_long_sequences_keep_the_invariant_and_match_the_model(template_db: Path, vm_type: str) -> None:
    """Fewer, longer runs: states several rebinds and conversion rounds deep."""
    run(template_db, vm_type, max_examples=60, steps=100)
