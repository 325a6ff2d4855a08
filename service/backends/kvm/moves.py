"""migrate-page on the kvm backend: the shared backing's pages change NUMA node with move_pages(2).

move_pages(2) walks the caller's own page tables, so it reaches only pages this process maps. The
shared backing qualifies: it is the memfd the broker maps for each memslot. guest_memfd pages do not:
a private page is never mapped (touching one is SIGBUS, DESIGN rule 7) and mainline marks guest_memfd
folios unmovable (rule 10), so no kernel path migrates them.

Planning asks the kernel where the pages are (``nodes`` NULL), which changes nothing, so a refused
request leaves everything as it was. The move itself (``MPOL_MF_MOVE``) is the journalled effect: it
must leave every page on the target node, or it fails whole.
"""

from __future__ import annotations

from ..protocol import BackendError, FrameMove, PageRef
from . import uapi

METHOD = "move_pages"


def _refusal(status: int, gfn: int, call: str) -> BackendError:
    """The problem for a page whose move_pages status is the negated errno ``status``."""
    name = uapi.errno_name(-status)
    where = f"gfn {gfn:#x}: {call} gave status -{name}"
    if name == "ENOENT":
        return BackendError("ENOENT", f"{where}: the kernel holds no page there (not present in memory)")
    if name == "EFAULT":
        # The broker maps every shared backing it makes, so this is a page outside any mapping of it.
        return BackendError("EOPNOTSUPP", f"{where}: the page is not mapped in the broker, which move_pages(2) needs")
    return BackendError(name, where)


def locate(gfn: int, addrs: list[int]) -> list[int]:
    """Per page (``addrs[i]`` backs ``gfn + i``), the node the kernel says it is on."""
    call = "move_pages(nodes=NULL)"
    _, status = uapi.move_pages(addrs, None, 0, call)
    for i, node in enumerate(status):
        if node < 0:
            raise _refusal(node, gfn + i, call)
    return status


def plan(ref: PageRef, addrs: list[int], target: int, *, skip_on_target: bool) -> list[FrameMove]:
    """The moves of the shared pages ``[ref.index, ref.index + len(addrs))`` to ``target``.

    A single move goes to the kernel even when the page is on ``target`` already (the call is then
    the kernel's own no-op); an evacuation leaves such pages out, in runs.
    """
    status = locate(ref.index, addrs)
    if not skip_on_target:
        return [FrameMove(ref, len(addrs), None, None, target, METHOD, tuple(status))]
    moves = []
    i = 0
    while i < len(status):
        if status[i] == target:
            i += 1
            continue
        j = i
        while j < len(status) and status[j] != target:
            j += 1
        moves.append(FrameMove(PageRef(None, ref.index + i), j - i, None, None, target, METHOD, tuple(status[i:j])))
        i = j
    return moves


def move(gfn: int, addrs: list[int], node: int) -> None:
    """Move the pages to ``node``; every page's status must come back ``node`` (idempotent: a page
    already there is the kernel's no-op)."""
    call = "move_pages(MPOL_MF_MOVE)"
    unmoved, status = uapi.move_pages(addrs, [node] * len(addrs), uapi.MPOL_MF_MOVE, call)
    for i, got in enumerate(status):
        if got < 0 and got != uapi.MOVE_STATUS_UNSET:
            raise _refusal(got, gfn + i, call)
    if unmoved or any(got != node for got in status):
        # A positive return counts pages the kernel could not migrate (busy, pinned); it leaves their
        # status unwritten, so none of them says why.
        left = sum(1 for got in status if got != node)
        raise BackendError("EBUSY", f"{call}: {left} of {len(addrs)} page(s) from gfn {gfn:#x} stayed off node {node}")
