"""The kvm backend's share of the benchmark: API throughput next to the raw syscall cost, one run.

(d) page conversions/s through ``POST .../convert`` on a kvm broker (each range is one real
fallocate punch, of the guest_memfd or of the shared memfd), (e) punch-hole pages/s through
``POST .../punch-hole`` one page per request, and the raw cost of one 4 KiB fallocate and one
4 KiB punch on a guest_memfd, measured here, in this process, with the same ``uapi`` calls.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from .backends.kvm import uapi
from .bench import BASE_GPA, HTTP_TIMEOUT, PAGE, _ok, _server

RAW_PAGES = 16384


def raw_fallocate_cost(pages: int = RAW_PAGES) -> dict[str, float]:
    """Microseconds per 4 KiB allocate and per 4 KiB punch on a fresh guest_memfd."""
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        vm = uapi.ioctl(kvm, uapi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        try:
            args = uapi.KvmCreateGuestMemfd(size=pages * PAGE, flags=0)
            memfd = uapi.ioctl(vm, uapi.KVM_CREATE_GUEST_MEMFD, args, "KVM_CREATE_GUEST_MEMFD")
            try:
                started = time.perf_counter()
                for pgoff in range(pages):
                    uapi.fallocate(memfd, uapi.FALLOC_FL_KEEP_SIZE, pgoff * PAGE, PAGE, "fallocate")
                allocated = time.perf_counter()
                punch = uapi.FALLOC_FL_KEEP_SIZE | uapi.FALLOC_FL_PUNCH_HOLE
                for pgoff in range(pages):
                    uapi.fallocate(memfd, punch, pgoff * PAGE, PAGE, "punch")
                punched = time.perf_counter()
            finally:
                os.close(memfd)
        finally:
            os.close(vm)
    finally:
        os.close(kvm)
    return {
        "pages": pages,
        "allocate_us_per_page": (allocated - started) / pages * 1e6,
        "punch_us_per_page": (punched - allocated) / pages * 1e6,
    }


def _guest(client: httpx.Client, npages: int) -> tuple[str, str]:
    vm = _ok(client.post("/v1/vms", json={"name": f"bench-kvm-{os.getpid()}", "vm_type": "default"}), 201)
    memfd = _ok(client.post(f"/v1/vms/{vm['id']}/memfds", json={"size": npages * PAGE}), 201)
    slot = {"slot": 0, "gpa": BASE_GPA, "size": npages * PAGE, "memfd_id": memfd["id"], "offset": 0}
    _ok(client.post(f"/v1/vms/{vm['id']}/memslots", json=slot), 201)
    return str(vm["id"]), str(memfd["id"])


def _converts(client: httpx.Client, vm_id: str, *, duration: float, ranges: int, range_pages: int) -> dict[str, Any]:
    """Batches flipping the same scattered ranges private <-> shared; each range costs a real punch."""
    spans = [{"gpa": BASE_GPA + 2 * i * range_pages * PAGE, "size": range_pages * PAGE} for i in range(ranges)]
    batch_pages = ranges * range_pages
    converted = batches = 0
    elapsed = 0.0
    to = "private"
    while elapsed < duration:
        body = {"ranges": [{**s, "to": to} for s in spans]}
        started = time.perf_counter()
        answer = _ok(client.post(f"/v1/vms/{vm_id}/convert", json=body), 200)
        elapsed += time.perf_counter() - started
        converted += answer["pages_converted"]
        batches += 1
        to = "shared" if to == "private" else "private"
    if converted != batches * batch_pages:
        raise RuntimeError(f"{batches} batches converted {converted} pages, not {batches * batch_pages}")
    return {
        "batches": batches,
        "ranges": ranges,
        "range_pages": range_pages,
        "pages_converted": converted,
        "pages_per_s": converted / elapsed,
        "us_per_page": elapsed / converted * 1e6,
    }


def _punches(client: httpx.Client, vm_id: str, memfd_id: str, *, duration: float, npages: int) -> dict[str, Any]:
    """Allocate ``npages`` private pages in one request, punch them one request each; punches are timed."""
    m = f"/v1/vms/{vm_id}/memfds/{memfd_id}"
    ranges = [{"gpa": BASE_GPA, "size": npages * PAGE, "to": "private"}]
    _ok(client.post(f"/v1/vms/{vm_id}/convert", json={"ranges": ranges}), 200)
    freed = requests = 0
    elapsed = 0.0
    while elapsed < duration:
        _ok(client.post(f"{m}/allocate", json={"offset": 0, "length": npages * PAGE}), 200)
        for pgoff in range(npages):
            started = time.perf_counter()
            answer = _ok(client.post(f"{m}/punch-hole", json={"offset": pgoff * PAGE, "length": PAGE}), 200)
            elapsed += time.perf_counter() - started
            freed += answer["pages_freed"]
            requests += 1
            if elapsed >= duration:
                break
    if freed != requests:
        raise RuntimeError(f"{requests} single-page punches freed {freed} pages")
    return {
        "requests": requests,
        "pages_freed": freed,
        "pages_per_s": freed / elapsed,
        "us_per_page": elapsed / freed * 1e6,
    }


def run_kvm_bench(*, duration: float, batch_ranges: int, range_pages: int) -> dict[str, Any]:
    """(d) conversions and (e) punches through a kvm broker, and the raw fallocate cost; prints a table."""
    console = Console(stderr=True)
    raw = raw_fallocate_cost()
    npages = 2 * batch_ranges * range_pages + 1024
    with tempfile.TemporaryDirectory(prefix="gmem-bench-kvm-") as tmp:
        console.print("[bold]gmem-broker bench[/]: kvm backend on /dev/kvm ...")
        with _server(Path(tmp), "kvm") as (url, pid), httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as client:
            vm_id, memfd_id = _guest(client, npages)
            converts = _converts(client, vm_id, duration=duration, ranges=batch_ranges, range_pages=range_pages)
            punches = _punches(client, vm_id, memfd_id, duration=duration, npages=1024)
            _ok(client.delete(f"/v1/vms/{vm_id}", params={"force": "true"}), 200)
    figures = {
        "server": f"uvicorn pid {pid}, kvm backend, SQLite (WAL)",
        "raw": raw,
        "convert": converts,
        "punch": punches,
        "punch_ratio_to_raw": punches["us_per_page"] / raw["punch_us_per_page"],
        "convert_ratio_to_raw": converts["us_per_page"] / raw["punch_us_per_page"],
    }
    table = Table(title="gmem-broker bench: kvm backend")
    table.add_column("measurement")
    table.add_column("throughput", justify="right")
    table.add_column("per page", justify="right")
    table.add_column("x raw punch", justify="right")
    table.add_row(
        f"(d) convert {batch_ranges} ranges x {range_pages} pages",
        f"{converts['pages_per_s']:,.0f} pages/s",
        f"{converts['us_per_page']:.1f} µs",
        f"{figures['convert_ratio_to_raw']:.1f}",
    )
    table.add_row(
        "(e) punch-hole, 1 page per request",
        f"{punches['pages_per_s']:,.0f} pages/s",
        f"{punches['us_per_page']:.1f} µs",
        f"{figures['punch_ratio_to_raw']:.1f}",
    )
    table.add_row("raw fallocate(KEEP_SIZE) 4 KiB", "", f"{raw['allocate_us_per_page']:.2f} µs", "")
    table.add_row("raw fallocate(PUNCH_HOLE) 4 KiB", "", f"{raw['punch_us_per_page']:.2f} µs", "1.0")
    console.print(table)
    return figures
