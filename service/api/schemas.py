"""Request and response bodies (DESIGN section 7.1). Unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..domain.model import MAX_MEMSLOTS

U64 = (1 << 64) - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VmTypeName(StrEnum):
    default = "default"
    sw_protected = "sw_protected"
    sev_snp = "sev_snp"
    tdx = "tdx"


class VmStateName(StrEnum):
    created = "created"
    running = "running"
    stopped = "stopped"


class VmStateView(StrEnum):
    created = "created"
    running = "running"
    stopped = "stopped"
    lost = "lost"


class AttributeName(StrEnum):
    private = "private"
    shared = "shared"


class VmCreate(Strict):
    name: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    vm_type: str = Field(
        "default", description="default, sw_protected, sev_snp or tdx; what the backend offers is in GET /v1/host"
    )


class VmPatch(Strict):
    state: VmStateName


class Vm(BaseModel):
    id: str
    name: str
    vm_type: str
    state: VmStateView = Field(..., description="lost: the broker restarted and the VM's kernel objects are gone")
    generation: int
    created_at: datetime
    updated_at: datetime
    memfds: int
    memslots: int


class VmList(BaseModel):
    items: list[Vm]


class Deleted(BaseModel):
    operation_id: str
    generation: int
    released: dict[str, list[Any]] | None = None


class MemfdCreate(Strict):
    size: int = Field(..., ge=0, le=U64, description="bytes, page aligned, > 0", examples=[16777216])
    flags: list[str] = Field(default_factory=list, description="subset of mmap, init_shared")


class Memfd(BaseModel):
    id: str
    vm_id: str
    size: int
    flags: list[str]
    allocated: int = Field(..., description="bytes of private backing allocated")
    memslots: list[int]
    created_at: datetime
    operation_id: str | None = None
    generation: int | None = None


class MemfdList(BaseModel):
    items: list[Memfd]


class MemslotCreate(Strict):
    slot: int = Field(..., ge=0, lt=MAX_MEMSLOTS)
    gpa: int = Field(..., ge=0, le=U64, examples=[4294967296])
    size: int = Field(..., ge=0, le=U64, examples=[16777216])
    memfd_id: str
    offset: int = Field(0, ge=0, le=U64)


class Memslot(BaseModel):
    slot: int
    gpa: int
    size: int
    memfd_id: str
    offset: int
    created_at: datetime
    operation_id: str | None = None
    generation: int | None = None


class MemslotList(BaseModel):
    items: list[Memslot]


class ByteRange(Strict):
    offset: int = Field(..., ge=0, le=U64, examples=[0])
    length: int = Field(..., ge=0, le=U64, examples=[1048576])


class AllocateRange(ByteRange):
    node: int | None = Field(
        None, ge=0, le=1 << 16, description="NUMA node for the new pages (static placement, as mbind); default: any"
    )


class PunchHole(ByteRange):
    allow_private: bool = Field(False, description="punch allocated private pages of a running VM")


class GpaRange(Strict):
    gpa: int = Field(..., ge=0, le=U64)
    size: int = Field(..., ge=0, le=U64)


class ConvertRange(GpaRange):
    to: AttributeName


class Convert(Strict):
    ranges: list[ConvertRange] = Field(..., min_length=1)


class Allocated(BaseModel):
    operation_id: str
    generation: int
    pages_allocated: int


class Page(BaseModel):
    memfd_id: str
    pgoff: int
    offset: int
    allocated: bool = Field(..., description="false: a hole, which reads as zeros")
    data: str = Field(..., description="the page's bytes, base64")
    generation: int


class ExportTicket(BaseModel):
    ticket: str = Field(..., description="single use; present it on the Unix socket as REDEEM <ticket>")
    vm_id: str
    memfd_id: str
    size: int
    socket: str = Field(..., description="path of the broker's hand-off Unix socket")
    expires_at: datetime


class Punched(BaseModel):
    operation_id: str
    generation: int
    pages_freed: int


class Converted(BaseModel):
    operation_id: str
    generation: int
    pages_converted: int
    private_pages_freed: int
    shared_pages_freed: int


class VmExtent(BaseModel):
    gpa: int
    size: int
    attribute: AttributeName
    private_backing: str
    shared_backing: str


class VmExtents(BaseModel):
    items: list[VmExtent]
    next_cursor: str | None
    generation: int


class MemfdExtent(BaseModel):
    offset: int
    size: int
    state: str


class MemfdExtents(BaseModel):
    items: list[MemfdExtent]
    next_cursor: str | None
    generation: int


class OperationView(BaseModel):
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


class OperationList(BaseModel):
    items: list[OperationView]
    next_cursor: str | None


class NumaNodeView(BaseModel):
    id: int
    total_pages: int
    free_pages: int
    used_pages: int
    first_pfn: int | None = Field(None, description="the node's frames start here (sim); null where not visible")


class Host(BaseModel):
    backend: str
    page_size: int
    vm_types: list[str]
    memfd_flags: list[str]
    capabilities: dict[str, int]
    enforcement: dict[str, str]
    numa_nodes: list[NumaNodeView]
    budget: dict[str, int]
    max_gpa: int = Field(..., description="end (exclusive) of the guest physical address space a memslot may reach")
    kernel: dict[str, Any] = Field(..., description="what the backend says about the kernel (release, device)")
    vms: dict[str, int] = Field(..., description="total, pending_replay, lost")
    reconcile: list[str]


class Health(BaseModel):
    status: str
    detail: str | None = None


class MoveTarget(Strict):
    gpa: int = Field(..., ge=0, le=U64, description="the page to move (page aligned)", examples=[4294967296])
    target_node: int | None = Field(None, ge=0, le=1 << 16, description="any free frame of this NUMA node")
    target_pfn: int | None = Field(None, ge=0, le=U64, description="exactly this free host frame")

    @model_validator(mode="after")
    def _one_target(self) -> MoveTarget:
        if (self.target_node is None) == (self.target_pfn is None):
            raise ValueError("give exactly one of target_node and target_pfn")
        return self


class MoveBatch(Strict):
    moves: list[MoveTarget] = Field(..., min_length=1, description="all or nothing")


class Evacuate(Strict):
    gpa: int = Field(..., ge=0, le=U64, examples=[4294967296])
    size: int = Field(..., ge=0, le=U64, examples=[1048576])
    target_node: int = Field(..., ge=0, le=1 << 16)


KERNEL_STATUS = (
    "kvm only (null on the sim): per page of the move, the status move_pages(2) returned when the broker asked "
    "the kernel where the pages were (nodes=NULL) while planning the move: the NUMA node each page was on. The "
    "move itself (MPOL_MF_MOVE) runs after the operation is journalled and must leave every page on `node` "
    "(its own status `node` for each page), or the operation is not answered 200."
)


class PageMove(BaseModel):
    gpa: int
    size: int
    backing: str = Field(..., description="private (the memfd page) or shared (the shared backing)")
    old_pfn: int | None
    new_pfn: int | None
    node: int
    method: str = Field(..., description="copy, trusted-agent (encrypted private pages) or move_pages (kvm)")
    agent: str | None = Field(None, description="the firmware command modelled: tdx-relocate or snp-page-move")
    kernel_status: list[int] | None = Field(None, description=KERNEL_STATUS)


class Migrated(BaseModel):
    """One page (the single form), a batch (``moves``), or a range (``moves`` and ``pages_moved``)."""

    operation_id: str | None
    generation: int
    gpa: int | None = None
    backing: str | None = None
    old_pfn: int | None = None
    new_pfn: int | None = None
    node: int | None = None
    method: str | None = None
    agent: str | None = None
    kernel_status: list[int] | None = Field(None, description=KERNEL_STATUS)
    moves: list[PageMove] | None = None
    pages_moved: int | None = None


class ViewName(StrEnum):
    guest = "guest"
    host = "host"


class PageWrite(Strict):
    data: str = Field(..., description="base64 of the bytes to write", examples=["aGVsbG8="])
    offset: int = Field(0, ge=0, lt=4096, description="byte offset inside the page")


class PageView(BaseModel):
    gfn: int
    gpa: int
    view: ViewName
    backing: str
    memfd_id: str | None
    offset: int | None = Field(..., description="byte offset of the page in its memfd (private backing)")
    pfn: int | None
    encrypted: bool = Field(..., description="the frame holds ciphertext (private page of sev_snp / tdx)")
    data: str = Field(..., description="base64 of the page's 4096 bytes")
    generation: int


class FrameRunView(BaseModel):
    backing: str = Field(..., description="private (memfd pages) or shared (the shared backing)")
    memfd_id: str | None
    offset: int | None = Field(..., description="first byte in the memfd (private backing)")
    gpa: int | None = Field(..., description="first gpa (shared backing)")
    size: int
    pfn: int = Field(..., description="the first of the run's consecutive host frames")


class FrameRuns(BaseModel):
    items: list[FrameRunView]
    next_cursor: str | None
    generation: int
