"""Group commit: mutations queued on one VM run as one batch and get exactly the answers they would alone.

Each test queues jobs behind the VM's lock in a known order, releases it, and checks the answers, the
journal, the stored extents (reloaded from the database) and the backend against each other. Runs on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from service.backends.sim import SimBackend
from service.domain.errors import DomainError, InsufficientMemory, OutOfRange
from service.operations import memfds as memfd_ops
from service.operations import mutation, population, queries
from service.operations import vms as vm_ops
from service.operations.broker import Broker
from service.operations.journal import Outcome, ReplayPending, RequestMeta
from service.operations.lane import Job
from service.operations.recovery import reconcile
from service.store.db import make_engine
from service.store.migrate import upgrade
from service.store.uow import SqlUnitOfWork

PAGE = 4096
PAGES = 64
META = RequestMeta()


@dataclass
class Guest:
    broker: Broker
    backend: SimBackend
    vm_id: str
    memfd_id: str
    transactions: list[int]  # one element per unit of work opened


@pytest.fixture
def guest(fresh_db_url: str) -> Iterator[Guest]:
    upgrade(fresh_db_url)
    engine = make_engine(fresh_db_url)
    backend = SimBackend()
    opened: list[int] = []

    def uow() -> SqlUnitOfWork:
        opened.append(1)
        return SqlUnitOfWork(engine)

    broker = Broker(uow=uow, backend=backend)
    vm_id = vm_ops.create_vm(broker, name=None, vm_type="sw_protected", meta=META).body["id"]
    memfd_id = mutation.run(broker, memfd_ops.create_memfd(broker, vm_id, size=PAGES * PAGE, flags=[], meta=META)).body[
        "id"
    ]
    mutation.run(
        broker,
        memfd_ops.create_memslot(
            broker, vm_id, slot=0, gpa=0, size=PAGES * PAGE, memfd_id=memfd_id, offset=0, meta=META
        ),
    )
    # Private pages 0..16 allocated: converting them to shared frees them.
    mutation.run(broker, population.allocate(broker, vm_id, memfd_id, offset=0, length=16 * PAGE, meta=META))
    yield Guest(broker, backend, vm_id, memfd_id, opened)
    backend.close()
    engine.dispose()


def in_one_batch(g: Guest, plans: list[Callable[[], Job]]) -> list[Outcome | BaseException]:
    """Queue the jobs, in order, behind the VM's lock; release it so that one thread runs them all."""
    results: list[Outcome | BaseException | None] = [None] * len(plans)
    lane, lock = g.broker.lane(g.vm_id)
    threads: list[threading.Thread] = []

    def one(i: int, job: Job) -> None:
        try:
            results[i] = mutation.run(g.broker, job)
        except BaseException as exc:  # the answer under test, raised in the request's thread
            results[i] = exc

    with lock:
        for i, plan in enumerate(plans):
            t = threading.Thread(target=one, args=(i, plan()))
            t.start()
            threads.append(t)
            deadline = time.monotonic() + 10
            while len(lane.queue) <= i:  # wait for it to queue, so the order is known
                assert time.monotonic() < deadline, "a job did not queue"
                time.sleep(0.001)
        g.transactions.clear()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def convert(g: Guest, gfn: int, to: str = "shared") -> Callable[[], Job]:
    ranges = [{"gpa": gfn * PAGE, "size": PAGE, "to": to}]
    return lambda: population.convert(g.broker, g.vm_id, ranges=ranges, meta=META)


def allocate(g: Guest, pgoff: int, npages: int = 1) -> Callable[[], Job]:
    return lambda: population.allocate(
        g.broker, g.vm_id, g.memfd_id, offset=pgoff * PAGE, length=npages * PAGE, meta=META
    )


def operations(g: Guest) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = queries.list_operations(g.broker, g.vm_id, limit=1000, cursor=None)["items"]
    return items


def stored_extents(g: Guest) -> list[dict[str, Any]]:
    """The VM's extent map as the database holds it (the cached aggregate dropped first)."""
    g.broker.forget(g.vm_id)
    return queries.vm_extents(g.broker, g.vm_id, start=0, end=None, cursor=None, limit=1000)["items"]  # type: ignore[no-any-return]


def settled(g: Guest) -> None:
    """The cache, the database and the backend agree, and nothing is left pending."""
    cached = queries.vm_extents(g.broker, g.vm_id, start=0, end=None, cursor=None, limit=1000)["items"]
    assert stored_extents(g) == cached
    assert reconcile(g.broker) == []
    assert all(op["status"] != "pending" for op in operations(g))


def test_queued_mutations_share_two_transactions(guest: Guest) -> None:
    g = guest
    start = queries.get_vm(g.broker, g.vm_id)["generation"]
    results = in_one_batch(g, [convert(g, gfn) for gfn in range(8)])
    assert all(isinstance(r, Outcome) for r in results)
    # one transaction writes all eight, one marks them applied
    assert len(g.transactions) == 2
    outcomes = [r for r in results if isinstance(r, Outcome)]
    assert [o.generation for o in outcomes] == list(range(start + 1, start + 9))
    assert [o.body["private_pages_freed"] for o in outcomes] == [1] * 8
    ops = operations(g)[-8:]
    assert [o["status"] for o in ops] == ["applied"] * 8
    assert [o["generation"] for o in ops] == list(range(start + 1, start + 9))
    settled(g)


