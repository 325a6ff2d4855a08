"""The kernel's KVM and guest_memfd interface: ioctl numbers, UAPI structs, and raw syscalls.

Numbers are computed from the ``_IOC`` encoding (``include/uapi/asm-generic/ioctl.h``) and structs
mirror ``include/uapi/linux/kvm.h`` field for field, each with a size assertion, so a layout slip
fails at import instead of corrupting a kernel call. Every failure is raised as one
:class:`BackendError` carrying the errno's name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
from typing import Any

from ..protocol import BackendError

# -- the _IOC encoding (asm-generic: 8 bits nr, 8 bits type, 14 bits size, 2 bits direction) -----
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (kind << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _io(kind: int, nr: int) -> int:
    return _ioc(_IOC_NONE, kind, nr, 0)


def _iow(kind: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_WRITE, kind, nr, ctypes.sizeof(struct))


def _iowr(kind: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, kind, nr, ctypes.sizeof(struct))


# -- structs -----------------------------------------------------------------------------------


class KvmCreateGuestMemfd(ctypes.Structure):
    """``struct kvm_create_guest_memfd``."""

    _fields_ = [("size", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("reserved", ctypes.c_uint64 * 6)]


class KvmUserspaceMemoryRegion2(ctypes.Structure):
    """``struct kvm_userspace_memory_region2``."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
        ("guest_memfd_offset", ctypes.c_uint64),
        ("guest_memfd", ctypes.c_uint32),
        ("pad1", ctypes.c_uint32),
        ("pad2", ctypes.c_uint64 * 14),
    ]


class KvmMemoryAttributes(ctypes.Structure):
    """``struct kvm_memory_attributes``."""

    _fields_ = [
        ("address", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("attributes", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


assert ctypes.sizeof(KvmCreateGuestMemfd) == 64
assert ctypes.sizeof(KvmUserspaceMemoryRegion2) == 160
assert ctypes.sizeof(KvmMemoryAttributes) == 32

# -- ioctls --------------------------------------------------------------------------------------
KVMIO = 0xAE
KVM_GET_API_VERSION = _io(KVMIO, 0x00)
KVM_CREATE_VM = _io(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _io(KVMIO, 0x03)
KVM_SET_USER_MEMORY_REGION2 = _iow(KVMIO, 0x49, KvmUserspaceMemoryRegion2)
KVM_SET_MEMORY_ATTRIBUTES = _iow(KVMIO, 0xD2, KvmMemoryAttributes)
KVM_CREATE_GUEST_MEMFD = _iowr(KVMIO, 0xD4, KvmCreateGuestMemfd)

KVM_API_VERSION = 12

# -- capabilities (KVM_CAP_*) ----------------------------------------------------------------------
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_GUEST_MEMFD_FLAGS = 244

CAPABILITIES = {
    "user_memory2": KVM_CAP_USER_MEMORY2,
    "memory_attributes": KVM_CAP_MEMORY_ATTRIBUTES,
    "guest_memfd": KVM_CAP_GUEST_MEMFD,
    "vm_types": KVM_CAP_VM_TYPES,
    "guest_memfd_flags": KVM_CAP_GUEST_MEMFD_FLAGS,
}

# -- flags and values ----------------------------------------------------------------------------
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1
MEMFD_FLAGS = {"mmap": GUEST_MEMFD_FLAG_MMAP, "init_shared": GUEST_MEMFD_FLAG_INIT_SHARED}

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3

# x86 VM types, the bit positions of KVM_CAP_VM_TYPES; the broker's names for them.
VM_TYPES = {"default": 0, "sw_protected": 1, "sev_snp": 4, "tdx": 5}

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

MADV_POPULATE_WRITE = 23

# move_pages(2) (mm/migrate.c): the syscall number per machine. Only x86_64's is checked on a live
# kernel (arch/x86/entry/syscalls/syscall_64.tbl); elsewhere the call is refused rather than guessed.
SYS_MOVE_PAGES = {"x86_64": 279}
MPOL_MF_MOVE = 1 << 1
# A status the kernel never writes (it writes a node id or a negated errno): marks pages it left alone.
MOVE_STATUS_UNSET = -(1 << 31)

# -- calls -----------------------------------------------------------------------------------------


def errno_name(err: int) -> str:
    # ENOTSUP and EOPNOTSUPP are one number on Linux; the kernel's source says EOPNOTSUPP.
    if err == errno_mod.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno_mod.errorcode.get(err, str(err))


def _error(err: int, what: str) -> BackendError:
    return BackendError(errno_name(err), f"{what}: {os.strerror(err)}")


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# ioctl is variadic; on the 64-bit ABIs an integer or a pointer travels in the same register.
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
# syscall(2) is variadic too; move_pages(pid, count, pages, nodes, status, flags), every argument in a register.
_libc.syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_int,
]
_libc.syscall.restype = ctypes.c_long

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 1
_MAP_FAILED = ctypes.c_void_p(-1).value


def ioctl(fd: int, request: int, arg: int | ctypes.Structure, what: str) -> int:
    """One ioctl; a struct is passed by address, so the kernel can write back into it (_IOWR)."""
    pointer = ctypes.addressof(arg) if isinstance(arg, ctypes.Structure) else arg
    ret = int(_libc.ioctl(fd, request, pointer))
    if ret < 0:
        raise _error(ctypes.get_errno(), what)
    return ret


def fallocate(fd: int, mode: int, offset: int, length: int, what: str) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        raise _error(ctypes.get_errno(), what)


def mmap_shared(fd: int, length: int, what: str) -> int:
    """Map ``length`` bytes of ``fd`` read-write and shared; returns the address."""
    addr: Any = _libc.mmap(None, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        raise _error(ctypes.get_errno(), what)
    return int(addr)


def munmap(addr: int, length: int) -> None:
    if _libc.munmap(addr, length) != 0:
        raise _error(ctypes.get_errno(), "munmap")


def madvise(addr: int, length: int, advice: int, what: str) -> None:
    if _libc.madvise(addr, length, advice) != 0:
        raise _error(ctypes.get_errno(), what)


def move_pages(addrs: list[int], nodes: list[int] | None, flags: int, what: str) -> tuple[int, list[int]]:
    """move_pages(2) on this process: ``nodes`` None asks where the pages are, else moves page i to nodes[i].

    Returns the kernel's return value (the number of pages it could not move, >= 0) and the status
    array: per page the node it is on, or a negated errno (-ENOENT not present, -EFAULT not mapped...).
    A page the kernel gave up on before reaching keeps ``MOVE_STATUS_UNSET``.
    """
    machine = os.uname().machine
    number = SYS_MOVE_PAGES.get(machine)
    if number is None:
        raise BackendError("EOPNOTSUPP", f"{what}: move_pages(2)'s syscall number on {machine} is not known here")
    count = len(addrs)
    pages = (ctypes.c_void_p * count)(*addrs)
    targets = (ctypes.c_int * count)(*nodes) if nodes is not None else None
    status = (ctypes.c_int * count)(*([MOVE_STATUS_UNSET] * count))
    ret = int(_libc.syscall(number, 0, count, pages, targets, status, flags))
    if ret < 0:
        raise _error(ctypes.get_errno(), what)
    return ret, list(status)
