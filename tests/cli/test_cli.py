"""The client commands of ``gmem-broker`` against a real broker, through typer's CliRunner."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from service.cli import cli
from service.client import BrokerClient

from .conftest import Broker

PAGE = 4096
BASE_GPA = 4 << 30


def run(broker: Broker | None, *args: str, env: dict[str, str | None] | None = None) -> Result:
    url = ["--url", broker.url] if broker else []
    return CliRunner().invoke(cli, [*args, *url], env={"GMEM_BROKER_TOKEN": "", **(env or {})})


def said(result: Result) -> str:
    """All the output as one line, without the box typer draws around usage errors."""
    return " ".join(result.output.replace("│", " ").split())


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"{result.exit_code}: {result.output}"
    return result.stdout


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


def guest(broker: Broker, size: str = "16M", vm_type: str = "sw_protected") -> tuple[str, str]:
    vm = as_json(run(broker, "vm", "create", "--type", vm_type, "--json"))
    memfd = as_json(run(broker, "memfd", "create", vm["id"], size, "--json"))
    ok(
        run(
            broker,
            "memslot",
            "create",
            vm["id"],
            "--slot",
            "0",
            "--gpa",
            "0x100000000",
            "--size",
            size,
            "--memfd",
            memfd["id"],
        )
    )
    return vm["id"], memfd["id"]


def test_a_guest_from_the_command_line(broker: Broker) -> None:
    vm = as_json(run(broker, "vm", "create", "--name", "cli-a", "--type", "sw_protected", "--json"))
    assert (vm["name"], vm["vm_type"], vm["generation"]) == ("cli-a", "sw_protected", 1)
    vm_id = vm["id"]
    assert "cli-a" in ok(run(broker, "vm", "list"))
    memfd = as_json(run(broker, "memfd", "create", vm_id, "16M", "--flag", "mmap", "--json"))
    assert (memfd["size"], memfd["flags"]) == (16 << 20, ["mmap"])
    memfd_id = memfd["id"]
    out = ok(
        run(broker, "memslot", "create", vm_id, "--slot", "0", "--gpa", "4G", "--size", "16M", "--memfd", memfd_id)
    )
    assert f"memslot 0: 0x100000000-0x101000000 -> {memfd_id} at 0x0" in out

    assert "allocated 256 new pages" in ok(run(broker, "allocate", vm_id, memfd_id, "--length", "1M"))
    single = run(broker, "convert", vm_id, "0x100000000", "64K", "--to", "shared")
    assert "converted 16 pages in 1 request(s); freed 16 private and 0 shared pages" in ok(single)
    assert single.stderr == ""  # no progress bar for one range
    assert "populated 8 shared pages" in ok(run(broker, "populate-shared", vm_id, "0x100000000", "32K"))

    table = ok(run(broker, "extents", vm_id))
    assert "0x100008000" in table
    assert "allocated" in table
    listing = as_json(run(broker, "extents", vm_id, "--json"))
    assert [(e["gpa"], e["size"]) for e in listing["items"]] == [
        (BASE_GPA, 32 << 10),
        (BASE_GPA + (32 << 10), 32 << 10),
        (BASE_GPA + (64 << 10), (1 << 20) - (64 << 10)),
        (BASE_GPA + (1 << 20), 15 << 20),
    ]
    assert listing["bytes"] == {"private": 960 << 10, "shared": 32 << 10, "hole": (15 << 20) + (32 << 10)}
    lines = ok(run(broker, "extents", vm_id, "--map")).splitlines()
    assert lines[0] == "total 16M:  █ private 960K (5.9%)  ▒ shared 32K (0.2%)  ░ hole 15392K (93.9%)"
    assert set(lines[1]) == {"█", "▒", "░"}
    assert lines[2].startswith("0x100000000-0x100008000   32K shared  shared backing  ▒")
    assert lines[4].startswith("0x100010000-0x100100000  960K private private backing █")
    assert len(lines) == 6

    vm_show = ok(run(broker, "vm", "show", vm_id))
    assert memfd_id in vm_show
    assert "0x100000000" in vm_show
    assert "960K" in ok(run(broker, "memfd", "show", vm_id, memfd_id))
    assert memfd_id in ok(run(broker, "memfd", "list", vm_id))
    assert "0x101000000" in ok(run(broker, "memslot", "list", vm_id))
    assert "running" in ok(run(broker, "vm", "start", vm_id))
    journal = as_json(run(broker, "ops", vm_id, "--json"))
    assert [o["kind"] for o in journal] == [
        "create-vm", "create-memfd", "create-memslot", "allocate", "convert", "populate-shared", "set-state"
    ]  # fmt: skip
    assert "pages_converted=16" in ok(run(broker, "ops", vm_id, "--last", "3"))

    out = ok(run(broker, "punch-hole", vm_id, memfd_id, "--offset", "64K", "--length", "64K", "--allow-private"))
    assert "freed 16 pages" in out
    refused = run(broker, "vm", "delete", vm_id)
    assert refused.exit_code == 1
    assert "409 in-use" in refused.stderr
    assert "deleted VM" in ok(run(broker, "vm", "delete", vm_id, "--force"))


def test_a_refusal_prints_the_problem_and_exits_1(broker: Broker) -> None:
    vm_id, memfd_id = guest(broker)
    ok(run(broker, "allocate", vm_id, memfd_id))
    ok(run(broker, "vm", "start", vm_id))
    refused = run(broker, "punch-hole", vm_id, memfd_id, "--offset", "0", "--length", "4K")
    assert refused.exit_code == 1
    assert refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert lines[0] == "error: 409 private-in-use: Private memory in use"
    assert "pass allow_private=true" in lines[1]
    assert "type: /problems/private-in-use" in lines[2]
    assert "gpa: 4294967296" in lines[2]
    as_doc = run(broker, "punch-hole", vm_id, memfd_id, "--offset", "0", "--length", "4K", "--json")
    assert as_doc.exit_code == 1
    doc = json.loads(as_doc.stderr)
    assert (doc["type"], doc["status"], doc["gpa"]) == ("/problems/private-in-use", 409, BASE_GPA)
    with BrokerClient(broker.url, token="") as api:
        assert api.get_memfd(vm_id, memfd_id).allocated == 16 << 20

    invalid = run(broker, "allocate", vm_id, memfd_id, "--offset", "1", "--length", "4K")
    assert invalid.exit_code == 1
    assert "422 unaligned" in invalid.stderr
    missing = run(broker, "vm", "show", "vm_nope")
    assert (missing.exit_code, missing.stderr.splitlines()[0]) == (1, "error: 404 not-found: Not found")


def test_bad_sizes_are_usage_errors(broker: Broker, tmp_path: Path) -> None:
    result = run(broker, "memfd", "create", "vm_x", "16Q")
    assert result.exit_code == 2
    assert "'16Q' is not a size" in said(result)
    both = run(broker, "migrate-page", "vm_x", "0x1000", "--node", "1", "--pfn", "7")
    assert both.exit_code == 2
    assert "exactly one of --node and --pfn" in said(both)
    pages = tmp_path / "pages.txt"
    pages.write_text("0x100000000 1\n0x100001000\n")
    nodeless = run(broker, "migrate-page", "vm_x", "--file", str(pages))
    assert nodeless.exit_code == 2
    assert "0x100001000 names no node and --node is not given" in said(nodeless)
    pages.write_text("0x100000000 one\n")
    assert "'one' is not a size" in said(run(broker, "migrate-page", "vm_x", "--file", str(pages)))


def test_url_from_the_environment_and_an_unreachable_broker(broker: Broker) -> None:
    listed = run(None, "vm", "list", "--json", env={"GMEM_BROKER_URL": broker.url})
    assert isinstance(as_json(listed), list)
    down = run(None, "host", env={"GMEM_BROKER_URL": "http://127.0.0.1:9"})
    assert down.exit_code == 3
    assert "cannot reach the broker at http://127.0.0.1:9" in down.stderr
    assert "backend" in ok(run(broker, "host"))
    assert as_json(run(broker, "host", "--json"))["backend"] == "sim"


def _write_ranges(path: Path, count: int, bad_at: int | None = None) -> Path:
    """``count`` single pages two pages apart, to shared; line ``bad_at`` is unaligned."""
    lines = ["# gpa size [to]"]
    for i in range(count):
        gpa = BASE_GPA + 2 * i * PAGE + (1 if i == bad_at else 0)
        lines.append(f"{gpa:#x} 4K" if i % 2 else f"{gpa:#x}, 4096, shared")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_convert_a_file_of_ranges_in_batches(broker: Broker, tmp_path: Path) -> None:
    vm_id, _ = guest(broker, "32M")
    result = run(broker, "convert", vm_id, "--file", str(_write_ranges(tmp_path / "r.txt", 2500)), "--batch", "1000")
    out = ok(result)
    assert "converted 2500 pages in 3 request(s)" in out
    assert "2500/2500" in result.stderr  # the progress bar's last state
    with BrokerClient(broker.url, token="") as api:
        assert [o.kind for o in api.all_operations(vm_id)].count("convert") == 3
        assert len(api.all_vm_extents(vm_id)) == 2500 + 2499 + 1  # shared pages, the gaps, the tail


def test_a_refused_batch_stops_the_file_and_says_how_far_it_got(broker: Broker, tmp_path: Path) -> None:
    vm_id, _ = guest(broker, "32M")
    ranges = _write_ranges(tmp_path / "r.txt", 2500, bad_at=1500)
    result = run(broker, "convert", vm_id, "--file", str(ranges), "--batch", "1000")
    assert result.exit_code == 1
    assert "1000 of 2500 applied in 1 earlier batch(es); this batch changed nothing" in result.stderr
    assert "422 unaligned" in result.stderr
    with BrokerClient(broker.url, token="") as api:
        assert len(api.all_vm_extents(vm_id)) == 1000 + 999 + 1


def test_a_malformed_file_is_refused_before_any_request(broker: Broker, tmp_path: Path) -> None:
    vm_id, _ = guest(broker)
    bad = tmp_path / "bad.txt"
    bad.write_text("0x100000000 4K shared\n0x100002000 4K shared extra\n")
    result = run(broker, "convert", vm_id, "--file", str(bad))
    assert result.exit_code == 2
    assert "bad.txt:2: expected 2 to 3 fields" in said(result)
    with BrokerClient(broker.url, token="") as api:
        assert [o.kind for o in api.all_operations(vm_id)].count("convert") == 0


def test_migrate_page_commands(broker: Broker, tmp_path: Path) -> None:
    vm_id, memfd_id = guest(broker, vm_type="sev_snp")
    ok(run(broker, "allocate", vm_id, memfd_id, "--length", "64K", "--node", "0"))
    with BrokerClient(broker.url, token="") as api:
        node1 = next(n.first_pfn for n in api.host().numa_nodes if n.id == 1)
        assert node1 is not None
        assert all(r.pfn < node1 for r in api.frames(vm_id).items)  # all 16 pages on node 0
    moved = as_json(run(broker, "migrate-page", vm_id, "0x100000000", "--node", "1", "--json"))
    assert (moved["node"], moved["method"]) == (1, "trusted-agent")
    pages = tmp_path / "pages.txt"
    pages.write_text("0x100001000 1\n0x100002000\n")
    result = run(broker, "migrate-page", vm_id, "--file", str(pages), "--node", "1")
    assert "2 page(s) moved" in ok(result)
    assert "2/2" in result.stderr  # the progress bar's last state
    # evacuating the range to node 0 moves at least the three pages just sent to node 1, then nothing
    evacuate = ("migrate-page", vm_id, "0x100000000", "--size", "64K", "--node", "0")
    first = re.search(r"(\d+) page\(s\) moved", ok(run(broker, *evacuate)))
    assert first is not None
    assert 3 <= int(first.group(1)) <= 16
    assert "0 page(s) moved" in ok(run(broker, *evacuate))
