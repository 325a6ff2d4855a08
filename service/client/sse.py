"""Server-sent events as the broker streams its journal: ``id``, ``event`` (the operation's kind), ``data`` (JSON)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .models import Event


class _Parser:
    """Lines in, events out (WHATWG event-stream rules for the fields the broker sends)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._kind: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._kind = None
                return None
            data: Any = json.loads("\n".join(self._data))
            event = Event(id=self._id or "", kind=self._kind or "message", data=data)
            self._kind, self._data = None, []
            return event
        if line.startswith(":"):
            return None  # a comment: the keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self._id = value
        elif name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        return None


def parse(lines: Iterator[str]) -> Iterator[Event]:
    parser = _Parser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


async def aparse(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    parser = _Parser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


def events_path(vm_id: str | None) -> str:
    return f"/v1/vms/{vm_id}/events" if vm_id is not None else "/v1/events"


def events_headers(last_event_id: str | None) -> dict[str, str]:
    return {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
