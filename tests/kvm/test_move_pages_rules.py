"""move_pages(2) as the raw syscall on this machine: what the kvm backend's migrate-page relies on.

No broker code beyond ``uapi`` (the syscall wrapper and the guest_memfd ioctls): if one of these
fails, the kernel moved, and the test's name says which rule. Where the kernel differs from the
move_pages(2) manual page, the test says so.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.backends.kvm import uapi
from service.backends.protocol import BackendError

from .conftest import require_kvm
from .rules import KERNEL_ERRNO

PAGE = 4096
MOVE = uapi.MPOL_MF_MOVE


def online_nodes() -> list[int]:
    text = Path("/sys/devices/system/node/has_memory").read_text().strip()
    nodes: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        nodes += range(int(lo), int(hi or lo) + 1)
    return nodes


def offline_node() -> int:
    return max(online_nodes()) + 1


@pytest.fixture
def shared() -> Iterator[int]:
    """8 pages of a mapped memfd, the first two populated: the shape of a memslot's shared backing."""
    fd = os.memfd_create("raw-move-pages", os.MFD_CLOEXEC)
    os.ftruncate(fd, 8 * PAGE)
    addr = uapi.mmap_shared(fd, 8 * PAGE, "mmap")
    uapi.madvise(addr, 2 * PAGE, uapi.MADV_POPULATE_WRITE, "populate")
    yield addr
    uapi.munmap(addr, 8 * PAGE)
    os.close(fd)


def test_the_syscall_number_is_known_for_this_machine() -> None:
    assert os.uname().machine in uapi.SYS_MOVE_PAGES, "the kvm backend refuses migrate-page on this architecture"


def test_query_reports_the_node_of_present_pages_and_enoent_for_holes(shared: int) -> None:
    ret, status = uapi.move_pages([shared, shared + PAGE, shared + 2 * PAGE], None, 0, "query")
    assert ret == 0
    assert status[:2] == [online_nodes()[0]] * 2
    assert status[2] == -errno.ENOENT


def test_query_of_an_unmapped_address_is_efault(shared: int) -> None:
    _, status = uapi.move_pages([shared + (1 << 40)], None, 0, "query")
    assert status == [-errno.EFAULT]


def test_a_move_to_the_node_a_page_is_on_is_a_noop_with_status_the_node(shared: int) -> None:
    # The manual page says ENOENT when no page needs moving; this kernel returns 0 and the node per page.
    node = online_nodes()[0]
    ret, status = uapi.move_pages([shared, shared + PAGE], [node, node], MOVE, "move")
    assert (ret, status) == (0, [node, node])
    assert uapi.move_pages([shared], None, 0, "query")[1] == [node]


def test_a_move_leaves_a_hole_alone_with_status_enoent(shared: int) -> None:
    node = online_nodes()[0]
    ret, status = uapi.move_pages([shared, shared + 3 * PAGE], [node, node], MOVE, "move")
    assert (ret, status) == (0, [node, -errno.ENOENT])
    # Not populated by the attempt either.
    assert uapi.move_pages([shared + 3 * PAGE], None, 0, "query")[1] == [-errno.ENOENT]


def test_a_move_to_a_node_not_online_fails_the_whole_call(shared: int) -> None:
    with pytest.raises(BackendError) as err:
        uapi.move_pages([shared], [offline_node()], MOVE, "move")
    assert err.value.errno == KERNEL_ERRNO["migrate to a node not online"]
    # Nothing moved: the page is where it was.
    assert uapi.move_pages([shared], None, 0, "query")[1] == [online_nodes()[0]]


def test_unknown_flags_are_einval(shared: int) -> None:
    with pytest.raises(BackendError) as err:
        uapi.move_pages([shared], [online_nodes()[0]], 1 << 7, "move")
    assert err.value.errno == "EINVAL"


def test_a_private_guest_memfd_page_is_out_of_move_pages_reach() -> None:
    """An allocated page of an ``mmap`` guest_memfd that is private is never in the page tables:
    move_pages(2) sees no page there (-ENOENT), so it cannot be asked to move one (DESIGN rule 10)."""
    require_kvm()
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = uapi.ioctl(kvm, uapi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
    args = uapi.KvmCreateGuestMemfd(size=4 * PAGE, flags=uapi.GUEST_MEMFD_FLAG_MMAP)
    memfd = uapi.ioctl(vm, uapi.KVM_CREATE_GUEST_MEMFD, args, "gmem")
    addr = uapi.mmap_shared(memfd, 4 * PAGE, "mmap")
    try:
        uapi.fallocate(memfd, uapi.FALLOC_FL_KEEP_SIZE, 0, PAGE, "allocate")
        node = online_nodes()[0]
        assert uapi.move_pages([addr], None, 0, "query")[1] == [-errno.ENOENT]
        assert uapi.move_pages([addr], [node], MOVE, "move") == (0, [-errno.ENOENT])
    finally:
        uapi.munmap(addr, 4 * PAGE)
        for fd in (memfd, vm, kvm):
            os.close(fd)


def test_a_shared_guest_memfd_page_on_its_node_takes_the_noop_move() -> None:
    """A mapped ``init_shared`` guest_memfd page already on the target node gets status the node: the
    kernel returns before it would find the folio unmovable. With one NUMA node, rule 10 cannot be
    observed through move_pages(2) here; the broker refuses guest_memfd pages on the rule itself."""
    require_kvm()
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = uapi.ioctl(kvm, uapi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
    flags = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
    memfd = uapi.ioctl(vm, uapi.KVM_CREATE_GUEST_MEMFD, uapi.KvmCreateGuestMemfd(size=4 * PAGE, flags=flags), "gmem")
    addr = uapi.mmap_shared(memfd, 4 * PAGE, "mmap")
    try:
        uapi.madvise(addr, PAGE, uapi.MADV_POPULATE_WRITE, "populate")
        node = online_nodes()[0]
        assert uapi.move_pages([addr], [node], MOVE, "move") == (0, [node])
    finally:
        uapi.munmap(addr, 4 * PAGE)
        for fd in (memfd, vm, kvm):
            os.close(fd)
