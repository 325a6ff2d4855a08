"""Smoke test of the kvm part of ``gmem-broker bench --kvm``: a tiny run gives every figure."""

from __future__ import annotations

import pytest

from service import bench_kvm

from .conftest import require_kvm


@pytest.mark.timeout(90)
def test_kvm_bench_smoke() -> None:
    require_kvm()
    figures = bench_kvm.run_kvm_bench(duration=0.3, batch_ranges=8, range_pages=4)
    assert figures["raw"]["allocate_us_per_page"] > 0
    assert figures["raw"]["punch_us_per_page"] > 0
    assert figures["convert"]["pages_converted"] == figures["convert"]["batches"] * 8 * 4
    assert figures["punch"]["pages_freed"] == figures["punch"]["requests"] > 0
    assert figures["punch_ratio_to_raw"] > 1
