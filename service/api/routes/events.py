"""Server-sent events: the journal as a stream, per VM and host-wide."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...operations import events
from ...operations.broker import Broker
from ..deps import BrokerDep
from ..problems import responses

router = APIRouter(tags=["events"])

# An idle stream wakes this often only to send a comment, which also notices a client gone away.
KEEPALIVE_SECONDS = 15.0
# Under a stream of commits a stream reads the journal at most this often, taking what piled up in
# one read: its cost stays bounded however fast other VMs mutate.
MIN_READ_INTERVAL = 0.05
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "one event per applied operation"}
}
DESCRIPTION = (
    "Each applied operation (allocate, convert, punch-hole, migrate, memslot and memfd changes, VM state) is one "
    "event: `id` is the operation id, `event` its kind, `data` JSON with `generation` and the `ranges` it "
    "touched (gpa/offset and size in bytes). Without `Last-Event-ID` the stream starts at the journal's end; "
    "with it, right after that event, in journal order, each event once. An id no longer in the retained "
    "journal gets 410 `events-expired`: re-read the extent map and subscribe afresh."
)

LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)]
LastEventQuery = Annotated[
    str | None, Query(max_length=64, description="same as the Last-Event-ID header, for clients that cannot set it")
]


def _frame(event: dict[str, Any]) -> str:
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def _stream(request: Request, broker: Broker, position: events.StreamPosition) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    with broker.events.subscription(position.vm_id) as sub:
        yield "retry: 2000\n\n"
        last_read = -MIN_READ_INTERVAL
        while True:
            pause = last_read + MIN_READ_INTERVAL - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            # Both before reading: a commit during the read, even one finishing an operation the
            # read finds pending, wakes the next wait.
            sub.event.clear()
            sub.at_pending = True
            last_read = loop.time()
            batch = await run_in_threadpool(events.read_events, broker, position)
            sub.at_pending = batch.at_pending
            for event in batch.events:
                yield _frame(event)
            if position.ended:
                return
            if batch.more:
                continue
            try:
                await asyncio.wait_for(sub.event.wait(), timeout=batch.retry_in or KEEPALIVE_SECONDS)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                if batch.retry_in is None:
                    yield ": keep-alive\n\n"


def _open(
    request: Request, broker: Broker, vm_id: str | None, header: str | None, query: str | None
) -> StreamingResponse:
    position = events.open_position(broker, vm_id, header or query)
    return StreamingResponse(
        _stream(request, broker, position),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/v1/vms/{vm_id}/events",
    response_class=StreamingResponse,
    summary="The VM's journal as server-sent events",
    description=DESCRIPTION + " The stream ends after the VM's delete-vm event.",
    responses={**SSE, **responses("not-found", "events-expired")},
)
def vm_events(
    vm_id: str, request: Request, broker: BrokerDep, last_event_id: LastEventId = None, after: LastEventQuery = None
) -> StreamingResponse:
    return _open(request, broker, vm_id, last_event_id, after)


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    summary="Every VM's journal as server-sent events",
    description=DESCRIPTION,
    responses={**SSE, **responses("events-expired")},
)
def host_events(
    request: Request, broker: BrokerDep, last_event_id: LastEventId = None, after: LastEventQuery = None
) -> StreamingResponse:
    return _open(request, broker, None, last_event_id, after)
