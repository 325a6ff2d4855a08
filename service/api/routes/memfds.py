"""/v1/vms/{vm_id}/memfds: guest_memfds, their population (allocate, punch-hole) and extents."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from ...operations import handoff, memfds, population, queries
from ...operations.mutation import submit
from .. import schemas
from ..auth import ADMIN, PrincipalDep, require
from ..deps import MUTATION_HEADERS, BrokerDep, HandoffDep, MutatingDep, respond, with_etag
from ..lean_route import LeanRoute
from ..problems import VM_MUTATION, responses

router = APIRouter(prefix="/v1/vms/{vm_id}/memfds", tags=["memfds"], route_class=LeanRoute)


@router.post(
    "",
    openapi_extra=MUTATION_HEADERS,
    status_code=201,
    response_model=schemas.Memfd,
    summary="Create a guest_memfd",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "unsupported-flags",
        "out-of-range",
        "precondition-failed",
        "insufficient-memory",
        *VM_MUTATION,
    ),
)
async def create_memfd(vm_id: str, body: schemas.MemfdCreate, m: MutatingDep) -> JSONResponse:
    return respond(
        await submit(m.broker, memfds.create_memfd(m.broker, vm_id, size=body.size, flags=body.flags, meta=m.meta))
    )


@router.get("", response_model=schemas.MemfdList, summary="List a VM's memfds", responses=responses("not-found"))
def list_memfds(vm_id: str, broker: BrokerDep) -> JSONResponse:
    return JSONResponse({"items": queries.list_memfds(broker, vm_id)})


@router.get("/{memfd_id}", response_model=schemas.Memfd, summary="Read a memfd", responses=responses("not-found"))
def get_memfd(vm_id: str, memfd_id: str, broker: BrokerDep) -> JSONResponse:
    return JSONResponse(queries.get_memfd(broker, vm_id, memfd_id))


@router.delete(
    "/{memfd_id}",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Deleted,
    summary="Close and delete a memfd",
    responses=responses("in-use", *VM_MUTATION),
)
async def delete_memfd(vm_id: str, memfd_id: str, m: MutatingDep) -> JSONResponse:
    return respond(await submit(m.broker, memfds.delete_memfd(m.broker, vm_id, memfd_id, meta=m.meta)))


@router.post(
    "/{memfd_id}/allocate",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Allocated,
    summary="Allocate private backing (fallocate KEEP_SIZE)",
    description="Pages already allocated stay as they are. Refused whole, changing nothing, if any page is "
    "bound to a shared gfn (`attribute-mismatch`) or memory runs out (`insufficient-memory`): on the host, or "
    "on the NUMA node the request names (`node`).",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "out-of-range",
        "attribute-mismatch",
        "insufficient-memory",
        "unknown-node",
        "precondition-failed",
        "idempotency-key-reused",
        *VM_MUTATION,
    ),
)
async def allocate(vm_id: str, memfd_id: str, body: schemas.AllocateRange, m: MutatingDep) -> JSONResponse:
    return respond(
        await submit(
            m.broker,
            population.allocate(
                m.broker, vm_id, memfd_id, offset=body.offset, length=body.length, node=body.node, meta=m.meta
            ),
        )
    )


@router.post(
    "/{memfd_id}/punch-hole",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Punched,
    summary="Free private backing (fallocate PUNCH_HOLE|KEEP_SIZE)",
    description="Refused with `private-in-use` when it would free allocated private pages of a running VM, "
    "unless `allow_private` is true, which needs the `admin` scope. Ranges past the end of the memfd are "
    "refused (`out-of-range`).",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "out-of-range",
        "private-in-use",
        "precondition-failed",
        "idempotency-key-reused",
        *VM_MUTATION,
    ),
)
async def punch_hole(
    vm_id: str, memfd_id: str, body: schemas.PunchHole, m: MutatingDep, who: PrincipalDep
) -> JSONResponse:
    if body.allow_private:
        require(who, ADMIN, "punch-hole with allow_private=true")
    return respond(
        await submit(
            m.broker,
            population.punch_hole(
                m.broker,
                vm_id,
                memfd_id,
                offset=body.offset,
                length=body.length,
                allow_private=body.allow_private,
                meta=m.meta,
            ),
        )
    )


@router.get(
    "/{memfd_id}/extents",
    response_model=schemas.MemfdExtents,
    summary="A memfd's population as maximal extents",
    responses=responses("not-found", "unaligned", "out-of-range", "invalid-cursor"),
)
def memfd_extents(
    vm_id: str,
    memfd_id: str,
    broker: BrokerDep,
    start: Annotated[int, Query(ge=0, description="first byte offset")] = 0,
    end: Annotated[int | None, Query(ge=0, description="end byte offset (exclusive)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    body = queries.memfd_extents_page(broker, vm_id, memfd_id, start=start, end=end, limit=limit, cursor=cursor)
    return with_etag(body, body["generation"])


@router.get(
    "/{memfd_id}/pages/{pgoff}",
    response_model=schemas.Page,
    summary="Read one shared page (debugging)",
    description="Reads page `pgoff` of an `mmap` + `init_shared` memfd through a mapping, as base64. Private "
    "pages are refused (`private-page`): the host touching one gets SIGBUS. Reading a hole returns zeros and "
    "leaves it a hole.",
    responses=responses("not-found", "out-of-range", "private-page", "vm-lost", "not-supported-by-kernel"),
)
def read_page(
    vm_id: str, memfd_id: str, pgoff: Annotated[int, Path(ge=0, le=(1 << 52))], broker: BrokerDep
) -> JSONResponse:
    body = queries.read_page(broker, vm_id, memfd_id, pgoff)
    return with_etag(body, body["generation"])


@router.post(
    "/{memfd_id}/export",
    status_code=201,
    response_model=schemas.ExportTicket,
    summary="Issue a ticket to fetch the memfd's fd over the hand-off socket",
    description="The ticket is single use and expires after 60 s. Present it on the Unix socket named in the "
    "answer (`REDEEM <ticket>`; `service.client.handoff.fetch_memfd` does it): the fd comes back by SCM_RIGHTS, "
    "good for fallocate and mmap. Needs the `admin` scope: the fd gives full control of the memory.",
    openapi_extra={**MUTATION_HEADERS, "x-required-scope": "admin"},
    responses=responses(  # not journalled: no replay-pending
        "not-found",
        "vm-lost",
        "not-supported-by-kernel",
        "backend-error",
        "precondition-failed",
        "idempotency-key-reused",
    ),
)
def export_memfd(vm_id: str, memfd_id: str, hand_off: HandoffDep, m: MutatingDep, who: PrincipalDep) -> JSONResponse:
    require(who, ADMIN, "export of a memfd's fd")
    return respond(handoff.export_memfd(m.broker, hand_off.tickets, vm_id, memfd_id, hand_off.path, m.meta))
