"""The backend port: what gmem-broker asks of the kernel (or of its model).

Every call is idempotent, so a journalled operation left pending by a crash can be replayed.
Failures are raised as :class:`BackendError` carrying the kernel's errno name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..domain.model import Vm


class BackendError(Exception):
    """A backend call failed; ``errno`` is the kernel's name for why (``ENOMEM``, ``EINVAL``...)."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(f"{errno}: {message}")
        self.errno = errno
        self.message = message


@dataclass(frozen=True, slots=True)
class NumaNode:
    id: int
    total_pages: int
    free_pages: int


@dataclass(slots=True)
class HostInfo:
    backend: str
    page_size: int
    vm_types: list[str]
    memfd_flags: list[str]
    numa_nodes: list[NumaNode]
    capabilities: dict[str, int]
    # feature -> "kernel" | "broker" | "model": who enforces it on this host.
    enforcement: dict[str, str]
    details: dict[str, Any] = field(default_factory=dict)
    # End (exclusive) of the guest physical address space a memslot may reach.
    max_gpa: int = 1 << 64


@dataclass(slots=True)
class VmInventory:
    """What a backend holds for one VM: memfd populations and bound memslots.

    A population is ``None`` where the backend cannot tell (guest_memfd has no SEEK_DATA).
    """

    memfds: dict[str, list[tuple[int, int]] | None]
    memslots: set[int]
    # Populated gfn runs of the shared backing.
    shared: list[tuple[int, int]] = field(default_factory=list)


class MemoryBackend(Protocol):
    name: str

    def host_info(self) -> HostInfo: ...
    def create_vm(self, vm_id: str, vm_type: str) -> None: ...
    def destroy_vm(self, vm_id: str) -> None: ...
    def create_memfd(self, vm_id: str, memfd_id: str, npages: int, flags: tuple[str, ...]) -> None: ...
    def close_memfd(self, vm_id: str, memfd_id: str) -> None: ...
    def bind_memslot(self, vm_id: str, slot: int, gfn: int, npages: int, memfd_id: str, pgoff: int) -> None: ...
    def unbind_memslot(self, vm_id: str, slot: int) -> None: ...
    def allocate(self, vm_id: str, memfd_id: str, pgoff: int, npages: int) -> None: ...
    def punch_hole(self, vm_id: str, memfd_id: str, pgoff: int, npages: int) -> None: ...
    def set_attributes(self, vm_id: str, gfn: int, npages: int, attribute: str) -> None: ...
    def populate_shared(self, vm_id: str, gfn: int, npages: int) -> None: ...
    def discard_shared(self, vm_id: str, gfn: int, npages: int) -> None: ...
    def read_page(self, vm_id: str, memfd_id: str, pgoff: int) -> bytes: ...
    def write_page(self, vm_id: str, memfd_id: str, pgoff: int, data: bytes) -> None: ...
    def memfd_fd(self, vm_id: str, memfd_id: str) -> int:
        """The memfd's real fd, still owned by the backend (EOPNOTSUPP where there is none)."""
        ...

    def inventory(self) -> dict[str, VmInventory]: ...
    def restore(self, vm: Vm) -> bool:
        """Re-establish a stored VM after a restart; False when its kernel objects are gone."""
        ...

    def close(self) -> None: ...
