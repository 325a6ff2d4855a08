"""Read-only views: the extent map, the journal, the host."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group

from .extent_map import compact_map, extent_table, proportions
from .session import Json, Url, VmId, fields, session, table
from .sizes import format_size, size_value


def extents(
    vm_id: VmId,
    start: Annotated[int, typer.Option(parser=size_value, help="first gpa")] = 0,
    end: Annotated[int | None, typer.Option(parser=size_value, help="end gpa (exclusive)", show_default=False)] = None,
    map_: Annotated[bool, typer.Option("--map", help="one line per extent with a bar, and the proportions")] = False,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """The VM's extent map: maximal runs of (attribute, private backing, shared backing)."""
    with session(url, json_out) as s:
        items = s.client.all_vm_extents(vm_id, start=start, end=end)
        human = Group(*compact_map(items)) if map_ else extent_table(items)
        s.emit({"items": items, "bytes": proportions(items)}, human)


def ops(
    vm_id: VmId,
    last: Annotated[int | None, typer.Option(min=1, help="only the last N operations")] = None,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """The VM's operation journal, oldest first."""
    with session(url, json_out) as s:
        journal = s.client.all_operations(vm_id)
        if last is not None:
            journal = journal[-last:]
        rows = [
            (
                o.seq,
                o.created_at.strftime("%H:%M:%S"),
                o.kind,
                o.status,
                o.generation,
                _brief(o.result or o.error or {}),
                o.id,
            )
            for o in journal
        ]
        s.emit(journal, table(["seq", "time", "kind", "status", "gen", "result", "id"], rows))


def _brief(doc: dict[str, object]) -> str:
    said = (f"{k}={v}" for k, v in doc.items() if k not in ("operation_id", "generation") and v is not None)
    return " ".join(said)[:70]


def host(url: Url = None, json_out: Json = False) -> None:
    """The broker's host: backend, capabilities, NUMA nodes, budget."""
    with session(url, json_out) as s:
        h = s.client.host()
        nodes = [
            (n.id, format_size(n.total_pages * h.page_size), format_size(n.free_pages * h.page_size), n.free_pages)
            for n in h.numa_nodes
        ]
        human = Group(
            fields(
                {
                    "backend": h.backend,
                    "page size": h.page_size,
                    "vm types": ", ".join(h.vm_types),
                    "memfd flags": ", ".join(h.memfd_flags),
                    "capabilities": " ".join(f"{k}={v}" for k, v in h.capabilities.items()),
                    "enforcement": " ".join(f"{k}={v}" for k, v in h.enforcement.items()),
                    "budget": " ".join(f"{k}={v}" for k, v in h.budget.items()),
                    "vms": " ".join(f"{k}={v}" for k, v in h.vms.items()),
                    "reconcile": "; ".join(h.reconcile) or "clean",
                }
            ),
            table(["node", "total", "free", "free pages"], nodes, title="NUMA nodes"),
        )
        s.emit(h, human)


def register(cli: typer.Typer) -> None:
    cli.command("extents")(extents)
    cli.command("ops")(ops)
    cli.command("host")(host)
