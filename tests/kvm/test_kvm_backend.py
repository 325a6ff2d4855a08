"""The kvm backend against the real kernel: objects, contents, fds, and what it says about the host."""

from __future__ import annotations

import os

import pytest

from service.backends.kvm.backend import KvmBackend
from service.backends.protocol import BackendError, FrameMove, MoveRequest, PageRef

PAGE = 4096
GFN = 1 << 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_host_info_comes_from_the_kernel(kvm: KvmBackend) -> None:
    info = kvm.host_info()
    assert info.capabilities["api_version"] == 12
    assert info.capabilities["guest_memfd"] >= 1
    assert info.capabilities["user_memory2"] == 1
    assert "default" in info.vm_types
    assert set(info.memfd_flags) <= {"mmap", "init_shared"}
    assert info.page_size == os.sysconf("SC_PAGE_SIZE")
    nodes = sorted(int(p[4:]) for p in os.listdir("/sys/devices/system/node") if p[4:].isdigit())
    assert [n.id for n in info.numa_nodes] == nodes
    assert all(0 < n.free_pages <= n.total_pages for n in info.numa_nodes)
    # Attributes are the kernel's only where it has the ioctl; here (capability 0) they are the broker's.
    expected = "kernel" if info.capabilities["memory_attributes"] else "broker"
    assert info.enforcement["memory_attributes"] == expected
    assert kvm.host_info() is info  # probed once, at start-up


def test_a_create_delete_cycle_of_100_vms_leaves_no_fd_open(kvm: KvmBackend) -> None:
    before = open_fds()
    for i in range(100):
        vm = f"vm{i}"
        kvm.create_vm(vm, "default")
        kvm.create_memfd(vm, "m", 64, ("init_shared", "mmap"))
        kvm.create_memfd(vm, "n", 64, ())
        kvm.bind_memslot(vm, 0, GFN, 32, "m", 0)
        kvm.bind_memslot(vm, 1, 2 * GFN, 64, "n", 0)
        kvm.allocate(vm, "m", 0, 8)
        kvm.write_page(vm, "m", 1, b"\x01" * PAGE)
        assert kvm.read_page(vm, "m", 1)[:1] == b"\x01"
        kvm.populate_shared(vm, GFN, 4)
        kvm.discard_shared(vm, GFN, 4)
        kvm.unbind_memslot(vm, 0)
        kvm.close_memfd(vm, "m")
        # memslot 1 and memfd n are left for destroy_vm to release
        kvm.destroy_vm(vm)
    assert open_fds() == before


def test_close_releases_everything_including_dev_kvm() -> None:
    from .conftest import require_kvm

    require_kvm()
    before = open_fds()
    backend = KvmBackend()
    backend.create_vm("a", "default")
    backend.create_memfd("a", "m", 16, ())
    backend.bind_memslot("a", 0, GFN, 16, "m", 0)
    backend.close()
    assert open_fds() == before


def test_every_call_is_idempotent(kvm: KvmBackend) -> None:
    for _ in range(2):
        kvm.create_vm("v", "default")
        kvm.create_memfd("v", "m", 16, ("mmap",))
        kvm.bind_memslot("v", 0, GFN, 16, "m", 0)
        kvm.allocate("v", "m", 0, 4)
        kvm.punch_hole("v", "m", 0, 4)
        kvm.set_attributes("v", GFN, 4, "private")
    for _ in range(2):
        kvm.unbind_memslot("v", 0)
        kvm.close_memfd("v", "m")
        kvm.destroy_vm("v")
    assert kvm.inventory() == {}


def test_deleting_a_memslot_removes_it_from_kvm(kvm: KvmBackend) -> None:
    kvm.create_vm("v", "default")
    kvm.create_memfd("v", "m", 16, ())
    kvm.bind_memslot("v", 0, GFN, 16, "m", 0)
    # A guest_memfd memslot is immutable in KVM: rebinding slot 0 elsewhere works only if it is gone.
    kvm.unbind_memslot("v", 0)
    kvm.bind_memslot("v", 0, 2 * GFN, 16, "m", 0)
    assert kvm.inventory()["v"].memslots == {0}


