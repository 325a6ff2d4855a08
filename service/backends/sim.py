"""The ``sim`` backend: an in-process model of guest_memfd on a NUMA host.

It keeps its own state, independent of the broker's, and checks the kernel's rules again with the
kernel's errnos, so the broker's view can be reconciled against it like against a real kernel.
Frames come from a pool per NUMA node; an allocated page records the node it landed on. Faults can
be injected per call for tests of the journal's failure paths.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..domain.extents import ExtentMap
from ..domain.model import Vm
from ..domain.units import PAGE_SIZE
from .protocol import BackendError, HostInfo, NumaNode, VmInventory

VM_TYPES = ("default", "sw_protected", "sev_snp", "tdx")
# x86 KVM with two-dimensional paging maps guest physical addresses up to 52 bits.
MAX_GPA = 1 << 52
MEMFD_FLAGS = ("mmap", "init_shared")


@dataclass(slots=True)
class _Memfd:
    npages: int
    flags: tuple[str, ...]
    # pgoff -> NUMA node holding the page
    pages: ExtentMap[int] = field(default_factory=ExtentMap)
    # Contents of pages written through a mapping; a page not here reads as zeros.
    contents: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _Slot:
    gfn: int
    npages: int
    memfd_id: str
    pgoff: int


@dataclass(slots=True)
class _Vm:
    vm_type: str
    memfds: dict[str, _Memfd] = field(default_factory=dict)
    slots: dict[int, _Slot] = field(default_factory=dict)
    attributes: ExtentMap[str] = field(default_factory=ExtentMap)
    shared: ExtentMap[int] = field(default_factory=ExtentMap)


class SimBackend:
    name = "sim"

    def __init__(self, *, numa_nodes: int = 2, frames_per_node: int = 4 << 20) -> None:
        self._capacity = [frames_per_node] * numa_nodes
        self._used = [0] * numa_nodes
        self._vms: dict[str, _Vm] = {}
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

    def host_info(self) -> HostInfo:
        with self._lock:
            nodes = [
                NumaNode(i, cap, cap - used)
                for i, (cap, used) in enumerate(zip(self._capacity, self._used, strict=True))
            ]
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
            },
            max_gpa=MAX_GPA,
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
            for memfd in vm.memfds.values():
                self._free(memfd.pages, 0, memfd.npages)
            self._free(vm.shared, 0, 1 << 62)

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
            self._free(memfd.pages, 0, memfd.npages)
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

    def _free(self, pages: ExtentMap[int], start: int, end: int) -> int:
        freed = 0
        for ext in list(pages.extents_in(start, end)):
            self._used[ext.value] -= ext.npages
            freed += ext.npages
        pages.set(start, end, None)
        return freed

    def _populate(self, pages: ExtentMap[int], start: int, end: int) -> None:
        holes = [(s.start, s.end) for s in pages.segments(start, end) if s.value is None]
        needed = sum(e - s for s, e in holes)
        free = [cap - used for cap, used in zip(self._capacity, self._used, strict=True)]
        if needed > sum(free):
            raise BackendError("ENOMEM", f"{needed} pages wanted, {sum(free)} free on the host")
        for s, e in holes:
            pos = s
            while pos < e:
                node = max(range(len(free)), key=lambda n: free[n])
                take = min(e - pos, free[node])
                pages.set(pos, pos + take, node)
                free[node] -= take
                self._used[node] += take
                pos += take

    def allocate(self, vm_id: str, memfd_id: str, pgoff: int, npages: int) -> None:
        with self._lock:
            self._maybe_fail("allocate")
            memfd = self._memfd(vm_id, memfd_id)
            if npages <= 0 or pgoff + npages > memfd.npages:
                raise BackendError("EINVAL", "allocation must end inside the file")
            self._populate(memfd.pages, pgoff, pgoff + npages)

    def punch_hole(self, vm_id: str, memfd_id: str, pgoff: int, npages: int) -> None:
        with self._lock:
            self._maybe_fail("punch_hole")
            memfd = self._memfd(vm_id, memfd_id)
            if npages <= 0:
                raise BackendError("EINVAL", "length must be > 0")
            # Like the kernel, a punch past the end of the file is accepted and clipped.
            self._free(memfd.pages, pgoff, min(pgoff + npages, memfd.npages))
            for page in [p for p in memfd.contents if pgoff <= p < pgoff + npages]:
                del memfd.contents[page]

    def set_attributes(self, vm_id: str, gfn: int, npages: int, attribute: str) -> None:
        with self._lock:
            self._maybe_fail("set_attributes")
            if attribute not in ("private", "shared") or npages <= 0:
                raise BackendError("EINVAL", f"bad attribute {attribute!r} or size")
            self._vm(vm_id).attributes.set(gfn, gfn + npages, attribute)

    def populate_shared(self, vm_id: str, gfn: int, npages: int) -> None:
        with self._lock:
            self._maybe_fail("populate_shared")
            self._populate(self._vm(vm_id).shared, gfn, gfn + npages)

    def discard_shared(self, vm_id: str, gfn: int, npages: int) -> None:
        with self._lock:
            self._maybe_fail("discard_shared")
            self._free(self._vm(vm_id).shared, gfn, gfn + npages)

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
            return self._mapped(vm_id, memfd_id, pgoff).contents.get(pgoff, bytes(PAGE_SIZE))

    def write_page(self, vm_id: str, memfd_id: str, pgoff: int, data: bytes) -> None:
        with self._lock:
            memfd = self._mapped(vm_id, memfd_id, pgoff)
            if len(data) != PAGE_SIZE:
                raise BackendError("EINVAL", f"a page is {PAGE_SIZE} bytes, not {len(data)}")
            # A write through a mapping faults the page in, as it does on a real guest_memfd.
            self._populate(memfd.pages, pgoff, pgoff + 1)
            memfd.contents[pgoff] = bytes(data)

    def memfd_fd(self, vm_id: str, memfd_id: str) -> int:
        raise BackendError("EOPNOTSUPP", "the sim backend models memfds and holds no fds to hand off")

    # -- recovery --------------------------------------------------------------------------------

    def inventory(self) -> dict[str, VmInventory]:
        with self._lock:
            return {
                vm_id: VmInventory(
                    memfds={mid: [(e.start, e.end) for e in _coalesced(m.pages)] for mid, m in vm.memfds.items()},
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
            for memfd in vm.memfds.values():
                self.create_memfd(vm.id, memfd.id, memfd.npages, tuple(sorted(memfd.flags)))
                for ext in memfd.population:
                    self._populate(self._vms[vm.id].memfds[memfd.id].pages, ext.start, ext.end)
            for s in vm.memslots.values():
                self.bind_memslot(vm.id, s.slot, s.gfn, s.npages, s.memfd_id, s.pgoff)
            for attr in vm.attributes:
                self.set_attributes(vm.id, attr.start, attr.npages, attr.value.value)
            for run in vm.shared:
                self._populate(self._vms[vm.id].shared, run.start, run.end)
            return True

    def close(self) -> None:
        with self._lock:
            self._vms.clear()
            self._used = [0] * len(self._capacity)


def _coalesced(pages: ExtentMap[int]) -> list[_Run]:
    """Allocated runs regardless of node: the population the broker knows about."""
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
