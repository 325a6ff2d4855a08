"""What the sync and async clients share: where to connect, headers, and when to try again.

A mutation carries an ``Idempotency-Key`` made once per call and sent unchanged on every retry: if
the broker applied the first attempt but the answer was lost, the retry gets the stored answer
instead of applying the change twice.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from .calls import Call
from .errors import ProblemError

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "GMEM_BROKER_URL"
TOKEN_ENV = "GMEM_BROKER_TOKEN"
T = TypeVar("T")

# 503: replay-pending or not-ready; 502/504 from a proxy in front that could not reach the broker. A
# retry with the same key is safe for every one of them. The broker's own 502 (backend-error) is a
# refusal that changed nothing and would only be replayed: it is not retried.
RETRY_STATUSES = frozenset({502, 503, 504})
PROBLEM_JSON = "application/problem+json"
# Failures after which the request may or may not have reached the broker (not, say, a bad URL).
RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


UNIX_SCHEME = "unix://"
# The Host header a request over a Unix socket carries; the socket, not the name, picks the broker.
UNIX_BASE = "http://gmem-broker"


@dataclass(frozen=True, slots=True)
class Options:
    url: str
    token: str | None
    timeout: float
    retries: int
    backoff: float

    @classmethod
    def resolve(cls, url: str | None, token: str | None, *, timeout: float, retries: int, backoff: float) -> Options:
        """Arguments first, then ``GMEM_BROKER_URL`` / ``GMEM_BROKER_TOKEN``, then the default URL."""
        if retries < 0:
            raise ValueError("retries must be >= 0")
        return cls(
            url=(url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/"),
            token=token if token is not None else os.environ.get(TOKEN_ENV) or None,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )

    @property
    def uds(self) -> str | None:
        """The socket path of a ``unix:///path`` URL (``serve --uds``), else None."""
        return self.url.removeprefix(UNIX_SCHEME) if self.url.startswith(UNIX_SCHEME) else None

    def client_kwargs(self) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        base_url = UNIX_BASE if self.uds else self.url
        return {"base_url": base_url, "timeout": self.timeout, "headers": headers}

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...): exponential backoff."""
        return float(self.backoff * (2 ** (attempt - 1)))


def request_headers(call: Call[Any], idempotency_key: str | None, if_match: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if call.mutating:
        headers["Idempotency-Key"] = idempotency_key or f"gmemc-{uuid.uuid4().hex}"
    if if_match is not None:
        headers["If-Match"] = if_match
    return headers


def request_kwargs(call: Call[Any], headers: dict[str, str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"params": dict(call.params), "headers": headers}
    if call.json is not None:
        kwargs["json"] = call.json
    return kwargs


def should_retry(response: httpx.Response) -> bool:
    if response.status_code == 502 and response.headers.get("content-type", "").startswith(PROBLEM_JSON):
        return False
    return response.status_code in RETRY_STATUSES


def decode(call: Call[T], response: httpx.Response) -> T:
    if response.is_error:
        raise ProblemError.from_response(response)
    return call.decode(response.text if call.text else response.json())
