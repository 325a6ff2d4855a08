"""Fetch a memfd's fd from the broker's Unix socket with an export ticket (SCM_RIGHTS).

Wire format, one exchange per connection: the client sends ``REDEEM <ticket>\\n``; the broker
answers ``OK <json>\\n`` carrying the fd as ancillary data, or ``ERR <json>\\n`` without one.
The fd received is good for fallocate and mmap (VM ioctls work only in the broker, DESIGN rule 6).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 4096


class HandoffRefused(Exception):
    """The broker refused the ticket; ``code`` is ``ticket-unknown``, ``ticket-used``, ``ticket-expired``..."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class Memfd:
    """A received memfd: the caller owns ``fd`` and closes it (or uses this as a context manager)."""

    fd: int
    size: int
    flags: list[str]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Memfd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode(kind: str, body: dict[str, Any]) -> bytes:
    return f"{kind} {json.dumps(body)}\n".encode()


def fetch_memfd(socket_path: str, ticket: str, *, timeout: float = 10.0) -> Memfd:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(f"REDEEM {ticket}\n".encode())
        message, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
    kind, _, payload = message.decode().rstrip("\n").partition(" ")
    if kind != "OK":
        for fd in fds:
            os.close(fd)
        body = json.loads(payload) if payload.startswith("{") else {"code": "protocol", "detail": message.decode()}
        raise HandoffRefused(body.get("code", "refused"), body.get("detail", ""))
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise HandoffRefused("protocol", f"expected one fd with the answer, got {len(fds)}")
    body = json.loads(payload)
    return Memfd(fds[0], int(body["size"]), list(body["flags"]))
