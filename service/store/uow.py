"""The unit of work: one database transaction, committed explicitly, rolled back otherwise."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from sqlalchemy import Connection, Engine

from .repository import SqlFrameRuns, SqlJournal, SqlVmRepository


class SqlUnitOfWork:
    def __init__(self, engine: Engine, on_commit: Callable[[frozenset[str]], None] | None = None) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        # Told after every commit: how event streams learn the journal moved, without polling.
        self._on_commit = on_commit

    def __enter__(self) -> SqlUnitOfWork:
        self._conn = self._engine.connect()
        self._conn.begin()
        self.vms = SqlVmRepository(self._conn)
        self.journal = SqlJournal(self._conn)
        self.frames = SqlFrameRuns(self._conn)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._conn is not None
        try:
            if self._conn.in_transaction():
                self._conn.rollback()
        finally:
            self._conn.close()
            self._conn = None

    def commit(self) -> None:
        assert self._conn is not None
        self._conn.commit()
        if self._on_commit is not None:
            self._on_commit(frozenset(self.journal.vm_ids))
            self.journal.vm_ids.clear()
