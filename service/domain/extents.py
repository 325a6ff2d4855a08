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

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

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

    def note_removed(self, ext: Extent[V]) -> None:
        if ext in self.added:
            self.added.discard(ext)  # came and went since the last drain
        else:
            self.removed.add(ext)

    def note_added(self, ext: Extent[V]) -> None:
        if ext in self.removed:
            self.removed.discard(ext)  # went and came back
        else:
            self.added.add(ext)

    def then(self, later: Delta[V]) -> Delta[V]:
        """The net change of this one followed by ``later`` (neither is changed)."""
        net = Delta(removed=set(self.removed), added=set(self.added))
        net.absorb(later)
        return net

    def absorb(self, later: Delta[V]) -> None:
        """Become the net change of this one followed by ``later`` (which is not changed)."""
        for ext in later.removed:
            self.note_removed(ext)
        for ext in later.added:
            self.note_added(ext)


class ExtentMap(Generic[V]):
    """Disjoint, maximal page runs ``[start, end) -> value``; pages outside every run hold None."""

    __slots__ = ("_delta", "_record", "_runs")

    def __init__(self, extents: Iterable[Extent[V]] = (), *, record: bool = True) -> None:
        """``record=False`` for a map nobody drains: it then keeps no copy of its net change."""
        self._runs: _Runs[V] = _Runs((ext.start, ext.end, ext.value) for ext in extents)
        self._delta: Delta[V] = Delta()
        self._record = record

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._runs.size

    def __iter__(self) -> Iterator[Extent[V]]:
        return iter(self._runs)

    def get(self, page: int) -> V | None:
        return self._runs.get(page)

    def extents_in(self, start: int, end: int) -> Iterator[Extent[V]]:
        """Runs overlapping ``[start, end)``, clipped to it, in order."""
        if start >= end:
            return
        for s, e, v in self._runs.from_floor(start):
            if s >= end:
                return
            if e > start:
                yield _new(Extent, (max(s, start), min(e, end), v))

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
        # The runs that overlap ``[start, end)`` or touch it (a merge with a neighbour must be seen),
        # in order: they are consecutive among the map's.
        old = [ext for ext in self._runs.span(start, end) if ext.end >= start]

        inside = 0  # pages of [start, end) that hold a value, or with ``value`` given, that value
        for s, e, v in old:
            if s < end and e > start and (value is None or v == value):
                inside += min(e, end) - max(s, start)
        changed = inside if value is None else (end - start) - inside
        if changed == 0:
            return 0

        # Left remainder, the new run, right remainder; a remainder holding ``value`` merges into it.
        new: list[Extent[V]] = []
        lo, hi = start, end
        right: Extent[V] | None = None
        if old:
            s, e, v = old[0]
            if s < start:
                if v == value:
                    lo = s
                else:
                    new.append(_new(Extent, (s, start, v)))
            s, e, v = old[-1]
            if e > end:
                if v == value:
                    hi = e
                else:
                    right = _new(Extent, (end, e, v))
        if value is not None:
            new.append(_new(Extent, (lo, hi, value)))
        if right is not None:
            new.append(right)

        if self._record:
            delta = self._delta
            for ext in old:
                if ext not in new:
                    delta.note_removed(ext)
            for ext in new:
                if ext not in old:
                    delta.note_added(ext)
        self._runs.replace(old[0].start if old else start, len(old), new)
        return changed

    def drain(self) -> Delta[V]:
        """Return the net change since the last drain and start recording anew."""
        delta, self._delta = self._delta, Delta()
        return delta

    def clear(self) -> None:
        if self._record:
            for ext in list(self):
                self._delta.note_removed(ext)
        self._runs = _Runs((), load=self._runs.load)


# Builds a tuple subclass without its Python-level ``__new__``: a run is made on every update.
_new = tuple.__new__
# Runs per sublist of _Runs: a sublist splits at twice this, and merges into a neighbour below half.
LOAD = 1000


