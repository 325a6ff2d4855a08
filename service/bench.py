"""``gmem-broker bench``: start the real service on a fresh SQLite file and measure it over loopback.

Three figures, in one run against one server process:

(a) the no-op endpoint ``GET /healthz``: requests/s, p50, p99 (the cost of HTTP + routing alone);
(b) ``POST /v1/vms/{id}/convert`` with one range of one page: requests/s, p50, p99 and the ratio to
    (a). Every request really converts a page: each load worker walks its own region of the memslot
    in a scattered order (a stride permutation), to shared on the first pass, back to private on
    the next, so no request is a no-op and the extent map fragments as it would under a guest;
(c) convert batches of ``batch_ranges`` ranges of ``range_pages`` pages each, separated by gaps of
    the same size, sent back to back by one client: batches/s, page conversions/s, p50 and p99.

(a) and (b) are measured in ``rounds`` alternating rounds (a b, b a, a b, ...) after one second of
each as warm-up, and each figure is the median over the rounds (p99: the worst round), with every
round's throughput printed too. On a shared two-core machine one five-second measurement of the
same server varies by 15% or more from the next, and the machine drifts within a run; so the
ratio of (b) to (a) is taken per round, each (b) against the (a) measured next to it, and the
median of those paired ratios is reported, beside the ratio of the two medians. Each round of (b)
carries on the workers' walks where the previous one stopped, so a page is never converted twice
in the same direction.

The load for (a) and (b) comes from ``wrk`` when it is installed (a C load generator, so the client
is not what is measured), else from several Python client processes, each running keep-alive
connections; the figures say which. Only loopback is used; every wait is bounded.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from .store.migrate import upgrade

PAGE = 4096
GIB = 1 << 30
BASE_GPA = 4 * GIB
# Pages of the memslot used by (b), shared out among the load workers; (c) uses the pages after them.
SINGLE_REGION_PAGES = 8 << 20
MIN_BATCH_REGION_PAGES = 8 << 20
# Pages each worker of (b) cycles through before flipping direction; a power of two, so that
# ``i * STRIDE % cycle`` (STRIDE odd) visits every page of the cycle once, scattered.
MAX_CYCLE = 1 << 20
STRIDE = 7919
MARKER = "GMEM_BENCH_JSON "
SERVER_START_TIMEOUT = 60.0
HTTP_TIMEOUT = 120.0

NOOP = "noop"
CONVERT = "convert"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the load workers of (b) convert: worker ``w`` owns ``region`` pages from ``first_gfn``."""

    vm_id: str
    first_gfn: int
    region: int
    cycle: int

    def convert_body(self, worker: int, counter: int) -> bytes:
        """The body of a worker's ``counter``-th single-page convert (the wrk script does the same)."""
        i = counter % self.cycle
        to = "shared" if (counter // self.cycle) % 2 == 0 else "private"
        gfn = self.first_gfn + worker * self.region + (i * STRIDE) % self.cycle
        return b'{"ranges":[{"gpa":%d,"size":%d,"to":"%s"}]}' % (gfn * PAGE, PAGE, to.encode())


def _layout(vm_id: str, workers: int) -> Layout:
    region = SINGLE_REGION_PAGES // workers
    cycle = 1 << (min(region, MAX_CYCLE).bit_length() - 1)
    return Layout(vm_id=vm_id, first_gfn=BASE_GPA // PAGE, region=region, cycle=cycle)


# -- the server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def _server(workdir: Path, backend: str = "sim") -> Iterator[tuple[str, int]]:
    """The real service in a process of its own on a fresh, migrated SQLite file: (base url, pid)."""
    url = f"sqlite:///{workdir / 'broker.db'}"
    upgrade(url)
    port = _free_port()
    env = {
        **os.environ,
        "GMEM_BROKER_DATABASE_URL": url,
        "GMEM_BROKER_BACKEND": backend,
        "GMEM_BROKER_HANDOFF_SOCKET": str(workdir / "handoff.sock"),
        "GMEM_BROKER_HOST": "127.0.0.1",
        "GMEM_BROKER_LOG_LEVEL": "warning",
    }
    log_path = workdir / "server.log"
    cmd = [
        sys.executable,
        "-c",
        "from service.cli import main; main()",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        with httpx.Client(base_url=base_url, timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}:\n{_log_tail(log_path)}")
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server was not ready in {SERVER_START_TIMEOUT:.0f} s:\n{_log_tail(log_path)}"
                    )
                time.sleep(0.05)
        yield base_url, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _ok(resp: httpx.Response, status: int) -> dict[str, Any]:
    if resp.status_code != status:
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text}")
    body: dict[str, Any] = resp.json()
    return body


def _setup_guest(client: httpx.Client, memfd_pages: int) -> str:
    """A sw_protected VM with one memfd of ``memfd_pages`` bound whole at BASE_GPA (pages start private)."""
    vm = _ok(client.post("/v1/vms", json={"name": f"bench-{os.getpid()}", "vm_type": "sw_protected"}), 201)
    memfd = _ok(client.post(f"/v1/vms/{vm['id']}/memfds", json={"size": memfd_pages * PAGE}), 201)
    slot = {"slot": 0, "gpa": BASE_GPA, "size": memfd_pages * PAGE, "memfd_id": memfd["id"], "offset": 0}
    _ok(client.post(f"/v1/vms/{vm['id']}/memslots", json=slot), 201)
    return str(vm["id"])


def _warm_up(client: httpx.Client, layout: Layout, last_gfn: int) -> None:
    """A few requests of each kind, so that nothing is measured cold; checks a convert converts."""
    for _ in range(20):
        _ok(client.get("/healthz"), 200)
    for to in ("shared", "private") * 5:
        body = {"ranges": [{"gpa": last_gfn * PAGE, "size": PAGE, "to": to}]}
        done = _ok(client.post(f"/v1/vms/{layout.vm_id}/convert", json=body), 200)
        if done["pages_converted"] != 1:
            raise RuntimeError(f"a single-page convert converted {done['pages_converted']} pages")


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc (0 where there is no /proc).

    Throughput depends on what else the machine runs; the server's CPU time per request much less,
    so the report gives both.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 (utime, stime) of proc(5), counted from 1 with the name as field 2.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- (a) and (b) with wrk -----------------------------------------------------------------------

_WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\\n',
    MARKER, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

_WRK_CONVERT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local path = "/v1/vms/{vm_id}/convert"
local first_gfn, region, cycle, stride = {first_gfn}, {region}, {cycle}, {stride}
local threads_made = 0

function setup(thread)
  thread:set("worker", threads_made)
  threads_made = threads_made + 1
end

counter = {first_counter}

-- Same as Layout.convert_body: a stride permutation of the worker's cycle, to shared on even
-- passes and back to private on odd ones, so every request converts one page.
function request()
  local i = counter % cycle
  local to = (math.floor(counter / cycle) % 2 == 0) and "shared" or "private"
  local gfn = first_gfn + worker * region + (i * stride) % cycle
  counter = counter + 1
  local body = string.format('{{"ranges":[{{"gpa":%.0f,"size":{page},"to":"%s"}}]}}', gfn * {page}, to)
  return wrk.format(nil, path, nil, body)
end
"""


def _wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "wrk"


def _wrk_threads(connections: int) -> int:
    # The server and wrk share the machine: wrk needs few threads to outrun a Python server.
    return max(1, min(connections, (os.cpu_count() or 2) // 4))


def _run_wrk(
    wrk: str,
    workdir: Path,
    base_url: str,
    kind: str,
    layout: Layout,
    *,
    seconds: int,
    connections: int,
    first_counter: int = 0,
) -> dict[str, Any]:
    threads = _wrk_threads(connections)
    marker = f'MARKER = "{MARKER}"\n'
    if kind == NOOP:
        script, url = marker + _WRK_DONE, f"{base_url}/healthz"
    else:
        script = (
            marker
            + _WRK_CONVERT.format(
                vm_id=layout.vm_id,
                first_gfn=layout.first_gfn,
                region=layout.region,
                cycle=layout.cycle,
                stride=STRIDE,
                page=PAGE,
                first_counter=first_counter,
            )
            + _WRK_DONE
        )
        url = base_url
    path = workdir / f"{kind}.lua"
    path.write_text(script)
    cmd = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(path),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARKER)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    raw = json.loads(lines[-1][len(MARKER) :])
    elapsed = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / elapsed,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": sum(raw["errors"].values()),
        "non_2xx": raw["errors"]["status"],
        "seconds": elapsed,
    }


# -- (a) and (b) with Python client processes ----------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _client_process(
    base_url: str,
    kind: str,
    layout: Layout,
    first_worker: int,
    nconns: int,
    duration: float,
    first_counter: int,
    barrier: Any,
    results: Any,
) -> None:
    """One load process: ``nconns`` threads, each a keep-alive connection, for ``duration`` seconds."""
    ready = threading.Barrier(nconns + 1)
    go = threading.Event()
    deadline = [0.0]
    out: list[tuple[list[float], int, int]] = []
    lock = threading.Lock()

    def connection(worker: int) -> None:
        latencies: list[float] = []
        errors = non_2xx = 0
        with httpx.Client(base_url=base_url, timeout=30) as client:
            try:
                client.get("/healthz")  # open the connection before the clock starts
            except httpx.HTTPError:
                errors += 1
            ready.wait(timeout=60)
            go.wait(timeout=60)
            path = f"/v1/vms/{layout.vm_id}/convert"
            headers = {"content-type": "application/json"}
            counter = first_counter
            while True:
                t0 = time.monotonic()
                if t0 >= deadline[0]:
                    break
                try:
                    if kind == NOOP:
                        resp = client.get("/healthz")
                    else:
                        resp = client.post(path, content=layout.convert_body(worker, counter), headers=headers)
                        counter += 1
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.monotonic() - t0)
                if resp.status_code >= 400:
                    non_2xx += 1
        with lock:
            out.append((latencies, errors, non_2xx))

    threads = [threading.Thread(target=connection, args=(first_worker + k,), daemon=True) for k in range(nconns)]
    for t in threads:
        t.start()
    ready.wait(timeout=60)
    barrier.wait(timeout=60)
    start = time.monotonic()
    deadline[0] = start + duration
    go.set()
    for t in threads:
        t.join(timeout=duration + 60)
    elapsed = time.monotonic() - start
    results.put(
        {
            "latencies": [x for lat, _, _ in out for x in lat],
            "errors": sum(e for _, e, _ in out),
            "non_2xx": sum(n for _, _, n in out),
            "seconds": elapsed,
        }
    )


def _split(connections: int, processes: int) -> list[int]:
    return [connections // processes + (1 if k < connections % processes else 0) for k in range(processes)]


def _fallback_processes(connections: int) -> int:
    return max(1, min(connections, os.cpu_count() or 2))


def _run_python(
    base_url: str, kind: str, layout: Layout, *, duration: float, connections: int, first_counter: int = 0
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    shares = _split(connections, _fallback_processes(connections))
    barrier = ctx.Barrier(len(shares) + 1)
    results = ctx.Queue()
    procs = []
    first = 0
    for share in shares:
        p = ctx.Process(
            target=_client_process,
            args=(base_url, kind, layout, first, share, duration, first_counter, barrier, results),
            daemon=True,
        )
        p.start()
        procs.append(p)
        first += share
    try:
        barrier.wait(timeout=120)
        parts = [results.get(timeout=duration + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    latencies = sorted(x for part in parts for x in part["latencies"])
    elapsed = max(part["seconds"] for part in parts)
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
        "mean_ms": sum(latencies) / len(latencies) * 1000 if latencies else 0.0,
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        "errors": sum(part["errors"] + part["non_2xx"] for part in parts),
        "non_2xx": sum(part["non_2xx"] for part in parts),
        "seconds": elapsed,
    }


def _shared_pages(client: httpx.Client, vm_id: str, gfn: int, gfn_end: int) -> int:
    """Shared pages of ``[gfn, gfn_end)``, from the VM's extent map."""
    total = 0
    params: dict[str, Any] = {"start": gfn * PAGE, "end": gfn_end * PAGE, "limit": 10_000}
    for _ in range(10_000):
        page = _ok(client.get(f"/v1/vms/{vm_id}/extents", params=params), 200)
        total += sum(e["size"] // PAGE for e in page["items"] if e["attribute"] == "shared")
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    return total


# -- (c) batches --------------------------------------------------------------------------------


def _batch_bodies(vm_first_gfn: int, region: int, batch_ranges: int, range_pages: int) -> Callable[[int], bytes]:
    """Body of the k-th batch: window k//2 of the region, to shared on even k, back to private on odd."""
    span = batch_ranges * range_pages * 2
    windows = max(1, region // span)
    cache: dict[int, bytes] = {}

    def body(k: int) -> bytes:
        key = k % (2 * windows)
        if key not in cache:
            start = vm_first_gfn + (key // 2) * span
            to = "shared" if key % 2 == 0 else "private"
            ranges = [
                {"gpa": (start + i * 2 * range_pages) * PAGE, "size": range_pages * PAGE, "to": to}
                for i in range(batch_ranges)
            ]
            cache[key] = json.dumps({"ranges": ranges}).encode()
        return cache[key]

    return body


def _run_batches(
    client: httpx.Client,
    vm_id: str,
    first_gfn: int,
    region: int,
    *,
    duration: float,
    batch_ranges: int,
    range_pages: int,
) -> dict[str, Any]:
    body = _batch_bodies(first_gfn, region, batch_ranges, range_pages)
    path = f"/v1/vms/{vm_id}/convert"
    headers = {"content-type": "application/json"}
    _ok(client.post(path, content=body(0), headers=headers), 200)  # warm-up, then undo it
    _ok(client.post(path, content=body(1), headers=headers), 200)
    latencies: list[float] = []
    pages = 0
    k = 0
    start = time.monotonic()
    while True:
        content = body(k)
        t0 = time.monotonic()
        done = _ok(client.post(path, content=content, headers=headers), 200)
        latencies.append(time.monotonic() - t0)
        pages += int(done["pages_converted"])
        k += 1
        if time.monotonic() - start >= duration:
            break
    elapsed = time.monotonic() - start
    if pages != k * batch_ranges * range_pages:
        raise RuntimeError(f"{k} batches converted {pages} pages, not {k * batch_ranges * range_pages}")
    lat = sorted(latencies)
    return {
        "clients": 1,
        "ranges": batch_ranges,
        "range_pages": range_pages,
        "batches": k,
        "batches_per_s": k / elapsed,
        "pages_converted": pages,
        "pages_per_s": pages / elapsed,
        "p50_ms": _percentile(lat, 50) * 1000,
        "p99_ms": _percentile(lat, 99) * 1000,
        "request_bytes": len(body(0)),
        "seconds": elapsed,
    }


# -- the report ---------------------------------------------------------------------------------


def _report(figures: dict[str, Any], console: Console) -> None:
    a, b, c = figures["noop"], figures["convert"], figures["batch"]
    table = Table(title="gmem-broker bench")
    table.add_column("measurement")
    table.add_column("throughput", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("server CPU/req", justify="right")
    table.add_column("notes")

    def rounds(figures: dict[str, Any]) -> str:
        return ", ".join(f"{r['requests_per_s']:,.0f}" for r in figures["rounds"])

    table.add_row(
        "(a) GET /healthz",
        f"{a['requests_per_s']:,.0f} req/s",
        f"{a['p50_ms']:.2f}",
        f"{a['p99_ms']:.2f}",
        f"{a['server_cpu_us_per_request']:,.0f} µs",
        f"rounds: {rounds(a)} req/s; {a['requests']:,} req, {a['errors']} err",
    )
    per_round = ", ".join(f"{x:.0%}" for x in b["round_ratios"])
    table.add_row(
        "(b) convert 1 range x 1 page",
        f"{b['requests_per_s']:,.0f} req/s",
        f"{b['p50_ms']:.2f}",
        f"{b['p99_ms']:.2f}",
        f"{b['server_cpu_us_per_request']:,.0f} µs",
        f"{b['ratio_to_noop']:.1%} of (a): median of the rounds' {per_round} (of the medians: "
        f"{b['ratio_of_medians']:.1%}); rounds: {rounds(b)} req/s; "
        f"{b['requests']:,} req, {b['errors']} err",
    )
    table.add_row(
        f"(c) convert {c['ranges']:,} ranges x {c['range_pages']} pages",
        f"{c['batches_per_s']:,.2f} batch/s\n{c['pages_per_s']:,.0f} pages/s",
        f"{c['p50_ms']:.1f}",
        f"{c['p99_ms']:.1f}",
        "",
        f"{c['batches']} batches, 1 client",
    )
    console.print(table)
    console.print(
        f"load (a), (b): {figures['generator_detail']} per round; throughput and p50: median of "
        f"{figures['rounds']} round(s), p99: the worst"
    )
    console.print(f"server: {figures['server']}; batches {c['request_bytes']:,} bytes each")


def _combine(endpoint: str, runs: list[dict[str, Any]], cpu_seconds: float) -> dict[str, Any]:
    """One kind's figures over its rounds: medians, the worst p99, totals, and every round as measured."""
    requests = sum(r["requests"] for r in runs)
    return {
        "endpoint": endpoint,
        "requests_per_s": median([r["requests_per_s"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": max(r["p99_ms"] for r in runs),
        "requests": requests,
        "errors": sum(r["errors"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "server_cpu_us_per_request": cpu_seconds / requests * 1e6 if requests else 0.0,
        "rounds": runs,
    }


def run_bench(
    *, duration: float, connections: int, batch_ranges: int, range_pages: int, rounds: int = 3
) -> dict[str, Any]:
    """Measure (a) GET /healthz, (b) single-page converts, (c) convert batches; print a table, return the figures."""
    if duration <= 0 or connections < 1 or batch_ranges < 1 or range_pages < 1 or rounds < 1:
        raise ValueError("duration, connections, batch_ranges, range_pages and rounds must be positive")
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 110)
    wrk = shutil.which("wrk")
    batch_region = max(MIN_BATCH_REGION_PAGES, 2 * batch_ranges * range_pages * 2)
    # The last page is kept out of both regions for the warm-up converts.
    memfd_pages = SINGLE_REGION_PAGES + batch_region + 1
    if wrk is not None:
        workers = _wrk_threads(connections)
        seconds = max(1, math.ceil(duration))
        generator = "wrk"
        detail = f"{_wrk_version(wrk)}, {workers} thread(s), {connections} connections, {seconds} s"
    else:
        workers = connections
        seconds = 0
        procs = _fallback_processes(connections)
        generator = "python"
        detail = f"Python httpx clients: {procs} processes, {connections} keep-alive connections (wrk not found)"

    with tempfile.TemporaryDirectory(prefix="gmem-bench-") as tmp:
        workdir = Path(tmp)
        console.print(f"[bold]gmem-broker bench[/]: starting the service on {workdir / 'broker.db'} ...")
        with _server(workdir) as (base_url, pid), httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT) as client:
            vm_id = _setup_guest(client, memfd_pages)
            layout = _layout(vm_id, workers)
            _warm_up(client, layout, BASE_GPA // PAGE + memfd_pages - 1)

            # Where each worker's walk of (b) has got to: a later run goes on from there. With more
            # than one worker a run's total bounds each worker's share, so nothing is walked twice.
            converted = 0
            cpu = {NOOP: 0.0, CONVERT: 0.0}

            def measure(kind: str, seconds_: int, duration_: float) -> dict[str, Any]:
                nonlocal converted
                cpu_before = _cpu_seconds(pid)
                if wrk is not None:
                    figures = _run_wrk(
                        wrk,
                        workdir,
                        base_url,
                        kind,
                        layout,
                        seconds=seconds_,
                        connections=connections,
                        first_counter=converted,
                    )
                else:
                    figures = _run_python(
                        base_url, kind, layout, duration=duration_, connections=connections, first_counter=converted
                    )
                used = _cpu_seconds(pid) - cpu_before
                cpu[kind] += used
                figures["server_cpu_us_per_request"] = used / figures["requests"] * 1e6 if figures["requests"] else 0.0
                if kind == CONVERT:
                    converted += figures["requests"] + figures["errors"]
                return figures

            console.print(f"(a), (b): warm-up, then {rounds} alternating round(s), {connections} connections ...")
            measure(NOOP, 1, min(duration, 1.0))
            measure(CONVERT, 1, min(duration, 1.0))
            warm_converts = converted
            cpu[NOOP] = cpu[CONVERT] = 0.0  # the warm-up is not measured
            runs: dict[str, list[dict[str, Any]]] = {NOOP: [], CONVERT: []}
            for r in range(rounds):
                for kind in (NOOP, CONVERT) if r % 2 == 0 else (CONVERT, NOOP):
                    run = measure(kind, seconds, duration)
                    runs[kind].append(run)
                    console.print(f"  round {r + 1} {kind}: {run['requests_per_s']:,.0f} req/s")
            noop = _combine("GET /healthz", runs[NOOP], cpu[NOOP])
            convert = _combine("POST /v1/vms/{id}/convert, 1 range of 1 page", runs[CONVERT], cpu[CONVERT])
            convert["shared_pages_after"] = _shared_pages(
                client, vm_id, layout.first_gfn, layout.first_gfn + SINGLE_REGION_PAGES
            )
            answered = warm_converts + convert["requests"]
            if converted <= layout.cycle and convert["shared_pages_after"] < answered:
                # Every worker is still on its first pass: each answered request made one page shared.
                raise RuntimeError(
                    f"{answered} single-page converts left only {convert['shared_pages_after']} pages shared"
                )
            # Each round's (b) against the same round's (a), measured seconds apart: the pairs
            # share the machine's state, which medians taken separately would not.
            convert["round_ratios"] = [
                b["requests_per_s"] / a["requests_per_s"] if a["requests_per_s"] else 0.0
                for a, b in zip(runs[NOOP], runs[CONVERT], strict=True)
            ]
            convert["ratio_to_noop"] = median(convert["round_ratios"])
            convert["ratio_of_medians"] = (
                convert["requests_per_s"] / noop["requests_per_s"] if noop["requests_per_s"] else 0.0
            )
            console.print(f"(c) batches of {batch_ranges} ranges x {range_pages} pages, 1 client ...")
            batch = _run_batches(
                client,
                vm_id,
                BASE_GPA // PAGE + SINGLE_REGION_PAGES,
                batch_region,
                duration=duration,
                batch_ranges=batch_ranges,
                range_pages=range_pages,
            )
            server = f"uvicorn pid {pid}, 1 process, sim backend, SQLite (WAL)"
    figures: dict[str, Any] = {
        "generator": generator,
        "generator_detail": detail,
        "duration_s": duration,
        "rounds": rounds,
        "connections": connections,
        "server": server,
        "noop": noop,
        "convert": convert,
        "batch": batch,
    }
    _report(figures, console)
    for name in ("noop", "convert"):
        if figures[name]["errors"]:
            console.print(f"[bold red]warning[/]: {figures[name]['errors']} failed requests in ({name})")
    return figures
