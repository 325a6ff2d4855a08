"""The broker's process-wide state: the store, the backend, cached aggregates, per-VM locks.

The broker owns its VMs' kernel objects, and the kernel lets only the creating process use a VM fd
(DESIGN rule 6), so one process serves a host. That is what makes it sound to keep each VM
aggregate in memory between requests: the database is the durable copy, written on every
mutation, and an aggregate is reloaded from it whenever a write did not complete.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ..backends.protocol import FrameMove, MemoryBackend, PageRef
from ..domain import effects as fx
from ..domain.errors import NotFound
from ..domain.model import Vm
from .events import EventHub
from .lane import Lane
from .ports import UnitOfWork, UnitOfWorkFactory

log = logging.getLogger("gmem_broker")

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# Every pair of base32 digits, indexed by the 10 bits they spell: 13 lookups make an id.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = range(120, -1, -10)
# Ids must be unique, not secret: a generator seeded from the OS per process makes the random part
# without a system call per id (an id is made for every journalled operation).
_random = random.Random(os.urandom(32))


def new_id(prefix: str) -> str:
    """A sortable unique id: 48 bits of milliseconds then 80 random bits, Crockford base32, 26 characters."""
    value = (int(time.time() * 1000) << 80) | _random.getrandbits(80)
    return prefix + "_" + "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def utcnow() -> datetime:
    return datetime.now(UTC)


class Broker:
    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        backend: MemoryBackend,
        clock: Callable[[], datetime] = utcnow,
        max_batch: int = 10_000,
        events: EventHub | None = None,
    ) -> None:
        self.uow = uow
        self.backend = backend
        self.clock = clock
        self.max_batch = max_batch
        # Wakes event streams; the unit of work factory calls events.notify after each commit.
        self.events = events or EventHub()
        self._vms: dict[str, Vm] = {}
        self._lanes: dict[str, tuple[Lane, threading.Lock]] = {}
        self._registry_lock = threading.Lock()
        self.create_lock = threading.Lock()
        # VMs with a journalled operation whose backend effects did not all apply.
        self.needs_replay: set[str] = set()
        self.ready = False
        self.reconcile_report: list[str] = []
        # Told (kind, response body) of the operations each group applied, in order: the metrics' hook,
        # kept out of the domain.
        self.observers: list[Callable[[list[tuple[str, dict[str, Any]]]], None]] = []

    def lane(self, vm_id: str) -> tuple[Lane, threading.Lock]:
        """A VM's queue of mutations and the lock that serializes them; other VMs proceed in parallel."""
        lane = self._lanes.get(vm_id)
        if lane is None:
            with self._registry_lock:
                lane = self._lanes.setdefault(vm_id, (Lane(), threading.Lock()))
        return lane

    @contextmanager
    def locked(self, vm_id: str) -> Iterator[None]:
        """Hold a VM's lock: no mutation of it runs meanwhile."""
        with self.lane(vm_id)[1]:
            yield

    def vm(self, vm_id: str) -> Vm:
        """The cached aggregate; call with the VM's lock held."""
        vm = self._vms.get(vm_id)
        if vm is None:
            with self.uow() as uow:
                vm = uow.vms.load(vm_id)
            if vm is None:
                raise NotFound(f"VM {vm_id!r} not found")
            self._vms[vm_id] = vm
        return vm

    def vms(self) -> list[Vm]:
        return sorted(self._vms.values(), key=lambda v: (v.created_at, v.id))

    def cache(self, vm: Vm) -> None:
        self._vms[vm.id] = vm

    def forget(self, vm_id: str) -> None:
        """Drop the cached aggregate: after a failed write, or when the VM is gone."""
        self._vms.pop(vm_id, None)

    def load_all(self) -> list[Vm]:
        with self.uow() as uow:
            vms = uow.vms.load_all()
        self._vms = {vm.id: vm for vm in vms}
        return vms

    def record_frames(self, uow: UnitOfWork, vm_id: str) -> None:
        """Mirror the frame runs the backend changed for a VM into ``uow`` (after its effects ran)."""
        changes = self.backend.frame_changes(vm_id)
        if changes:
            uow.frames.apply(vm_id, changes)

    def execute(self, effects: list[fx.Effect]) -> None:
        """Apply effects in order; raises BackendError with ``.applied`` set to how many succeeded."""
        b = self.backend
        for done, e in enumerate(effects):
            try:
                match e:
                    case fx.CreateVm():
                        b.create_vm(e.vm_id, e.vm_type)
                    case fx.DestroyVm():
                        b.destroy_vm(e.vm_id)
                    case fx.CreateMemfd():
                        b.create_memfd(e.vm_id, e.memfd_id, e.npages, e.flags)
                    case fx.CloseMemfd():
                        b.close_memfd(e.vm_id, e.memfd_id)
                    case fx.BindMemslot():
                        b.bind_memslot(e.vm_id, e.slot, e.gfn, e.npages, e.memfd_id, e.pgoff)
                    case fx.UnbindMemslot():
                        b.unbind_memslot(e.vm_id, e.slot)
                    case fx.Allocate() if e.node is None:
                        b.allocate(e.vm_id, e.memfd_id, e.pgoff, e.npages)
                    case fx.Allocate():
                        b.allocate(e.vm_id, e.memfd_id, e.pgoff, e.npages, node=e.node)
                    case fx.PunchHole():
                        b.punch_hole(e.vm_id, e.memfd_id, e.pgoff, e.npages)
                    case fx.SetAttributes():
                        b.set_attributes(e.vm_id, e.gfn, e.npages, e.attribute)
                    case fx.PopulateShared():
                        b.populate_shared(e.vm_id, e.gfn, e.npages)
                    case fx.DiscardShared():
                        b.discard_shared(e.vm_id, e.gfn, e.npages)
                    case fx.MoveFrames():
                        ref = PageRef(e.memfd_id or None, e.pgoff)
                        b.move_frames(e.vm_id, FrameMove(ref, e.npages, e.old_pfn, e.new_pfn, e.node), e.method)
                    case _:
                        raise TypeError(f"unknown effect {e!r}")
            except Exception as exc:
                exc.applied = done  # type: ignore[attr-defined]
                raise
