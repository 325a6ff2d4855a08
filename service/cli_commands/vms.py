"""``gmem-broker vm ...``: create, list, show, start, stop, delete."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group

from ..client import models
from .memory import MEMFD_COLUMNS, MEMSLOT_COLUMNS, memfd_fields, memslot_row
from .session import Json, Url, VmId, fields, session, table

app = typer.Typer(help="Guests: create, list, show, start, stop, delete.", no_args_is_help=True)


def vm_fields(vm: models.Vm) -> dict[str, object]:
    return {
        "id": vm.id,
        "name": vm.name,
        "type": vm.vm_type,
        "state": vm.state,
        "generation": vm.generation,
        "memfds": vm.memfds,
        "memslots": vm.memslots,
        "created": vm.created_at.isoformat(timespec="seconds"),
    }


@app.command("create")
def create(
    name: Annotated[str | None, typer.Option(help="unique per host (default: the server picks)")] = None,
    vm_type: Annotated[str, typer.Option("--type", help="default, sw_protected, sev_snp or tdx")] = "default",
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Create a VM."""
    with session(url, json_out) as s:
        vm = s.client.create_vm(name=name, vm_type=vm_type)
        s.emit(vm, fields(vm_fields(vm)))


@app.command("list")
def list_(url: Url = None, json_out: Json = False) -> None:
    """List the VMs."""
    with session(url, json_out) as s:
        vms = s.client.list_vms()
        rows = [(v.id, v.name, v.vm_type, v.state, v.generation, v.memfds, v.memslots) for v in vms]
        s.emit(vms, table(["id", "name", "type", "state", "gen", "memfds", "memslots"], rows))


@app.command("show")
def show(vm_id: VmId, url: Url = None, json_out: Json = False) -> None:
    """A VM with its memfds and memslots."""
    with session(url, json_out) as s:
        vm = s.client.get_vm(vm_id)
        memfds = s.client.list_memfds(vm_id)
        memslots = s.client.list_memslots(vm_id)
        human = Group(
            fields(vm_fields(vm)),
            table(MEMFD_COLUMNS, [list(memfd_fields(m).values()) for m in memfds], title="memfds"),
            table(MEMSLOT_COLUMNS, [memslot_row(m) for m in memslots], title="memslots"),
        )
        s.emit({"vm": vm, "memfds": memfds, "memslots": memslots}, human)


def _set_state(vm_id: str, state: str, url: str | None, json_out: bool) -> None:
    with session(url, json_out) as s:
        vm = s.client.set_vm_state(vm_id, state)
        s.emit(vm, f"VM {vm.id} is {vm.state} (generation {vm.generation})")


@app.command("start")
def start(vm_id: VmId, url: Url = None, json_out: Json = False) -> None:
    """Mark the VM running: its allocated private pages are then protected from punch-hole."""
    _set_state(vm_id, "running", url, json_out)


@app.command("stop")
def stop(vm_id: VmId, url: Url = None, json_out: Json = False) -> None:
    """Mark the VM stopped."""
    _set_state(vm_id, "stopped", url, json_out)


@app.command("delete")
def delete(
    vm_id: VmId,
    force: Annotated[bool, typer.Option(help="release memslots and memfds first")] = False,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Delete a VM (refused while it has memfds or memslots, unless --force)."""
    with session(url, json_out) as s:
        deleted = s.client.delete_vm(vm_id, force=force)
        s.emit(deleted, f"deleted VM {vm_id} (operation {deleted.operation_id})")