def test_a_refusal_in_a_batch_is_answered_alone(guest: Guest) -> None:
    g = guest
    start = queries.get_vm(g.broker, g.vm_id)["generation"]
    results = in_one_batch(g, [convert(g, 0), convert(g, PAGES + 5), convert(g, 1)])
    assert isinstance(results[0], Outcome)
    assert isinstance(results[2], Outcome)
    assert isinstance(results[1], OutOfRange)
    assert (results[0].generation, results[2].generation) == (start + 1, start + 2)
    settled(g)


def test_a_backend_refusal_undoes_only_its_own_and_later_jobs_rerun(guest: Guest) -> None:
    g = guest
    start = queries.get_vm(g.broker, g.vm_id)["generation"]
    g.backend.inject_fault("allocate", "ENOMEM")
    # Job 3 converts the page job 2 would have allocated: validated after job 2, it frees one page;
    # once job 2 is refused, it must be run again and free none.
    results = in_one_batch(g, [convert(g, 0), allocate(g, 40), convert(g, 40), convert(g, 1)])
    first, refused, third, fourth = results
    assert isinstance(refused, InsufficientMemory)
    assert isinstance(first, Outcome)
    assert isinstance(third, Outcome)
    assert isinstance(fourth, Outcome)
    assert first.generation == start + 1
    assert third.body["private_pages_freed"] == 0
    assert (third.generation, fourth.generation) == (start + 2, start + 3)
    ops = operations(g)
    statuses = [(o["kind"], o["status"]) for o in ops if o["generation"] > start or o["status"] == "failed"]
    assert statuses == [
        ("convert", "applied"),
        ("allocate", "failed"),
        ("convert", "applied"),
        ("convert", "applied"),
    ]
    settled(g)
    # and the page job 2 meant to allocate is a hole everywhere
    page40 = [e for e in stored_extents(g) if e["gpa"] <= 40 * PAGE < e["gpa"] + e["size"]]
    assert page40[0]["private_backing"] == "hole"


def test_a_part_way_failure_leaves_it_and_later_jobs_pending_then_replays_them(guest: Guest) -> None:
    g = guest
    g.backend.inject_fault("punch_hole", "EIO")  # convert to shared: attributes set, then the punch fails
    results = in_one_batch(g, [convert(g, 2), convert(g, 3), convert(g, 4)])
    assert all(isinstance(r, ReplayPending) for r in results)
    assert [o["status"] for o in operations(g)[-3:]] == ["pending"] * 3
    # the VM's next mutation replays them first, in journal order
    after = mutation.run(g.broker, convert(g, 5)())
    assert after.body["private_pages_freed"] == 1
    settled(g)
    shared = [e for e in stored_extents(g) if e["attribute"] == "shared"]
    assert shared == [
        {"gpa": 2 * PAGE, "size": 4 * PAGE, "attribute": "shared", "private_backing": "hole", "shared_backing": "hole"}
    ]


def test_a_retried_key_in_the_same_batch_gets_the_stored_answer(guest: Guest) -> None:
    g = guest
    meta = RequestMeta(idempotency_key="k-1", fingerprint="f-1")
    ranges = [{"gpa": 7 * PAGE, "size": PAGE, "to": "shared"}]

    def keyed() -> Job:
        return population.convert(g.broker, g.vm_id, ranges=ranges, meta=meta)

    first, second = in_one_batch(g, [keyed, keyed])
    assert isinstance(first, Outcome)
    assert isinstance(second, Outcome)
    assert second.replayed
    assert not first.replayed
    assert second.body == first.body
    assert len([o for o in operations(g) if o["kind"] == "convert"]) == 1
    settled(g)


def test_a_rule_broken_mid_change_reloads_before_the_rest(guest: Guest) -> None:
    """A change that raises after touching the aggregate: the batch so far commits, the VM reloads."""
    g = guest

    def breaks() -> Job:
        def change(vm: Any, now: Any, op_id: str) -> tuple[dict[str, Any], list[Any]]:
            vm.allocate(g.memfd_id, 20, 21, now)  # changes the aggregate...
            raise OutOfRange("refused after the aggregate changed")  # ...then a rule breaks

        return mutation.plan(g.vm_id, "test-break", {}, META, change)

    results = in_one_batch(g, [convert(g, 0), breaks, convert(g, 1)])
    assert isinstance(results[0], Outcome)
    assert isinstance(results[2], Outcome)
    assert isinstance(results[1], DomainError)
    settled(g)
    page20 = [e for e in stored_extents(g) if e["gpa"] <= 20 * PAGE < e["gpa"] + e["size"]]
    assert page20[0]["private_backing"] == "hole"
