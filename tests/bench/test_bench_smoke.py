"""Smoke test of ``gmem-broker bench``: a tiny run gives every figure; speed is not asserted."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from service import bench

FIGURES = {
    "noop": ["requests", "requests_per_s", "p50_ms", "p99_ms"],
    "convert": ["requests", "requests_per_s", "p50_ms", "p99_ms", "ratio_to_noop", "shared_pages_after"],
    "batch": ["batches", "batches_per_s", "pages_converted", "pages_per_s", "p50_ms"],
}


def _check(figures: dict[str, Any], generator: str) -> None:
    assert figures["generator"] == generator
    for section, keys in FIGURES.items():
        for key in keys:
            value = figures[section][key]
            assert isinstance(value, int | float), (section, key, value)
            assert value > 0, (section, key, value)
    assert figures["noop"]["errors"] == 0
    assert figures["convert"]["errors"] == 0
    assert figures["batch"]["pages_converted"] == figures["batch"]["batches"] * 20 * 4
    # Alternating rounds; the figures are medians of them, and every round's walk went on where the
    # last stopped: each answered convert (and the warm-up's) left one more page shared.
    assert figures["rounds"] == 3
    for section in ("noop", "convert"):
        rounds = figures[section]["rounds"]
        assert len(rounds) == 3
        assert figures[section]["requests"] == sum(r["requests"] for r in rounds)
        assert min(r["requests_per_s"] for r in rounds) <= figures[section]["requests_per_s"]
        assert figures[section]["requests_per_s"] <= max(r["requests_per_s"] for r in rounds)
    ratios = figures["convert"]["round_ratios"]
    assert len(ratios) == 3
    assert figures["convert"]["ratio_to_noop"] == sorted(ratios)[1]
    assert figures["convert"]["ratio_of_medians"] > 0
    assert figures["convert"]["shared_pages_after"] > figures["convert"]["requests"]


@pytest.mark.timeout(60)
def test_bench_smoke() -> None:
    figures = bench.run_bench(duration=0.5, connections=2, batch_ranges=20, range_pages=4)
    _check(figures, "wrk" if shutil.which("wrk") else "python")


@pytest.mark.timeout(60)
def test_bench_smoke_without_wrk(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which

    def which(name: str, *args: Any, **kwargs: Any) -> str | None:
        return None if name == "wrk" else real_which(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)
    figures = bench.run_bench(duration=0.5, connections=2, batch_ranges=20, range_pages=4)
    _check(figures, "python")
