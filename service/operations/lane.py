"""A VM's lane: the queue its mutations wait in, so that whoever holds the VM's lock runs them as one group."""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..domain.model import Vm
    from .journal import Change, Outcome, RequestMeta

# Enough to amortise the two commits (each is tens of µs) without holding a lane for long.
MAX_GROUP = 64


@dataclass(eq=False, slots=True)
class Job:
    """One request's mutation, waiting on its VM's lane for a batch to run it."""

    vm_id: str
    kind: str
    request: dict[str, Any]
    meta: RequestMeta
    change: Change
    status_code: int = 200
    new_vm: Vm | None = None
    allowed_when_lost: bool = False  # the few mutations a VM whose kernel objects are gone still takes
    # Staged only once the jobs before it have run, and runs before the jobs after it are staged: for a
    # mutation whose plan reads the backend (free frames) rather than the aggregate alone.
    alone: bool = False
    done: bool = False
    outcome: Outcome | None = None
    error: BaseException | None = None
    # The request's context (its request id, for logs), whichever thread runs the batch.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    # Where an awaiting request waits: the batch that answers the job settles the future on its
    # loop (one thread-safe call per batch and loop, however many jobs it answered).
    waiter: Waiter | None = None


@dataclass(frozen=True, slots=True)
class Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass(eq=False, slots=True)
class Lane:
    """A VM's queue of mutations; ``solo`` counts jobs to run one per batch after a batch failed."""

    queue: deque[Job] = field(default_factory=deque)
    solo: int = 0
    # The event loop's task running this lane's queued jobs in a worker thread, while there are any;
    # ``wake`` (thread-safe) starts one again for jobs a batch sent back after it had stopped.
    drainer: Any = None
    wake: Callable[[], object] | None = None

    def take(self) -> list[Job]:
        n = 1 if self.solo else MAX_GROUP
        self.solo = max(0, self.solo - 1)
        return [self.queue.popleft() for _ in range(min(n, len(self.queue)))]

    def requeue(self, jobs: list[Job], *, solo: bool = False) -> None:
        self.queue.extendleft(reversed(jobs))
        if solo:
            self.solo += len(jobs)
