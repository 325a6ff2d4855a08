"""Fixtures: real databases (a SQLite file, a throwaway PostgreSQL cluster) and the real service.

Every test that takes ``db_url`` or ``client`` runs once per database. The service is a real
uvicorn server on a loopback port, spoken to over HTTP with httpx.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.backends.sim import SimBackend
from service.embedded import ServerThread
from service.embedded import free_port as free_port
from service.settings import Settings
from service.store.migrate import upgrade

from . import pgcluster
from .pgcluster import ThrowawayCluster

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayCluster | str]:
    """A PostgreSQL server: GMEM_BROKER_TEST_POSTGRES_URL, or a throwaway cluster started here."""
    external = os.environ.get("GMEM_BROKER_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    reason = pgcluster.pytest_skip_reason()
    if reason is not None:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    with ThrowawayCluster() as cluster:
        yield cluster


def _fresh_database(kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'broker.db'}"
    cluster: ThrowawayCluster | str = request.getfixturevalue("pg_cluster")
    if isinstance(cluster, str):
        return _external_database(cluster)
    return cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")


def _external_database(url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session", params=DATABASES)
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def db_url(db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database shared by the session's tests (each test makes its own VMs)."""
    url = _fresh_database(db_kind, request, tmp_path_factory)
    upgrade(url)
    return url


@pytest.fixture
def fresh_db_url(db_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database of this test's own, for restarts and whole-host checks."""
    url = _fresh_database(db_kind, request, tmp_path_factory)
    upgrade(url)
    return url


# The test server is the embedded one the demo uses: uvicorn in a thread on a free loopback port.
RunningServer = ServerThread


def make_app(url: str, backend: SimBackend | None = None, **settings: object) -> FastAPI:
    return create_app(Settings(database_url=url, **settings), backend=backend or SimBackend())  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server(db_url: str) -> Iterator[RunningServer]:
    with RunningServer(make_app(db_url)) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
