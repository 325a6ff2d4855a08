"""The host-wide stream on PostgreSQL, where journal rows may commit out of seq order."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from service.backends.sim import SimBackend
from service.domain.operation import Operation, OperationStatus
from service.operations import events
from service.operations.broker import Broker
from service.store.db import make_engine
from service.store.uow import SqlUnitOfWork

from ..api.sim_host import own_database


def _op(op_id: str) -> Operation:
    return Operation(
        id=op_id,
        vm_id=f"vm_{op_id}",
        kind="set-state",
        status=OperationStatus.APPLIED,
        request={"state": "running"},
        effects=[],
        generation=1,
        created_at=datetime.now(UTC),
        result={},
        response_status=200,
    )


def test_a_hole_in_seq_holds_the_stream_until_it_commits_or_the_grace_passes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # PostgreSQL only: SQLite runs one write transaction at a time, so its rows commit in seq order.
    engine = make_engine(own_database("postgresql", request, tmp_path_factory))
    broker = Broker(uow=lambda: SqlUnitOfWork(engine), backend=SimBackend())
    position = events.open_position(broker, None, None)

    # Two transactions: the first takes the lower seq but commits second.
    slow, fast = SqlUnitOfWork(engine), SqlUnitOfWork(engine)
    with slow as slow_uow, fast as fast_uow:
        slow_uow.journal.add(_op("op_slow"))
        fast_uow.journal.add(_op("op_fast"))
        fast_uow.commit()
        held = events.read_events(broker, position)
        assert held.events == []
        assert held.retry_in is not None
        slow_uow.commit()
    batch = events.read_events(broker, position)
    assert [e["id"] for e in batch.events] == ["op_slow", "op_fast"]

    # A rolled-back insert leaves a hole for good: the stream passes it once the grace is over.
    with SqlUnitOfWork(engine) as lost:
        lost.journal.add(_op("op_lost"))
    with SqlUnitOfWork(engine) as uow:
        uow.journal.add(_op("op_after"))
        uow.commit()
    assert events.read_events(broker, position).events == []
    time.sleep(events.GAP_GRACE_SECONDS)
    assert [e["id"] for e in events.read_events(broker, position).events] == ["op_after"]
    engine.dispose()
