"""Fixtures for the kvm backend: real /dev/kvm, and a sim twin to compare answers with.

These tests run wherever /dev/kvm exists (CI's machines have it) and skip, saying so, only where
it does not. A /dev/kvm that exists but cannot be used is a failure, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.backends.kvm.backend import KvmBackend
from service.backends.protocol import MemoryBackend
from service.backends.sim import SimBackend
from service.settings import Settings
from service.store.migrate import upgrade

from ..conftest import RunningServer

KVM_DEVICE = "/dev/kvm"
BACKENDS = ["sim", "kvm"]


def require_kvm() -> None:
    if not os.path.exists(KVM_DEVICE):
        pytest.skip(f"kvm backend tests skipped: {KVM_DEVICE} does not exist on this machine")


@pytest.fixture
def kvm() -> Iterator[KvmBackend]:
    require_kvm()
    backend = KvmBackend(KVM_DEVICE)
    yield backend
    backend.close()


def new_backend(kind: str) -> MemoryBackend:
    if kind == "kvm":
        require_kvm()
        return KvmBackend(KVM_DEVICE)
    return SimBackend()


def broker_app(db_url: str, backend: MemoryBackend, socket_path: Path, **settings: object) -> FastAPI:
    backend_name = "kvm" if isinstance(backend, KvmBackend) else "sim"
    config = Settings(
        database_url=db_url,
        backend=backend_name,
        handoff_socket=str(socket_path),
        **settings,  # type: ignore[arg-type]
    )
    return create_app(config, backend=backend)


def migrated_sqlite(directory: Path) -> str:
    url = f"sqlite:///{directory / 'broker.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningServer]]:
    """One broker per backend, each on its own SQLite file, for the same-answer tests."""
    require_kvm()
    running: dict[str, RunningServer] = {}
    try:
        for kind in BACKENDS:
            directory = tmp_path_factory.mktemp(f"broker-{kind}")
            app = broker_app(migrated_sqlite(directory), new_backend(kind), directory / "handoff.sock")
            running[kind] = RunningServer(app).__enter__()
        yield running
    finally:
        for server in running.values():
            server.__exit__(None, None, None)


@pytest.fixture
def clients(servers: dict[str, RunningServer]) -> Iterator[dict[str, httpx.Client]]:
    out = {kind: httpx.Client(base_url=s.url, timeout=60) for kind, s in servers.items()}
    yield out
    for c in out.values():
        c.close()


@pytest.fixture
def kvm_client(clients: dict[str, httpx.Client]) -> httpx.Client:
    return clients["kvm"]


@pytest.fixture
def kvm_server(servers: dict[str, RunningServer]) -> RunningServer:
    return servers["kvm"]
