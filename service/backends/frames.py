"""The sim's host frames: one pool per NUMA node, free frames kept as runs.

Node ``n`` owns the frame numbers ``[n * frames_per_node, (n + 1) * frames_per_node)``, so a frame's
node is its number divided by the pool size. Free frames are an extent map over frame numbers
(value: the node), so the pool costs O(free runs), never O(frames), and a fresh allocation takes the
lowest free runs of a node, which keeps an unfragmented allocation on consecutive frames.
"""

from __future__ import annotations

from ..domain.extents import Extent, ExtentMap
from .protocol import BackendError


class FramePool:
    def __init__(self, nodes: int, frames_per_node: int) -> None:
        self.nodes = nodes
        self.frames_per_node = frames_per_node
        # Nobody reads its change log: it keeps none.
        self._free: ExtentMap[int] = ExtentMap(
            (Extent(n * frames_per_node, (n + 1) * frames_per_node, n) for n in range(nodes)), record=False
        )
        self._free_count = [frames_per_node] * nodes

    def node_of(self, pfn: int) -> int:
        return pfn // self.frames_per_node

    def check_node(self, node: int) -> None:
        if not 0 <= node < self.nodes:
            # move_pages(2) answers a node that is not online with ENODEV.
            raise BackendError("ENODEV", f"NUMA node {node} is not online; this host has nodes 0..{self.nodes - 1}")

    def check_pfn(self, pfn: int) -> None:
        if not 0 <= pfn < self.nodes * self.frames_per_node:
            raise BackendError("ERANGE", f"frame {pfn:#x} does not exist on this host")

    def free(self, node: int) -> int:
        return self._free_count[node]

    def free_total(self) -> int:
        return sum(self._free_count)

    def is_free(self, pfn: int, npages: int = 1) -> bool:
        return self._free.covered(pfn, pfn + npages) == npages

    def take(self, node: int, npages: int) -> list[tuple[int, int]]:
        """Take ``npages`` frames of ``node``, lowest first; returns ``(pfn, count)`` runs."""
        if self._free_count[node] < npages:
            raise BackendError("ENOMEM", f"{npages} frame(s) wanted on node {node}, {self._free_count[node]} free")
        runs: list[tuple[int, int]] = []
        lo = node * self.frames_per_node
        want = npages
        for ext in self._free.extents_in(lo, lo + self.frames_per_node):
            count = min(want, ext.npages)
            runs.append((ext.start, count))
            want -= count
            if want == 0:
                break
        for pfn, count in runs:
            self._free.set(pfn, pfn + count, None)
        self._free_count[node] -= npages
        return runs

    def take_at(self, pfn: int, npages: int) -> None:
        """Take exactly the frames ``[pfn, pfn + npages)``; EBUSY when one is in use."""
        self.check_pfn(pfn)
        self.check_pfn(pfn + npages - 1)
        if not self.is_free(pfn, npages):
            raise BackendError("EBUSY", f"frame(s) [{pfn:#x}, {pfn + npages:#x}) are in use")
        node = self.node_of(pfn)
        if self.node_of(pfn + npages - 1) != node:
            raise BackendError("EINVAL", "a frame run may not cross NUMA nodes")
        self._free.set(pfn, pfn + npages, None)
        self._free_count[node] -= npages

    def give(self, pfn: int, npages: int) -> None:
        for start, count in self.by_node(pfn, npages):
            node = self.node_of(start)
            self._free_count[node] += count
            self._free.set(start, start + count, node)

    def by_node(self, pfn: int, npages: int) -> list[tuple[int, int]]:
        """``[pfn, pfn + npages)`` cut at node boundaries (consecutive frames may span two nodes)."""
        pieces: list[tuple[int, int]] = []
        end = pfn + npages
        while pfn < end:
            stop = min(end, (self.node_of(pfn) + 1) * self.frames_per_node)
            pieces.append((pfn, stop - pfn))
            pfn = stop
        return pieces
