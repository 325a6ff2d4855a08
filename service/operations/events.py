"""The event stream: the journal read forward, one event per applied operation.

An event's id is its operation's id, so ``Last-Event-ID`` names a journal row and a stream resumes
right after it. Streams do not poll: every commit calls :meth:`EventHub.notify`, which wakes the
waiting streams (nothing more than an emptiness check when none are open), and each stream then
reads the journal past its position.

Order is the journal's (``seq``). A stream stops at a ``pending`` operation until it is finished,
since an operation's effects are not all applied before then; failed operations changed nothing
and are not sent. On PostgreSQL two VMs' transactions may commit out of ``seq`` order, so the
host-wide stream waits a moment at a hole in ``seq`` (the missing row may yet commit) before
passing it (a rolled-back insert leaves holes for good).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..domain.errors import EventsExpired
from ..domain.operation import Operation, OperationStatus
from ..domain.units import to_bytes
from .ports import UnitOfWorkFactory

if TYPE_CHECKING:  # the broker holds the hub: a runtime import would be circular
    from .broker import Broker

# How long a hole in seq holds the host-wide stream back.
GAP_GRACE_SECONDS = 0.5
BATCH = 500


class Subscription:
    """One open stream's wake-up call: ``event`` is set after a commit that may concern it."""

    __slots__ = ("at_pending", "event", "loop", "vm_id")

    def __init__(self, loop: asyncio.AbstractEventLoop, vm_id: str | None) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.vm_id = vm_id
        # Stopped at a pending operation (or reading, which may stop at one): its finish, a commit
        # that adds no journal row, must wake the stream too.
        self.at_pending = True


class EventHub:
    """Wakes open event streams after a commit; costs an emptiness check when none is open."""

    def __init__(self) -> None:
        self._waiters: set[Subscription] = set()
        self._lock = threading.Lock()

    def notify(self, vm_ids: frozenset[str] = frozenset()) -> None:
        """A transaction committed; ``vm_ids`` are the VMs it added journal rows for."""
        if not self._waiters:
            return
        with self._lock:
            waiters = list(self._waiters)
        for sub in waiters:
            # A VM's stream sleeps through other VMs' commits: with a VMM subscribed per VM, a
            # mutation wakes one stream (and the host-wide ones), not all of them.
            if (sub.vm_id is None or sub.vm_id in vm_ids or sub.at_pending) and not sub.event.is_set():
                sub.loop.call_soon_threadsafe(sub.event.set)

    @contextmanager
    def subscription(self, vm_id: str | None) -> Iterator[Subscription]:
        """The wake-up call of one stream, of one VM or (None) all; use from the stream's event loop."""
        sub = Subscription(asyncio.get_running_loop(), vm_id)
        with self._lock:
            self._waiters.add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._waiters.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._waiters)


@dataclass(slots=True)
class StreamPosition:
    """Where one stream is: the last journal seq it has passed, and a hole it is waiting at."""

    vm_id: str | None
    seq: int
    gap_since: float | None = None
    ended: bool = False


@dataclass(slots=True)
class EventBatch:
    events: list[dict[str, Any]] = field(default_factory=list)
    more: bool = False
    # Seconds until a held hole should be passed; None when the stream is not holding.
    retry_in: float | None = None
    # Stopped at an operation still pending.
    at_pending: bool = False


def open_position(broker: Broker, vm_id: str | None, last_event_id: str | None) -> StreamPosition:
    """Where a new stream starts: right after ``last_event_id``, or at the journal's end."""
    with broker.uow() as uow:
        if last_event_id is None:
            # The journal's end, or just before the oldest operation still pending: a stream opened
            # while one is in flight must not miss it (its event carries a generation that a client
            # which read the extent map meanwhile can compare to skip it).
            pending = [op.seq for op in uow.journal.pending() if op.seq is not None and vm_id in (None, op.vm_id)]
            seq = min([uow.journal.last_seq(), *(s - 1 for s in pending)])
            known = vm_id is None or bool(uow.journal.list(vm_id, after_seq=0, limit=1))
        else:
            op = uow.journal.by_id(last_event_id)
            if op is None or op.seq is None:
                raise EventsExpired(
                    f"event {last_event_id!r} is not in the retained journal; re-read the extent map and "
                    "subscribe without Last-Event-ID"
                )
            if vm_id is not None and op.vm_id != vm_id:
                raise EventsExpired(f"event {last_event_id!r} belongs to VM {op.vm_id!r}, not {vm_id!r}")
            seq, known = op.seq, True
    if vm_id is not None and not known:
        with broker.locked(vm_id):
            broker.vm(vm_id)  # raises NotFound for a VM that never existed
    return StreamPosition(vm_id, seq)


def read_events(broker: Broker, position: StreamPosition) -> EventBatch:
    """The events after ``position``, advancing it; stops at a pending operation or a young hole."""
    with broker.uow() as uow:
        ops = uow.journal.after(position.seq, vm_id=position.vm_id, limit=BATCH)
    batch = EventBatch(more=len(ops) == BATCH)
    for op in ops:
        assert op.seq is not None
        if op.status is OperationStatus.PENDING:
            batch.more = False
            batch.at_pending = True
            break
        if position.vm_id is None and op.seq != position.seq + 1:
            now = time.monotonic()
            if position.gap_since is None:
                position.gap_since = now
            if now - position.gap_since < GAP_GRACE_SECONDS:
                batch.retry_in = GAP_GRACE_SECONDS - (now - position.gap_since)
                batch.more = False
                break
        position.gap_since = None
        position.seq = op.seq
        if op.status is OperationStatus.APPLIED:
            batch.events.append(event_of(op))
            if position.vm_id is not None and op.kind == "delete-vm":
                position.ended = True
                break
    return batch


def event_of(op: Operation) -> dict[str, Any]:
    return {
        "id": op.id,
        "seq": op.seq,
        "vm_id": op.vm_id,
        "kind": op.kind,
        "generation": op.generation,
        "ranges": [_range(e) for e in op.effects],
        "result": op.result,
        "created_at": op.created_at.isoformat(),
    }


def _range(effect: dict[str, Any]) -> dict[str, Any]:
    """A backend effect as the range it touched, in the API's units (bytes)."""
    out: dict[str, Any] = {"effect": effect["call"]}
    for key, value in effect.items():
        if key in ("call", "vm_id"):
            continue
        if key == "gfn":
            out["gpa"] = to_bytes(value)
        elif key == "pgoff":
            out["offset"] = to_bytes(value)
        elif key == "npages":
            out["size"] = to_bytes(value)
        elif key == "memfd_id" and value == "":
            out[key] = None  # a move of the shared backing
        else:
            out[key] = value
    return out


def prune_journal(unit_of_work: UnitOfWorkFactory, keep: int) -> int:
    """Forget all but the newest ``keep`` finished operations; streams behind them get 410."""
    with unit_of_work() as uow:
        removed = uow.journal.prune(keep)
        uow.commit()
    return removed
