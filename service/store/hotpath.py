"""The statements every mutation runs, as driver SQL on the transaction's own DBAPI connection.

SQLAlchemy Core spends about 35 µs building an execution context per statement, against about 5 µs
for the driver itself; a convert runs seven of them, which made statement overhead the largest cost
of a mutation (see the benchmark in the README). These few statements therefore bypass it, with the
same bind processing SQLAlchemy would apply (its own processors for datetimes and JSON, so rows read
back through the ORM models are identical). Everything else goes through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Connection, DateTime
from sqlalchemy.engine import Dialect

_PROCESSORS: dict[str, HotSql] = {}


class HotSql:
    def __init__(self, dialect: Dialect) -> None:
        pg = dialect.name == "postgresql"
        self.integrity_error: type[Exception] = dialect.loaded_dbapi.IntegrityError
        self._dt: Callable[[Any], Any] = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect) or (
            lambda v: v
        )
        p = "%s" if pg else "?"
        j = "%s::json" if pg else "?"
        self._p = p
        self._op_row = f"({p}, {p}, {p}, {p}, {j}, {j}, {p}, {j}, {j}, {p}, {p}, {p}, {p}, {p})"
        self._insert_ops: dict[int, str] = {}
        self.finish_op = (
            f"UPDATE operations SET status = {p}, result = {j}, error = {j}, response_status = {p}, "
            f"finished_at = {p} WHERE id = {p}"
        )
        self.update_vm = f"UPDATE vms SET state = {p}, generation = {p}, updated_at = {p} WHERE id = {p}"
        self.insert_extent = (
            f'INSERT INTO extents (vm_id, map, owner, start, "end", value) VALUES ({p}, {p}, {p}, {p}, {p}, {p})'
        )
        self.insert_frame_run = (
            f'INSERT INTO frame_runs (vm_id, owner, start, "end", pfn) VALUES ({p}, {p}, {p}, {p}, {p})'
        )

    def _marks(self, n: int) -> str:
        """``n`` placeholders for an ``IN (...)`` list."""
        return ", ".join([self._p] * n)

    def insert_ops(self, n: int) -> str:
        """One statement for ``n`` journal rows; rows come back as (id, seq), in no promised order."""
        sql = self._insert_ops.get(n)
        if sql is None:
            sql = self._insert_ops[n] = (
                "INSERT INTO operations (id, vm_id, kind, status, request, effects, generation, result, error, "
                "response_status, idempotency_key, fingerprint, created_at, finished_at) "
                f"VALUES {', '.join([self._op_row] * n)} RETURNING id, seq"
            )
        return sql

    def delete_frame_runs(self, n: int) -> str:
        p = self._p
        return f"DELETE FROM frame_runs WHERE vm_id = {p} AND owner = {p} AND start IN ({self._marks(n)})"

    def delete_extents(self, n: int) -> str:
        p = self._p
        return f"DELETE FROM extents WHERE vm_id = {p} AND map = {p} AND owner = {p} AND start IN ({self._marks(n)})"

    def mark_applied(self, n: int) -> str:
        return f"UPDATE operations SET status = 'applied', finished_at = {self._p} WHERE id IN ({self._marks(n)})"

    def discard_ops(self, n: int) -> str:
        return f"DELETE FROM operations WHERE id IN ({self._marks(n)}) AND status = 'pending'"

    def dt(self, value: Any) -> Any:
        return None if value is None else self._dt(value)

    @staticmethod
    def js(value: Any) -> str | None:
        # pydantic-core's serialiser: compact, and a fifth of json.dumps's time on a journal row's
        # request, effects and result; the column reads back through json.loads all the same.
        return None if value is None else to_json(value).decode()


def hot(conn: Connection) -> HotSql:
    name = conn.dialect.name
    sql = _PROCESSORS.get(name)
    if sql is None:
        sql = _PROCESSORS[name] = HotSql(conn.dialect)
    return sql


def execute(conn: Connection, statement: str, params: Sequence[Any]) -> Any:
    """Run one statement on the connection's current transaction; returns the DBAPI cursor."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(statement, params)
    return cursor


def execute_many(conn: Connection, statement: str, rows: Sequence[Sequence[Any]]) -> None:
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.executemany(statement, rows)
    cursor.close()
