"""The serving process's collector settings (in a child process: freezing is for the whole process)."""

from __future__ import annotations

import subprocess
import sys

from service.gc_policy import YOUNG_THRESHOLD

PROBE = """
import gc
import service.app  # what a server imports before it serves
from service.gc_policy import settle_for_serving
before = gc.get_freeze_count()
settle_for_serving()
print(before, gc.get_freeze_count(), gc.get_threshold()[0])
"""


def test_start_up_objects_are_frozen_and_the_young_generation_raised() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    before, frozen, young = map(int, out.stdout.split())
    assert before == 0
    # The imports alone leave tens of thousands of tracked objects; all of them leave the GC's sight.
    assert frozen > 20_000
    assert young == YOUNG_THRESHOLD
