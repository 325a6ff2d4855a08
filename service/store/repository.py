"""SQLAlchemy repositories: VM aggregates in and out of rows, and the operation journal.

Writes are the net change an operation made (``Changes``), so one operation costs rows in
proportion to the extents it touched, never to the pages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, tuple_

from ..backends.protocol import FrameChanges, FrameRun
from ..domain.errors import Conflict
from ..domain.extents import Extent, ExtentMap
from ..domain.model import Attribute, Changes, Memfd, MemfdFlag, Memslot, Population, Vm, VmState, VmType
from ..domain.operation import Operation, OperationStatus
from .hotpath import execute, execute_many, hot
from .models import ExtentRow, FrameRunRow, MemfdRow, MemslotRow, OperationRow, VmRow

_VALUE_TYPES: dict[str, type[Attribute] | type[Population]] = {
    "attribute": Attribute,
    "shared": Population,
    "population": Population,
}
# Rows deleted per statement: stays under SQLite's host-parameter limit with room to spare.
_CHUNK = 300
# Journal rows inserted per statement (14 parameters each).
_OPS_CHUNK = 64


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _chunks(items: list[Any], size: int = _CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class SqlVmRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def name_taken(self, name: str) -> bool:
        return self._conn.execute(select(VmRow.id).where(VmRow.name == name)).first() is not None

    def load_all(self) -> list[Vm]:
        ids = self._conn.execute(select(VmRow.id).order_by(VmRow.created_at, VmRow.id)).scalars().all()
        return [vm for vm_id in ids if (vm := self.load(vm_id)) is not None]

    def load(self, vm_id: str) -> Vm | None:
        row = self._conn.execute(select(VmRow).where(VmRow.id == vm_id)).mappings().first()
        if row is None:
            return None
        runs: dict[tuple[str, str], list[Extent[Any]]] = defaultdict(list)
        for e in self._conn.execute(
            select(ExtentRow.map, ExtentRow.owner, ExtentRow.start, ExtentRow.end, ExtentRow.value).where(
                ExtentRow.vm_id == vm_id
            )
        ):
            runs[(e.map, e.owner)].append(Extent(e.start, e.end, _VALUE_TYPES[e.map](e.value)))
        memfds = [
            Memfd(
                id=m.id,
                vm_id=vm_id,
                npages=m.npages,
                flags=frozenset(MemfdFlag(f) for f in m.flags.split(",") if f),
                created_at=_utc(m.created_at),
                population=ExtentMap(runs[("population", m.id)]),
            )
            for m in self._conn.execute(select(MemfdRow).where(MemfdRow.vm_id == vm_id)).mappings()
        ]
        memslots = [
            Memslot(s.slot, s.gfn, s.npages, s.memfd_id, s.pgoff, _utc(s.created_at))
            for s in self._conn.execute(select(MemslotRow).where(MemslotRow.vm_id == vm_id)).mappings()
        ]
        return Vm(
            id=row["id"],
            name=row["name"],
            vm_type=VmType(row["vm_type"]),
            state=VmState(row["state"]),
            generation=row["generation"],
            created_at=_utc(row["created_at"]),
            updated_at=_utc(row["updated_at"]),
            memfds=memfds,
            memslots=memslots,
            attributes=ExtentMap(runs[("attribute", "")]),
            shared=ExtentMap(runs[("shared", "")]),
        )

    def apply(self, changes: Changes, *, undo: bool = False, write_vm: bool = True) -> None:
        """Write ``changes``, or with ``undo`` write their inverse (after a failed backend call).

        ``write_vm=False`` leaves the VM row alone: in a group, the last mutation's write carries the
        state all of them leave (the row is written from the aggregate, which is already there).
        """
        vm = changes.vm
        created, deleted = changes.created, changes.deleted
        memfds_added, memfds_removed = changes.memfds_added, changes.memfds_removed
        slots_added, slots_removed = changes.memslots_added, changes.memslots_removed
        if undo:
            created, deleted = deleted, created
            memfds_added, memfds_removed = memfds_removed, memfds_added
            slots_added, slots_removed = slots_removed, slots_added
        conn = self._conn

        if created:
            conn.execute(
                insert(VmRow).values(
                    id=vm.id,
                    name=vm.name,
                    vm_type=vm.vm_type.value,
                    state=(changes.previous_state if undo else vm.state).value,
                    generation=changes.previous_generation if undo else vm.generation,
                    created_at=vm.created_at,
                    updated_at=changes.previous_updated_at if undo else vm.updated_at,
                )
            )
        for memfd in memfds_added:
            conn.execute(
                insert(MemfdRow).values(
                    id=memfd.id,
                    vm_id=vm.id,
                    npages=memfd.npages,
                    flags=",".join(sorted(memfd.flags)),
                    created_at=memfd.created_at,
                )
            )
            self._insert_extents(vm.id, "population", memfd.id, list(memfd.population))
        for slot in slots_added:
            conn.execute(
                insert(MemslotRow).values(
                    vm_id=vm.id,
                    slot=slot.slot,
                    gfn=slot.gfn,
                    npages=slot.npages,
                    memfd_id=slot.memfd_id,
                    pgoff=slot.pgoff,
                    created_at=slot.created_at,
                )
            )

        for (map_name, owner), delta in changes.maps.items():
            if undo:
                delta = delta.inverted()
            self._delete_extents(vm.id, map_name, owner, [e.start for e in delta.removed])
            self._insert_extents(vm.id, map_name, owner, list(delta.added))

        for slot in slots_removed:
            conn.execute(delete(MemslotRow).where(MemslotRow.vm_id == vm.id, MemslotRow.slot == slot.slot))
        for memfd in memfds_removed:
            conn.execute(
                delete(ExtentRow).where(
                    ExtentRow.vm_id == vm.id, ExtentRow.map == "population", ExtentRow.owner == memfd.id
                )
            )
            conn.execute(delete(MemfdRow).where(MemfdRow.id == memfd.id))
            conn.execute(delete(FrameRunRow).where(FrameRunRow.vm_id == vm.id, FrameRunRow.owner == memfd.id))
        if deleted:
            conn.execute(delete(ExtentRow).where(ExtentRow.vm_id == vm.id))
            conn.execute(delete(FrameRunRow).where(FrameRunRow.vm_id == vm.id))
            conn.execute(delete(VmRow).where(VmRow.id == vm.id))
        elif not created and write_vm:
            sql = hot(conn)
            execute(
                conn,
                sql.update_vm,
                (
                    (changes.previous_state if undo else vm.state).value,
                    changes.previous_generation if undo else vm.generation,
                    sql.dt(changes.previous_updated_at if undo else vm.updated_at),
                    vm.id,
                ),
            ).close()

    def _delete_extents(self, vm_id: str, map_name: str, owner: str, starts: list[int]) -> None:
        sql = hot(self._conn)
        for chunk in _chunks(sorted(starts)):
            execute(self._conn, sql.delete_extents(len(chunk)), (vm_id, map_name, owner, *chunk)).close()

    def _insert_extents(self, vm_id: str, map_name: str, owner: str, extents: list[Extent[Any]]) -> None:
        if extents:
            rows = [(vm_id, map_name, owner, e.start, e.end, str(e.value)) for e in extents]
            execute_many(self._conn, hot(self._conn).insert_extent, rows)


def _to_operation(row: Any) -> Operation:
    return Operation(
        id=row.id,
        vm_id=row.vm_id,
        kind=row.kind,
        status=OperationStatus(row.status),
        request=row.request,
        effects=row.effects,
        generation=row.generation,
        created_at=_utc(row.created_at),
        seq=row.seq,
        result=row.result,
        error=row.error,
        response_status=row.response_status,
        idempotency_key=row.idempotency_key,
        fingerprint=row.fingerprint,
        finished_at=_utc(row.finished_at) if row.finished_at else None,
    )


class SqlJournal:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        # VMs this transaction adds operations for: whose event streams its commit wakes.
        self.vm_ids: set[str] = set()

    def add(self, op: Operation) -> None:
        self.add_all([op])

    def add_all(self, ops: list[Operation]) -> None:
        """Journal a group's operations in order (their ``seq`` follows it), a few statements for all."""
        sql = hot(self._conn)
        js, dt = sql.js, sql.dt
        for chunk in _chunks(ops, _OPS_CHUNK):
            params: list[Any] = []
            for op in chunk:
                self.vm_ids.add(op.vm_id)
                params += (
                    op.id,
                    op.vm_id,
                    op.kind,
                    op.status.value,
                    js(op.request),
                    js(op.effects),
                    op.generation,
                    js(op.result),
                    js(op.error),
                    op.response_status,
                    op.idempotency_key,
                    op.fingerprint,
                    dt(op.created_at),
                    dt(op.finished_at),
                )
            try:
                cursor = execute(self._conn, sql.insert_ops(len(chunk)), params)
            except sql.integrity_error as exc:
                # Two requests with one key raced past the replay check (they lock different VMs).
                keys = ", ".join(repr(op.idempotency_key) for op in chunk if op.idempotency_key is not None)
                raise Conflict(f"Idempotency-Key {keys} is in use by a concurrent request; retry it") from exc
            seqs = dict(cursor.fetchall())
            cursor.close()
            for op in chunk:
                op.seq = int(seqs[op.id])

    def finish(
        self,
        op_id: str,
        status: OperationStatus,
        *,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        response_status: int | None,
    ) -> None:
        sql = hot(self._conn)
        params = (status.value, sql.js(result), sql.js(error), response_status, sql.dt(datetime.now(UTC)), op_id)
        execute(self._conn, sql.finish_op, params).close()

    def mark_applied(self, op_ids: list[str]) -> None:
        """Mark a group's operations applied; their result was written with them."""
        sql = hot(self._conn)
        for chunk in _chunks(op_ids):
            execute(self._conn, sql.mark_applied(len(chunk)), (sql.dt(datetime.now(UTC)), *chunk)).close()

    def discard(self, op_ids: list[str]) -> None:
        """Delete operations never applied nor answered (the rest of a group after a backend refusal)."""
        sql = hot(self._conn)
        for chunk in _chunks(op_ids):
            execute(self._conn, sql.discard_ops(len(chunk)), tuple(chunk)).close()

    def by_key(self, key: str) -> Operation | None:
        row = self._conn.execute(select(OperationRow).where(OperationRow.idempotency_key == key)).first()
        return _to_operation(row) if row is not None else None

    def pending(self) -> list[Operation]:
        rows = self._conn.execute(
            select(OperationRow).where(OperationRow.status == OperationStatus.PENDING.value).order_by(OperationRow.seq)
        )
        return [_to_operation(r) for r in rows]

    def after(self, after_seq: int, *, vm_id: str | None, limit: int) -> list[Operation]:
        """Operations after ``after_seq`` in journal order, of one VM or of all."""
        query = select(OperationRow).where(OperationRow.seq > after_seq)
        if vm_id is not None:
            query = query.where(OperationRow.vm_id == vm_id)
        return [_to_operation(r) for r in self._conn.execute(query.order_by(OperationRow.seq).limit(limit))]

    def by_id(self, op_id: str) -> Operation | None:
        row = self._conn.execute(select(OperationRow).where(OperationRow.id == op_id)).first()
        return _to_operation(row) if row is not None else None

    def last_seq(self) -> int:
        return int(self._conn.execute(select(func.coalesce(func.max(OperationRow.seq), 0))).scalar_one())

    def prune(self, keep: int) -> int:
        """Forget finished operations but the newest ``keep``; pending ones stay (they are replayed)."""
        cut = self.last_seq() - keep
        result = self._conn.execute(
            delete(OperationRow).where(OperationRow.seq <= cut, OperationRow.status != OperationStatus.PENDING.value)
        )
        return int(result.rowcount)

    def list(self, vm_id: str, *, after_seq: int, limit: int) -> list[Operation]:
        rows = self._conn.execute(
            select(OperationRow)
            .where(OperationRow.vm_id == vm_id, OperationRow.seq > after_seq)
            .order_by(OperationRow.seq)
            .limit(limit)
        )
        return [_to_operation(r) for r in rows]


