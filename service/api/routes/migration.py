"""/v1/vms/{vm_id}: migrate-page, and the guest's and the host's view of a page."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from ...domain.errors import DomainError
from ...operations import migration
from ...operations.mutation import submit
from .. import schemas
from ..deps import MUTATION_HEADERS, BrokerDep, MutatingDep, respond, with_etag
from ..lean_route import LeanRoute
from ..problems import VM_MUTATION, responses

router = APIRouter(prefix="/v1/vms/{vm_id}", tags=["migration"], route_class=LeanRoute)


class NotBase64(DomainError):
    code = "validation-error"


GfnPath = Annotated[int, Path(ge=0, lt=1 << 52, description="guest frame number (gpa / 4096)")]
ViewQuery = Annotated[
    schemas.ViewName,
    Query(
        description="guest: as the guest reads it (decrypted); host: the raw frame (ciphertext for encrypted "
        "private pages)"
    ),
]


@router.post(
    "/migrate-page",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Migrated,
    summary="Move pages to other host frames or NUMA nodes",
    description="Three forms. `{gpa, target_node}` or `{gpa, target_pfn}` moves the one page the gpa uses now "
    "(the memfd page for a private gfn, the shared backing for a shared one) and answers `old_pfn`, `new_pfn`, "
    "`node` and `method`: `copy` for shared or unencrypted pages, `trusted-agent` for private pages of "
    "`sev_snp`/`tdx` VMs (the firmware's relocate re-seals the page for its new frame; a plain copy would hand "
    "the guest garbage). `{moves: [...]}` moves a batch, all or nothing. `{gpa, size, target_node}` evacuates "
    "every allocated page of the range not yet on the node (NUMA rebalancing, memory offlining). Journalled; "
    "bumps the generation. On `kvm`, shared pages move with move_pages(2) (`method` `move_pages`, frames null, "
    "`kernel_status` the node the kernel found each page on); guest_memfd pages and `target_pfn` are 501 "
    "`not-supported-by-kernel`, and a node that is not online is 422 `unknown-node` (ENODEV).",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "out-of-range",
        "not-allocated",
        "frame-in-use",
        "conflict",
        "unknown-node",
        "insufficient-memory",
        "not-supported-by-kernel",
        "batch-too-large",
        "backend-error",
        "precondition-failed",
        "idempotency-key-reused",
        *VM_MUTATION,
    ),
)
async def migrate_page(
    vm_id: str, body: schemas.MoveTarget | schemas.MoveBatch | schemas.Evacuate, m: MutatingDep
) -> JSONResponse:
    if isinstance(body, schemas.Evacuate):
        job = migration.evacuate(
            m.broker, vm_id, gpa=body.gpa, size=body.size, target_node=body.target_node, meta=m.meta
        )
    else:
        targets = body.moves if isinstance(body, schemas.MoveBatch) else [body]
        moves = [migration.Move(t.gpa, t.target_node, t.target_pfn) for t in targets]
        batch = isinstance(body, schemas.MoveBatch)
        job = migration.migrate_pages(m.broker, vm_id, moves=moves, batch=batch, meta=m.meta)
    return respond(await submit(m.broker, job))


@router.get(
    "/frames",
    response_model=schemas.FrameRuns,
    summary="Which host frames back the VM's pages, as stored runs",
    description="One item per stored row: a run of pages of one backing on consecutive host frames. A fresh "
    "allocation on unfragmented frames is one run; moving a page out of it splits it. Empty where the backend "
    "does not see frames (kvm).",
    responses=responses("not-found", "invalid-cursor"),
)
def frames(
    vm_id: str,
    broker: BrokerDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    body = migration.frame_runs(broker, vm_id, limit=limit, cursor=cursor)
    return with_etag(body, body["generation"])


@router.get(
    "/gfns/{gfn}",
    response_model=schemas.PageView,
    summary="Read a guest page: the guest's view or the host frame's raw bytes",
    responses=responses("not-found", "out-of-range", "not-allocated", "not-supported-by-kernel"),
)
def read_gfn(vm_id: str, gfn: GfnPath, broker: BrokerDep, view: ViewQuery = schemas.ViewName.guest) -> JSONResponse:
    body = migration.read_gfn(broker, vm_id, gfn, view.value)
    return with_etag(body, body["generation"])


@router.put(
    "/gfns/{gfn}",
    response_model=schemas.PageView,
    summary="Write bytes into a guest page, as the guest (sealed for its frame) or as the host (raw)",
    description="For tests and debugging; contents are not journalled and do not bump the generation.",
    responses=responses("not-found", "out-of-range", "not-allocated", "not-supported-by-kernel"),
)
def write_gfn(
    vm_id: str, gfn: GfnPath, body: schemas.PageWrite, broker: BrokerDep, view: ViewQuery = schemas.ViewName.guest
) -> JSONResponse:
    try:
        data = base64.b64decode(body.data, validate=True)
    except (binascii.Error, ValueError):
        raise NotBase64("data: not valid base64") from None
    page = migration.write_gfn(broker, vm_id, gfn, view.value, offset=body.offset, data=data)
    return with_etag(page, page["generation"])
