"""memfds, memslots, and the operations on memory: allocate, punch-hole, convert, migrate-page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..client import models
from .batches import in_batches, read_rows, size_at
from .session import Json, Session, Size, Url, VmId, fields, session, table
from .sizes import format_size, size_value

# The broker's page: every size it answers is a multiple of it.
PAGE_SIZE = 4096

memfd_app = typer.Typer(help="guest_memfds: create, list, show, delete.", no_args_is_help=True)
memslot_app = typer.Typer(help="memslots: bind gpa ranges to memfd offsets.", no_args_is_help=True)

MemfdId = Annotated[str, typer.Argument(metavar="MEMFD", help="the memfd's id")]
Offset = Annotated[int, typer.Option(parser=size_value, help="byte offset in the memfd")]
Gpa = Annotated[int, typer.Argument(metavar="GPA", parser=size_value, help="guest physical address: 0x100000000, 4G")]
RangeFile = Annotated[
    Path | None, typer.Option("--file", exists=True, dir_okay=False, help="one range a line (see --help)")
]
Batch = Annotated[int, typer.Option(min=1, help="ranges per request (each request is all-or-nothing)")]


MEMFD_COLUMNS = ["id", "size", "flags", "allocated", "memslots"]


def memfd_fields(m: models.Memfd) -> dict[str, object]:
    return {
        "id": m.id,
        "size": format_size(m.size),
        "flags": ",".join(m.flags) or "-",
        "allocated": format_size(m.allocated),
        "memslots": m.memslots,
    }


MEMSLOT_COLUMNS = ["slot", "gpa", "end", "size", "memfd", "offset"]


def memslot_row(m: models.Memslot) -> tuple[object, ...]:
    return (m.slot, f"{m.gpa:#x}", f"{m.gpa + m.size:#x}", format_size(m.size), m.memfd_id, f"{m.offset:#x}")


@memfd_app.command("create")
def memfd_create(
    vm_id: VmId,
    size: Size,
    flag: Annotated[list[str] | None, typer.Option(help="mmap, init_shared (repeat for both)")] = None,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Create a guest_memfd of SIZE bytes."""
    with session(url, json_out) as s:
        memfd = s.client.create_memfd(vm_id, size, flags=flag or [])
        s.emit(memfd, fields(memfd_fields(memfd)))


@memfd_app.command("list")
def memfd_list(vm_id: VmId, url: Url = None, json_out: Json = False) -> None:
    """List a VM's memfds."""
    with session(url, json_out) as s:
        memfds = s.client.list_memfds(vm_id)
        rows = [list(memfd_fields(m).values()) for m in memfds]
        s.emit(memfds, table(MEMFD_COLUMNS, rows))


@memfd_app.command("show")
def memfd_show(vm_id: VmId, memfd_id: MemfdId, url: Url = None, json_out: Json = False) -> None:
    """A memfd and its population extents."""
    with session(url, json_out) as s:
        memfd = s.client.get_memfd(vm_id, memfd_id)
        extents = s.client.memfd_extents(vm_id, memfd_id, limit=10_000)
        rows = [(f"{e.offset:#x}", f"{e.offset + e.size:#x}", format_size(e.size), e.state) for e in extents.items]
        s.emit({"memfd": memfd, "extents": extents.items}, fields(memfd_fields(memfd)))
        if not s.json:
            s.out.print(table(["offset", "end", "size", "state"], rows))
            if extents.next_cursor:
                s.say("(more extents: the first 10,000 are shown)")


@memfd_app.command("delete")
def memfd_delete(vm_id: VmId, memfd_id: MemfdId, url: Url = None, json_out: Json = False) -> None:
    """Close and delete a memfd (refused while memslots bind it)."""
    with session(url, json_out) as s:
        deleted = s.client.delete_memfd(vm_id, memfd_id)
        s.emit(deleted, f"deleted memfd {memfd_id} (operation {deleted.operation_id})")


