"""ExtentMap and sweep: examples, then a property test against a naive page -> value dict."""

from __future__ import annotations

from itertools import groupby, pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.extents import Delta, Extent, ExtentMap, _Runs, sweep

# The naive model's domain: pages 0..DOMAIN-1; windows and updates may reach a little past it.
DOMAIN = 64
LO, HI = -4, DOMAIN + 4
VALUES = ("a", "b", "c")

Run = tuple[int, int, str]
Piece = tuple[int, int, str | None]


def runs(m: ExtentMap[str]) -> list[Run]:
    return [(e.start, e.end, e.value) for e in m]


def rle(pages: dict[int, str], start: int, end: int) -> list[Piece]:
    """Run-length encoding of ``[start, end)`` in the naive model, gaps as None."""
    out: list[Piece] = []
    pos = start
    for value, group in groupby(range(start, end), key=pages.get):
        n = len(list(group))
        out.append((pos, pos + n, value))
        pos += n
    return out


def naive_runs(pages: dict[int, str]) -> list[Run]:
    return [(s, e, v) for s, e, v in rle(pages, LO, HI) if v is not None]


def assert_maximal(m: ExtentMap[str]) -> None:
    rs = runs(m)
    assert len(m) == len(rs)
    for s, e, _ in rs:
        assert s < e, f"empty run in {rs}"
    for (_, e1, v1), (s2, _, v2) in pairwise(rs):
        assert e1 <= s2, f"overlapping runs in {rs}"
        assert not (e1 == s2 and v1 == v2), f"runs not maximal: {rs}"
    assert_layout(m)


def assert_layout(m: ExtentMap[Any]) -> None:
    """The runs' sublists: starts in order, ends and values beside them, none empty or over twice the
    load, maxes beside, and the size kept."""
    runs = m._runs
    starts = [k for sub in runs.starts for k in sub]
    assert starts == sorted(set(starts))
    assert [len(s) for s in runs.starts] == [len(e) for e in runs.ends] == [len(v) for v in runs.values]
    assert list(runs.maxes) == [sub[-1] for sub in runs.starts]
    assert runs.size == len(starts)
    assert all(0 < len(sub) <= 2 * runs.load for sub in runs.starts)
    # A short sublist joins a neighbour, so only a lone one may be under half the load.
    assert len(runs.starts) == 1 or all(len(sub) >= runs.load >> 1 for sub in runs.starts)


# -- examples -----------------------------------------------------------------------------------


def test_empty_map() -> None:
    m: ExtentMap[str] = ExtentMap()
    assert len(m) == 0
    assert m.get(0) is None
    assert list(m.extents_in(0, 10)) == []
    assert [(s.start, s.end, s.value) for s in m.segments(0, 10)] == [(0, 10, None)]
    assert m.count(0, 10, "a") == 0
    assert m.covered(0, 10) == 0
    assert not m.drain()


def test_set_returns_pages_changed_and_merges_neighbours() -> None:
    m: ExtentMap[str] = ExtentMap()
    assert m.set(0, 4, "a") == 4
    assert m.set(8, 12, "a") == 4
    assert runs(m) == [(0, 4, "a"), (8, 12, "a")]
    # Filling the gap merges all three into one run; only the gap's pages changed.
    assert m.set(2, 10, "a") == 4
    assert runs(m) == [(0, 12, "a")]
    # Setting what is already there changes nothing.
    assert m.set(0, 12, "a") == 0
    assert m.set(3, 3, "b") == 0
    assert m.set(5, 2, "b") == 0
    assert runs(m) == [(0, 12, "a")]


def test_set_splits_and_clears() -> None:
    m: ExtentMap[str] = ExtentMap()
    m.set(0, 10, "a")
    assert m.set(3, 5, "b") == 2
    assert runs(m) == [(0, 3, "a"), (3, 5, "b"), (5, 10, "a")]
    assert m.set(4, 7, None) == 3
    assert runs(m) == [(0, 3, "a"), (3, 4, "b"), (7, 10, "a")]
    # Clearing a range that is already empty changes nothing.
    assert m.set(4, 7, None) == 0
    assert m.set(20, 30, None) == 0
    # Writing the same value back joins the pieces again.
    assert m.set(3, 7, "a") == 4
    assert runs(m) == [(0, 10, "a")]


def test_set_touching_run_of_other_value_does_not_merge() -> None:
    m: ExtentMap[str] = ExtentMap()
    m.set(0, 4, "a")
    m.set(4, 8, "b")
    m.set(8, 12, "a")
    assert runs(m) == [(0, 4, "a"), (4, 8, "b"), (8, 12, "a")]
    assert m.set(4, 8, "a") == 4
    assert runs(m) == [(0, 12, "a")]


