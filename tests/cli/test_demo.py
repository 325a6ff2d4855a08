"""``gmem-broker demo``: end to end, on an embedded broker and against a running one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from service.client import BrokerClient

from .conftest import Broker
from .test_cli import ok, run

MIB = 1 << 20
BASE_GPA = 4 << 30
# After the demo: RAM private, 128 MiB released, the swiotlb window shared, its first 16 MiB touched.
FINAL_MAP = [
    (BASE_GPA, 256 * MIB, "private", "allocated", "hole"),
    (BASE_GPA + 256 * MIB, 128 * MIB, "private", "hole", "hole"),
    (BASE_GPA + 384 * MIB, 576 * MIB, "private", "allocated", "hole"),
    (BASE_GPA + 960 * MIB, 16 * MIB, "shared", "hole", "allocated"),
    (BASE_GPA + 976 * MIB, 48 * MIB, "shared", "hole", "hole"),
]
FINAL_LINES = [
    "0x100000000-0x110000000  256M private private backing ",
    "0x110000000-0x118000000  128M private hole            ",
    "0x118000000-0x13c000000  576M private private backing ",
    "0x13c000000-0x13d000000   16M shared  shared backing  ",
    "0x13d000000-0x140000000   48M shared  hole            ",
]


def test_demo_on_an_embedded_broker(broker: Broker) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GMEM_BROKER_URL", "GMEM_BROKER_TOKEN")}
    cmd = [sys.executable, "-c", "from service.cli import main; main()", "demo"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^embedded broker at http://127\.0\.0\.1:\d+ ", out, re.M)
    steps = re.findall(r"^(\d+)\. (.*)$", out, re.M)
    assert [int(n) for n, _ in steps] == list(range(1, 10))
    assert steps[0][1] == "create a sev_snp VM on a sim host with 2 NUMA node(s)"
    assert "without allow_private: refused, nothing changed: 409 private-in-use" in out
    assert "with allow_private: 32768 pages freed" in out
    maps = out.count("\ntotal 1G:")
    assert "migrate-page: not available" not in out
    # A sev_snp page moved to node 1 by the firmware's agent, from the first frame of node 0.
    assert re.search(r"^   frame 0 -> \d+ on node 1, by trusted-agent$", out, re.M)
    assert maps == 6
    last_map = out[out.rindex("total 1G:") :].splitlines()
    assert last_map[0] == "total 1G:  █ private 832M (81.2%)  ▒ shared 16M (1.6%)  ░ hole 176M (17.2%)"
    assert [line[: len(want)] for line, want in zip(last_map[2:7], FINAL_LINES, strict=True)] == FINAL_LINES
    assert "the embedded broker and its temporary database go away now" in out


def test_demo_against_a_running_broker(broker: Broker) -> None:
    out = ok(run(broker, "demo"))
    vm_id = re.search(r"VM (vm_\w+) \(demo-", out)
    assert vm_id is not None
    assert f"the VM stays: gmem-broker vm show {vm_id[1]}" in out
    with BrokerClient(broker.url, token="") as api:
        vm = api.get_vm(vm_id[1])
        assert (vm.vm_type, vm.state, vm.memfds, vm.memslots) == ("sev_snp", "running", 1, 1)
        extents = api.all_vm_extents(vm.id)
        assert [(e.gpa, e.size, e.attribute, e.private_backing, e.shared_backing) for e in extents] == FINAL_MAP
        kinds = [o.kind for o in api.all_operations(vm.id)]
    boot = ["create-vm", "create-memfd", "create-memslot", "allocate", "set-state", "convert", "populate-shared"]
    assert kinds[:8] == [*boot, "punch-hole"]