@memslot_app.command("create")
def memslot_create(
    vm_id: VmId,
    slot: Annotated[int, typer.Option(help="slot number")],
    gpa: Annotated[int, typer.Option(parser=size_value, help="guest physical address")],
    size: Annotated[int, typer.Option(parser=size_value, help="bytes")],
    memfd: Annotated[str, typer.Option(help="the memfd's id")],
    offset: Offset = 0,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Bind [gpa, gpa+size) to memfd offsets [offset, offset+size)."""
    with session(url, json_out) as s:
        m = s.client.create_memslot(vm_id, slot=slot, gpa=gpa, size=size, memfd_id=memfd, offset=offset)
        s.emit(m, f"memslot {m.slot}: {m.gpa:#x}-{m.gpa + m.size:#x} -> {m.memfd_id} at {m.offset:#x}")


@memslot_app.command("list")
def memslot_list(vm_id: VmId, url: Url = None, json_out: Json = False) -> None:
    """List a VM's memslots."""
    with session(url, json_out) as s:
        slots = s.client.list_memslots(vm_id)
        s.emit(slots, table(MEMSLOT_COLUMNS, [memslot_row(m) for m in slots]))


@memslot_app.command("delete")
def memslot_delete(vm_id: VmId, slot: int, url: Url = None, json_out: Json = False) -> None:
    """Delete a memslot (its shared backing is discarded; the memfd keeps its pages)."""
    with session(url, json_out) as s:
        deleted = s.client.delete_memslot(vm_id, slot)
        s.emit(deleted, f"deleted memslot {slot} (operation {deleted.operation_id})")


def allocate(
    vm_id: VmId,
    memfd_id: MemfdId,
    offset: Offset = 0,
    length: Annotated[
        int | None, typer.Option(parser=size_value, help="bytes (default: to the end of the memfd)", show_default=False)
    ] = None,
    node: Annotated[int | None, typer.Option(help="NUMA node every new page must land on")] = None,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Allocate private backing (fallocate KEEP_SIZE); pages already allocated stay."""
    with session(url, json_out) as s:
        if length is None:
            length = s.client.get_memfd(vm_id, memfd_id).size - offset
        done = s.client.allocate(vm_id, memfd_id, offset=offset, length=length, node=node)
        s.emit(done, f"allocated {done.pages_allocated} new pages (generation {done.generation})")


def punch_hole(
    vm_id: VmId,
    memfd_id: MemfdId,
    offset: Offset,
    length: Annotated[int, typer.Option(parser=size_value, help="bytes")],
    allow_private: Annotated[bool, typer.Option(help="punch allocated private pages of a running VM")] = False,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Free backing (fallocate PUNCH_HOLE|KEEP_SIZE); reads back as zero afterwards."""
    with session(url, json_out) as s:
        done = s.client.punch_hole(vm_id, memfd_id, offset=offset, length=length, allow_private=allow_private)
        s.emit(done, f"freed {done.pages_freed} pages (generation {done.generation})")


def populate_shared(vm_id: VmId, gpa: Gpa, size: Size, url: Url = None, json_out: Json = False) -> None:
    """Populate the shared backing of [GPA, GPA+SIZE), as a VMM's first touch does."""
    with session(url, json_out) as s:
        done = s.client.populate_shared(vm_id, gpa=gpa, size=size)
        s.emit(done, f"populated {done.pages_allocated} shared pages (generation {done.generation})")


def _converted_line(results: list[models.Converted]) -> str:
    total = sum(r.pages_converted for r in results)
    private = sum(r.private_pages_freed for r in results)
    shared = sum(r.shared_pages_freed for r in results)
    return f"converted {total} pages in {len(results)} request(s); freed {private} private and {shared} shared pages"


def convert(
    vm_id: VmId,
    gpa: Annotated[
        int | None, typer.Argument(metavar="GPA", parser=size_value, help="first gpa", show_default=False)
    ] = None,
    size: Annotated[
        int | None, typer.Argument(metavar="SIZE", parser=size_value, help="bytes", show_default=False)
    ] = None,
    to: Annotated[str, typer.Option(help="private or shared (a file's lines may say otherwise)")] = "shared",
    file: RangeFile = None,
    batch: Batch = 1000,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Convert GPA SIZE, or every range of --file (lines `GPA SIZE [private|shared]`), to --to.

    One request is all-or-nothing; a file of more than --batch ranges goes as several requests
    under a progress bar, and a refusal keeps the batches sent before it (the command says how many).
    """
    ranges = _ranges(gpa, size, to, file)
    with session(url, json_out) as s:
        results = in_batches(
            ranges, batch, lambda chunk: s.client.convert(vm_id, chunk), "convert", s.err, bar=file is not None
        )
        s.emit(results if file else results[0], _converted_line(results))


def _ranges(gpa: int | None, size: int | None, to: str, file: Path | None) -> list[tuple[int, int, str]]:
    if file is None:
        if gpa is None or size is None:
            raise typer.BadParameter("give GPA and SIZE, or --file")
        return [(gpa, size, to)]
    if gpa is not None:
        raise typer.BadParameter("give GPA and SIZE, or --file, not both")
    return [(size_at(file, r[0]), size_at(file, r[1]), r[2] if len(r) > 2 else to) for r in read_rows(file, 2, 3)]


def migrate_page(
    vm_id: VmId,
    gpa: Annotated[
        int | None, typer.Argument(metavar="GPA", parser=size_value, help="the page's gpa", show_default=False)
    ] = None,
    node: Annotated[int | None, typer.Option(help="target NUMA node")] = None,
    pfn: Annotated[int | None, typer.Option(parser=size_value, help="target frame number")] = None,
    size: Annotated[
        int | None, typer.Option(parser=size_value, help="evacuate every allocated page of [GPA, GPA+SIZE) to --node")
    ] = None,
    file: RangeFile = None,
    batch: Batch = 1000,
    url: Url = None,
    json_out: Json = False,
) -> None:
    """Move a page to --node or --pfn; with --size, a whole range to --node; with --file, the pages
    listed one a line (`GPA [NODE]`, NODE defaulting to --node), in batches under a progress bar."""
    moves = _moves(file, node) if file is not None else []
    with session(url, json_out) as s:
        if file is not None:
            results = in_batches(moves, batch, lambda chunk: s.client.migrate_pages(vm_id, chunk), "migrate", s.err)
            _show_moves(s, [m for r in results for m in r.moves or []], results)
            return
        if gpa is None:
            raise typer.BadParameter("give GPA, or --file")
        if size is not None:
            if node is None:
                raise typer.BadParameter("--size evacuates to --node")
            result = s.client.evacuate(vm_id, gpa=gpa, size=size, target_node=node)
            _show_moves(s, result.moves or [], result)
            return
        if (node is None) == (pfn is None):
            raise typer.BadParameter("give exactly one of --node and --pfn")
        moved = s.client.migrate_page(vm_id, gpa, target_node=node, target_pfn=pfn)
        one = models.PageMove(
            gpa=gpa,
            size=PAGE_SIZE,
            backing=moved.backing or "",
            old_pfn=moved.old_pfn,
            new_pfn=moved.new_pfn,
            node=moved.node if moved.node is not None else -1,
            method=moved.method or "",
            agent=moved.agent,
            kernel_status=moved.kernel_status,
        )
        _show_moves(s, [one], moved)


def _moves(file: Path, node: int | None) -> list[tuple[int, int | None, int | None]]:
    moves: list[tuple[int, int | None, int | None]] = []
    for row in read_rows(file, 1, 2):
        target = size_at(file, row[1]) if len(row) > 1 else node
        if target is None:
            raise typer.BadParameter(f"{file}: {row[0]} names no node and --node is not given")
        moves.append((size_at(file, row[0]), target, None))
    return moves


def _show_moves(s: Session, moves: list[models.PageMove], result: object) -> None:
    rows = [(f"{m.gpa:#x}", m.size // PAGE_SIZE, m.old_pfn, m.new_pfn, m.node, m.method, _status(m)) for m in moves]
    pages = sum(m.size for m in moves) // PAGE_SIZE
    columns = ["gpa", "pages", "old pfn", "new pfn", "node", "method", "kernel status"]
    s.emit(result, table(columns, rows, title=f"{pages} page(s) moved"))


def _status(move: models.PageMove) -> str:
    """kvm's per-page move_pages(2) status, runs of one value shortened (``0 x512``); empty on the sim."""
    if move.kernel_status is None:
        return ""
    runs: list[list[int]] = []
    for value in move.kernel_status:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return " ".join(str(v) if n == 1 else f"{v} x{n}" for v, n in runs)


def register(cli: typer.Typer) -> None:
    cli.add_typer(memfd_app, name="memfd")
    cli.add_typer(memslot_app, name="memslot")
    cli.command("allocate")(allocate)
    cli.command("punch-hole")(punch_hole)
    cli.command("populate-shared")(populate_shared)
    cli.command("convert")(convert)
    cli.command("migrate-page")(migrate_page)