def test_get_at_boundaries() -> None:
    m: ExtentMap[str] = ExtentMap()
    m.set(5, 10, "a")
    assert [m.get(p) for p in (3, 4, 5, 9, 10, 11)] == [None, None, "a", "a", None, None]


def test_extents_in_clips_to_window() -> None:
    m: ExtentMap[str] = ExtentMap()
    m.set(0, 10, "a")
    m.set(20, 30, "b")
    got = [(e.start, e.end, e.value) for e in m.extents_in(5, 25)]
    assert got == [(5, 10, "a"), (20, 25, "b")]
    assert list(m.extents_in(10, 20)) == []
    assert list(m.extents_in(25, 25)) == []
    assert [(e.start, e.end) for e in m.extents_in(9, 10)] == [(9, 10)]


def test_segments_cover_window_exactly() -> None:
    m: ExtentMap[str] = ExtentMap()
    m.set(2, 4, "a")
    m.set(6, 8, "b")
    got = [(s.start, s.end, s.value) for s in m.segments(0, 10)]
    assert got == [(0, 2, None), (2, 4, "a"), (4, 6, None), (6, 8, "b"), (8, 10, None)]
    assert list(m.segments(5, 5)) == []


def test_count_and_covered() -> None:
    m: ExtentMap[str] = ExtentMap()
    m.set(0, 10, "a")
    m.set(4, 6, "b")
    assert m.count(0, 10, "a") == 8
    assert m.count(3, 5, "b") == 1
    assert m.covered(-5, 20) == 10
    assert m.covered(8, 20) == 2


def test_construct_from_extents() -> None:
    m = ExtentMap([Extent(10, 20, "b"), Extent(0, 5, "a")])
    assert runs(m) == [(0, 5, "a"), (10, 20, "b")]
    # Loading does not count as a change.
    assert not m.drain()


def test_drain_reports_net_change_and_restarts() -> None:
    m = ExtentMap([Extent(0, 10, "a")])
    m.set(3, 5, "b")
    delta = m.drain()
    assert delta.removed == {Extent(0, 10, "a")}
    assert delta.added == {Extent(0, 3, "a"), Extent(3, 5, "b"), Extent(5, 10, "a")}
    assert not m.drain()
    # A change undone before the next drain nets out to nothing.
    m.set(3, 5, "a")
    m.set(3, 5, "b")
    assert not m.drain()


def test_delta_inverted_and_clear() -> None:
    m = ExtentMap([Extent(0, 4, "a"), Extent(8, 9, "b")])
    m.clear()
    assert len(m) == 0
    delta = m.drain()
    assert delta.removed == {Extent(0, 4, "a"), Extent(8, 9, "b")}
    assert delta.added == set()
    inv = delta.inverted()
    assert inv.added == delta.removed
    assert inv.removed == delta.added
    assert not Delta[str]()


def test_extent_npages() -> None:
    assert Extent(3, 10, "x").npages == 7


# -- sweep --------------------------------------------------------------------------------------


def test_sweep_aligned_maps() -> None:
    a: ExtentMap[str] = ExtentMap()
    b: ExtentMap[str] = ExtentMap()
    a.set(0, 6, "a")
    b.set(4, 10, "b")
    got = list(sweep((a, 0), (b, 0), start=0, end=12))
    assert got == [(0, 4, ("a", None)), (4, 6, ("a", "b")), (6, 10, (None, "b")), (10, 12, (None, None))]


def test_sweep_with_shifts() -> None:
    attrs: ExtentMap[str] = ExtentMap()  # indexed by gfn
    pop: ExtentMap[str] = ExtentMap()  # indexed by pgoff = gfn + 100
    other: ExtentMap[str] = ExtentMap()  # indexed by gfn - 3
    attrs.set(10, 20, "p")
    pop.set(112, 115, "x")
    other.set(12, 30, "o")
    got = list(sweep((attrs, 0), (pop, 100), (other, -3), start=10, end=20))
    assert got == [
        (10, 12, ("p", None, None)),
        (12, 15, ("p", "x", None)),
        (15, 20, ("p", None, "o")),
    ]


def test_sweep_empty_window_yields_nothing() -> None:
    a = ExtentMap([Extent(0, 4, "a")])
    assert list(sweep((a, 0), start=3, end=3)) == []
    assert list(sweep((a, 0), (a, 5), start=4, end=2)) == []


# -- properties ---------------------------------------------------------------------------------

page = st.integers(LO, HI)
value = st.sampled_from((None, *VALUES))
update = st.tuples(page, page, value)