def _ints(values: Iterable[int]) -> array[int]:
    return array("q", values)


class _Runs(Generic[V]):
    """A map's runs in start order, as sublists of at most ``2 * load``: starts and ends in int64 arrays,
    values in a list beside them, and each sublist's last start in ``maxes``.

    The layout of sortedcontainers' SortedList, for what an extent map does with it: find the run at
    or below a page, and replace the few consecutive runs an update touches with one slice
    assignment. Flat int64 arrays rather than lists of int objects, and no dict of runs: a lookup in
    a map of 100,000 runs bisects contiguous memory instead of chasing an object per probe, and the
    map is about 24 bytes a run instead of ~170 (two such maps live per VM, the domain's and the
    sim's, and a convert updates both).
    """

    __slots__ = ("ends", "load", "maxes", "size", "starts", "values")

    def __init__(self, runs: Iterable[tuple[int, int, V]] = (), *, load: int = LOAD) -> None:
        ordered = sorted({r[0]: r for r in runs}.values(), key=lambda r: r[0])
        self.load = load
        self.size = n = len(ordered)
        # Equal shares of at most ``load``: none is short, as after updates (see _settle).
        parts = -(-n // load)
        chunks = [ordered[i * n // parts : (i + 1) * n // parts] for i in range(parts)]
        self.starts: list[array[int]] = [_ints(r[0] for r in c) for c in chunks]
        self.ends: list[array[int]] = [_ints(r[1] for r in c) for c in chunks]
        self.values: list[list[V]] = [[r[2] for r in c] for c in chunks]
        self.maxes: array[int] = _ints(s[-1] for s in self.starts)

    def __iter__(self) -> Iterator[Extent[V]]:
        for starts, ends, values in zip(self.starts, self.ends, self.values, strict=True):
            for run in zip(starts, ends, values, strict=True):
                yield _new(Extent, run)

    def _floor(self, page: int) -> tuple[int, int]:
        """(sublist, index) of the run with the greatest start at or below ``page``; index -1 when none."""
        maxes = self.maxes
        pos = bisect_left(maxes, page)
        if pos == len(maxes):
            return (pos - 1, len(self.starts[pos - 1]) - 1) if pos else (0, -1)
        idx = bisect_right(self.starts[pos], page) - 1
        if idx < 0 and pos:
            return pos - 1, len(self.starts[pos - 1]) - 1
        return pos, idx

    def get(self, page: int) -> V | None:
        pos, idx = self._floor(page)
        if idx < 0 or page >= self.ends[pos][idx]:
            return None
        return self.values[pos][idx]

    def from_floor(self, page: int) -> Iterator[tuple[int, int, V]]:
        """Runs in order from the one with the greatest start at or below ``page`` (from the first if none)."""
        if not self.maxes:
            return
        pos, idx = self._floor(page)
        # By index in the first sublist: slicing it would copy up to 2 * load runs for a one-page window.
        starts, ends, values = self.starts[pos], self.ends[pos], self.values[pos]
        for k in range(max(idx, 0), len(starts)):
            yield starts[k], ends[k], values[k]
        for p in range(pos + 1, len(self.starts)):
            yield from zip(self.starts[p], self.ends[p], self.values[p], strict=True)

    def span(self, start: int, end: int) -> list[Extent[V]]:
        """The runs starting in ``[start, end]``, after the one with the greatest start below ``start``."""
        maxes = self.maxes
        if not maxes:
            return []
        starts, ends, values = self.starts, self.ends, self.values
        pos = bisect_left(maxes, start)
        if pos == len(maxes):
            pos -= 1  # every start is below ``start``: the last run only
            last = len(starts[pos]) - 1
            return [_new(Extent, (starts[pos][last], ends[pos][last], values[pos][last]))]
        sub = starts[pos]
        idx = bisect_left(sub, start)
        out: list[Extent[V]] = []
        if idx:
            out.append(_new(Extent, (sub[idx - 1], ends[pos][idx - 1], values[pos][idx - 1])))
        elif pos:
            last = len(starts[pos - 1]) - 1
            out.append(_new(Extent, (starts[pos - 1][last], ends[pos - 1][last], values[pos - 1][last])))
        while True:
            sub_ends, sub_values = ends[pos], values[pos]
            for k in range(idx, len(sub)):
                key = sub[k]
                if key > end:
                    return out
                out.append(_new(Extent, (key, sub_ends[k], sub_values[k])))
            pos += 1
            if pos == len(starts):
                return out
            sub, idx = starts[pos], 0

    def replace(self, at: int, count: int, new: list[Extent[V]]) -> None:
        """Put ``new`` (in order) where the ``count`` consecutive runs from start ``at`` are (or, with no
        count, where a run starting at ``at`` would go); no other run lies between them and ``new``."""
        if not self.starts:
            if new:
                self.starts.append(_ints(r[0] for r in new))
                self.ends.append(_ints(r[1] for r in new))
                self.values.append([r[2] for r in new])
                self.maxes.append(new[-1][0])
                self.size = len(new)
            return
        maxes = self.maxes
        pos = bisect_left(maxes, at)
        if pos == len(maxes):
            pos -= 1  # beyond every start: onto the end of the last sublist
        sub = self.starts[pos]
        idx = bisect_left(sub, at)
        if idx + count > len(sub):
            # The old runs continue into the next sublist (a long update): one run at a time.
            old_starts = [r.start for r in self._following(pos, idx, count)]
            for key in old_starts:
                self.replace(key, 1, [])
            for run in new:
                self.replace(run[0], 0, [run])
            return
        sub[idx : idx + count] = _ints(r[0] for r in new)
        self.ends[pos][idx : idx + count] = _ints(r[1] for r in new)
        self.values[pos][idx : idx + count] = [r[2] for r in new]
        self.size += len(new) - count
        self._settle(pos)

    def _following(self, pos: int, idx: int, count: int) -> list[Extent[V]]:
        """``count`` runs in order from (sublist, index)."""
        out: list[Extent[V]] = []
        while len(out) < count:
            starts, ends, values = self.starts[pos], self.ends[pos], self.values[pos]
            for k in range(idx, min(len(starts), idx + count - len(out))):
                out.append(_new(Extent, (starts[k], ends[k], values[k])))
            pos, idx = pos + 1, 0
        return out

    def _settle(self, pos: int) -> None:
        """Restore sublist ``pos``'s bounds after it changed: split when long, merge when short or empty."""
        starts, ends, values, maxes, load = self.starts, self.ends, self.values, self.maxes, self.load
        sub = starts[pos]
        if len(sub) > 2 * load:
            half = len(sub) >> 1
            starts[pos : pos + 1] = [sub[:half], sub[half:]]
            ends[pos : pos + 1] = [ends[pos][:half], ends[pos][half:]]
            values[pos : pos + 1] = [values[pos][:half], values[pos][half:]]
            maxes[pos : pos + 1] = _ints((sub[half - 1], sub[-1]))
        elif len(sub) >= load >> 1 or len(starts) == 1:
            if sub:
                maxes[pos] = sub[-1]
            else:
                del starts[pos], ends[pos], values[pos], maxes[pos]
        else:
            # Short: join a neighbour, so that lookups keep few sublists to bisect; split again if long.
            if pos + 1 == len(starts):
                pos -= 1
            starts[pos : pos + 2] = [starts[pos] + starts[pos + 1]]
            ends[pos : pos + 2] = [ends[pos] + ends[pos + 1]]
            values[pos : pos + 2] = [values[pos] + values[pos + 1]]
            maxes[pos : pos + 2] = _ints((starts[pos][-1],))
            if len(starts[pos]) > 2 * load:
                self._settle(pos)


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