class SqlFrameRuns:
    """The frame runs the backend reports, mirrored as rows (one per run of consecutive frames)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def apply(self, vm_id: str, changes: FrameChanges) -> None:
        # Driver SQL like the extents: this runs after every mutation that moved frames.
        sql = hot(self._conn)
        by_owner: dict[str, list[int]] = defaultdict(list)
        for run in changes.removed:
            by_owner[run.owner].append(run.start)
        for owner, starts in by_owner.items():
            for chunk in _chunks(sorted(starts)):
                execute(self._conn, sql.delete_frame_runs(len(chunk)), (vm_id, owner, *chunk)).close()
        if changes.added:
            rows = [(vm_id, r.owner, r.start, r.start + r.npages, r.pfn) for r in changes.added]
            execute_many(self._conn, sql.insert_frame_run, rows)

    def page(self, vm_id: str, *, after: tuple[str, int] | None, limit: int) -> list[FrameRun]:
        """Runs in (owner, start) order, after ``after``: a page of the VM's frame map."""
        query = select(FrameRunRow).where(FrameRunRow.vm_id == vm_id)
        if after is not None:
            query = query.where(tuple_(FrameRunRow.owner, FrameRunRow.start) > tuple_(*after))
        rows = self._conn.execute(query.order_by(FrameRunRow.owner, FrameRunRow.start).limit(limit))
        return [FrameRun(r.owner, r.start, r.end - r.start, r.pfn) for r in rows]

    def of_vm(self, vm_id: str) -> list[FrameRun]:
        rows = self._conn.execute(
            select(FrameRunRow).where(FrameRunRow.vm_id == vm_id).order_by(FrameRunRow.owner, FrameRunRow.start)
        )
        return [FrameRun(r.owner, r.start, r.end - r.start, r.pfn) for r in rows]

    def load_all(self) -> dict[str, list[FrameRun]]:
        runs: dict[str, list[FrameRun]] = defaultdict(list)
        for r in self._conn.execute(
            select(FrameRunRow).order_by(FrameRunRow.vm_id, FrameRunRow.owner, FrameRunRow.start)
        ):
            runs[r.vm_id].append(FrameRun(r.owner, r.start, r.end - r.start, r.pfn))
        return dict(runs)
