"""The blocking client: ``BrokerClient``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Self, TypeVar

import httpx

from . import models as m
from . import sse
from .calls import Call
from .errors import ProblemError
from .operations import Operations
from .retry import RETRY_ERRORS, Options, decode, request_headers, request_kwargs, should_retry

T = TypeVar("T")


class BrokerClient(Operations):
    """``BrokerClient(url, token)``: ``url`` (``http://host:port`` or ``unix:///socket``) defaults to
    ``GMEM_BROKER_URL``, ``token`` to ``GMEM_BROKER_TOKEN``.

    One method per operation (see ``Operations``). Each raises ``ProblemError`` when the broker
    refuses, and ``httpx.TransportError`` when it cannot be reached after the retries.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.options = Options.resolve(url, token, timeout=timeout, retries=retries, backoff=backoff)
        uds = self.options.uds
        if transport is None and uds is not None:
            transport = httpx.HTTPTransport(uds=uds)
        self._http = httpx.Client(transport=transport, **self.options.client_kwargs())

    def send(self, call: Call[T], *, idempotency_key: str | None = None, if_match: str | None = None) -> T:
        """Send ``call``, retrying lost answers and 502/503/504 with the same Idempotency-Key."""
        kwargs = request_kwargs(call, request_headers(call, idempotency_key, if_match))
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **kwargs)
            except RETRY_ERRORS:
                if attempt >= self.options.retries:
                    raise
            else:
                if attempt >= self.options.retries or not should_retry(response):
                    return decode(call, response)
            attempt += 1
            time.sleep(self.options.delay(attempt))

    def all_vm_extents(self, vm_id: str, start: int = 0, end: int | None = None) -> list[m.VmExtent]:
        """Every extent of ``[start, end)``, following ``next_cursor``."""
        items: list[m.VmExtent] = []
        cursor: str | None = None
        while True:
            page = self.vm_extents(vm_id, start=start, end=end, limit=10_000, cursor=cursor)
            items += page.items
            if (cursor := page.next_cursor) is None:
                return items

    def all_operations(self, vm_id: str) -> list[m.Operation]:
        """The whole journal of a VM, oldest first."""
        items: list[m.Operation] = []
        cursor: str | None = None
        while True:
            page = self.operations(vm_id, limit=1000, cursor=cursor)
            items += page.items
            if (cursor := page.next_cursor) is None:
                return items

    def vm_events(self, vm_id: str, last_event_id: str | None = None) -> Iterator[m.Event]:
        """The VM's journal as it happens, from after ``last_event_id`` (or now); ends after its deletion."""
        return self._events(vm_id, last_event_id)

    def host_events(self, last_event_id: str | None = None) -> Iterator[m.Event]:
        """Every VM's journal as it happens, from after ``last_event_id`` (or now)."""
        return self._events(None, last_event_id)

    def _events(self, vm_id: str | None, last_event_id: str | None) -> Iterator[m.Event]:
        headers = {**self._http.headers, **sse.events_headers(last_event_id)}
        with self._http.stream("GET", sse.events_path(vm_id), headers=headers, timeout=None) as response:
            if response.is_error:
                response.read()
                raise ProblemError.from_response(response)
            yield from sse.parse(response.iter_lines())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
