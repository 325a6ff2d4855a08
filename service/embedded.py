"""A broker inside this process: uvicorn in a thread on a free loopback port.

The demo runs against one when no ``--url`` is given, and the tests start theirs the same way.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from .app import create_app
from .backends.sim import SimBackend
from .settings import Settings
from .store.migrate import upgrade


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A real uvicorn server in a daemon thread, on a loopback port or a Unix socket (``unix:///path``)."""

    def __init__(self, app: FastAPI, *, uds: str | None = None) -> None:
        self.app = app
        self.port = 0 if uds else free_port()
        self.url = f"unix://{uds}" if uds else f"http://127.0.0.1:{self.port}"
        where = {"uds": uds} if uds else {"host": "127.0.0.1", "port": self.port}
        config = uvicorn.Config(app, log_level="warning", access_log=False, **where)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextmanager
def embedded_broker() -> Iterator[str]:
    """A fresh broker (temporary SQLite file, sim backend) for the block; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="gmem-broker-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'broker.db'}"
        upgrade(url)
        app = create_app(Settings(database_url=url), backend=SimBackend())
        with ServerThread(app) as running:
            yield running.url
        app.state.engine.dispose()
