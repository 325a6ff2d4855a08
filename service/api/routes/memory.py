"""/v1/vms/{vm_id}: convert, the shared backing, the VM's extent map, and its journal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ...operations import population, queries
from ...operations.mutation import submit
from .. import schemas
from ..deps import MUTATION_HEADERS, BrokerDep, MutatingDep, respond, with_etag
from ..lean_route import LeanRoute
from ..problems import VM_MUTATION, responses

router = APIRouter(prefix="/v1/vms/{vm_id}", tags=["memory"], route_class=LeanRoute)


@router.post(
    "/convert",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Converted,
    summary="Convert gpa ranges between private and shared",
    description="Sets the attribute of every gfn (KVM_SET_MEMORY_ATTRIBUTES), then discards the backing the "
    "range no longer uses: to shared, the private pages are punched; to private, the shared backing is "
    "discarded. A batch is all-or-nothing.",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "out-of-range",
        "unsupported-attribute",
        "batch-too-large",
        "precondition-failed",
        "idempotency-key-reused",
        *VM_MUTATION,
    ),
)
async def convert(vm_id: str, body: schemas.Convert, m: MutatingDep) -> JSONResponse:
    ranges = [{"gpa": r.gpa, "size": r.size, "to": r.to.value} for r in body.ranges]
    return respond(await submit(m.broker, population.convert(m.broker, vm_id, ranges=ranges, meta=m.meta)))


@router.post(
    "/shared/populate",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Allocated,
    summary="Populate the shared backing of a gpa range",
    description="What a VMM's first touch of shared memory does. Refused (`attribute-mismatch`) for private "
    "gfns and for gfns whose private backing is still allocated, which keeps the invariant: no gfn is backed "
    "by both.",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "out-of-range",
        "attribute-mismatch",
        "insufficient-memory",
        "precondition-failed",
        "idempotency-key-reused",
        *VM_MUTATION,
    ),
)
async def populate_shared(vm_id: str, body: schemas.GpaRange, m: MutatingDep) -> JSONResponse:
    return respond(
        await submit(m.broker, population.populate_shared(m.broker, vm_id, gpa=body.gpa, size=body.size, meta=m.meta))
    )


@router.get(
    "/extents",
    response_model=schemas.VmExtents,
    summary="The VM's extent map: attribute and both backings, maximal runs",
    responses=responses("not-found", "unaligned", "out-of-range", "invalid-cursor"),
)
def vm_extents(
    vm_id: str,
    broker: BrokerDep,
    start: Annotated[int, Query(ge=0, description="first gpa")] = 0,
    end: Annotated[int | None, Query(ge=0, description="end gpa (exclusive)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    body = queries.vm_extents(broker, vm_id, start=start, end=end, limit=limit, cursor=cursor)
    return with_etag(body, body["generation"])


@router.get(
    "/operations",
    response_model=schemas.OperationList,
    summary="The VM's operation journal, oldest first",
    responses=responses("not-found", "invalid-cursor"),
)
def operations(
    vm_id: str,
    broker: BrokerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    return JSONResponse(queries.list_operations(broker, vm_id, limit=limit, cursor=cursor))
