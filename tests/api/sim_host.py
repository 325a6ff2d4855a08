"""A service with a sim backend the test holds, on a database of its own, and page helpers."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from service.backends.protocol import FrameRun
from service.backends.sim import SimBackend
from service.operations.broker import Broker
from service.store.migrate import upgrade

from ..conftest import RunningServer, _fresh_database, make_app
from .helpers import ok


class SimHost:
    def __init__(self, server: RunningServer, sim: SimBackend, client: httpx.Client) -> None:
        self.server = server
        self.sim = sim
        self.client = client

    @property
    def broker(self) -> Broker:
        broker: Broker = self.server.app.state.broker
        return broker

    def frame_rows(self, vm_id: str) -> list[FrameRun]:
        with self.broker.uow() as uow:
            return uow.frames.of_vm(vm_id)

    def nodes(self) -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = ok(self.client.get("/v1/host"))["numa_nodes"]
        return nodes

    def read(self, vm_id: str, gpa: int, view: str = "guest") -> dict[str, Any]:
        return ok(self.client.get(f"/v1/vms/{vm_id}/gfns/{gpa >> 12}", params={"view": view}))

    def data(self, vm_id: str, gpa: int, view: str = "guest") -> bytes:
        return base64.b64decode(self.read(vm_id, gpa, view)["data"])

    def write(self, vm_id: str, gpa: int, data: bytes, *, offset: int = 0, view: str = "guest") -> dict[str, Any]:
        body = {"data": base64.b64encode(data).decode(), "offset": offset}
        return ok(self.client.put(f"/v1/vms/{vm_id}/gfns/{gpa >> 12}", params={"view": view}, json=body))


@contextmanager
def sim_host(url: str, **sim: int) -> Iterator[SimHost]:
    backend = SimBackend(**sim)
    with RunningServer(make_app(url, backend)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield SimHost(server, backend, client)


def own_database(db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database no other server writes to (their start-up would restore our VMs)."""
    url = _fresh_database(db_kind, request, tmp_path_factory)
    upgrade(url)
    return url


def unique(prefix: str) -> bytes:
    return f"{prefix}-{uuid.uuid4().hex}".encode()
