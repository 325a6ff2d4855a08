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

    __slots__ = ("_delta", "_record", "_runs", "_starts")

    def __init__(self, extents: Iterable[Extent[V]] = (), *, record: bool = True) -> None:
        """``record=False`` for a map nobody drains: it then keeps no copy of its net change."""
        # Each run by its start; the starts in order beside it, for floor lookups.
        self._runs: dict[int, Extent[V]] = {ext.start: _new(Extent, (ext.start, ext.end, ext.value)) for ext in extents}
        self._starts = _Starts(self._runs)
        self._delta: Delta[V] = Delta()
        self._record = record

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Extent[V]]:
        runs = self._runs
        for start in self._starts:
            yield runs[start]

    def get(self, page: int) -> V | None:
        start = self._starts.floor(page)
        if start is None:
            return None
        ext = self._runs[start]
        return ext.value if page < ext.end else None

    def extents_in(self, start: int, end: int) -> Iterator[Extent[V]]:
        """Runs overlapping ``[start, end)``, clipped to it, in order."""
        if start >= end:
            return
        runs = self._runs
        for s in self._starts.from_floor(start):
            if s >= end:
                return
            ext = runs[s]
            if ext.end <= start:
                continue
            if s >= start and ext.end <= end:
                yield ext
            else:
                yield _new(Extent, (max(s, start), min(ext.end, end), ext.value))

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
        # The runs that overlap ``[start, end)`` or touch it (a merge with a neighbour must be seen),
        # in order: their starts are consecutive among the map's.
        old = [ext for ext in map(runs.__getitem__, self._starts.span(start, end)) if ext.end >= start]

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
        for ext in old:
            del runs[ext.start]
        for ext in new:
            runs[ext.start] = ext
        self._starts.replace([ext.start for ext in old], [ext.start for ext in new])
        return changed

    def drain(self) -> Delta[V]:
        """Return the net change since the last drain and start recording anew."""
        delta, self._delta = self._delta, Delta()
        return delta

    def clear(self) -> None:
        if self._record:
            for ext in list(self):
                self._delta.note_removed(ext)
        self._runs.clear()
        self._starts = _Starts((), load=self._starts.load)


# Builds a tuple subclass without its Python-level ``__new__``: a run is made on every update.
_new = tuple.__new__
# Keys per sublist of _Starts: a sublist splits at twice this, and merges into a neighbour below half.
LOAD = 1000


class _Starts:
    """The starts of a map's runs in order: sorted sublists with each one's last key beside them.

    The layout of sortedcontainers' SortedList, kept here for what an extent map does with it: find
    the key at or below a page, and replace the few consecutive keys an update touches in one slice
    assignment (SortedList would insert and delete them one by one, each a bisect of its own, and
    rebuild a positional index that nothing here uses).
    """

    __slots__ = ("lists", "load", "maxes")

    def __init__(self, keys: Iterable[int] = (), *, load: int = LOAD) -> None:
        ordered = sorted(keys)
        self.load = load
        # Equal shares of at most ``load``: none is short, as after updates (see _settle).
        n, parts = len(ordered), -(-len(ordered) // load)
        self.lists: list[list[int]] = [ordered[i * n // parts : (i + 1) * n // parts] for i in range(parts)]
        self.maxes: list[int] = [sub[-1] for sub in self.lists]

    def __iter__(self) -> Iterator[int]:
        for sub in self.lists:
            yield from sub

    def floor(self, page: int) -> int | None:
        """The greatest key at or below ``page``."""
        maxes = self.maxes
        pos = bisect_left(maxes, page)
        if pos == len(maxes):
            return maxes[-1] if maxes else None
        sub = self.lists[pos]
        idx = bisect_right(sub, page)
        if idx:
            return sub[idx - 1]
        return maxes[pos - 1] if pos else None

    def _floor_at(self, page: int) -> tuple[int, int]:
        """Where the greatest key below or at ``page`` is, or the first key when none is: (sublist, index)."""
        maxes = self.maxes
        pos = bisect_left(maxes, page)
        if pos == len(maxes):
            return pos - 1, len(self.lists[-1]) - 1
        idx = bisect_right(self.lists[pos], page) - 1
        if idx < 0 and pos:
            return pos - 1, len(self.lists[pos - 1]) - 1
        return pos, max(idx, 0)

    def from_floor(self, page: int) -> Iterator[int]:
        """Keys in order from the greatest one at or below ``page`` (from the first if none is)."""
        if not self.maxes:
            return
        pos, idx = self._floor_at(page)
        lists = self.lists
        yield from lists[pos][idx:]
        for sub in lists[pos + 1 :]:
            yield from sub

    def span(self, start: int, end: int) -> list[int]:
        """The keys in ``[start, end]``, after the greatest key below ``start`` if there is one."""
        maxes = self.maxes
        if not maxes:
            return []
        lists = self.lists
        pos = bisect_left(maxes, start)
        if pos == len(maxes):
            return [maxes[-1]]  # every key is below start
        sub = lists[pos]
        idx = bisect_left(sub, start)
        out: list[int] = []
        if idx:
            out.append(sub[idx - 1])
        elif pos:
            out.append(maxes[pos - 1])
        while True:
            for k in range(idx, len(sub)):
                key = sub[k]
                if key > end:
                    return out
                out.append(key)
            pos += 1
            if pos == len(lists):
                return out
            sub, idx = lists[pos], 0

    def replace(self, old: list[int], new: list[int]) -> None:
        """Put ``new`` (sorted) where the consecutive keys ``old`` are; no key lies between them and ``new``."""
        if old == new:
            return
        lists, maxes = self.lists, self.maxes
        if not lists:
            if new:
                lists.append(list(new))
                maxes.append(new[-1])
            return
        at = old[0] if old else new[0]
        pos = bisect_left(maxes, at)
        if pos == len(maxes):
            pos -= 1  # beyond every key: onto the end of the last sublist
        sub = lists[pos]
        idx = bisect_left(sub, at)
        if idx + len(old) > len(sub):
            # The old keys run into the next sublist (a long update): one key at a time.
            for key in old:
                self.replace([key], [])
            for key in new:
                self.replace([], [key])
            return
        sub[idx : idx + len(old)] = new
        self._settle(pos)

    def _settle(self, pos: int) -> None:
        """Restore sublist ``pos``'s bounds after it changed: split when long, merge when short or empty."""
        lists, maxes, load = self.lists, self.maxes, self.load
        sub = lists[pos]
        if len(sub) > 2 * load:
            half = len(sub) >> 1
            lists[pos : pos + 1] = [sub[:half], sub[half:]]
            maxes[pos : pos + 1] = [sub[half - 1], sub[-1]]
        elif len(sub) >= load >> 1 or len(lists) == 1:
            if sub:
                maxes[pos] = sub[-1]
            else:
                del lists[pos], maxes[pos]
        else:
            # Short: join a neighbour, so that lookups keep few sublists to bisect; split again if long.
            if pos + 1 == len(lists):
                pos -= 1
            joined = lists[pos] + lists[pos + 1]
            lists[pos : pos + 2] = [joined]
            maxes[pos : pos + 2] = [joined[-1]]
            if len(joined) > 2 * load:
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
