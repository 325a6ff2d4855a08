"""What the use cases need from persistence: repositories inside a unit of work."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from ..domain.model import Changes, Vm
from ..domain.operation import Operation, OperationStatus


class VmRepository(Protocol):
    def load_all(self) -> list[Vm]: ...
    def load(self, vm_id: str) -> Vm | None: ...
    def name_taken(self, name: str) -> bool: ...
    def apply(self, changes: Changes, *, undo: bool = False) -> None: ...


class Journal(Protocol):
    def add(self, op: Operation) -> None: ...
    def finish(
        self,
        op_id: str,
        status: OperationStatus,
        *,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        response_status: int | None,
    ) -> None: ...
    def by_key(self, key: str) -> Operation | None: ...
    def pending(self) -> list[Operation]: ...
    def list(self, vm_id: str, *, after_seq: int, limit: int) -> list[Operation]: ...


class UnitOfWork(Protocol):
    @property
    def vms(self) -> VmRepository: ...
    @property
    def journal(self) -> Journal: ...

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]
