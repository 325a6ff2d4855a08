"""Use cases: migrate-page (one page, a batch, or every allocated page of a range) and page contents.

The VM says which backing a gpa uses and how its pages may be moved (plain copy, or the trusted
agent for private pages of encrypted VM types); the backend, which owns the frames, plans the
destinations without changing anything. Only then is the move journalled and carried out, so every
refusal (unknown node, full node, frame in use, page not allocated) leaves everything as it was.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..backends.protocol import BackendError, FrameMove, MoveRequest, PageRef
from ..domain import effects as fx
from ..domain.errors import (
    BatchTooLarge,
    Conflict,
    DomainError,
    FrameInUse,
    InsufficientMemory,
    InvalidCursor,
    InvalidLength,
    NotAllocated,
    NotSupportedByKernel,
    OutOfRange,
    UnknownNode,
)
from ..domain.model import BackedRun, Vm
from ..domain.units import PAGE_SHIFT, PAGE_SIZE, to_bytes, to_pages
from .broker import Broker
from .journal import BackendFailed, RequestMeta
from .lane import Job
from .mutation import plan

_PROBLEMS: dict[str, type[DomainError]] = {
    "ENODEV": UnknownNode,
    "ENOMEM": InsufficientMemory,
    "EBUSY": FrameInUse,
    "ERANGE": OutOfRange,
    "ENOENT": NotAllocated,
    "EOPNOTSUPP": NotSupportedByKernel,
}


def _problem(err: BackendError) -> DomainError:
    return _PROBLEMS.get(err.errno, BackendFailed)(err.message, errno=err.errno)


@dataclass(frozen=True, slots=True)
class Move:
    gpa: int
    target_node: int | None
    target_pfn: int | None


def _plan(
    broker: Broker, vm: Vm, runs: list[BackedRun], requests: list[MoveRequest]
) -> list[tuple[BackedRun, FrameMove]]:
    try:
        planned = broker.backend.plan_moves(vm.id, requests)
    except BackendError as err:
        raise _problem(err) from err
    # Moves come back in request order; pair each with the run (and so the gfn) it belongs to.
    out: list[tuple[BackedRun, FrameMove]] = []
    i = 0
    for move in planned:
        while not (
            runs[i].memfd_id == move.ref.memfd_id and runs[i].pgoff <= move.ref.index < runs[i].pgoff + runs[i].npages
        ):
            i += 1
        out.append((runs[i], move))
    return out


def _record(
    vm: Vm, now: datetime, pairs: list[tuple[BackedRun, FrameMove]]
) -> tuple[list[dict[str, Any]], list[fx.Effect]]:
    if pairs:
        vm.record_migration(now)
    items: list[dict[str, Any]] = []
    effects: list[fx.Effect] = []
    for run, move in pairs:
        gfn = run.gfn + (move.ref.index - run.pgoff)
        effects.append(
            fx.MoveFrames(
                vm.id,
                run.memfd_id or "",
                move.ref.index,
                gfn,
                move.npages,
                move.old_pfn,
                move.new_pfn,
                move.node,
                move.method or run.method,
            )
        )
        items.append(
            {
                "gpa": to_bytes(gfn),
                "size": to_bytes(move.npages),
                "backing": "private" if run.memfd_id is not None else "shared",
                "old_pfn": move.old_pfn,
                "new_pfn": move.new_pfn,
                "node": move.node,
                "method": move.method or run.method,
                "agent": run.agent,
                "kernel_status": list(move.kernel_status) if move.kernel_status is not None else None,
            }
        )
    return items, effects


def migrate_pages(broker: Broker, vm_id: str, *, moves: list[Move], batch: bool, meta: RequestMeta) -> Job:
    """Move single pages, all or none; ``batch`` shapes the answer as a list."""
    if not moves:
        raise InvalidLength("a migrate batch needs at least one move")
    if len(moves) > broker.max_batch:
        raise BatchTooLarge(f"{len(moves)} moves in one batch; the limit is {broker.max_batch}")
    gfns = []
    for i, m in enumerate(moves):
        gfn, _ = to_pages(m.gpa, PAGE_SIZE, what=f"moves[{i}]" if batch else "migrate-page")
        gfns.append(gfn)
    if len(set(gfns)) != len(gfns):
        raise Conflict("a page may be moved once per batch; a gpa appears twice")

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        runs = [vm.backed_page(gfn) for gfn in gfns]
        requests = [
            MoveRequest(PageRef(run.memfd_id, run.pgoff), 1, m.target_node, m.target_pfn)
            for run, m in zip(runs, moves, strict=True)
        ]
        items, effects = _record(vm, now, _plan(broker, vm, runs, requests))
        if batch:
            return {"operation_id": op_id, "generation": vm.generation, "moves": items}, effects
        item = {k: v for k, v in items[0].items() if k != "size"}
        return {"operation_id": op_id, "generation": vm.generation, **item}, effects

    request = {"moves": [{"gpa": m.gpa, "target_node": m.target_node, "target_pfn": m.target_pfn} for m in moves]}
    # Alone in its group: it picks free frames from the backend as it is planned, which the moves
    # planned before it in a group would not have taken yet.
    return plan(vm_id, "migrate-page", request, meta, change, alone=True)


def evacuate(broker: Broker, vm_id: str, *, gpa: int, size: int, target_node: int, meta: RequestMeta) -> Job:
    """Move every allocated page of ``[gpa, gpa + size)`` not yet on ``target_node`` there."""
    gfn, gfn_end = to_pages(gpa, size, what="migrate-page")
    if to_bytes(gfn_end) > 1 << 64:
        raise OutOfRange("gpa + size overflows the guest physical address space", errno="EINVAL")
    # The backend checks the node when it plans moves; a range with nothing to move plans none.
    nodes = [n.id for n in broker.backend.host_info().numa_nodes]
    if target_node not in nodes:
        raise UnknownNode(f"NUMA node {target_node} is not online (nodes: {nodes})", errno="ENODEV")

    def change(vm: Vm, now: datetime, op_id: str) -> tuple[dict[str, Any], list[fx.Effect]]:
        runs = list(vm.backed_runs(gfn, gfn_end))
        requests = [
            MoveRequest(PageRef(r.memfd_id, r.pgoff), r.npages, target_node, None, skip_on_target=True) for r in runs
        ]
        items, effects = _record(vm, now, _plan(broker, vm, runs, requests) if runs else [])
        body = {
            "operation_id": op_id if effects else None,
            "generation": vm.generation,
            "pages_moved": sum(i["size"] for i in items) >> PAGE_SHIFT,
            "moves": items,
        }
        return body, effects

    request = {"gpa": gpa, "size": size, "target_node": target_node}
    return plan(vm_id, "migrate-range", request, meta, change, alone=True)


# -- page contents (tests and debugging) ---------------------------------------------------------


def _page(vm: Vm, gfn: int) -> tuple[BackedRun, PageRef]:
    run = vm.backed_page(gfn)
    return run, PageRef(run.memfd_id, run.pgoff)


def read_gfn(broker: Broker, vm_id: str, gfn: int, view: str) -> dict[str, Any]:
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        run, ref = _page(vm, gfn)
        try:
            page = broker.backend.read_backing(vm_id, ref, view)
        except BackendError as err:
            raise _problem(err) from err
        generation = vm.generation
    return {
        "gfn": gfn,
        "gpa": to_bytes(gfn),
        "view": view,
        "backing": "private" if run.memfd_id is not None else "shared",
        "memfd_id": run.memfd_id,
        "offset": to_bytes(run.pgoff) if run.memfd_id is not None else None,
        "pfn": page.pfn,
        "encrypted": page.encrypted,
        "data": base64.b64encode(page.data).decode(),
        "generation": generation,
    }


def write_gfn(broker: Broker, vm_id: str, gfn: int, view: str, *, offset: int, data: bytes) -> dict[str, Any]:
    if offset + len(data) > PAGE_SIZE:
        raise OutOfRange(f"offset {offset} + {len(data)} bytes reaches past the page ({PAGE_SIZE} bytes)")
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        _, ref = _page(vm, gfn)
        try:
            broker.backend.write_backing(vm_id, ref, offset, data, view)
        except BackendError as err:
            raise _problem(err) from err
    return read_gfn(broker, vm_id, gfn, view)


def frame_runs(broker: Broker, vm_id: str, *, limit: int, cursor: str | None) -> dict[str, Any]:
    """The VM's frame runs as stored: which host frames back which pages, one item per row."""
    after = _decode_frame_cursor(cursor) if cursor else None
    with broker.locked(vm_id):
        vm = broker.vm(vm_id)
        with broker.uow() as uow:
            runs = uow.frames.page(vm_id, after=after, limit=limit + 1)
        generation = vm.generation
    more = len(runs) > limit
    runs = runs[:limit]
    items = [
        {
            "backing": "private" if r.owner else "shared",
            "memfd_id": r.owner or None,
            "offset": to_bytes(r.start) if r.owner else None,
            "gpa": None if r.owner else to_bytes(r.start),
            "size": to_bytes(r.npages),
            "pfn": r.pfn,
        }
        for r in runs
    ]
    next_cursor = f"f{runs[-1].start:x}.{runs[-1].owner}" if more else None
    return {"items": items, "next_cursor": next_cursor, "generation": generation}


def _decode_frame_cursor(cursor: str) -> tuple[str, int]:
    start, _, owner = cursor[1:].partition(".")
    try:
        if not cursor.startswith("f"):
            raise ValueError(cursor)
        return owner, int(start, 16)
    except ValueError:
        raise InvalidCursor(f"cursor {cursor!r} was not issued by this service") from None
