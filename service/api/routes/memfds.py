"""/v1/vms/{vm_id}/memfds: guest_memfds, their population (allocate, punch-hole) and extents."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ...operations import memfds, population, queries
from .. import schemas
from ..deps import BrokerDep, MetaDep, respond, with_etag
from ..problems import responses

router = APIRouter(prefix="/v1/vms/{vm_id}/memfds", tags=["memfds"])


@router.post(
    "",
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
    ),
)
def create_memfd(vm_id: str, body: schemas.MemfdCreate, broker: BrokerDep, meta: MetaDep) -> JSONResponse:
    return respond(memfds.create_memfd(broker, vm_id, size=body.size, flags=body.flags, meta=meta))


@router.get("", response_model=schemas.MemfdList, summary="List a VM's memfds", responses=responses("not-found"))
def list_memfds(vm_id: str, broker: BrokerDep) -> JSONResponse:
    return JSONResponse({"items": queries.list_memfds(broker, vm_id)})


@router.get("/{memfd_id}", response_model=schemas.Memfd, summary="Read a memfd", responses=responses("not-found"))
def get_memfd(vm_id: str, memfd_id: str, broker: BrokerDep) -> JSONResponse:
    return JSONResponse(queries.get_memfd(broker, vm_id, memfd_id))


@router.delete(
    "/{memfd_id}",
    response_model=schemas.Deleted,
    summary="Close and delete a memfd",
    responses=responses("not-found", "in-use", "precondition-failed"),
)
def delete_memfd(vm_id: str, memfd_id: str, broker: BrokerDep, meta: MetaDep) -> JSONResponse:
    return respond(memfds.delete_memfd(broker, vm_id, memfd_id, meta=meta))


@router.post(
    "/{memfd_id}/allocate",
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
    ),
)
def allocate(vm_id: str, memfd_id: str, body: schemas.AllocateRange, broker: BrokerDep, meta: MetaDep) -> JSONResponse:
    return respond(
        population.allocate(broker, vm_id, memfd_id, offset=body.offset, length=body.length, node=body.node, meta=meta)
    )


@router.post(
    "/{memfd_id}/punch-hole",
    response_model=schemas.Punched,
    summary="Free private backing (fallocate PUNCH_HOLE|KEEP_SIZE)",
    description="Refused with `private-in-use` when it would free allocated private pages of a running VM, "
    "unless `allow_private` is true. Ranges past the end of the memfd are refused (`out-of-range`).",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "out-of-range",
        "private-in-use",
        "precondition-failed",
        "idempotency-key-reused",
    ),
)
def punch_hole(vm_id: str, memfd_id: str, body: schemas.PunchHole, broker: BrokerDep, meta: MetaDep) -> JSONResponse:
    return respond(
        population.punch_hole(
            broker, vm_id, memfd_id, offset=body.offset, length=body.length, allow_private=body.allow_private, meta=meta
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
