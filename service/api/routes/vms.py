"""/v1/vms: create, list, read, change state, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ...operations import queries, vms
from ...operations.mutation import submit
from .. import schemas
from ..deps import MUTATION_HEADERS, BrokerDep, MutatingDep, respond, with_etag
from ..lean_route import LeanRoute
from ..problems import VM_MUTATION, responses

router = APIRouter(prefix="/v1/vms", tags=["vms"], route_class=LeanRoute)


@router.post(
    "",
    openapi_extra=MUTATION_HEADERS,
    status_code=201,
    response_model=schemas.Vm,
    summary="Create a VM",
    responses=responses(
        "unsupported-vm-type", "name-taken", "insufficient-memory", "backend-error", "idempotency-key-reused"
    ),
)
def create_vm(body: schemas.VmCreate, m: MutatingDep) -> JSONResponse:
    return respond(vms.create_vm(m.broker, name=body.name, vm_type=body.vm_type, meta=m.meta))


@router.get("", response_model=schemas.VmList, summary="List VMs", responses=responses())
def list_vms(broker: BrokerDep) -> JSONResponse:
    return JSONResponse({"items": queries.list_vms(broker)})


@router.get("/{vm_id}", response_model=schemas.Vm, summary="Read a VM", responses=responses("not-found"))
def get_vm(vm_id: str, broker: BrokerDep) -> JSONResponse:
    body = queries.get_vm(broker, vm_id)
    return with_etag(body, body["generation"])


@router.patch(
    "/{vm_id}",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Vm,
    summary="Change a VM's state",
    responses=responses(  # a state change calls no backend
        "invalid-transition", *(code for code in VM_MUTATION if code != "backend-error")
    ),
)
async def patch_vm(vm_id: str, body: schemas.VmPatch, m: MutatingDep) -> JSONResponse:
    return respond(await submit(m.broker, vms.set_vm_state(m.broker, vm_id, state=body.state.value, meta=m.meta)))


@router.delete(
    "/{vm_id}",
    openapi_extra=MUTATION_HEADERS,
    response_model=schemas.Deleted,
    summary="Delete a VM",
    description="Refused with 409 `in-use` while the VM has memfds or memslots, unless `force=true`, "
    "which releases memslots, then memfds, then the VM, as one journalled operation.",
    responses=responses(  # a lost VM can be deleted
        "in-use", *(code for code in VM_MUTATION if code != "vm-lost")
    ),
)
async def delete_vm(
    vm_id: str,
    m: MutatingDep,
    force: Annotated[bool, Query(description="release memslots and memfds first")] = False,
) -> JSONResponse:
    return respond(await submit(m.broker, vms.delete_vm(m.broker, vm_id, force=force, meta=m.meta)))
