"""The sim's frame pools: lowest free frames first, runs cut at node boundaries, nothing lost."""

from __future__ import annotations

import pytest

from service.backends.frames import FramePool
from service.backends.protocol import BackendError


def test_take_lowest_free_frames_and_give_them_back() -> None:
    pool = FramePool(2, 100)
    assert pool.take(1, 10) == [(100, 10)]
    assert pool.take(1, 5) == [(110, 5)]
    pool.give(100, 10)
    # A hole below: the next allocation fills it first, then continues after the used run.
    assert pool.take(1, 12) == [(100, 10), (115, 2)]
    assert [pool.free(0), pool.free(1)] == [100, 100 - 17]


def test_refusals() -> None:
    pool = FramePool(2, 100)
    pool.take_at(150, 1)
    with pytest.raises(BackendError) as busy:
        pool.take_at(150, 1)
    assert busy.value.errno == "EBUSY"
    with pytest.raises(BackendError) as full:
        pool.take(0, 101)
    assert full.value.errno == "ENOMEM"
    with pytest.raises(BackendError) as node:
        pool.check_node(2)
    assert node.value.errno == "ENODEV"
    with pytest.raises(BackendError) as beyond:
        pool.take_at(200, 1)
    assert beyond.value.errno == "ERANGE"
    assert [pool.free(0), pool.free(1)] == [100, 99]


def test_a_run_over_a_node_boundary_is_returned_to_both_nodes() -> None:
    pool = FramePool(2, 100)
    pool.take(0, 100)
    pool.take(1, 100)
    assert pool.by_node(95, 10) == [(95, 5), (100, 5)]
    pool.give(95, 10)
    assert [pool.free(0), pool.free(1)] == [5, 5]
    assert pool.is_free(95, 10)
