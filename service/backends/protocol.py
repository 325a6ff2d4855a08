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
    # The node's frames are [first_pfn, first_pfn + total_pages) where the backend sees frames (sim).
    first_pfn: int | None = None


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


@dataclass(frozen=True, slots=True)
class PageRef:
    """A page of a VM's backing: memfd ``memfd_id`` at pgoff ``index``, or (``memfd_id`` None) the
    shared backing at gfn ``index``."""

    memfd_id: str | None
    index: int


@dataclass(frozen=True, slots=True)
class MoveRequest:
    """Move ``npages`` pages from ``ref`` to ``target_node`` (any free frames there) or to the frames
    starting at ``target_pfn``. ``skip_on_target``: leave pages already on the target node (evacuation)."""

    ref: PageRef
    npages: int
    target_node: int | None = None
    target_pfn: int | None = None
    skip_on_target: bool = False


@dataclass(frozen=True, slots=True)
class FrameMove:
    """One planned move: pages ``[ref.index, ref.index + npages)`` from frames at ``old_pfn`` to
    frames at ``new_pfn`` (both runs consecutive) on ``node``. Frames are None where the backend
    does not see them (kvm). ``method`` names how the backend moves them when that is not the
    broker's choice (copy / trusted-agent), as kvm's ``move_pages``. ``kernel_status``: per page, the
    status the kernel gave when asked where the pages are (kvm's move_pages(2) with nodes=NULL: the
    node each is on; a page it gives a negated errno for is refused, not planned); None where there is
    no kernel to ask (sim)."""

    ref: PageRef
    npages: int
    old_pfn: int | None
    new_pfn: int | None
    node: int
    method: str | None = None
    kernel_status: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class FrameRun:
    """Pages ``[start, start + npages)`` of one backing (``owner``: memfd id, "" for the shared
    backing) on the consecutive frames starting at ``pfn``."""

    owner: str
    start: int
    npages: int
    pfn: int


@dataclass(slots=True)
class FrameChanges:
    """Net change of a VM's frame runs since the last drain, for the store to mirror as rows."""

    removed: list[FrameRun] = field(default_factory=list)
    added: list[FrameRun] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)


@dataclass(frozen=True, slots=True)
class PageBytes:
    data: bytes
    pfn: int | None
    encrypted: bool


class MemoryBackend(Protocol):
    name: str

    def host_info(self) -> HostInfo: ...
    def available_pages(self) -> int | None:
        """Pages the host can still give new backing now, or None where the backend's own calls refuse
        exactly (the sim's frame pools); asked before an allocation, which is refused when it needs more."""
        ...

    def create_vm(self, vm_id: str, vm_type: str) -> None: ...
    def destroy_vm(self, vm_id: str) -> None: ...
    def create_memfd(self, vm_id: str, memfd_id: str, npages: int, flags: tuple[str, ...]) -> None: ...
    def close_memfd(self, vm_id: str, memfd_id: str) -> None: ...
    def bind_memslot(self, vm_id: str, slot: int, gfn: int, npages: int, memfd_id: str, pgoff: int) -> None: ...
    def unbind_memslot(self, vm_id: str, slot: int) -> None: ...
    def allocate(self, vm_id: str, memfd_id: str, pgoff: int, npages: int, node: int | None = None) -> None:
        """fallocate(KEEP_SIZE); new pages on ``node`` when given (ENOMEM when it is full)."""
        ...

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

    # -- frames, migration and page contents -------------------------------------------------
    def plan_moves(self, vm_id: str, requests: list[MoveRequest]) -> list[FrameMove]:
        """Choose destinations for a batch of moves without changing anything (all or nothing:
        raises BackendError ENODEV unknown node, ENOMEM target full, EBUSY frame in use, ERANGE no
        such frame, EOPNOTSUPP a page this kernel cannot move, e.g. guest_memfd pages on kvm)."""
        ...

    def move_frames(self, vm_id: str, move: FrameMove, method: str) -> None:
        """Carry out a planned move (idempotent: a move already done is a no-op)."""
        ...

    def frame_changes(self, vm_id: str) -> FrameChanges:
        """Drain the frame runs changed since the last call (empty where frames are not visible)."""
        ...

    def adopt_frames(self, runs: dict[str, list[FrameRun]]) -> None:
        """Before ``restore``: the frame runs the database recorded, per VM, to place pages on again."""
        ...

    def read_backing(self, vm_id: str, ref: PageRef, view: str) -> PageBytes:
        """A page as the guest sees it (``view="guest"``, decrypted) or raw frame bytes (``"host"``)."""
        ...

    def write_backing(self, vm_id: str, ref: PageRef, offset: int, data: bytes, view: str) -> None: ...
    def restore(self, vm: Vm) -> bool:
        """Re-establish a stored VM after a restart; False when its kernel objects are gone."""
        ...

    def close(self) -> None: ...
