"""How every mutation runs (DESIGN section 6), and how queued mutations of one VM share a commit.

One mutation: validate against the VM's state -> one transaction writes the new extents and a
``pending`` journal row -> apply to the backend -> mark ``applied``. A backend refusal of the first
effect undoes the written state and marks the operation ``failed``; a failure after some effects
applied leaves the operation ``pending``, replayed before the VM's next mutation and at start-up.

Group commit. Mutations of one VM are serialized, so under load they queue; the two commits of each
would then bound a VM's throughput. Instead, a request enqueues its mutation on the VM's lane and
whoever next holds the lane's lock runs everything queued, in arrival order, as one batch: each
mutation is validated against the state the ones before it left, all are written in one transaction,
their backend effects run in order, and one more transaction marks them applied. The answers are
exactly those of running them one by one:

- a refusal or a no-op takes no part in the writes, and its answer was computed against the state
  the earlier mutations of the batch leave, which is what the journal records;
- when the backend refuses mutation k outright, k..n are undone in reverse order in one
  transaction, k is marked ``failed``, the never-applied rows of k+1..n are deleted, and k+1.. are
  queued again to run against the reloaded state; nobody has seen their answers yet;
- when it fails part-way through k, k..n stay ``pending`` (their order is the journal's ``seq``) and
  are answered ``replay-pending``, as k alone would be;
- when the batch's transaction itself fails, every mutation from the first write on is queued
  again and run alone, so each gets its own error.

Nothing is answered until the batch is over: waiting requests block on the lane's lock, which the
batch holds throughout.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread

from ..backends.protocol import BackendError
from ..domain import effects as fx
from ..domain.errors import DomainError
from ..domain.model import Changes, Vm, net_changes
from ..domain.operation import Operation, OperationStatus
from .broker import Broker, log, new_id
from .journal import (
    Change,
    Outcome,
    ReplayPending,
    RequestMeta,
    backend_problem,
    check_if_match,
    replay_pending,
    stored_replay,
)
from .lane import Job, Lane, Waiter


@dataclass(eq=False, slots=True)
class _Staged:
    """A validated mutation of the batch with the rows it writes and the calls it makes."""

    job: Job
    op: Operation
    changes: Changes
    effects: list[fx.Effect]
    body: dict[str, Any]

    def outcome(self) -> Outcome:
        generation = None if self.changes.deleted else self.op.generation
        return Outcome(self.job.status_code, self.body, generation)


class _Cut(Exception):
    """A rule broke after the aggregate began to change: it must be reloaded before anything else runs."""


def plan(
    vm_id: str,
    kind: str,
    request: dict[str, Any],
    meta: RequestMeta,
    change: Change,
    *,
    status_code: int = 200,
    new_vm: Vm | None = None,
    allowed_when_lost: bool = False,
    alone: bool = False,
) -> Job:
    """A mutation of one VM, ready to run; ``new_vm`` when the mutation creates it."""
    return Job(vm_id, kind, request, meta, change, status_code, new_vm, allowed_when_lost, alone)


def run(broker: Broker, job: Job) -> Outcome:
    """Run a mutation, serialized with the VM's others, in this thread: it leads batches until its own is done."""
    lane, lock = broker.lane(job.vm_id)
    lane.queue.append(job)
    while not job.done:
        with lock:
            if not job.done:
                _Batch(broker, job.vm_id, lane, lane.take()).run()
    if lane.queue and lane.wake is not None:
        lane.wake()  # a batch of ours may have sent back jobs of awaiting requests
    return _result(job)


