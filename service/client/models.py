"""What the broker answers, as typed models (DESIGN section 7.1).

Written for remote users: nothing here comes from the server's code. Unknown fields are ignored, so
a newer server that adds fields does not break an older client; tests/client/test_models.py checks
these models against the committed OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Attribute = Literal["private", "shared"]


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Vm(Model):
    id: str
    name: str
    vm_type: str
    state: str
    generation: int
    created_at: datetime
    updated_at: datetime
    memfds: int
    memslots: int


class Deleted(Model):
    operation_id: str
    generation: int
    released: dict[str, list[Any]] | None = None


class Memfd(Model):
    id: str
    vm_id: str
    size: int
    flags: list[str]
    allocated: int
    memslots: list[int]
    created_at: datetime
    operation_id: str | None = None
    generation: int | None = None


class Memslot(Model):
    slot: int
    gpa: int
    size: int
    memfd_id: str
    offset: int
    created_at: datetime
    operation_id: str | None = None
    generation: int | None = None


class Allocated(Model):
    operation_id: str
    generation: int
    pages_allocated: int


class Punched(Model):
    operation_id: str
    generation: int
    pages_freed: int


class Converted(Model):
    operation_id: str
    generation: int
    pages_converted: int
    private_pages_freed: int
    shared_pages_freed: int


class PageMove(Model):
    """One run of pages moved: from frame ``old_pfn`` on to ``new_pfn`` on ``node`` (``size`` bytes)."""

    gpa: int
    size: int
    backing: str  # private (the memfd page) or shared (the shared backing)
    old_pfn: int | None
    new_pfn: int | None
    node: int
    method: str  # copy, trusted-agent or move_pages
    agent: str | None = None
    kernel_status: list[int] | None = None  # kvm: per page, the node move_pages(2) found it on before the move


class Migrated(Model):
    """The answer to every form of migrate-page: one page's move in its own fields (the single form),
    or ``moves`` (a batch; a range, with ``pages_moved``). A range already in place has no operation."""

    operation_id: str | None
    generation: int
    gpa: int | None = None
    backing: str | None = None
    old_pfn: int | None = None
    new_pfn: int | None = None
    node: int | None = None
    method: str | None = None
    agent: str | None = None
    kernel_status: list[int] | None = None
    moves: list[PageMove] | None = None
    pages_moved: int | None = None


class VmExtent(Model):
    gpa: int
    size: int
    attribute: Attribute
    private_backing: str
    shared_backing: str


class VmExtentPage(Model):
    items: list[VmExtent]
    next_cursor: str | None
    generation: int


class MemfdExtent(Model):
    offset: int
    size: int
    state: str


class MemfdExtentPage(Model):
    items: list[MemfdExtent]
    next_cursor: str | None
    generation: int


class Operation(Model):
    id: str
    seq: int
    kind: str
    status: str
    generation: int
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


class OperationPage(Model):
    items: list[Operation]
    next_cursor: str | None


class NumaNode(Model):
    id: int
    total_pages: int
    free_pages: int
    used_pages: int
    first_pfn: int | None = None  # where the backend sees frames (sim)


class Host(Model):
    backend: str
    page_size: int
    vm_types: list[str]
    memfd_flags: list[str]
    capabilities: dict[str, int]
    enforcement: dict[str, str]
    numa_nodes: list[NumaNode]
    budget: dict[str, int]
    max_gpa: int
    kernel: dict[str, Any]
    vms: dict[str, int]
    reconcile: list[str]


class Page(Model):
    """One page of a memfd read through the broker's mapping (kvm, ``mmap`` + ``init_shared`` memfds)."""

    memfd_id: str
    pgoff: int
    offset: int
    allocated: bool
    data: str  # base64
    generation: int


class ExportTicket(Model):
    """A single-use ticket for ``handoff.fetch_memfd``."""

    ticket: str
    vm_id: str
    memfd_id: str
    size: int
    socket: str
    expires_at: datetime


class Health(Model):
    status: str
    detail: str | None = None


class ProblemType(Model):
    """What ``GET /problems/<code>`` says about a problem type."""

    type: str
    title: str
    status: int
    description: str


class Problem(BaseModel):
    """An RFC 9457 problem document; members beyond the standard ones are kept in ``model_extra``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = "about:blank"
    title: str = ""
    status: int
    detail: str = ""
    instance: str | None = None
    errno: str | None = None
    request_id: str | None = None

    @property
    def code(self) -> str:
        """The stable code: the last segment of ``type`` (``/problems/private-in-use`` -> ``private-in-use``)."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]


class FrameRun(Model):
    """A run of a VM's pages of one backing on consecutive host frames (sim)."""

    backing: str
    memfd_id: str | None
    offset: int | None
    gpa: int | None
    size: int
    pfn: int


class FrameRunPage(Model):
    items: list[FrameRun]
    next_cursor: str | None
    generation: int


class GuestPage(Model):
    """A guest page as the guest reads it (``view="guest"``) or as its host frame holds it (``"host"``)."""

    gfn: int
    gpa: int
    view: Literal["guest", "host"]
    backing: str
    memfd_id: str | None
    offset: int | None
    pfn: int | None
    encrypted: bool
    data: str  # base64 of the 4096 bytes
    generation: int


class Event(Model):
    """One journal event off ``/v1/vms/{id}/events`` or ``/v1/events``: ``id`` is the operation id."""

    id: str
    kind: str
    data: dict[str, Any]