def test_kernel_refusals_carry_the_errno(kvm: KvmBackend) -> None:
    kvm.create_vm("v", "default")
    with pytest.raises(BackendError) as err:
        kvm.create_memfd("v", "m", 0, ())
    assert err.value.errno == "EINVAL"
    kvm.create_memfd("v", "m", 16, ())
    with pytest.raises(BackendError) as err:
        kvm.allocate("v", "m", 15, 2)
    assert err.value.errno == "EINVAL"
    with pytest.raises(BackendError) as err:
        kvm.read_page("v", "m", 0)  # no mmap flag
    assert err.value.errno == "ENODEV"
    with pytest.raises(BackendError) as err:
        kvm.create_vm("w", "tdx")
    assert err.value.errno == "EINVAL"


def test_written_pages_read_back_and_punched_pages_read_zero(kvm: KvmBackend) -> None:
    kvm.create_vm("v", "default")
    kvm.create_memfd("v", "m", 16, ("init_shared", "mmap"))
    pattern = bytes(range(256)) * (PAGE // 256)
    kvm.write_page("v", "m", 3, pattern)
    assert kvm.read_page("v", "m", 3) == pattern
    kvm.punch_hole("v", "m", 3, 1)
    assert kvm.read_page("v", "m", 3) == bytes(PAGE)


def test_nothing_survives_in_a_new_backend(kvm: KvmBackend) -> None:
    from datetime import UTC, datetime

    from service.domain.model import Vm, VmType

    vm, _ = Vm.create(id="v", name="v", vm_type=VmType.DEFAULT, now=datetime.now(UTC))
    kvm.create_vm("v", "default")
    assert kvm.restore(vm)
    other = KvmBackend()
    try:
        assert not other.restore(vm)
    finally:
        other.close()


def test_shared_pages_are_planned_by_asking_the_kernel_and_moved_idempotently(kvm: KvmBackend) -> None:
    kvm.create_vm("v", "default")
    kvm.create_memfd("v", "m", 16, ())
    kvm.bind_memslot("v", 0, GFN, 16, "m", 0)
    kvm.populate_shared("v", GFN, 4)
    shared = PageRef(None, GFN)
    (move,) = kvm.plan_moves("v", [MoveRequest(shared, 4, target_node=0)])
    assert move == FrameMove(shared, 4, None, None, 0, "move_pages", (0, 0, 0, 0))
    # An evacuation leaves out what is on the node already: here, everything.
    assert kvm.plan_moves("v", [MoveRequest(shared, 4, target_node=0, skip_on_target=True)]) == []
    for _ in range(2):
        kvm.move_frames("v", move, "move_pages")
    # A page the kernel does not hold (a hole of the shared memfd) is ENOENT, the domain's not-allocated.
    with pytest.raises(BackendError) as err:
        kvm.plan_moves("v", [MoveRequest(PageRef(None, GFN + 3), 2, target_node=0)])
    assert err.value.errno == "ENOENT"
    assert err.value.message.startswith(f"gfn {GFN + 4:#x}: move_pages(nodes=NULL) gave status -ENOENT")


@pytest.mark.parametrize(
    ("request_", "errno"),
    [
        (MoveRequest(PageRef(None, GFN), 1, target_node=64), "ENODEV"),
        (MoveRequest(PageRef(None, GFN), 1, target_pfn=4096), "EOPNOTSUPP"),
        (MoveRequest(PageRef("m", 0), 1, target_node=0), "EOPNOTSUPP"),
        (MoveRequest(PageRef(None, GFN + 16), 1, target_node=0), "EOPNOTSUPP"),  # past the memslot
    ],
)
def test_moves_this_kernel_cannot_make_are_refused(kvm: KvmBackend, request_: MoveRequest, errno: str) -> None:
    kvm.create_vm("v", "default")
    kvm.create_memfd("v", "m", 16, ("mmap",))
    kvm.bind_memslot("v", 0, GFN, 16, "m", 0)
    kvm.populate_shared("v", GFN, 1)
    kvm.allocate("v", "m", 0, 1)
    with pytest.raises(BackendError) as err:
        kvm.plan_moves("v", [request_])
    assert err.value.errno == errno