async def submit(broker: Broker, job: Job) -> Outcome:
    """Run a mutation from the event loop without blocking it: batches run in a worker thread, one per group."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    job.waiter = Waiter(loop, future)
    lane, lock = broker.lane(job.vm_id)
    if lane.wake is None:
        lane.wake = partial(loop.call_soon_threadsafe, _ensure_drainer, broker, job.vm_id, lane, lock)
    lane.queue.append(job)
    _ensure_drainer(broker, job.vm_id, lane, lock)
    # Cancelling the wait (the client went away) cancels only the future: the job runs all the same,
    # journalled, and its Idempotency-Key replays its answer.
    await future
    return _result(job)


def _result(job: Job) -> Outcome:
    if job.error is not None:
        raise job.error
    assert job.outcome is not None
    return job.outcome


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _ensure_drainer(broker: Broker, vm_id: str, lane: Lane, lock: threading.Lock) -> None:
    if lane.drainer is None and lane.queue:
        lane.drainer = asyncio.get_running_loop().create_task(_drain(broker, vm_id, lane, lock))


async def _drain(broker: Broker, vm_id: str, lane: Lane, lock: threading.Lock) -> None:
    try:
        while lane.queue:
            await anyio.to_thread.run_sync(_lead, broker, vm_id, lane, lock)
    finally:
        lane.drainer = None


def _lead(broker: Broker, vm_id: str, lane: Lane, lock: threading.Lock) -> None:
    with lock:
        if lane.queue:
            _Batch(broker, vm_id, lane, lane.take()).run()


class _Batch:
    """One group of a lane's jobs; runs with the lane's lock held, so nobody sees an answer before the end."""

    def __init__(self, broker: Broker, vm_id: str, lane: Lane, jobs: list[Job]) -> None:
        self.broker = broker
        self.vm_id = vm_id
        self.lane = lane
        self.jobs = jobs
        self.processed: list[Job] = []  # jobs this batch answers or sends back, in arrival order
        self.staged: list[_Staged] = []
        self.first_write = 0  # index in ``processed`` of the first job that writes

    def run(self) -> None:
        try:
            self._run()
        finally:
            # One wake-up of each loop for the whole batch: a thread-safe call writes to the loop's
            # self-pipe and costs the loop an iteration, which per job was a measurable share of a
            # single-range convert.
            waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for job in self.processed:
                if job.outcome is not None or job.error is not None:
                    job.done = True
                    if job.waiter is not None:
                        waiting.setdefault(job.waiter.loop, []).append(job.waiter.future)
            for loop, futures in waiting.items():
                loop.call_soon_threadsafe(_settle, futures)

    def _run(self) -> None:
        broker, jobs = self.broker, self.jobs
        if self.vm_id in broker.needs_replay:
            # Replay first: a retry of the request that left an operation pending must get its
            # stored answer only once the backend has caught up with it.
            try:
                replay_pending(broker, self.vm_id)
            except BaseException as exc:
                if isinstance(exc, BackendError):
                    detail = f"VM {self.vm_id!r} has a pending operation the backend refused again: {exc}"
                    exc = ReplayPending(detail)
                self._answer(jobs[0], error=exc)
                self.lane.requeue(jobs[1:], solo=True)  # each retries the replay and gets its own answer
                return
        keys: set[str] = set()
        for i, job in enumerate(jobs):
            key = job.meta.idempotency_key
            if key is not None and key in keys:
                # A retry of a request still in this batch: it must see that request's stored answer.
                self.lane.requeue(jobs[i:])
                break
            if key is not None:
                keys.add(key)
            if job.alone and self.staged:
                self.lane.requeue(jobs[i:])  # the jobs staged so far run first
                break
            try:
                entry = _stage(broker, self.vm_id, job)
            except _Cut as cut:
                self._answer(job, error=cut.__cause__)
                self.lane.requeue(jobs[i + 1 :])
                self._commit()
                broker.forget(self.vm_id)
                return
            except Exception as exc:
                self._answer(job, error=exc)
                continue
            if isinstance(entry, Outcome):
                self._answer(job, entry)
                continue
            self.processed.append(job)
            if not self.staged:
                self.first_write = len(self.processed) - 1
            self.staged.append(entry)
            if entry.changes.created or entry.changes.deleted or job.alone:
                # The cache changes with the first two, the backend's free frames with the last: later
                # jobs are staged in the next batch.
                self.lane.requeue(jobs[i + 1 :])
                break
        self._commit()

    def _answer(self, job: Job, outcome: Outcome | None = None, error: BaseException | None = None) -> None:
        job.outcome, job.error = outcome, error
        if job not in self.processed:
            self.processed.append(job)

    def _again(self, jobs: list[Job], *, solo: bool = False) -> None:
        """Send answered-but-unseen jobs back to the lane: the state they were answered against is gone."""
        for job in jobs:
            job.outcome, job.error = None, None
        self.processed = [j for j in self.processed if j not in jobs]
        self.lane.requeue(jobs, solo=solo)

    def _commit(self) -> None:
        """Write the staged mutations, apply their effects, mark them applied, and answer them."""
        broker, staged = self.broker, self.staged
        if not staged:
            return
        try:
            with broker.uow() as uow:
                # Three statements for the group's extents rather than three per mutation.
                net = net_changes([s.changes for s in staged])
                if net is not None:
                    uow.vms.apply(net)
                else:
                    last = len(staged) - 1
                    for i, s in enumerate(staged):
                        uow.vms.apply(s.changes, write_vm=i == last)
                uow.journal.add_all([s.op for s in staged])
                uow.commit()
        except BaseException as exc:
            broker.forget(self.vm_id)
            if len(self.processed) - self.first_write == 1:
                self._answer(staged[0].job, error=exc)
                return
            # Which mutation broke the transaction is unknown: run each alone, from the first write on.
            self._again(self.processed[self.first_write :], solo=True)
            return
        for s in staged:
            if s.changes.created:
                broker.cache(s.changes.vm)

        for k, s in enumerate(staged):
            try:
                broker.execute(s.effects)
            except BackendError as err:
                done: int = getattr(err, "applied", 0)
                problem = backend_problem(err)
                if done == 0:
                    self._undo_from(k, problem)
                    return
                detail = f"the backend failed after {done} of {len(s.effects)} calls ({err})"
                self._leave_pending(k, err, detail)
                return
            except BaseException as exc:
                self._leave_pending(k, exc, None)
                return
        self._mark_applied(staged)

    def _mark_applied(self, applied: list[_Staged]) -> None:
        if applied:
            try:
                with self.broker.uow() as uow:
                    uow.journal.mark_applied([s.op.id for s in applied])
                    self.broker.record_frames(uow, self.vm_id)
                    uow.commit()
            except Exception:
                # Effects applied and operations journalled; only the mark is missing. Replay is
                # idempotent, so answer success and let the replay before the next mutation mark them.
                log.exception("could not mark %d applied operation(s) of VM %s", len(applied), self.vm_id)
                self.broker.needs_replay.add(self.vm_id)
        self._answer_applied(applied)

    def _answer_applied(self, applied: list[_Staged]) -> None:
        for s in applied:
            if s.changes.deleted:
                self.broker.forget(self.vm_id)
            self._answer(s.job, s.outcome())
        if applied:
            done = [(s.job.kind, s.body) for s in applied]
            for observe in self.broker.observers:
                observe(done)

    def _leave_pending(self, k: int, err: BaseException, detail: str | None) -> None:
        """Mutation k failed part-way: k.. stay pending, to be replayed in journal order, and say so."""
        staged = self.staged
        failed = staged[k]
        self.broker.needs_replay.add(self.vm_id)
        # Logged in the failed request's context, so the record carries its request id.
        failed.job.context.run(log.error, "operation %s: %s", failed.op.id, detail or err)
        self._mark_applied(staged[:k])
        if detail is None:
            self._answer(failed.job, error=err)
        else:
            message = f"operation {failed.op.id} is journalled but {detail}; it will be replayed"
            self._answer(failed.job, error=ReplayPending(message, operation_id=failed.op.id))
        for s in staged[k + 1 :]:
            message = (
                f"operation {s.op.id} is journalled but an earlier one ({failed.op.id}) failed part-way in the "
                "backend; both will be replayed"
            )
            self._answer(s.job, error=ReplayPending(message, operation_id=s.op.id))

    def _undo_from(self, k: int, problem: DomainError) -> None:
        """The backend refused mutation k before changing anything: undo k.., fail k, run k+1.. again."""
        broker, staged = self.broker, self.staged
        failed = staged[k]
        error = {"code": problem.code, "detail": problem.detail, "errno": problem.errno}
        try:
            with broker.uow() as uow:
                for s in reversed(staged[k:]):
                    uow.vms.apply(s.changes, undo=True)
                uow.journal.finish(failed.op.id, OperationStatus.FAILED, result=None, error=error, response_status=None)
                uow.journal.discard([s.op.id for s in staged[k + 1 :]])
                uow.journal.mark_applied([s.op.id for s in staged[:k]])
                broker.record_frames(uow, self.vm_id)
                uow.commit()
        except BaseException as exc:
            # The undo did not commit: k.. are still pending in the journal, and replay sorts them out.
            broker.forget(self.vm_id)
            self._leave_pending(k, exc, f"undoing it after a backend refusal ({problem.detail}) failed ({exc})")
            return
        broker.forget(self.vm_id)
        self._answer_applied(staged[:k])  # marked applied in the undo's transaction
        self._answer(failed.job, error=problem)
        # Everything after k was validated against k's change: run it again. Jobs before k keep answers.
        position = self.processed.index(failed.job)
        self._again(self.processed[position + 1 :])


def _stage(broker: Broker, vm_id: str, job: Job) -> _Staged | Outcome:
    """Validate ``job`` against the VM's current state and change the aggregate; no I/O but reads."""
    replay = stored_replay(broker, job.meta)
    if replay is not None:
        return replay
    vm = job.new_vm if job.new_vm is not None else broker.vm(vm_id)
    if not job.allowed_when_lost:
        vm.require_not_lost()
    check_if_match(vm, job.meta.if_match)
    now = broker.clock()
    op_id = new_id("op")
    try:
        body, effects = job.change(vm, now, op_id)
    except Exception as exc:
        if vm.drain_changes() is not None:
            raise _Cut() from exc
        raise
    changes = vm.drain_changes()
    if changes is None:
        return Outcome(job.status_code, body, vm.generation)
    op = Operation(
        id=op_id,
        vm_id=vm.id,
        kind=job.kind,
        status=OperationStatus.PENDING,
        request=job.request,
        effects=[e.to_json() for e in effects],
        generation=vm.generation,
        created_at=now,
        result=body,
        response_status=job.status_code,
        idempotency_key=job.meta.idempotency_key,
        fingerprint=job.meta.fingerprint,
    )
    return _Staged(job, op, changes, effects, body)
