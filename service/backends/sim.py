"""The ``sim`` backend: an in-process model of guest_memfd on a NUMA host.

It keeps its own state, independent of the broker's, and checks the kernel's rules again with the
kernel's errnos, so the broker's view can be reconciled against it like against a real kernel.
Every allocated page owns a host frame from the pool of a NUMA node (``frames.py``); a backing's
pages are held as runs on consecutive frames. Pages hold bytes: private pages of encrypted VM types
are sealed under the VM's key and their frame number (``sealing.py``), so moving one needs the
trusted agent. Faults can be injected per call for tests of the journal's failure paths.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from ..domain.extents import ExtentMap
from ..domain.model import Vm
from ..domain.units import PAGE_SIZE
from . import sealing
from .frames import FramePool
from .protocol import (
    BackendError,
    FrameChanges,
    FrameMove,
    FrameRun,
    HostInfo,
    MoveRequest,
    NumaNode,
    PageBytes,
    PageRef,
    VmInventory,
)

VM_TYPES = ("default", "sw_protected", "sev_snp", "tdx")
# x86 KVM with two-dimensional paging maps guest physical addresses up to 52 bits.
MAX_GPA = 1 << 52
MEMFD_FLAGS = ("mmap", "init_shared")
# VM types whose private memory the hardware encrypts, and the relocation command each offers.
ENCRYPTED_VM_TYPES = {"sev_snp": "snp-page-move", "tdx": "tdx-relocate"}
SHARED_OWNER = ""


@dataclass(slots=True)
class _Memfd:
    npages: int
    flags: tuple[str, ...]
    # pgoff -> pfn - pgoff: pages on consecutive frames carry one value, so such a run is one extent.
    frames: ExtentMap[int] = field(default_factory=ExtentMap)


@dataclass(slots=True)
class _Slot:
    gfn: int
    npages: int
    memfd_id: str
    pgoff: int


@dataclass(slots=True)
class _Vm:
    vm_type: str
    key: bytes = field(default_factory=sealing.new_key)
    memfds: dict[str, _Memfd] = field(default_factory=dict)
    slots: dict[int, _Slot] = field(default_factory=dict)
    # Never drained (the store keeps the attributes from the domain's map): it records no change.
    attributes: ExtentMap[str] = field(default_factory=lambda: ExtentMap(record=False))
    # gfn -> pfn - gfn for the shared backing.
    shared: ExtentMap[int] = field(default_factory=ExtentMap)
    # Backings (memfd id, or SHARED_OWNER) whose frame runs changed since the last drain.
    dirty: set[str] = field(default_factory=set)


class SimBackend:
    name = "sim"

    def __init__(self, *, numa_nodes: int = 2, frames_per_node: int = 4 << 20) -> None:
        self._nodes = numa_nodes
        self._frames_per_node = frames_per_node
        self._pool = FramePool(numa_nodes, frames_per_node)
        # pfn -> the raw bytes in that frame; a frame never written holds zeros.
        self._data: SortedDict[int, bytes] = SortedDict()
        self._vms: dict[str, _Vm] = {}
        self._adopted: dict[str, list[FrameRun]] = {}
        # Recorded runs that could not be adopted, per VM: their rows are to be deleted.
        self._stale: dict[str, list[FrameRun]] = {}
        self._faults: dict[str, list[str]] = {}
        self._lock = threading.RLock()

    # -- test hooks ------------------------------------------------------------------------------

    def inject_fault(self, call: str, errno: str) -> None:
        """Make the next ``call`` (a method name) fail with ``errno``."""
        with self._lock:
            self._faults.setdefault(call, []).append(errno)

    def _maybe_fail(self, call: str) -> None:
        queued = self._faults.get(call)
        if queued:
            raise BackendError(queued.pop(0), f"injected fault in {call}")

    # -- host --------------------------------------------------------------------------------------

    def available_pages(self) -> int | None:
        return None  # allocate and populate_shared refuse with ENOMEM themselves when a frame pool is short

    def host_info(self) -> HostInfo:
        with self._lock:
            fpn = self._frames_per_node
            nodes = [NumaNode(n, fpn, self._pool.free(n), n * fpn) for n in range(self._nodes)]
        return HostInfo(
            backend=self.name,
            page_size=PAGE_SIZE,
            vm_types=list(VM_TYPES),
            memfd_flags=list(MEMFD_FLAGS),
            numa_nodes=nodes,
            capabilities={"guest_memfd": 1, "guest_memfd_flags": 3, "user_memory2": 1, "memory_attributes": 1},
            enforcement={
                "memory_attributes": "model",
                "guest_memfd": "model",
                "private_in_use": "broker",
                "punch_out_of_range": "broker",
                "migrate_page": "model",
            },
            max_gpa=MAX_GPA,
            details={"trusted_agents": dict(ENCRYPTED_VM_TYPES)},
        )

    def _vm(self, vm_id: str) -> _Vm:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise BackendError("EBADF", f"no VM {vm_id!r} in the sim")
        return vm

    def _memfd(self, vm_id: str, memfd_id: str) -> _Memfd:
        memfd = self._vm(vm_id).memfds.get(memfd_id)
        if memfd is None:
            raise BackendError("EBADF", f"no memfd {memfd_id!r} in VM {vm_id!r}")
        return memfd

    def _backing(self, vm: _Vm, vm_id: str, ref: PageRef) -> tuple[str, ExtentMap[int]]:
        if ref.memfd_id is None:
            return SHARED_OWNER, vm.shared
        return ref.memfd_id, self._memfd(vm_id, ref.memfd_id).frames

    # -- VMs and memfds --------------------------------------------------------------------------

    def create_vm(self, vm_id: str, vm_type: str) -> None:
        with self._lock:
            self._maybe_fail("create_vm")
            if vm_type not in VM_TYPES:
                raise BackendError("EINVAL", f"unsupported VM type {vm_type!r}")
            self._vms.setdefault(vm_id, _Vm(vm_type))

    def destroy_vm(self, vm_id: str) -> None:
        with self._lock:
            self._maybe_fail("destroy_vm")
            vm = self._vms.pop(vm_id, None)
            if vm is None:
                return
            for memfd_id, memfd in vm.memfds.items():
                self._free(vm, memfd_id, memfd.frames, 0, memfd.npages)
            self._free(vm, SHARED_OWNER, vm.shared, 0, 1 << 62)

    def create_memfd(self, vm_id: str, memfd_id: str, npages: int, flags: tuple[str, ...]) -> None:
        with self._lock:
            self._maybe_fail("create_memfd")
            vm = self._vm(vm_id)
            if npages <= 0 or set(flags) - set(MEMFD_FLAGS):
                raise BackendError("EINVAL", "bad size or flags")
            vm.memfds.setdefault(memfd_id, _Memfd(npages, flags))

    def close_memfd(self, vm_id: str, memfd_id: str) -> None:
        with self._lock:
            self._maybe_fail("close_memfd")
            vm = self._vm(vm_id)
            memfd = vm.memfds.pop(memfd_id, None)
            if memfd is None:
                return
            self._free(vm, memfd_id, memfd.frames, 0, memfd.npages)
            vm.dirty.discard(memfd_id)
            # Closing a guest_memfd zaps every binding of it.
            for slot in [s for s, b in vm.slots.items() if b.memfd_id == memfd_id]:
                del vm.slots[slot]

    # -- memslots ----------------------------------------------------------------------------------

    def bind_memslot(self, vm_id: str, slot: int, gfn: int, npages: int, memfd_id: str, pgoff: int) -> None:
        with self._lock:
            self._maybe_fail("bind_memslot")
            vm = self._vm(vm_id)
            memfd = self._memfd(vm_id, memfd_id)
            want = _Slot(gfn, npages, memfd_id, pgoff)
            have = vm.slots.get(slot)
            if have is not None:
                if have == want:
                    return
                raise BackendError("EINVAL", f"memslot {slot} exists and a guest_memfd memslot is immutable")
            if npages <= 0 or pgoff + npages > memfd.npages or (gfn + npages) * PAGE_SIZE > MAX_GPA:
                raise BackendError("EINVAL", "memfd range outside the file, or gpa past the guest's address space")
            for other in vm.slots.values():
                if other.gfn < gfn + npages and gfn < other.gfn + other.npages:
                    raise BackendError("EEXIST", "gpa range overlaps another memslot")
                if other.memfd_id == memfd_id and other.pgoff < pgoff + npages and pgoff < other.pgoff + other.npages:
                    raise BackendError("EINVAL", "memfd range already bound")
            vm.slots[slot] = want

    def unbind_memslot(self, vm_id: str, slot: int) -> None:
        with self._lock:
            self._maybe_fail("unbind_memslot")
            self._vm(vm_id).slots.pop(slot, None)

    # -- population ------------------------------------------------------------------------------

    def _free(self, vm: _Vm, owner: str, frames: ExtentMap[int], start: int, end: int) -> int:
        freed = 0
        for ext in list(frames.extents_in(start, end)):
            pfn = ext.start + ext.value
            self._pool.give(pfn, ext.npages)
            self._drop_data(pfn, ext.npages)
            freed += ext.npages
        if freed:
            frames.set(start, end, None)
            vm.dirty.add(owner)
        return freed

    def _drop_data(self, pfn: int, npages: int) -> None:
        for key in list(self._data.irange(pfn, pfn + npages - 1)):
            del self._data[key]

    def _populate(
        self, vm: _Vm, owner: str, frames: ExtentMap[int], start: int, end: int, node: int | None = None
    ) -> None:
        holes = [(s.start, s.end) for s in frames.segments(start, end) if s.value is None]
        needed = sum(e - s for s, e in holes)
        if node is not None:
            self._pool.check_node(node)
            if needed > self._pool.free(node):
                raise BackendError("ENOMEM", f"{needed} pages wanted on node {node}, {self._pool.free(node)} free")
        if needed > self._pool.free_total():
            raise BackendError("ENOMEM", f"{needed} pages wanted, {self._pool.free_total()} free on the host")
        for s, e in holes:
            pos = s
            while pos < e:
                # Unpinned, each piece goes to the emptiest node, spilling over when that one fills up.
                target = node if node is not None else max(range(self._nodes), key=self._pool.free)
                for pfn, count in self._pool.take(target, min(e - pos, self._pool.free(target))):
                    frames.set(pos, pos + count, pfn - pos)
                    pos += count
        if needed:
            vm.dirty.add(owner)

    def allocate(self, vm_id: str, memfd_id: str, pgoff: int, npages: int, node: int | None = None) -> None:
        with self._lock:
            self._maybe_fail("allocate")
            memfd = self._memfd(vm_id, memfd_id)
            if npages <= 0 or pgoff + npages > memfd.npages:
                raise BackendError("EINVAL", "allocation must end inside the file")
            self._populate(self._vm(vm_id), memfd_id, memfd.frames, pgoff, pgoff + npages, node)

    def punch_hole(self, vm_id: str, memfd_id: str, pgoff: int, npages: int) -> None:
        with self._lock:
            self._maybe_fail("punch_hole")
            memfd = self._memfd(vm_id, memfd_id)
            if npages <= 0:
                raise BackendError("EINVAL", "length must be > 0")
            # Like the kernel, a punch past the end of the file is accepted and clipped.
            self._free(self._vm(vm_id), memfd_id, memfd.frames, pgoff, min(pgoff + npages, memfd.npages))

    def set_attributes(self, vm_id: str, gfn: int, npages: int, attribute: str) -> None:
        with self._lock:
            self._maybe_fail("set_attributes")
            if attribute not in ("private", "shared") or npages <= 0:
                raise BackendError("EINVAL", f"bad attribute {attribute!r} or size")
            self._vm(vm_id).attributes.set(gfn, gfn + npages, attribute)

    def populate_shared(self, vm_id: str, gfn: int, npages: int) -> None:
        with self._lock:
            self._maybe_fail("populate_shared")
            vm = self._vm(vm_id)
            self._populate(vm, SHARED_OWNER, vm.shared, gfn, gfn + npages)

    def discard_shared(self, vm_id: str, gfn: int, npages: int) -> None:
        with self._lock:
            self._maybe_fail("discard_shared")
            vm = self._vm(vm_id)
            self._free(vm, SHARED_OWNER, vm.shared, gfn, gfn + npages)

    # -- contents --------------------------------------------------------------------------------

    def _mapped(self, vm_id: str, memfd_id: str, pgoff: int) -> _Memfd:
        memfd = self._memfd(vm_id, memfd_id)
        if "mmap" not in memfd.flags:
            raise BackendError("ENODEV", f"memfd {memfd_id!r} was not created with the mmap flag")
        if not 0 <= pgoff < memfd.npages:
            raise BackendError("EINVAL", f"page {pgoff} is outside memfd {memfd_id!r}")
        return memfd

    def read_page(self, vm_id: str, memfd_id: str, pgoff: int) -> bytes:
        with self._lock:
            memfd = self._mapped(vm_id, memfd_id, pgoff)
            delta = memfd.frames.get(pgoff)
            if delta is None:
                return bytes(PAGE_SIZE)  # a hole reads as zeros
            data: bytes = self._data.get(pgoff + delta, bytes(PAGE_SIZE))
            return data

    def write_page(self, vm_id: str, memfd_id: str, pgoff: int, data: bytes) -> None:
        with self._lock:
            memfd = self._mapped(vm_id, memfd_id, pgoff)
            if len(data) != PAGE_SIZE:
                raise BackendError("EINVAL", f"a page is {PAGE_SIZE} bytes, not {len(data)}")
            # A write through a mapping faults the page in, as it does on a real guest_memfd.
            vm = self._vm(vm_id)
            self._populate(vm, memfd_id, memfd.frames, pgoff, pgoff + 1)
            self._data[self._frame(vm, vm_id, PageRef(memfd_id, pgoff))] = bytes(data)

    def memfd_fd(self, vm_id: str, memfd_id: str) -> int:
        raise BackendError("EOPNOTSUPP", "the sim backend models memfds and holds no fds to hand off")

    # -- migration -------------------------------------------------------------------------------

    def plan_moves(self, vm_id: str, requests: list[MoveRequest]) -> list[FrameMove]:
        with self._lock:
            self._maybe_fail("plan_moves")
            vm = self._vm(vm_id)
            taken: list[tuple[int, int]] = []
            try:
                return [move for req in requests for move in self._plan(vm, vm_id, req, taken)]
            finally:
                # Planning changes nothing: the frames it picked go back, and move_frames takes
                # exactly those (or refuses with EBUSY if another VM took one meanwhile).
                for pfn, count in taken:
                    self._pool.give(pfn, count)

    def _plan(self, vm: _Vm, vm_id: str, req: MoveRequest, taken: list[tuple[int, int]]) -> list[FrameMove]:
        _, frames = self._backing(vm, vm_id, req.ref)
        segments = list(frames.segments(req.ref.index, req.ref.index + req.npages))
        for seg in segments:
            if seg.value is None:
                raise BackendError("ENOENT", f"page {seg.start:#x} of {req.ref} has no frame")
        if req.target_pfn is not None:
            if req.npages != 1:
                raise BackendError("EINVAL", "a target frame takes one page")
            self._pool.take_at(req.target_pfn, 1)
            taken.append((req.target_pfn, 1))
            delta = segments[0].value
            assert delta is not None
            return [FrameMove(req.ref, 1, req.ref.index + delta, req.target_pfn, self._pool.node_of(req.target_pfn))]
        node = req.target_node if req.target_node is not None else 0
        self._pool.check_node(node)
        moves: list[FrameMove] = []
        for seg in segments:
            assert seg.value is not None
            source = seg.start + seg.value
            for piece, count in self._pool.by_node(source, seg.end - seg.start):
                if req.skip_on_target and self._pool.node_of(piece) == node:
                    continue
                page = seg.start + (piece - source)
                for new_pfn, n in self._pool.take(node, count):
                    taken.append((new_pfn, n))
                    moves.append(FrameMove(PageRef(req.ref.memfd_id, page), n, piece, new_pfn, node))
                    page += n
                    piece += n
        return moves

    def move_frames(self, vm_id: str, move: FrameMove, method: str) -> None:
        with self._lock:
            self._maybe_fail("move_frames")
            if method not in ("copy", "trusted-agent") or move.old_pfn is None or move.new_pfn is None:
                raise BackendError("EINVAL", f"the sim moves pages by copy or trusted-agent, not {method!r}")
            vm = self._vm(vm_id)
            owner, frames = self._backing(vm, vm_id, move.ref)
            start, end = move.ref.index, move.ref.index + move.npages
            runs = list(frames.extents_in(start, end))
            whole = len(runs) == 1 and runs[0].npages == move.npages
            if whole and runs[0].value == move.new_pfn - start:
                return  # already moved: a replay
            if not whole or runs[0].value != move.old_pfn - start:
                raise BackendError(
                    "EINVAL",
                    f"pages [{start:#x}, {end:#x}) of {owner or 'shared'} are not on frame(s) {move.old_pfn:#x}",
                )
            self._pool.take_at(move.new_pfn, move.npages)
            self._move_data(vm, move.ref, move.old_pfn, move.new_pfn, move.npages, method)
            frames.set(start, end, move.new_pfn - start)
            vm.dirty.add(owner)
            self._pool.give(move.old_pfn, move.npages)

    def _move_data(self, vm: _Vm, ref: PageRef, old: int, new: int, npages: int, method: str) -> None:
        sealed = self._sealed(vm, ref)
        if sealed and method == "copy":
            # A host memcpy copies ciphertext, which is only ever valid under the frame it was
            # sealed for: every page, written or not, lands as the old frame's ciphertext.
            for i in range(npages):
                raw = self._data.get(old + i)
                self._data[new + i] = raw if raw is not None else sealing.seal(vm.key, old + i, sealing.ZERO_PAGE)
            self._drop_data(old, npages)
            return
        for pfn in list(self._data.irange(old, old + npages - 1)):
            raw = self._data.pop(pfn)
            target = new + (pfn - old)
            if sealed:
                # The trusted agent: unseal under the old frame, seal under the new one.
                raw = sealing.seal(vm.key, target, sealing.unseal(vm.key, pfn, raw))
            self._data[target] = raw

    # -- page contents ---------------------------------------------------------------------------

    def _sealed(self, vm: _Vm, ref: PageRef) -> bool:
        return ref.memfd_id is not None and vm.vm_type in ENCRYPTED_VM_TYPES

    def _frame(self, vm: _Vm, vm_id: str, ref: PageRef) -> int:
        _, frames = self._backing(vm, vm_id, ref)
        delta = frames.get(ref.index)
        if delta is None:
            raise BackendError("ENOENT", f"page {ref.index:#x} of {ref.memfd_id or 'the shared backing'} has no frame")
        return ref.index + delta

    def read_backing(self, vm_id: str, ref: PageRef, view: str) -> PageBytes:
        with self._lock:
            vm = self._vm(vm_id)
            pfn = self._frame(vm, vm_id, ref)
            sealed = self._sealed(vm, ref)
            raw = self._data.get(pfn)
            if view == "host":
                if raw is None:
                    raw = sealing.seal(vm.key, pfn, sealing.ZERO_PAGE) if sealed else sealing.ZERO_PAGE
                return PageBytes(raw, pfn, sealed)
            if raw is None:
                return PageBytes(sealing.ZERO_PAGE, pfn, sealed)
            return PageBytes(sealing.unseal(vm.key, pfn, raw) if sealed else raw, pfn, sealed)

    def write_backing(self, vm_id: str, ref: PageRef, offset: int, data: bytes, view: str) -> None:
        with self._lock:
            if offset < 0 or offset + len(data) > PAGE_SIZE:
                raise BackendError("EINVAL", "a write must stay inside one page")
            vm = self._vm(vm_id)
            pfn = self._frame(vm, vm_id, ref)
            current = self.read_backing(vm_id, ref, view).data
            page = current[:offset] + data + current[offset + len(data) :]
            if view == "guest" and self._sealed(vm, ref):
                page = sealing.seal(vm.key, pfn, page)
            self._data[pfn] = page

    # -- frame records and recovery ----------------------------------------------------------------

    def frame_changes(self, vm_id: str) -> FrameChanges:
        with self._lock:
            changes = FrameChanges(removed=self._stale.pop(vm_id, []))
            vm = self._vms.get(vm_id)
            if vm is None or not vm.dirty:
                return changes
            for owner in sorted(vm.dirty):
                frames = vm.shared if owner == SHARED_OWNER else vm.memfds[owner].frames
                delta = frames.drain()
                changes.removed += [FrameRun(owner, e.start, e.npages, e.start + e.value) for e in delta.removed]
                changes.added += [FrameRun(owner, e.start, e.npages, e.start + e.value) for e in delta.added]
            vm.dirty.clear()
        return changes

    def adopt_frames(self, runs: dict[str, list[FrameRun]]) -> None:
        with self._lock:
            for vm_id, vm_runs in runs.items():
                kept = []
                for run in vm_runs:
                    try:
                        self._pool.check_pfn(run.pfn)
                        self._pool.check_pfn(run.pfn + run.npages - 1)
                        if not self._pool.is_free(run.pfn, run.npages):
                            raise BackendError("EBUSY", "frames recorded twice")
                    except BackendError:
                        # A record this host cannot honour (fewer frames now, or a frame recorded for two
                        # pages): its row goes with the next drain, and the pages get fresh frames.
                        self._stale.setdefault(vm_id, []).append(run)
                        continue
                    for pfn, count in self._pool.by_node(run.pfn, run.npages):
                        self._pool.take_at(pfn, count)
                    kept.append(run)
                self._adopted[vm_id] = kept

    def _place(
        self, vm: _Vm, owner: str, frames: ExtentMap[int], runs: list[FrameRun], allocated: list[tuple[int, int]]
    ) -> None:
        """Put a restored backing's pages back on their recorded frames, the rest on fresh ones."""
        for run in runs:
            frames.set(run.start, run.start + run.npages, run.pfn - run.start)
        frames.drain()  # these runs are the stored rows
        wanted: ExtentMap[bool] = ExtentMap()
        for start, end in allocated:
            wanted.set(start, end, True)
        for run in runs:
            for seg in wanted.segments(run.start, run.start + run.npages):
                if seg.value is None:
                    self._free(vm, owner, frames, seg.start, seg.end)
        for start, end in allocated:
            self._populate(vm, owner, frames, start, end)

    def inventory(self) -> dict[str, VmInventory]:
        with self._lock:
            return {
                vm_id: VmInventory(
                    memfds={mid: [(e.start, e.end) for e in _coalesced(m.frames)] for mid, m in vm.memfds.items()},
                    memslots=set(vm.slots),
                    shared=[(e.start, e.end) for e in _coalesced(vm.shared)],
                )
                for vm_id, vm in self._vms.items()
            }

    def restore(self, vm: Vm) -> bool:
        """The model lives in process memory: rebuild a stored VM as the database describes it."""
        with self._lock:
            if vm.id in self._vms:
                return True
            self.create_vm(vm.id, vm.vm_type.value)
            sim = self._vms[vm.id]
            runs: dict[str, list[FrameRun]] = defaultdict(list)
            for run in self._adopted.pop(vm.id, []):
                runs[run.owner].append(run)
            for memfd in vm.memfds.values():
                self.create_memfd(vm.id, memfd.id, memfd.npages, tuple(sorted(memfd.flags)))
                allocated = [(e.start, e.end) for e in memfd.population]
                self._place(sim, memfd.id, sim.memfds[memfd.id].frames, runs.pop(memfd.id, []), allocated)
            for s in vm.memslots.values():
                self.bind_memslot(vm.id, s.slot, s.gfn, s.npages, s.memfd_id, s.pgoff)
            for attr in vm.attributes:
                self.set_attributes(vm.id, attr.start, attr.npages, attr.value.value)
            self._place(
                sim, SHARED_OWNER, sim.shared, runs.pop(SHARED_OWNER, []), [(r.start, r.end) for r in vm.shared]
            )
            for leftover in runs.values():
                for run in leftover:
                    self._pool.give(run.pfn, run.npages)
            return True

    def close(self) -> None:
        with self._lock:
            self._vms.clear()
            self._data.clear()
            self._adopted.clear()
            self._stale.clear()
            self._pool = FramePool(self._nodes, self._frames_per_node)


def _coalesced(pages: ExtentMap[int]) -> list[_Run]:
    """Allocated runs regardless of frames: the population the broker knows about."""
    runs: list[_Run] = []
    for ext in pages:
        if runs and runs[-1].end == ext.start:
            runs[-1].end = ext.end
        else:
            runs.append(_Run(ext.start, ext.end))
    return runs


@dataclass(slots=True)
class _Run:
    start: int
    end: int
