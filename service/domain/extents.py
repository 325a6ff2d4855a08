"""Maximal extent maps over page numbers.

Every piece of per-page state in gmem-broker (attributes per gfn, population per memfd pgoff, the
shared backing per gfn) is held as an :class:`ExtentMap`: disjoint half-open runs ``[start, end)``
each carrying one value, absent pages carrying none. Runs are kept maximal, so two neighbouring
runs never carry the same value, and the map's size is O(extents), never O(pages).

Lookups, splits and merges cost O(log n) for a map of n runs; an update touching k runs costs
O(k log n). Each map also records the net change since it was last drained, so the store writes
O(k) rows per operation instead of rewriting the map.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from sortedcontainers import SortedDict

V = TypeVar("V", bound=Hashable)


class Extent(NamedTuple, Generic[V]):
    """A run of pages ``[start, end)`` carrying ``value``; a tuple, so cheap to make, hash and compare."""

    start: int
    end: int
    value: V

    @property
    def npages(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Segment(Generic[V]):
    """A piece of a queried window: a run, or a gap (``value is None``)."""

    start: int
    end: int
    value: V | None


@dataclass(slots=True)
class Delta(Generic[V]):
    """Net change of a map: runs that existed before and are gone, runs that are new."""

    removed: set[Extent[V]] = field(default_factory=set)
    added: set[Extent[V]] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)

    def inverted(self) -> Delta[V]:
        return Delta(removed=set(self.added), added=set(self.removed))


class ExtentMap(Generic[V]):
    """Disjoint, maximal page runs ``[start, end) -> value``; pages outside every run hold None."""

    __slots__ = ("_delta", "_runs")

    def __init__(self, extents: Iterable[Extent[V]] = ()) -> None:
        self._runs: SortedDict[int, tuple[int, V]] = SortedDict()
        for ext in extents:
            self._runs[ext.start] = (ext.end, ext.value)
        self._delta: Delta[V] = Delta()

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Extent[V]]:
        for start, (end, value) in self._runs.items():
            yield Extent(start, end, value)

    def get(self, page: int) -> V | None:
        i = self._runs.bisect_right(page) - 1
        if i < 0:
            return None
        start = self._runs.keys()[i]
        end, value = self._runs[start]
        return value if page < end else None

    def extents_in(self, start: int, end: int) -> Iterator[Extent[V]]:
        """Runs overlapping ``[start, end)``, clipped to it, in order."""
        if start >= end:
            return
        keys = self._runs.keys()
        i = self._runs.bisect_right(start) - 1
        if i < 0 or self._runs[keys[i]][0] <= start:
            i += 1
        n = len(keys)
        while i < n:
            s = keys[i]
            if s >= end:
                break
            e, v = self._runs[s]
            yield Extent(max(s, start), min(e, end), v)
            i += 1

    def segments(self, start: int, end: int) -> Iterator[Segment[V]]:
        """Cover ``[start, end)`` exactly: runs clipped to the window, gaps as ``None``."""
        pos = start
        for ext in self.extents_in(start, end):
            if ext.start > pos:
                yield Segment(pos, ext.start, None)
            yield Segment(ext.start, ext.end, ext.value)
            pos = ext.end
        if pos < end:
            yield Segment(pos, end, None)

    def count(self, start: int, end: int, value: V) -> int:
        """Pages of ``[start, end)`` that hold ``value``."""
        return sum(e.npages for e in self.extents_in(start, end) if e.value == value)

    def covered(self, start: int, end: int) -> int:
        """Pages of ``[start, end)`` that hold any value."""
        return sum(e.npages for e in self.extents_in(start, end))

    # -- updates -------------------------------------------------------------------------------

    def set(self, start: int, end: int, value: V | None) -> int:
        """Give every page of ``[start, end)`` ``value`` (None clears); return pages changed."""
        if start >= end:
            return 0
        runs = self._runs
        # The runs that overlap ``[start, end)`` or touch it (a merge with a neighbour must be seen).
        old: dict[int, tuple[int, V]] = {}
        i = runs.bisect_left(start)
        if i:
            s = runs.keys()[i - 1]
            run = runs[s]
            if run[0] >= start:
                old[s] = run
        for s in runs.irange(start, end):
            old[s] = runs[s]

        unchanged = 0
        # Left remainder, the new run, right remainder; merged with equal neighbours as they come.
        new: dict[int, tuple[int, V]] = {}
        left: tuple[int, int, V] | None = None
        right: tuple[int, int, V] | None = None
        for s, (e, v) in old.items():
            lo, hi = max(s, start), min(e, end)
            if lo < hi:
                unchanged += hi - lo if v == value else 0
            if s < start:
                left = (s, start, v)
            if e > end:
                right = (end, e, v)
        if value is None:
            covered = sum(min(e, end) - max(s, start) for s, (e, _) in old.items() if s < end and e > start)
            unchanged = (end - start) - covered
            changed = covered
        else:
            changed = (end - start) - unchanged
        if changed == 0:
            return 0
        pieces = [p for p in (left, None if value is None else (start, end, value), right) if p is not None]
        last: list[Any] | None = None
        for ps, pe, pv in pieces:
            if last is not None and last[1] == ps and last[2] == pv:
                last[1] = pe
            else:
                if last is not None:
                    new[last[0]] = (last[1], last[2])
                last = [ps, pe, pv]
        if last is not None:
            new[last[0]] = (last[1], last[2])

        # Touch the sorted index only where keys come or go: rewriting a value in place is a dict store.
        for s, run in old.items():
            if new.get(s) != run:
                self._note_removed(Extent(s, run[0], run[1]))
                if s not in new:
                    del runs[s]
        for s, run in new.items():
            if old.get(s) != run:
                self._note_added(Extent(s, run[0], run[1]))
                runs[s] = run
        return changed

    def _note_removed(self, ext: Extent[V]) -> None:
        if ext in self._delta.added:
            self._delta.added.discard(ext)
        else:
            self._delta.removed.add(ext)

    def _note_added(self, ext: Extent[V]) -> None:
        if ext in self._delta.removed:
            self._delta.removed.discard(ext)
        else:
            self._delta.added.add(ext)

    def drain(self) -> Delta[V]:
        """Return the net change since the last drain and start recording anew."""
        delta, self._delta = self._delta, Delta()
        return delta

    def clear(self) -> None:
        for ext in list(self):
            self._note_removed(ext)
        self._runs.clear()


def sweep(*maps: tuple[ExtentMap[Any], int], start: int, end: int) -> Iterator[tuple[int, int, tuple[Any, ...]]]:
    """Walk ``[start, end)`` over several maps at once, each read at its own page offset.

    Yields ``(start, end, values)`` for every piece over which no map changes value; the pieces
    are not merged, callers coalesce what they consider equal.
    """
    if start >= end:
        return
    iters = [m.segments(start + shift, end + shift) for m, shift in maps]
    shifts = [shift for _, shift in maps]
    current = [next(it) for it in iters]
    pos = start
    while pos < end:
        stop = min(seg.end - shift for seg, shift in zip(current, shifts, strict=True))
        yield pos, stop, tuple(seg.value for seg in current)
        pos = stop
        if pos >= end:
            break
        for k, (seg, shift) in enumerate(zip(current, shifts, strict=True)):
            if seg.end - shift == pos:
                current[k] = next(iters[k])
