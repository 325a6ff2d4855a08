"""Pure ASGI middleware: request ids, and the request-body limit (metrics: ``metrics.py``; tokens: ``auth.py``).

Pure ASGI rather than BaseHTTPMiddleware: each layer here costs a function call and a closure per
request, not a task and a stream copy, which matters on the single-range convert path.
"""

from __future__ import annotations

import itertools
import json
import os
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import request_id_var
from .problems import PROBLEM_JSON, problem_body

_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Made ids are a random per-process prefix and a counter: unique like uuid4, at a tenth of its cost.
_PREFIX = os.urandom(6).hex()
_SERIAL = itertools.count(1)


def made_request_id() -> str:
    return f"{_PREFIX}{next(_SERIAL):020x}"


class RequestIdMiddleware:
    """Takes X-Request-ID (or makes one), returns it as a header, and puts it in every log record."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                supplied = value.decode("latin-1")
                request_id = supplied if _SAFE.match(supplied) else None
                break
        if request_id is None:
            request_id = made_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


async def send_problem(
    scope: Scope, send: Send, code: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with a problem document from middleware, where there is no Request object."""
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps(problem_body(code, detail, instance=scope["path"], request_id=request_id)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": json.loads(body)["status"],
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 before any route sees them.

    A declared Content-Length over the limit is refused before the body is read; a chunked body is
    counted as it arrives, and the route reading it gets the 413 when the count passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await send_problem(scope, send, "payload-too-large", self._detail(value.decode("latin-1")))
                    return
                # A declared length is enforced by the server (h11/httptools), so no counting is needed.
                await self.app(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self._detail(f"more than {received}"))
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self, size: str) -> str:
        return f"request body of {size} bytes; the limit is {self.max_bytes} bytes"
