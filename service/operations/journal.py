"""The journal's side of a mutation (DESIGN section 6): request metadata and answers, idempotent
replays of answers already given, preconditions, and the replay of operations left ``pending``.

How a mutation runs through the journal is in ``mutation.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..backends.protocol import BackendError
from ..domain import effects as fx
from ..domain.errors import (
    DomainError,
    FrameInUse,
    IdempotencyKeyReused,
    InsufficientMemory,
    NotSupportedByKernel,
    PreconditionFailed,
)
from ..domain.model import Vm
from ..domain.operation import OperationStatus
from .broker import Broker, log


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What a request says about itself beyond its body."""

    idempotency_key: str | None = None
    fingerprint: str | None = None
    if_match: str | None = None


@dataclass(slots=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    generation: int | None
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class BackendFailed(DomainError):
    """A backend refusal that is not one of the named rules."""

    code = "backend-error"


class ReplayPending(DomainError):
    code = "replay-pending"


class StoredRefusal(DomainError):
    """An idempotent replay of a request the backend refused: the same refusal again."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("detail", ""))
        self.detail = error.get("detail", "")
        self.code = error.get("code", BackendFailed.code)


def etag(generation: int) -> str:
    return f'"{generation}"'


def check_if_match(vm: Vm, if_match: str | None) -> None:
    if if_match is None:
        return
    tags = [t.strip() for t in if_match.split(",")]
    if "*" in tags or etag(vm.generation) in tags or f"W/{etag(vm.generation)}" in tags:
        return
    raise PreconditionFailed(
        f"If-Match {if_match} does not match VM {vm.id!r} at generation {vm.generation} (ETag {etag(vm.generation)})"
    )


def backend_problem(err: BackendError) -> DomainError:
    if err.errno in ("ENOMEM", "ENOSPC"):
        return InsufficientMemory(err.message, errno=err.errno)
    if err.errno in ("EOPNOTSUPP", "ENOTTY", "ENOSYS"):
        return NotSupportedByKernel(err.message, errno=err.errno)
    if err.errno == "EBUSY":
        return FrameInUse(err.message, errno=err.errno)
    return BackendFailed(err.message, errno=err.errno)


def stored_replay(broker: Broker, meta: RequestMeta) -> Outcome | None:
    """The answer already given to this Idempotency-Key, if any."""
    if meta.idempotency_key is None:
        return None
    with broker.uow() as uow:
        op = uow.journal.by_key(meta.idempotency_key)
    if op is None:
        return None
    if op.fingerprint != meta.fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {meta.idempotency_key!r} was used for a different request (operation {op.id})"
        )
    if op.status is OperationStatus.FAILED and op.error is not None:
        raise StoredRefusal(op.error)
    return Outcome(op.response_status or 200, op.result or {}, op.generation, replayed=True)


Change = Callable[[Vm, datetime, str], tuple[dict[str, Any], list[fx.Effect]]]


def replay_pending(broker: Broker, vm_id: str | None = None) -> int:
    """Re-apply the effects of pending operations (of one VM, or all), oldest first; returns how many.

    Backend calls are idempotent: applying a pending operation's effects again is safe whether the
    failure or crash came before, during or after them.
    """
    with broker.uow() as uow:
        pending = [op for op in uow.journal.pending() if vm_id is None or op.vm_id == vm_id]
    for op in pending:
        broker.execute([fx.effect_from_json(e) for e in op.effects])
        with broker.uow() as uow:
            uow.journal.finish(
                op.id, OperationStatus.APPLIED, result=op.result, error=None, response_status=op.response_status
            )
            broker.record_frames(uow, op.vm_id)
            uow.commit()
        log.info("replayed pending operation %s (%s on %s)", op.id, op.kind, op.vm_id)
    if vm_id is None:
        broker.needs_replay.clear()
    else:
        broker.needs_replay.discard(vm_id)
    return len(pending)
