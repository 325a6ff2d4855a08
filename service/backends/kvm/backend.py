"""The ``kvm`` backend: one KVM VM per broker VM, real guest_memfds, real memslots, real fallocate.

The broker process owns every fd here (VM ioctls work only in the process that created the VM,
DESIGN rule 6), and every call is idempotent so a journalled operation can be replayed. What this
kernel does not offer is enforced by the broker and said so in :meth:`KvmBackend.host_info`: on a
kernel without ``KVM_CAP_MEMORY_ATTRIBUTES`` the private/shared attribute lives in the broker's own
extent map, and the backing a conversion stops using is discarded all the same.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ...domain.extents import ExtentMap
from ...domain.model import Vm
from ...domain.units import PAGE_SIZE
from ..protocol import (
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
from . import moves, uapi

NODE_ROOT = Path("/sys/devices/system/node")
MEMINFO = Path("/proc/meminfo")
DEFAULT_MEMORY_RESERVE = 512 << 20  # bytes of MemAvailable allocations must leave to the host


@dataclass(slots=True)
class _Memfd:
    fd: int
    npages: int
    flags: tuple[str, ...]


@dataclass(slots=True)
class _Slot:
    gfn: int
    npages: int
    memfd_id: str
    pgoff: int
    # The shared side of the slot: a memfd the broker creates and maps, as a VMM would.
    shared_fd: int
    shared_addr: int

    @property
    def binding(self) -> tuple[int, int, str, int]:
        return self.gfn, self.npages, self.memfd_id, self.pgoff


@dataclass(slots=True)
class _Vm:
    fd: int
    vm_type: str
    memfds: dict[str, _Memfd] = field(default_factory=dict)
    slots: dict[int, _Slot] = field(default_factory=dict)
    # The broker's own attribute array, kept where the kernel has none for this VM type.
    attributes: ExtentMap[str] = field(default_factory=ExtentMap)
    # Held around every call on this VM's fds, so another VM's large fallocate never waits on it.
    lock: threading.RLock = field(default_factory=threading.RLock)
    destroyed: bool = False


class KvmBackend:
    name = "kvm"

    def __init__(self, device: str = "/dev/kvm", memory_reserve: int = DEFAULT_MEMORY_RESERVE) -> None:
        self._device = device
        self._memory_reserve = memory_reserve
        try:
            self._kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise BackendError(uapi.errno_name(exc.errno or 0), f"cannot open {device}: {exc.strerror}") from None
        try:
            self._host = self._probe()
        except BaseException:
            os.close(self._kvm)
            raise
        self._vms: dict[str, _Vm] = {}
        # Guards the registry only; each VM's calls hold that VM's own lock.
        self._lock = threading.Lock()

    # -- host --------------------------------------------------------------------------------------

    def _check(self, cap: int) -> int:
        return uapi.ioctl(self._kvm, uapi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def _probe(self) -> HostInfo:
        """Ask the kernel once, at start-up, what it offers; the answer does not change while it runs."""
        api = uapi.ioctl(self._kvm, uapi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if api != uapi.KVM_API_VERSION:
            raise BackendError("EINVAL", f"KVM API version {api}, expected {uapi.KVM_API_VERSION}")
        caps = {name: self._check(cap) for name, cap in uapi.CAPABILITIES.items()}
        # KVM_CAP_VM_TYPES is a bitmask of types; 0 (an older kernel) means only the default type.
        type_mask = caps["vm_types"] or 1
        vm_types = [name for name, bit in uapi.VM_TYPES.items() if type_mask & (1 << bit)]
        flag_mask = caps["guest_memfd_flags"]
        memfd_flags = [name for name, bit in uapi.MEMFD_FLAGS.items() if flag_mask & bit]
        attributes_by = "kernel" if caps["memory_attributes"] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE else "broker"
        return HostInfo(
            backend=self.name,
            page_size=os.sysconf("SC_PAGE_SIZE"),
            vm_types=vm_types,
            memfd_flags=memfd_flags,
            numa_nodes=_numa_nodes(),
            capabilities={"api_version": api, **caps},
            enforcement={
                "memory_attributes": attributes_by,
                "guest_memfd": "kernel" if caps["guest_memfd"] else "broker",
                "memfd_flags": "kernel",
                "fallocate_ranges": "kernel",
                "memslot_overlap": "kernel",
                "vm_types": "kernel",
                "private_in_use": "broker",
                "punch_out_of_range": "broker",
            },
            details={
                "release": os.uname().release,
                "device": self._device,
                "fd_handoff": True,
                # migrate-page moves shared pages with move_pages(2) where its syscall number is known.
                "move_pages": os.uname().machine in uapi.SYS_MOVE_PAGES,
            },
            max_gpa=self._probe_max_gpa(),
        )

    def _probe_max_gpa(self) -> int:
        """The end of the guest physical address space, found by binding a scratch memslot.

        x86 KVM has no capability for it (kvm_mmu_max_gfn depends on the host's paging), so ask
        the kernel the one way it answers: the highest power of two a one-page memslot may end at.
        """
        vm = uapi.ioctl(self._kvm, uapi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        try:
            args = uapi.KvmCreateGuestMemfd(size=PAGE_SIZE, flags=0)
            memfd = uapi.ioctl(vm, uapi.KVM_CREATE_GUEST_MEMFD, args, "KVM_CREATE_GUEST_MEMFD")
            try:
                for bits in range(64, 32, -1):
                    region = uapi.KvmUserspaceMemoryRegion2(
                        slot=0,
                        flags=uapi.KVM_MEM_GUEST_MEMFD,
                        guest_phys_addr=(1 << bits) - PAGE_SIZE,
                        memory_size=PAGE_SIZE,
                        guest_memfd=memfd,
                    )
                    try:
                        uapi.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION2, region, "probe")
                    except BackendError:
                        continue
                    return 1 << bits
            finally:
                os.close(memfd)
        finally:
            os.close(vm)
        raise BackendError("EINVAL", "no guest physical address width accepted a memslot")

    def available_pages(self) -> int | None:
        # The kernel does not refuse a guest_memfd fallocate (or a populating touch of the shared memfd)
        # past the host's memory: it reclaims, then the OOM killer ends the broker and every VM's fds.
        # So the broker refuses first, keeping a reserve for the host.
        available = _mem_available_bytes() - self._memory_reserve
        return max(available, 0) // PAGE_SIZE

    def host_info(self) -> HostInfo:
        return self._host

    @contextmanager
    def _held(self, vm_id: str, *, missing_ok: bool = False) -> Iterator[_Vm | None]:
        """The VM with its lock held; None (when ``missing_ok``) if this process holds no such VM."""
        with self._lock:
            vm = self._vms.get(vm_id)
        if vm is None:
            if missing_ok:
                yield None
                return
            raise BackendError("EBADF", f"no KVM VM for {vm_id!r} in this process")
        with vm.lock:
            if vm.destroyed:  # destroyed while this call waited for the lock
                if missing_ok:
                    yield None
                    return
                raise BackendError("EBADF", f"KVM VM {vm_id!r} was destroyed")
            yield vm

    @contextmanager
    def _vm(self, vm_id: str) -> Iterator[_Vm]:
        with self._held(vm_id) as vm:
            assert vm is not None
            yield vm

    @staticmethod
    def _memfd(vm: _Vm, memfd_id: str) -> _Memfd:
        memfd = vm.memfds.get(memfd_id)
        if memfd is None:
            raise BackendError("EBADF", f"no guest_memfd {memfd_id!r} in this VM")
        return memfd

    # -- VMs and memfds --------------------------------------------------------------------------

    def create_vm(self, vm_id: str, vm_type: str) -> None:
        with self._lock:
            if vm_id in self._vms:
                return
            if vm_type not in self._host.vm_types:
                raise BackendError("EINVAL", f"KVM_CREATE_VM: VM type {vm_type!r} is not supported by this kernel")
            fd = uapi.ioctl(self._kvm, uapi.KVM_CREATE_VM, uapi.VM_TYPES[vm_type], "KVM_CREATE_VM")
            self._vms[vm_id] = _Vm(fd, vm_type)

    def destroy_vm(self, vm_id: str) -> None:
        with self._lock:
            vm = self._vms.pop(vm_id, None)
        if vm is None:
            return
        with vm.lock:
            vm.destroyed = True
            # Memslots before memfds before the VM: the reverse of how they were made.
            for slot in vm.slots.values():
                _release_shared(slot)
            for memfd in vm.memfds.values():
                os.close(memfd.fd)
            os.close(vm.fd)

    def create_memfd(self, vm_id: str, memfd_id: str, npages: int, flags: tuple[str, ...]) -> None:
        with self._vm(vm_id) as vm:
            if memfd_id in vm.memfds:
                return
            unknown = set(flags) - set(uapi.MEMFD_FLAGS)
            if unknown:
                raise BackendError("EINVAL", f"KVM_CREATE_GUEST_MEMFD: unknown flags {sorted(unknown)}")
            bits = sum(uapi.MEMFD_FLAGS[f] for f in set(flags))
            args = uapi.KvmCreateGuestMemfd(size=npages * PAGE_SIZE, flags=bits)
            fd = uapi.ioctl(vm.fd, uapi.KVM_CREATE_GUEST_MEMFD, args, "KVM_CREATE_GUEST_MEMFD")
            vm.memfds[memfd_id] = _Memfd(fd, npages, tuple(sorted(set(flags))))

    def close_memfd(self, vm_id: str, memfd_id: str) -> None:
        with self._held(vm_id, missing_ok=True) as vm:
            memfd = vm.memfds.get(memfd_id) if vm is not None else None
            if vm is None or memfd is None:
                return
            # Closing a guest_memfd zaps its bindings; delete them from KVM first so none dangles.
            for slot_id in [s for s, b in vm.slots.items() if b.memfd_id == memfd_id]:
                self._unbind(vm, slot_id)
            del vm.memfds[memfd_id]
            os.close(memfd.fd)

    # -- memslots ----------------------------------------------------------------------------------

    def _set_region(self, vm: _Vm, slot_id: int, slot: _Slot, memfd_fd: int, *, delete: bool = False) -> None:
        region = uapi.KvmUserspaceMemoryRegion2(
            slot=slot_id,
            flags=uapi.KVM_MEM_GUEST_MEMFD,
            guest_phys_addr=slot.gfn * PAGE_SIZE,
            memory_size=0 if delete else slot.npages * PAGE_SIZE,
            userspace_addr=slot.shared_addr,
            guest_memfd_offset=slot.pgoff * PAGE_SIZE,
            guest_memfd=memfd_fd,
        )
        uapi.ioctl(vm.fd, uapi.KVM_SET_USER_MEMORY_REGION2, region, "KVM_SET_USER_MEMORY_REGION2")

    def bind_memslot(self, vm_id: str, slot: int, gfn: int, npages: int, memfd_id: str, pgoff: int) -> None:
        with self._vm(vm_id) as vm:
            memfd = self._memfd(vm, memfd_id)
            have = vm.slots.get(slot)
            if have is not None:
                if have.binding == (gfn, npages, memfd_id, pgoff):
                    return
                raise BackendError("EINVAL", f"memslot {slot} exists and a guest_memfd memslot is immutable")
            size = npages * PAGE_SIZE
            shared_fd = os.memfd_create(f"gmem-shared-{vm_id}-{slot}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(shared_fd, size)
                addr = uapi.mmap_shared(shared_fd, size, "mmap of the shared backing")
            except BaseException:
                os.close(shared_fd)
                raise
            bound = _Slot(gfn, npages, memfd_id, pgoff, shared_fd, addr)
            try:
                self._set_region(vm, slot, bound, memfd.fd)
            except BaseException:
                _release_shared(bound)
                raise
            vm.slots[slot] = bound

    def unbind_memslot(self, vm_id: str, slot: int) -> None:
        with self._held(vm_id, missing_ok=True) as vm:
            if vm is not None:
                self._unbind(vm, slot)

    def _unbind(self, vm: _Vm, slot: int) -> None:
        bound = vm.slots.get(slot)
        if bound is None:
            return
        self._set_region(vm, slot, bound, vm.memfds[bound.memfd_id].fd, delete=True)
        del vm.slots[slot]
        _release_shared(bound)

    # -- population ------------------------------------------------------------------------------

    def allocate(self, vm_id: str, memfd_id: str, pgoff: int, npages: int, node: int | None = None) -> None:
        if node is not None:
            self._check_node(node)
            if len(self._nodes) > 1:
                # Placing guest_memfd pages on one node needs a memory policy on the file; not done yet.
                raise BackendError("EOPNOTSUPP", "allocating guest_memfd pages on a chosen NUMA node")
        with self._vm(vm_id) as vm:
            memfd = self._memfd(vm, memfd_id)
            uapi.fallocate(
                memfd.fd, uapi.FALLOC_FL_KEEP_SIZE, pgoff * PAGE_SIZE, npages * PAGE_SIZE, "fallocate(KEEP_SIZE)"
            )

    def punch_hole(self, vm_id: str, memfd_id: str, pgoff: int, npages: int) -> None:
        with self._vm(vm_id) as vm:
            memfd = self._memfd(vm, memfd_id)
            uapi.fallocate(
                memfd.fd,
                uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE,
                pgoff * PAGE_SIZE,
                npages * PAGE_SIZE,
                "fallocate(PUNCH_HOLE|KEEP_SIZE)",
            )

    def set_attributes(self, vm_id: str, gfn: int, npages: int, attribute: str) -> None:
        with self._vm(vm_id) as vm:
            if attribute not in ("private", "shared") or npages <= 0:
                raise BackendError("EINVAL", f"KVM_SET_MEMORY_ATTRIBUTES: bad attribute {attribute!r} or size")
            if self._host.enforcement["memory_attributes"] == "kernel":
                args = uapi.KvmMemoryAttributes(
                    address=gfn * PAGE_SIZE,
                    size=npages * PAGE_SIZE,
                    attributes=uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE if attribute == "private" else 0,
                )
                uapi.ioctl(vm.fd, uapi.KVM_SET_MEMORY_ATTRIBUTES, args, "KVM_SET_MEMORY_ATTRIBUTES")
            vm.attributes.set(gfn, gfn + npages, attribute)

    def _shared_ranges(self, vm: _Vm, gfn: int, npages: int) -> list[tuple[_Slot, int, int]]:
        """(slot, byte offset in its shared memfd, bytes) for each slot piece of ``[gfn, gfn+npages)``."""
        out = []
        for slot in vm.slots.values():
            lo, hi = max(gfn, slot.gfn), min(gfn + npages, slot.gfn + slot.npages)
            if lo < hi:
                out.append((slot, (lo - slot.gfn) * PAGE_SIZE, (hi - lo) * PAGE_SIZE))
        return out

    def populate_shared(self, vm_id: str, gfn: int, npages: int) -> None:
        with self._vm(vm_id) as vm:
            # Write-fault the pages through the broker's mapping, as the VMM's first touch would: an
            # fallocate would reserve them without making them data that SEEK_DATA reports.
            for slot, offset, length in self._shared_ranges(vm, gfn, npages):
                uapi.madvise(slot.shared_addr + offset, length, uapi.MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE")

    def discard_shared(self, vm_id: str, gfn: int, npages: int) -> None:
        with self._held(vm_id, missing_ok=True) as vm:
            if vm is None:
                return
            mode = uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE
            for slot, offset, length in self._shared_ranges(vm, gfn, npages):
                uapi.fallocate(slot.shared_fd, mode, offset, length, "fallocate(PUNCH_HOLE) of the shared backing")

    # -- contents --------------------------------------------------------------------------------

    def _map_page(self, vm: _Vm, memfd_id: str, pgoff: int) -> mmap.mmap:
        memfd = self._memfd(vm, memfd_id)
        if not 0 <= pgoff < memfd.npages:
            raise BackendError("EINVAL", f"page {pgoff} is outside memfd {memfd_id!r}")
        try:
            return mmap.mmap(memfd.fd, PAGE_SIZE, mmap.MAP_SHARED, offset=pgoff * PAGE_SIZE)
        except OSError as exc:
            raise BackendError(uapi.errno_name(exc.errno or 0), f"mmap of memfd {memfd_id!r}: {exc.strerror}") from None

    def read_page(self, vm_id: str, memfd_id: str, pgoff: int) -> bytes:
        with self._vm(vm_id) as vm, self._map_page(vm, memfd_id, pgoff) as page:
            return bytes(page[:])

    def write_page(self, vm_id: str, memfd_id: str, pgoff: int, data: bytes) -> None:
        if len(data) != PAGE_SIZE:
            raise BackendError("EINVAL", f"a page is {PAGE_SIZE} bytes, not {len(data)}")
        with self._vm(vm_id) as vm, self._map_page(vm, memfd_id, pgoff) as page:
            page[:] = data

    def memfd_fd(self, vm_id: str, memfd_id: str) -> int:
        """The memfd's fd, still owned by the backend: for SCM_RIGHTS, which duplicates it.

        The caller keeps the fd from being closed while it uses it (the broker holds the VM's lock).
        """
        with self._vm(vm_id) as vm:
            return self._memfd(vm, memfd_id).fd

    # -- recovery --------------------------------------------------------------------------------

    def inventory(self) -> dict[str, VmInventory]:
        # guest_memfd has no SEEK_DATA (lseek is ESPIPE): the kernel does not say what is populated.
        # The shared memfds are ordinary files, so their population is read back from the kernel.
        with self._lock:
            vm_ids = list(self._vms)
        held: dict[str, VmInventory] = {}
        for vm_id in vm_ids:
            with self._held(vm_id, missing_ok=True) as vm:
                if vm is not None:
                    held[vm_id] = VmInventory(
                        memfds=dict.fromkeys(vm.memfds), memslots=set(vm.slots), shared=self._shared_population(vm)
                    )
        return held

    def _shared_population(self, vm: _Vm) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        for slot in sorted(vm.slots.values(), key=lambda s: s.gfn):
            for start, end in _data_runs(slot.shared_fd, slot.npages * PAGE_SIZE):
                gfn, gfn_end = slot.gfn + start // PAGE_SIZE, slot.gfn + end // PAGE_SIZE
                if runs and runs[-1][1] == gfn:
                    runs[-1] = (runs[-1][0], gfn_end)
                else:
                    runs.append((gfn, gfn_end))
        return runs

    # -- frames and migration ----------------------------------------------------------------------

    @property
    def _nodes(self) -> list[int]:
        return [n.id for n in self.host_info().numa_nodes]

    def _check_node(self, node: int) -> None:
        if node not in self._nodes:
            raise BackendError("ENODEV", f"NUMA node {node} is not online (nodes: {self._nodes})")

    def plan_moves(self, vm_id: str, requests: list[MoveRequest]) -> list[FrameMove]:
        with self._vm(vm_id) as vm:
            planned: list[FrameMove] = []
            for req in requests:
                if req.target_pfn is not None:
                    raise BackendError("EOPNOTSUPP", "moving to a chosen frame: the host kernel picks frames itself")
                if req.target_node is None:
                    raise BackendError("EINVAL", "a move names a target node or a target frame")
                self._check_node(req.target_node)
                if req.ref.memfd_id is not None:
                    raise self._unmovable(vm, req.ref.memfd_id)
                addrs = self._shared_pages(vm, req.ref.index, req.npages)
                planned += moves.plan(req.ref, addrs, req.target_node, skip_on_target=req.skip_on_target)
            return planned

    def _unmovable(self, vm: _Vm, memfd_id: str) -> BackendError:
        """Why a guest_memfd page cannot move here, naming what the kernel lacks."""
        memfd = self._memfd(vm, memfd_id)
        unmapped = (
            ""
            if "mmap" in memfd.flags
            else f"; memfd {memfd_id!r} is not mapped either (made without GUEST_MEMFD_FLAG_MMAP), and "
            "move_pages(2) reaches only mapped pages"
        )
        return BackendError(
            "EOPNOTSUPP",
            "migrating guest_memfd pages: the kernel offers no capability for it (no KVM_CAP_* migrates guest_memfd "
            "folios, which mainline marks unmovable; a private page is never mapped for move_pages(2) to reach)"
            + unmapped,
        )

    def _shared_pages(self, vm: _Vm, gfn: int, npages: int) -> list[int]:
        """The broker's address of each shared-backing page of ``[gfn, gfn + npages)``, in gfn order."""
        addrs: list[int] = []
        for slot, offset, length in sorted(self._shared_ranges(vm, gfn, npages), key=lambda p: p[0].gfn):
            addrs += range(slot.shared_addr + offset, slot.shared_addr + offset + length, PAGE_SIZE)
        if len(addrs) != npages:
            raise BackendError(
                "EOPNOTSUPP", f"gfns [{gfn:#x}, {gfn + npages:#x}) are not all in memslots whose shared side is mapped"
            )
        return addrs

    def move_frames(self, vm_id: str, move: FrameMove, method: str) -> None:
        with self._vm(vm_id) as vm:
            if move.ref.memfd_id is not None:
                raise self._unmovable(vm, move.ref.memfd_id)
            moves.move(move.ref.index, self._shared_pages(vm, move.ref.index, move.npages), move.node)

    def frame_changes(self, vm_id: str) -> FrameChanges:
        return FrameChanges()  # the host's frames are not visible to the broker

    def adopt_frames(self, runs: dict[str, list[FrameRun]]) -> None:
        """Nothing to place: frames die with the process, and VMs come back ``lost``."""

    def read_backing(self, vm_id: str, ref: PageRef, view: str) -> PageBytes:
        raise BackendError("EOPNOTSUPP", "frame views on the kvm backend (see GET .../memfds/{id}/pages/{pgoff})")

    def write_backing(self, vm_id: str, ref: PageRef, offset: int, data: bytes, view: str) -> None:
        raise BackendError("EOPNOTSUPP", "frame views on the kvm backend")

    def restore(self, vm: Vm) -> bool:
        """Kernel objects live as long as this process's fds: nothing survives a restart."""
        with self._lock:
            return vm.id in self._vms

    def close(self) -> None:
        with self._lock:
            vm_ids = list(self._vms)
        for vm_id in vm_ids:
            self.destroy_vm(vm_id)
        with self._lock:
            if self._kvm >= 0:
                os.close(self._kvm)
                self._kvm = -1


def _data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """Byte runs holding data in a file, by lseek(SEEK_DATA / SEEK_HOLE)."""
    runs = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        runs.append((start, end))
        pos = end
    return runs


def _release_shared(slot: _Slot) -> None:
    uapi.munmap(slot.shared_addr, slot.npages * PAGE_SIZE)
    os.close(slot.shared_fd)


def _mem_available_bytes() -> int:
    """MemAvailable of /proc/meminfo: what can be allocated now without swapping."""
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise BackendError("ENOSYS", f"{MEMINFO} has no MemAvailable")


def _numa_nodes() -> list[NumaNode]:
    """NUMA nodes and their memory from sysfs, in pages, as of start-up."""
    nodes = []
    for path in sorted(NODE_ROOT.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        meminfo: dict[str, int] = {}
        for line in (path / "meminfo").read_text().splitlines():
            parts = line.split()  # "Node 0 MemTotal:  16384 kB"
            if len(parts) == 5 and parts[4] == "kB":
                meminfo[parts[2].rstrip(":")] = int(parts[3]) * 1024 // PAGE_SIZE
        nodes.append(NumaNode(int(path.name[4:]), meminfo.get("MemTotal", 0), meminfo.get("MemFree", 0)))
    return nodes or [NumaNode(0, 0, 0)]
