"""The typed client against a real broker: every operation, problems, retries, the bearer token."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import cli
from service.client import AsyncBrokerClient, BrokerClient, ProblemError, models
from service.store.migrate import upgrade

from ..conftest import RunningServer, make_app
from .conftest import Broker
from .proxy import LossyProxy

PAGE = 4096
MIB = 1 << 20
BASE_GPA = 4 << 30


def guest(api: BrokerClient, size: int = MIB, vm_type: str = "sw_protected") -> tuple[models.Vm, models.Memfd]:
    vm = api.create_vm(vm_type=vm_type)
    memfd = api.create_memfd(vm.id, size)
    api.create_memslot(vm.id, slot=0, gpa=BASE_GPA, size=size, memfd_id=memfd.id)
    return vm, memfd


def test_every_operation_returns_typed_results(api: BrokerClient) -> None:
    host = api.host()
    assert isinstance(host, models.Host)
    assert host.page_size == PAGE
    assert api.healthz().status == "ok"
    assert api.readyz().status == "ready"
    assert api.problem_type("private-in-use").status == 409

    vm = api.create_vm(name="typed-1", vm_type="sw_protected")
    assert (vm.name, vm.state, vm.generation) == ("typed-1", "created", 1)
    assert vm.id in [v.id for v in api.list_vms()]
    memfd = api.create_memfd(vm.id, 4 * MIB, flags=["mmap"])
    assert (memfd.size, memfd.flags, memfd.allocated) == (4 * MIB, ["mmap"], 0)
    assert [m.id for m in api.list_memfds(vm.id)] == [memfd.id]
    slot = api.create_memslot(vm.id, slot=3, gpa=BASE_GPA, size=4 * MIB, memfd_id=memfd.id)
    assert (slot.slot, slot.gpa) == (3, BASE_GPA)
    assert [s.slot for s in api.list_memslots(vm.id)] == [3]

    assert api.allocate(vm.id, memfd.id, offset=0, length=MIB).pages_allocated == 256
    assert api.get_memfd(vm.id, memfd.id).allocated == MIB
    converted = api.convert(vm.id, [(BASE_GPA, 64 * 1024, "shared")])
    assert (converted.pages_converted, converted.private_pages_freed) == (16, 16)
    assert api.populate_shared(vm.id, gpa=BASE_GPA, size=32 * 1024).pages_allocated == 8
    assert api.punch_hole(vm.id, memfd.id, offset=MIB - PAGE, length=PAGE).pages_freed == 1
    with pytest.raises(ProblemError) as refused:
        api.read_page(vm.id, memfd.id, 64 * 1024 // PAGE)  # a private page: the host may not read it
    assert refused.value.code == "private-page"
    plain = api.create_vm(name="typed-plain", vm_type="default")
    shared = api.create_memfd(plain.id, MIB, flags=["mmap", "init_shared"])
    page = api.read_page(plain.id, shared.id, 3)
    assert (page.pgoff, page.allocated, base64.b64decode(page.data)) == (3, False, bytes(PAGE))
    api.delete_vm(plain.id, force=True)
    with pytest.raises(ProblemError) as refused:
        api.export_memfd(vm.id, memfd.id)  # the sim has no fds to hand off
    assert refused.value.status == 501
    assert 'gmem_broker_operations_total{kind="convert"}' in api.metrics()

    extents = api.vm_extents(vm.id)
    assert [(e.gpa - BASE_GPA, e.size, e.attribute, e.private_backing, e.shared_backing) for e in extents.items] == [
        (0, 32 * 1024, "shared", "hole", "allocated"),
        (32 * 1024, 32 * 1024, "shared", "hole", "hole"),
        (64 * 1024, MIB - 64 * 1024 - PAGE, "private", "allocated", "hole"),
        (MIB - PAGE, 3 * MIB + PAGE, "private", "hole", "hole"),
    ]
    first = api.vm_extents(vm.id, limit=1)
    assert first.next_cursor is not None
    assert api.all_vm_extents(vm.id) == extents.items
    states = [(e.offset, e.state) for e in api.memfd_extents(vm.id, memfd.id).items]
    assert states == [(0, "hole"), (64 * 1024, "allocated"), (MIB - PAGE, "hole")]

    running = api.set_vm_state(vm.id, "running")
    assert running.state == "running"
    journal = api.all_operations(vm.id)
    assert [o.kind for o in journal][-3:] == ["populate-shared", "punch-hole", "set-state"]
    assert api.operations(vm.id, limit=2).next_cursor is not None

    assert api.delete_memslot(vm.id, 3).generation == running.generation + 1
    assert api.delete_memfd(vm.id, memfd.id).operation_id
    deleted = api.delete_vm(vm.id)
    assert isinstance(deleted, models.Deleted)
    with pytest.raises(ProblemError) as caught:
        api.get_vm(vm.id)
    assert caught.value.code == "not-found"


def test_refusals_raise_one_error_type_carrying_the_problem(api: BrokerClient) -> None:
    vm, memfd = guest(api)
    api.allocate(vm.id, memfd.id, 0, MIB)
    api.set_vm_state(vm.id, "running")
    with pytest.raises(ProblemError) as caught:
        api.punch_hole(vm.id, memfd.id, 0, PAGE)
    problem = caught.value.problem
    assert (problem.status, problem.code, problem.type) == (409, "private-in-use", "/problems/private-in-use")
    assert problem.title == "Private memory in use"
    assert "allow_private" in problem.detail
    assert problem.request_id
    assert problem.model_extra == {"gpa": BASE_GPA}
    assert caught.value.status == 409
    assert str(caught.value).startswith(f"POST {api.url}/v1/vms/{vm.id}/memfds/{memfd.id}/punch-hole: 409")

    with pytest.raises(ProblemError) as caught:
        api.allocate(vm.id, memfd.id, 1, PAGE)
    assert caught.value.code == "unaligned"
    with pytest.raises(ProblemError) as caught:
        api.create_memfd(vm.id, MIB, flags=["bogus"])
    assert caught.value.code == "unsupported-flags"
    with pytest.raises(ProblemError) as caught:
        api.convert(vm.id, [(BASE_GPA, PAGE, "secret")])
    assert (caught.value.status, caught.value.code) == (422, "unsupported-attribute")
    with pytest.raises(ValueError, match="exactly one"):
        api.migrate_page(vm.id, BASE_GPA, target_node=0, target_pfn=5)


def test_the_async_client(broker: Broker) -> None:
    async def story() -> tuple[models.Converted, list[models.VmExtent], ProblemError]:
        async with AsyncBrokerClient(broker.url, token="") as api:
            vm = await api.create_vm(vm_type="tdx")
            memfd = await api.create_memfd(vm.id, MIB)
            await api.create_memslot(vm.id, slot=0, gpa=BASE_GPA, size=MIB, memfd_id=memfd.id)
            await api.allocate(vm.id, memfd.id, 0, MIB)
            converted = await api.convert(vm.id, [(BASE_GPA, 2 * PAGE, "shared")])
            extents = (await api.vm_extents(vm.id)).items
            try:
                await api.get_memfd(vm.id, "mfd-none")
            except ProblemError as exc:
                return converted, extents, exc
            raise AssertionError("a missing memfd was found")

    converted, extents, missing = asyncio.run(story())
    assert converted.private_pages_freed == 2
    assert [(e.attribute, e.private_backing) for e in extents] == [("shared", "hole"), ("private", "allocated")]
    assert (missing.status, missing.code) == (404, "not-found")


def _keys(text: str, path: str) -> list[str]:
    """The Idempotency-Key of every request to ``path`` the proxy carried."""
    keys = []
    for request in re.split(r"(?=\b(?:GET|POST|PATCH|DELETE) /)", text):
        if request.startswith(f"POST {path} "):
            found = re.search(r"(?im)^idempotency-key: (\S+)", request)
            keys.append(found.group(1) if found else "")
    return keys


def test_a_lost_answer_is_retried_and_applied_once(api: BrokerClient, broker: Broker) -> None:
    vm, memfd = guest(api)
    path = f"/v1/vms/{vm.id}/memfds/{memfd.id}/allocate"
    with LossyProxy(broker.url) as proxy, BrokerClient(proxy.url, token="", backoff=0.01) as lossy:
        proxy.drop_next_answers(2)
        result = lossy.allocate(vm.id, memfd.id, 0, 4 * PAGE)
        assert proxy.dropped == 2
        keys = _keys(proxy.requests_text(), path)
    # Three attempts with one key; the broker applied the first and replayed it to the third.
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert keys[0].startswith("gmemc-")
    assert result.pages_allocated == 4
    assert [o.kind for o in api.all_operations(vm.id)].count("allocate") == 1
    assert api.get_vm(vm.id).generation == result.generation


def test_a_gateway_error_after_the_broker_applied_is_retried(api: BrokerClient, broker: Broker) -> None:
    vm, _ = guest(api)
    with LossyProxy(broker.url) as proxy, BrokerClient(proxy.url, token="", backoff=0.01) as behind_gateway:
        proxy.drop_next_answers(1, instead=504)
        running = behind_gateway.set_vm_state(vm.id, "running")
        assert proxy.dropped == 1
    assert running.state == "running"
    assert [o.kind for o in api.all_operations(vm.id)].count("set-state") == 1


def test_without_the_key_a_lost_answer_applies_twice(api: BrokerClient, broker: Broker) -> None:
    """The control for the test above: the same loss, retried by hand without a key, creates two VMs."""
    name = "lost-twice"
    with LossyProxy(broker.url) as proxy, httpx.Client(base_url=proxy.url) as raw:
        proxy.drop_next_answers(1)
        with pytest.raises(httpx.RemoteProtocolError):
            raw.post("/v1/vms", json={"name": name})
        again = raw.post("/v1/vms", json={"name": name})
    assert again.status_code == 409
    assert again.json()["type"] == "/problems/name-taken"


def test_async_retry_of_a_lost_create_makes_one_vm(api: BrokerClient, broker: Broker) -> None:
    async def create(url: str) -> models.Vm:
        async with AsyncBrokerClient(url, token="", backoff=0.01) as lossy:
            return await lossy.create_vm(name="lost-once", vm_type="sev_snp")

    with LossyProxy(broker.url) as proxy:
        proxy.drop_next_answers(1)
        vm = asyncio.run(create(proxy.url))
        assert proxy.dropped == 1
    assert [v.id for v in api.list_vms() if v.name == "lost-once"] == [vm.id]


def test_a_backend_fault_midway_is_retried_to_completion(api: BrokerClient, broker: Broker) -> None:
    vm, memfd = guest(api)
    api.allocate(vm.id, memfd.id, 0, MIB)
    # set-attributes applies, then the punch of the private pages fails: 503 replay-pending ...
    broker.backend.inject_fault("punch_hole", "EIO")
    path = f"/v1/vms/{vm.id}/convert"
    with LossyProxy(broker.url) as proxy, BrokerClient(proxy.url, token="", backoff=0.01) as retrying:
        converted = retrying.convert(vm.id, [(BASE_GPA, 8 * PAGE, "shared")])
        keys = _keys(proxy.requests_text(), path)
    # ... and the retry, with the same key, has the broker replay the pending operation, then answer.
    assert len(keys) == 2
    assert len(set(keys)) == 1
    assert converted.pages_converted == converted.private_pages_freed == 8
    converts = [o for o in api.all_operations(vm.id) if o.kind == "convert"]
    assert [(o.id, o.status) for o in converts] == [(converted.operation_id, "applied")]
    assert broker.backend.inventory()[vm.id].memfds[memfd.id] == [(8, 256)]

    # Without retries, the same fault is the caller's to see.
    broker.backend.inject_fault("punch_hole", "EIO")
    with pytest.raises(ProblemError) as caught:
        api.convert(vm.id, [(BASE_GPA + 8 * PAGE, 8 * PAGE, "shared")])
    assert (caught.value.status, caught.value.code) == (503, "replay-pending")
    assert (caught.value.problem.model_extra or {})["operation_id"]


def test_retries_give_up_with_the_last_problem(api: BrokerClient, broker: Broker) -> None:
    vm, memfd = guest(api)
    api.allocate(vm.id, memfd.id, 0, MIB)
    # Both attempts fail: the convert midway, then the replay of it before the retry is answered.
    for _ in range(2):
        broker.backend.inject_fault("punch_hole", "EIO")
    with BrokerClient(broker.url, token="", retries=1, backoff=0.01) as retrying, pytest.raises(ProblemError) as caught:
        retrying.convert(vm.id, [(BASE_GPA, PAGE, "shared")])
    assert (caught.value.status, caught.value.code) == (503, "replay-pending")
    assert "refused again" in caught.value.problem.detail
    # The fault queue is spent: the next mutation replays the operation and goes through.
    assert api.allocate(vm.id, memfd.id, MIB - PAGE, PAGE).pages_allocated == 0
    assert [o.status for o in api.all_operations(vm.id) if o.kind == "convert"] == ["applied"]


def test_a_backend_refusal_is_not_retried(api: BrokerClient, broker: Broker) -> None:
    vm, memfd = guest(api)
    broker.backend.inject_fault("allocate", "EIO")
    with LossyProxy(broker.url) as proxy, BrokerClient(proxy.url, token="", backoff=0.01) as client:
        with pytest.raises(ProblemError) as caught:
            client.allocate(vm.id, memfd.id, 0, PAGE)
        attempts = _keys(proxy.requests_text(), f"/v1/vms/{vm.id}/memfds/{memfd.id}/allocate")
    # The broker's 502 changed nothing and would be replayed as it is: one attempt, the refusal raised.
    assert (caught.value.status, caught.value.code, caught.value.problem.errno) == (502, "backend-error", "EIO")
    assert len(attempts) == 1
    assert api.get_memfd(vm.id, memfd.id).allocated == 0


def test_unreachable_broker_raises_the_transport_error() -> None:
    api = BrokerClient("http://127.0.0.1:9", token="", retries=2, backoff=0.01)
    with api, pytest.raises(httpx.ConnectError):
        api.host()


def test_bearer_token_from_argument_or_environment(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    with LossyProxy(broker.url) as proxy:
        with BrokerClient(proxy.url, token="s3cret") as api:
            api.host()
        monkeypatch.setenv("GMEM_BROKER_TOKEN", "from-env")
        monkeypatch.setenv("GMEM_BROKER_URL", proxy.url)
        with BrokerClient() as api:
            api.list_vms()
        monkeypatch.delenv("GMEM_BROKER_TOKEN")
        with BrokerClient() as api:
            api.healthz()
        text = proxy.requests_text()
    requests = re.split(r"(?=\bGET /)", text)[1:]
    assert [re.findall(r"(?im)^authorization: (.*?)\r$", r) for r in requests] == [
        ["Bearer s3cret"],
        ["Bearer from-env"],
        [],
    ]


def test_the_client_imports_nothing_of_the_server() -> None:
    code = "import sys, service.client; print(sorted(m for m in sys.modules if m.startswith('service')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    assert loaded
    assert [m for m in loaded if m != "service" and not m.startswith("service.client")] == []


def test_allocate_on_a_chosen_node(api: BrokerClient) -> None:
    vm, memfd = guest(api)
    node1 = next(n for n in api.host().numa_nodes if n.id == 1)
    assert node1.first_pfn is not None
    assert api.allocate(vm.id, memfd.id, 0, 4 * PAGE, node=1).pages_allocated == 4
    runs = api.frames(vm.id).items
    assert sum(r.size for r in runs) == 4 * PAGE  # in one run or more: other tests' frees fragment the pool
    assert all(r.pfn >= node1.first_pfn for r in runs)
    with pytest.raises(ProblemError) as caught:
        api.allocate(vm.id, memfd.id, 4 * PAGE, PAGE, node=7)
    assert (caught.value.status, caught.value.code) == (422, "unknown-node")


def test_migrate_page(api: BrokerClient) -> None:
    vm, memfd = guest(api, vm_type="sev_snp")
    api.allocate(vm.id, memfd.id, 0, 16 * PAGE)
    moved = api.migrate_page(vm.id, BASE_GPA, target_node=1)
    assert (moved.gpa, moved.node, moved.method) == (BASE_GPA, 1, "trusted-agent")
    assert moved.old_pfn != moved.new_pfn
    batch = api.migrate_pages(vm.id, [(BASE_GPA + PAGE, 1, None), (BASE_GPA + 2 * PAGE, 1, None)])
    assert batch.moves is not None
    assert [m.gpa for m in batch.moves] == [BASE_GPA + PAGE, BASE_GPA + 2 * PAGE]
    evacuated = api.evacuate(vm.id, BASE_GPA, 16 * PAGE, target_node=0)
    assert evacuated.moves is not None
    assert all(m.node == 0 for m in evacuated.moves)
    assert evacuated.pages_moved == sum(m.size for m in evacuated.moves) // PAGE
    with pytest.raises(ProblemError) as caught:
        api.migrate_page(vm.id, BASE_GPA + 32 * PAGE, target_node=0)
    assert (caught.value.status, caught.value.code) == (409, "not-allocated")


def test_frames_guest_pages_and_the_event_stream(api: BrokerClient, broker: Broker) -> None:
    vm, memfd = guest(api, vm_type="sev_snp")
    api.allocate(vm.id, memfd.id, 0, 16 * PAGE)
    assert sum(run.size for run in api.frames(vm.id).items) == 16 * PAGE
    gfn = BASE_GPA // PAGE
    api.write_gfn(vm.id, gfn, b"sealed hello", offset=8)
    assert base64.b64decode(api.read_gfn(vm.id, gfn).data)[8:20] == b"sealed hello"
    host = api.read_gfn(vm.id, gfn, view="host")
    assert host.encrypted
    assert b"sealed hello" not in base64.b64decode(host.data)
    api.delete_vm(vm.id, force=True)
    # From the first operation on: every later one, in order, once; the VM's stream ends at its deletion.
    journal = api.all_operations(vm.id)
    events = list(api.vm_events(vm.id, last_event_id=journal[0].id))
    assert [e.id for e in events] == [o.id for o in journal[1:] if o.status == "applied"]
    assert events[-1].kind == "delete-vm"

    async def first_host_events() -> list[models.Event]:
        async with AsyncBrokerClient(broker.url, token="") as aapi:
            stream = aapi.host_events(last_event_id=journal[0].id)
            return [await anext(stream) for _ in range(2)]

    assert [e.id for e in asyncio.run(first_host_events())] == [o.id for o in journal[1:3]]


def test_over_a_unix_socket(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'uds.db'}"
    upgrade(url)
    with RunningServer(make_app(url), uds=str(tmp_path / "broker.sock")) as running:
        assert running.url == f"unix://{tmp_path}/broker.sock"
        with BrokerClient(running.url, token="") as api:
            vm = api.create_vm(name="over-uds")
            assert [v.name for v in api.list_vms()] == ["over-uds"]

        async def read() -> models.Vm:
            async with AsyncBrokerClient(running.url, token="") as api:
                return await api.get_vm(vm.id)

        assert asyncio.run(read()) == vm
        listed = CliRunner().invoke(cli, ["vm", "list", "--json", "--url", running.url], env={"GMEM_BROKER_TOKEN": ""})
        assert [v["id"] for v in json.loads(listed.stdout)] == [vm.id]
