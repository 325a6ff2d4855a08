"""/v1/vms/{vm_id}/memslots: bind gpa ranges to memfd offsets."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...operations import memfds, queries
from ...operations.mutation import submit
from .. import schemas
from ..deps import MUTATION_HEADERS, BrokerDep, MutatingDep, respond
from ..lean_route import LeanRoute
from ..problems import VM_MUTATION, responses

router = APIRouter(prefix="/v1/vms/{vm_id}/memslots", tags=["memslots"], route_class=LeanRoute)


@router.post(
    "",
    openapi_extra=MUTATION_HEADERS,
    status_code=201,
    response_model=schemas.Memslot,
    summary="Create a memslot (KVM_SET_USER_MEMORY_REGION2)",
    description="Binds [gpa, gpa+size) to memfd offsets [offset, offset+size) plus an empty shared backing. "
    "Pages start private on VM types with private memory, shared on `default` VMs and `init_shared` memfds.",
    responses=responses(
        "not-found",
        "unaligned",
        "invalid-length",
        "out-of-range",
        "overlap",
        "slot-in-use",
        "foreign-memfd",
        "precondition-failed",
        "idempotency-key-reused",
        *VM_MUTATION,
    ),
)
async def create_memslot(vm_id: str, body: schemas.MemslotCreate, m: MutatingDep) -> JSONResponse:
    return respond(
        await submit(
            m.broker,
            memfds.create_memslot(
                m.broker,
                vm_id,
                slot=body.slot,
                gpa=body.gpa,
                size=body.size,
                memfd_id=body.memfd_id,
                offset=body.offset,
                meta=m.meta,
            ),
        )
    )


@router.get("", response_model=schemas.MemslotList, summary="List memslots", responses=responses("not-found"))
def list_memslots(vm_id: str, broker: BrokerDep) -> JSONResponse:
    return JSONResponse({"items": queries.list_memslots(broker, vm_id)})


@router.delete(
    "/{slot}",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Deleted,
    summary="Delete a memslot",
    description="Removes the binding and discards its shared backing; the memfd keeps its pages.",
    responses=responses(*VM_MUTATION),
)
async def delete_memslot(vm_id: str, slot: int, m: MutatingDep) -> JSONResponse:
    return respond(await submit(m.broker, memfds.delete_memslot(m.broker, vm_id, slot, meta=m.meta)))