def check_queries(m: ExtentMap[str], pages: dict[int, str], windows: list[tuple[int, int]]) -> None:
    assert_maximal(m)
    assert runs(m) == naive_runs(pages)
    for p in range(LO - 2, HI + 2):
        assert m.get(p) == pages.get(p), f"page {p}"
    for a, b in windows:
        expected = rle(pages, a, b)
        assert [(s.start, s.end, s.value) for s in m.segments(a, b)] == expected
        assert [(e.start, e.end, e.value) for e in m.extents_in(a, b)] == [x for x in expected if x[2] is not None]
        for v in VALUES:
            assert m.count(a, b, v) == sum(1 for p in range(a, b) if pages.get(p) == v)
        assert m.covered(a, b) == sum(1 for p in range(a, b) if p in pages)


def draw_update(data: st.DataObject, m: ExtentMap[str]) -> tuple[int, int, str | None]:
    """An update, often starting or ending on (or next to) a run boundary: where merges happen."""
    edges = sorted({p + d for e in m for p in (e.start, e.end) for d in (-1, 0, 1)} & set(range(LO, HI + 1)))
    point = st.one_of(page, st.sampled_from(edges)) if edges else page
    start = data.draw(point)
    end = data.draw(st.one_of(point, st.integers(start, min(start + 12, HI))))
    return start, end, data.draw(value)


# Shrinking a failure can take minutes: let it finish and print the minimal example.
@pytest.mark.timeout(900)
@settings(max_examples=200, deadline=None)
@given(data=st.data(), steps=st.integers(0, 40))
def test_extent_map_matches_naive_model(data: st.DataObject, steps: int) -> None:
    check_against_model(data, steps, ExtentMap())


# The map keeps its run starts in sorted sublists; a load of 4 (the default is 1000)
# puts the model's few dozen runs across many sublists, so lookups cross sublist boundaries.
@pytest.mark.timeout(900)
@settings(max_examples=200, deadline=None)
@given(data=st.data(), steps=st.integers(0, 60))
def test_extent_map_over_many_sublists_matches_naive_model(data: st.DataObject, steps: int) -> None:
    m: ExtentMap[str] = ExtentMap()
    m._runs.load = 4
    check_against_model(data, steps, m)


def test_large_scattered_map_matches_naive_model() -> None:
    """Thousands of runs (several sublists at the default load), changed a few pages at a time."""
    import random

    rng = random.Random(7)
    n = 60_000
    m: ExtentMap[str] = ExtentMap()
    m.set(0, n, "a")
    pages = dict.fromkeys(range(n), "a")

    def update(p: int, q: int) -> None:
        v = rng.choice((None, "a", "b"))
        assert m.set(p, q, v) == sum(1 for x in range(p, q) if pages.get(x) != v)
        for x in range(p, q):
            if v is None:
                pages.pop(x, None)
            else:
                pages[x] = v

    for p in rng.sample(range(n), 12_000):
        update(p, p + rng.randint(1, 6))
    # Then updates around where one sublist's keys end and the next's begin.
    for _ in range(300):
        sublists = m._runs.starts
        i = rng.randrange(1, len(sublists))
        last, first = sublists[i - 1][-1], sublists[i][0]
        p = rng.randint(last - 2, first + 1)
        update(p, rng.randint(p + 1, max(p + 1, first + 3)))
    sublists = m._runs.starts
    assert len(sublists) > 2
    assert_layout(m)
    # Where the runs of one sublist end and the next sublist's begin: lookups cross there.
    assert any(nxt[0] - prev[-1] > 1 for prev, nxt in pairwise(sublists))
    assert_maximal(m)
    for p in range(-1, n + 8):
        assert m.get(p) == pages.get(p)
    expected_runs = [(s, e, v) for s, e, v in rle(pages, 0, n + 8) if v is not None]
    assert runs(m) == expected_runs


def check_against_model(data: st.DataObject, steps: int, m: ExtentMap[str]) -> None:
    pages: dict[int, str] = {}
    at_drain = set(m)
    for _ in range(steps):
        start, end, v = draw_update(data, m)
        expected_changed = sum(1 for p in range(start, end) if pages.get(p) != v)
        assert m.set(start, end, v) == expected_changed
        for p in range(start, end):
            if v is None:
                pages.pop(p, None)
            else:
                pages[p] = v
        windows = data.draw(st.lists(st.tuples(page, page).map(lambda w: (min(w), max(w))), max_size=3))
        check_queries(m, pages, windows)
        if data.draw(st.booleans()):
            now = set(m)
            delta = m.drain()
            assert delta.removed <= at_drain
            assert delta.added <= now
            assert (at_drain - delta.removed) | delta.added == now
            # The delta is exactly the net change: what the store deletes and inserts.
            assert delta.removed == at_drain - now
            assert delta.added == now - at_drain
            at_drain = now


shift = st.integers(-8, 8)


