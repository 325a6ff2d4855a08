"""The asyncio client: ``AsyncBrokerClient``, the same methods as ``BrokerClient``, awaited."""

from __future__ import annotations

import asyncio
from typing import Self, TypeVar

import httpx

from .calls import Call
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

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
