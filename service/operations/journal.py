"""How every mutation runs (DESIGN section 6).

validate against stored state -> one transaction writes the new extents and a ``pending`` journal
row -> apply to the backend -> mark ``applied``. A backend refusal of the first effect undoes the
written state and marks the operation ``failed``; a failure after some effects applied leaves the
operation ``pending`` to be replayed (backend calls are idempotent) before the VM's next mutation
and at start-up.
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
from ..domain.model import Changes, Vm
from ..domain.operation import Operation, OperationStatus
from .broker import Broker, log, new_id


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


def mutate(
    broker: Broker,
    vm_id: str,
    kind: str,
    request: dict[str, Any],
    meta: RequestMeta,
    change: Change,
    *,
    status_code: int = 200,
    new_vm: Vm | None = None,
) -> Outcome:
    """Run one mutation of one VM under its lock; ``new_vm`` when the mutation creates it."""
    with broker.locked(vm_id):
        replay = stored_replay(broker, meta)
        if replay is not None:
            return replay
        if vm_id in broker.needs_replay:
            replay_pending(broker, vm_id)
        vm = new_vm if new_vm is not None else broker.vm(vm_id)
        check_if_match(vm, meta.if_match)
        now = broker.clock()
        op_id = new_id("op")
        try:
            body, effects = change(vm, now, op_id)
        except DomainError:
            if vm.drain_changes() is not None:  # a rule broke after a change began: reload
                broker.forget(vm_id)
            raise
        changes = vm.drain_changes()
        if changes is None:
            return Outcome(status_code, body, vm.generation)
        op = Operation(
            id=op_id,
            vm_id=vm.id,
            kind=kind,
            status=OperationStatus.PENDING,
            request=request,
            effects=[e.to_json() for e in effects],
            generation=vm.generation,
            created_at=now,
            result=body,
            response_status=status_code,
            idempotency_key=meta.idempotency_key,
            fingerprint=meta.fingerprint,
        )
        try:
            with broker.uow() as uow:
                uow.vms.apply(changes)
                uow.journal.add(op)
                uow.commit()
        except BaseException:
            broker.forget(vm_id)
            raise
        if changes.created:
            broker.cache(vm)

        try:
            broker.execute(effects)
        except BackendError as err:
            applied: int = getattr(err, "applied", 0)
            problem = backend_problem(err)
            if applied == 0:
                _undo(broker, op, changes, problem)
                raise problem from err
            broker.needs_replay.add(vm_id)
            log.error("operation %s: backend failed after %d effect(s): %s", op.id, applied, err)
            raise ReplayPending(
                f"operation {op.id} is journalled but the backend failed after {applied} of "
                f"{len(effects)} calls ({err}); it will be replayed",
                operation_id=op.id,
            ) from err
        except BaseException:
            broker.needs_replay.add(vm_id)
            raise

        with broker.uow() as uow:
            uow.journal.finish(op.id, OperationStatus.APPLIED, result=body, error=None, response_status=status_code)
            broker.record_frames(uow, vm_id)
            uow.commit()
        if changes.deleted:
            broker.forget(vm_id)
        return Outcome(status_code, body, None if changes.deleted else vm.generation)


def _undo(broker: Broker, op: Operation, changes: Changes, problem: DomainError) -> None:
    error = {"code": problem.code, "detail": problem.detail, "errno": problem.errno}
    with broker.uow() as uow:
        uow.vms.apply(changes, undo=True)
        uow.journal.finish(op.id, OperationStatus.FAILED, result=None, error=error, response_status=None)
        uow.commit()
    broker.forget(op.vm_id)


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
