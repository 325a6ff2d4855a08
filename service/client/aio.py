"""The asyncio client: ``AsyncBrokerClient``, the same methods as ``BrokerClient``, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Self, TypeVar

import httpx

from . import models as m
from . import sse
from .calls import Call
from .errors import ProblemError
from .operations import Operations
from .retry import RETRY_ERRORS, Options, decode, request_headers, request_kwargs, should_retry

T = TypeVar("T")


class AsyncBrokerClient(Operations):
    """``AsyncBrokerClient(url, token)``: ``await client.create_vm(...)``; errors as ``BrokerClient``'s."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = Options.resolve(url, token, timeout=timeout, retries=retries, backoff=backoff)
        uds = self.options.uds
        if transport is None and uds is not None:
            transport = httpx.AsyncHTTPTransport(uds=uds)
        self._http = httpx.AsyncClient(transport=transport, **self.options.client_kwargs())

    async def send(self, call: Call[T], *, idempotency_key: str | None = None, if_match: str | None = None) -> T:
        """Send ``call``, retrying lost answers and 502/503/504 with the same Idempotency-Key."""
        kwargs = request_kwargs(call, request_headers(call, idempotency_key, if_match))
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **kwargs)
            except RETRY_ERRORS:
                if attempt >= self.options.retries:
                    raise
            else:
                if attempt >= self.options.retries or not should_retry(response):
                    return decode(call, response)
            attempt += 1
            await asyncio.sleep(self.options.delay(attempt))

    def vm_events(self, vm_id: str, last_event_id: str | None = None) -> AsyncIterator[m.Event]:
        """The VM's journal as it happens, from after ``last_event_id`` (or now); ends after its deletion."""
        return self._events(vm_id, last_event_id)

    def host_events(self, last_event_id: str | None = None) -> AsyncIterator[m.Event]:
        """Every VM's journal as it happens, from after ``last_event_id`` (or now)."""
        return self._events(None, last_event_id)

    async def _events(self, vm_id: str | None, last_event_id: str | None) -> AsyncIterator[m.Event]:
        headers = {**self._http.headers, **sse.events_headers(last_event_id)}
        async with self._http.stream("GET", sse.events_path(vm_id), headers=headers, timeout=None) as response:
            if response.is_error:
                await response.aread()
                raise ProblemError.from_response(response)
            async for event in sse.aparse(response.aiter_lines()):
                yield event

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
