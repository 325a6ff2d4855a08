"""Each rule of DESIGN section 4 as the raw kernel call, on this machine's /dev/kvm.

No broker code is involved beyond the ioctl numbers and structs of ``uapi``: if one of these fails,
the kernel moved, and the test's name says which rule.
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from service.backends.kvm import uapi
from service.backends.kvm.backend import KvmBackend
from service.backends.protocol import BackendError

from .conftest import require_kvm
from .rules import KERNEL_ERRNO

PAGE = 4096
MIB = 1 << 20
GPA = 1 << 32
KEEP = uapi.FALLOC_FL_KEEP_SIZE
PUNCH = uapi.FALLOC_FL_PUNCH_HOLE | uapi.FALLOC_FL_KEEP_SIZE


@dataclass
class RawVm:
    """A KVM VM made with raw ioctls; every fd and mapping it makes is released on close."""

    kvm: int
    fd: int
    fds: list[int] = field(default_factory=list)
    maps: list[tuple[int, int]] = field(default_factory=list)

    def memfd(self, size: int, flags: int = 0) -> int:
        fd = uapi.ioctl(self.fd, uapi.KVM_CREATE_GUEST_MEMFD, uapi.KvmCreateGuestMemfd(size=size, flags=flags), "gmem")
        self.fds.append(fd)
        return fd

    def shared(self, size: int) -> int:
        fd = os.memfd_create("raw-shared", os.MFD_CLOEXEC)
        self.fds.append(fd)
        os.ftruncate(fd, size)
        addr = uapi.mmap_shared(fd, size, "mmap")
        self.maps.append((addr, size))
        return addr

    def slot(self, slot: int, gpa: int, size: int, memfd: int, offset: int, flags: int = 0, vm_fd: int = -1) -> None:
        region = uapi.KvmUserspaceMemoryRegion2(
            slot=slot,
            flags=uapi.KVM_MEM_GUEST_MEMFD | flags,
            guest_phys_addr=gpa,
            memory_size=size,
            userspace_addr=self.shared(max(size, PAGE)),
            guest_memfd_offset=offset,
            guest_memfd=memfd,
        )
        uapi.ioctl(self.fd if vm_fd < 0 else vm_fd, uapi.KVM_SET_USER_MEMORY_REGION2, region, "memslot")

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        for addr, size in self.maps:
            uapi.munmap(addr, size)
        os.close(self.fd)
        os.close(self.kvm)


@pytest.fixture
def raw() -> Iterator[RawVm]:
    require_kvm()
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = RawVm(kvm, uapi.ioctl(kvm, uapi.KVM_CREATE_VM, 0, "KVM_CREATE_VM"))
    yield vm
    vm.close()


def errno_of(call: Callable[[], object]) -> str:
    try:
        call()
    except BackendError as err:
        return err.errno
    except OSError as exc:
        return uapi.errno_name(exc.errno or 0)
    return "accepted"


def test_struct_layouts_and_ioctl_numbers_match_the_kernel_header() -> None:
    # The values <linux/kvm.h> expands to on x86-64, as a C compiler computes them.
    assert uapi.KVM_CREATE_GUEST_MEMFD == 0xC040AED4
    assert uapi.KVM_SET_USER_MEMORY_REGION2 == 0x40A0AE49
    assert uapi.KVM_SET_MEMORY_ATTRIBUTES == 0x4020AED2
    assert uapi.KVM_CHECK_EXTENSION == 0xAE03
    assert uapi.KvmUserspaceMemoryRegion2.guest_memfd.offset == 40


def test_capabilities_the_broker_relies_on(raw: RawVm) -> None:
    assert uapi.ioctl(raw.kvm, uapi.KVM_GET_API_VERSION, 0, "api") == uapi.KVM_API_VERSION
    assert uapi.ioctl(raw.kvm, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_GUEST_MEMFD, "cap") == 1
    assert uapi.ioctl(raw.kvm, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_USER_MEMORY2, "cap") == 1
    flags = uapi.ioctl(raw.kvm, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_GUEST_MEMFD_FLAGS, "cap")
    assert flags & (uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)


@pytest.mark.parametrize(
    ("rule", "size", "flags"),
    [
        ("1 memfd size zero", 0, 0),
        ("1 memfd size unaligned", PAGE + 1, 0),
        ("1 memfd unknown flag", MIB, 1 << 2),
    ],
)
def test_rule_1_memfd_size_and_flags(raw: RawVm, rule: str, size: int, flags: int) -> None:
    assert errno_of(lambda: raw.memfd(size, flags)) == KERNEL_ERRNO[rule]


@pytest.mark.parametrize(
    ("rule", "mode"),
    [
        ("2 fallocate without KEEP_SIZE", 0),
        ("2 fallocate without KEEP_SIZE", uapi.FALLOC_FL_PUNCH_HOLE),
        ("2 fallocate other mode", 0x08 | KEEP),  # COLLAPSE_RANGE
        ("2 fallocate other mode", 0x10 | KEEP),  # ZERO_RANGE
    ],
)
def test_rule_2_fallocate_modes(raw: RawVm, rule: str, mode: int) -> None:
    fd = raw.memfd(MIB)
    assert errno_of(lambda: uapi.fallocate(fd, mode, 0, PAGE, "fallocate")) == KERNEL_ERRNO[rule]


@pytest.mark.parametrize(
    ("rule", "mode", "offset", "length"),
    [
        ("3 allocate unaligned offset", KEEP, 1, PAGE),
        ("3 allocate unaligned length", KEEP, 0, 100),
        ("3 allocate zero length", KEEP, 0, 0),
        ("3 allocate past the end", KEEP, MIB - PAGE, 2 * PAGE),
        ("3 punch zero length", PUNCH, 0, 0),
        ("3 punch unaligned length", PUNCH, PAGE, 3),
    ],
)
def test_rule_3_fallocate_ranges(raw: RawVm, rule: str, mode: int, offset: int, length: int) -> None:
    fd = raw.memfd(MIB)
    assert errno_of(lambda: uapi.fallocate(fd, mode, offset, length, "fallocate")) == KERNEL_ERRNO[rule]


def test_rule_3_the_kernel_accepts_a_punch_past_the_end(raw: RawVm) -> None:
    # The broker refuses it (out-of-range); this pins that the refusal is the broker's own.
    fd = raw.memfd(MIB)
    assert errno_of(lambda: uapi.fallocate(fd, PUNCH, MIB, PAGE, "punch")) == "accepted"


def test_rule_4_memslot_bounds_and_overlaps(raw: RawVm) -> None:
    fd = raw.memfd(MIB)
    assert errno_of(lambda: raw.slot(0, GPA + 1, MIB // 2, fd, 0)) == KERNEL_ERRNO["4 memslot unaligned gpa"]
    assert errno_of(lambda: raw.slot(0, GPA, MIB, fd, PAGE)) == KERNEL_ERRNO["4 memslot offset+size past the memfd"]
    raw.slot(0, GPA, MIB // 2, fd, 0)
    assert errno_of(lambda: raw.slot(1, GPA + PAGE, PAGE, fd, MIB // 2)) == KERNEL_ERRNO["4 memslot gpa overlap"]
    assert errno_of(lambda: raw.slot(1, 2 * GPA, PAGE, fd, 0)) == KERNEL_ERRNO["4 memslot memfd overlap"]


def test_rule_4_memslots_end_inside_the_guest_address_space(raw: RawVm, kvm: KvmBackend) -> None:
    # x86 KVM has no capability for it; the backend finds the limit at start-up, here it is checked.
    fd = raw.memfd(2 * PAGE)
    limit = kvm.host_info().max_gpa
    raw.slot(0, limit - PAGE, PAGE, fd, 0)
    rule = "4 memslot past the guest address space"
    assert errno_of(lambda: raw.slot(1, limit, PAGE, fd, PAGE)) == KERNEL_ERRNO[rule]


def test_rule_4_a_memfd_binds_only_to_its_own_vm(raw: RawVm) -> None:
    fd = raw.memfd(MIB)
    other = uapi.ioctl(raw.kvm, uapi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
    raw.fds.append(other)
    assert errno_of(lambda: raw.slot(0, GPA, PAGE, fd, 0, vm_fd=other)) == KERNEL_ERRNO["4 memslot foreign memfd"]


def test_rule_5_no_attribute_ioctl_on_this_kernel(raw: RawVm) -> None:
    if uapi.ioctl(raw.kvm, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_MEMORY_ATTRIBUTES, "cap"):
        pytest.fail("KVM_CAP_MEMORY_ATTRIBUTES is nonzero: the kvm backend should now let the kernel enforce rule 5")
    args = uapi.KvmMemoryAttributes(address=GPA, size=PAGE, attributes=uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
    rule = "5 set-attributes without the capability"
    assert errno_of(lambda: uapi.ioctl(raw.fd, uapi.KVM_SET_MEMORY_ATTRIBUTES, args, "attrs")) == KERNEL_ERRNO[rule]


def test_rule_6_vm_ioctls_belong_to_the_creating_process(raw: RawVm) -> None:
    memfd = raw.memfd(MIB)
    create = uapi.KvmCreateGuestMemfd(size=PAGE)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only makes two calls and reports their errnos
        try:
            vm_call = errno_of(lambda: uapi.ioctl(raw.fd, uapi.KVM_CREATE_GUEST_MEMFD, create, "gmem"))
            falloc = errno_of(lambda: uapi.fallocate(memfd, KEEP, 0, PAGE, "fallocate"))
            os.write(write_end, f"{vm_call} {falloc}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == f"{KERNEL_ERRNO['6 VM ioctl from another process']} accepted"


def test_rule_7_no_read_write_and_mmap_only_shared(raw: RawVm) -> None:
    plain = raw.memfd(MIB)
    mappable = raw.memfd(MIB, uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    assert errno_of(lambda: os.read(plain, 8)) == KERNEL_ERRNO["7 read of a memfd"]
    assert errno_of(lambda: os.lseek(plain, 0, os.SEEK_DATA)) == KERNEL_ERRNO["7 lseek of a memfd"]
    assert errno_of(lambda: mmap.mmap(plain, PAGE, mmap.MAP_SHARED)) == KERNEL_ERRNO["7 mmap without the mmap flag"]
    assert errno_of(lambda: mmap.mmap(mappable, PAGE, mmap.MAP_PRIVATE)) == KERNEL_ERRNO["7 MAP_PRIVATE"]


def test_rule_7_punched_pages_read_back_as_zero(raw: RawVm) -> None:
    fd = raw.memfd(MIB, uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    with mmap.mmap(fd, PAGE, mmap.MAP_SHARED) as page:
        page[:] = b"\x5a" * PAGE
        assert page[:] == b"\x5a" * PAGE
        uapi.fallocate(fd, PUNCH, 0, PAGE, "punch")
        assert page[:] == bytes(PAGE)


def test_rule_8_no_resize_and_immutable_memslots(raw: RawVm) -> None:
    fd = raw.memfd(MIB)
    assert errno_of(lambda: os.ftruncate(fd, 2 * MIB)) == KERNEL_ERRNO["8 resize"]
    raw.slot(0, GPA, MIB // 2, fd, 0)
    assert errno_of(lambda: raw.slot(0, 2 * GPA, MIB // 2, fd, 0)) == KERNEL_ERRNO["8 memslot moved"]
    ro, dirty = uapi.KVM_MEM_READONLY, uapi.KVM_MEM_LOG_DIRTY_PAGES
    assert errno_of(lambda: raw.slot(1, 3 * GPA, PAGE, fd, MIB // 2, ro)) == KERNEL_ERRNO["8 memslot read-only"]
    assert errno_of(lambda: raw.slot(1, 3 * GPA, PAGE, fd, MIB // 2, dirty)) == KERNEL_ERRNO["8 memslot dirty logging"]
    # Deleting (size 0) is the one change allowed; the range is then free to bind again.
    raw.slot(0, GPA, 0, fd, 0)
    raw.slot(2, GPA, MIB // 2, fd, 0)


def test_vm_types_not_offered_are_refused(raw: RawVm) -> None:
    offered = uapi.ioctl(raw.kvm, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_VM_TYPES, "cap") or 1
    missing = [bit for bit in uapi.VM_TYPES.values() if not offered & (1 << bit)]
    if not missing:
        pytest.skip("this kernel offers every VM type the broker names")

    def create() -> None:
        raw.fds.append(uapi.ioctl(raw.kvm, uapi.KVM_CREATE_VM, missing[0], "KVM_CREATE_VM"))

    assert errno_of(create) == KERNEL_ERRNO["vm type not offered"]


def test_rule_7_touching_a_private_page_through_a_mapping_is_sigbus(raw: RawVm) -> None:
    # Without init_shared the pages are private to the guest: the mapping exists, a touch kills.
    private = raw.memfd(MIB, uapi.GUEST_MEMFD_FLAG_MMAP)
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()  # the signal is the expected outcome, not a crash to report
            with mmap.mmap(private, PAGE, mmap.MAP_SHARED) as page:
                page[0]  # the read is the test
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGBUS


def test_rule_9_init_shared_is_offered_to_a_vm_without_private_memory(raw: RawVm) -> None:
    # Asked on the VM fd, KVM_CAP_GUEST_MEMFD_FLAGS names the flags valid for that VM's type. The default
    # type has no private memory, so init_shared is among them and a memfd takes it. (The refusal side,
    # SNP and TDX VMs, needs a kernel that offers those types; this one offers only the default.)
    flags = uapi.ioctl(raw.fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_GUEST_MEMFD_FLAGS, "cap")
    assert flags & uapi.GUEST_MEMFD_FLAG_INIT_SHARED
    both = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
    assert errno_of(lambda: raw.memfd(MIB, both)) == "accepted"