@settings(max_examples=200, deadline=None)
@given(
    maps=st.lists(st.tuples(st.lists(update, max_size=8), shift), min_size=1, max_size=3),
    window=st.tuples(page, page),
)
def test_sweep_matches_pagewise_reads(
    maps: list[tuple[list[tuple[int, int, str | None]], int]], window: tuple[int, int]
) -> None:
    built: list[tuple[ExtentMap[str], int]] = []
    for updates, sh in maps:
        m: ExtentMap[str] = ExtentMap()
        for s, e, v in updates:
            m.set(s, e, v)
        built.append((m, sh))
    start, end = window
    pieces = list(sweep(*built, start=start, end=end))
    if start >= end:
        assert pieces == []
        return
    # Pieces tile the window in order.
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    for (_, e1, _), (s2, _, _) in pairwise(pieces):
        assert e1 == s2
    for s, e, values in pieces:
        assert s < e
        for p in range(s, e):
            assert values == tuple(m.get(p + sh) for m, sh in built)
    # Maps are maximal, so every piece boundary is a change of some map's value.
    for (_, _, v1), (_, _, v2) in pairwise(pieces):
        assert v1 != v2


@pytest.mark.parametrize(("shift_b", "expected"), [(0, 4), (2, 2), (-2, 2)])
def test_sweep_piece_count_depends_on_shift(shift_b: int, expected: int) -> None:
    a = ExtentMap([Extent(0, 4, "a")])
    b = ExtentMap([Extent(2, 6, "b")])
    pieces = list(sweep((a, 0), (b, shift_b), start=0, end=8))
    assert len(pieces) == expected


def test_a_map_that_does_not_record_keeps_no_delta() -> None:
    m: ExtentMap[str] = ExtentMap(record=False)
    m.set(0, 10, "a")
    m.set(3, 4, "b")
    m.clear()
    m.set(5, 6, "a")
    assert runs(m) == [(5, 6, "a")]
    assert not m.drain()


@settings(max_examples=200, deadline=None)
@given(
    jobs=st.lists(st.lists(update, min_size=1, max_size=4), min_size=1, max_size=6), start=st.lists(update, max_size=6)
)
def test_deltas_compose_to_the_net_change(
    jobs: list[list[tuple[int, int, str | None]]], start: list[tuple[int, int, str | None]]
) -> None:
    """Draining after every job and composing with ``then`` is draining once after all of them."""
    per_job: ExtentMap[str] = ExtentMap()
    whole: ExtentMap[str] = ExtentMap()
    for m in (per_job, whole):
        for a, b, v in start:
            m.set(min(a, b), max(a, b), v)
        m.drain()
    composed: Delta[str] = Delta()
    for job in jobs:
        for a, b, v in job:
            per_job.set(min(a, b), max(a, b), v)
            whole.set(min(a, b), max(a, b), v)
        drained = per_job.drain()
        earlier = composed
        copies = (set(earlier.removed), set(earlier.added), set(drained.removed), set(drained.added))
        composed = earlier.then(drained)
        # then() leaves both operands as they were: the batch's undo path reads each job's own delta.
        assert (earlier.removed, earlier.added, drained.removed, drained.added) == copies
    net = whole.drain()
    assert composed.removed == net.removed
    assert composed.added == net.added


@settings(max_examples=300, deadline=None)
@given(
    keys=st.sets(st.integers(0, 400), max_size=120),
    load=st.integers(2, 8),
    ops=st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 6), st.lists(st.integers(0, 400), max_size=4)), max_size=30
    ),
)
def test_runs_replace_keeps_order_and_bounds(keys: set[int], load: int, ops: list[tuple[int, int, list[int]]]) -> None:
    """Replacing consecutive runs, in one sublist or across several, against a plain sorted list."""
    runs = _Runs(((k, k + 1000, f"v{k}") for k in keys), load=load)
    model = [(k, k + 1000, f"v{k}") for k in sorted(keys)]
    for at, count, extra in ops:
        i = next((j for j, r in enumerate(model) if r[0] >= at), len(model))
        old = model[i : i + count]
        low = model[i - 1][0] if i else -1
        high = model[i + len(old)][0] if i + len(old) < len(model) else 401
        new_keys = sorted({k for k in [*(r[0] for r in old[:1]), *extra] if low < k < high})
        new = [Extent(k, k + 2000, f"w{k}") for k in new_keys]
        runs.replace(old[0][0] if old else (new_keys[0] if new_keys else at), len(old), new)
        model[i : i + len(old)] = [(r.start, r.end, r.value) for r in new]
        assert [(r.start, r.end, r.value) for r in runs] == model
        assert list(runs.maxes) == [sub[-1] for sub in runs.starts]
        assert runs.size == len(model)
        assert all(0 < len(sub) <= 2 * load for sub in runs.starts)
        assert len(runs.starts) <= 1 or all(len(sub) >= load >> 1 for sub in runs.starts)
        for page in (at - 1, at, at + 1, at + 1000):
            below = [r for r in model if r[0] <= page]
            assert runs.get(page) == (below[-1][2] if below and page < below[-1][1] else None)
