"""A broker for the client and CLI tests: a real uvicorn server on a SQLite file, sim backend.

The client does not care which database the server uses, so these tests run on SQLite only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI

from service.backends.sim import SimBackend
from service.client import BrokerClient
from service.store.migrate import upgrade

from ..conftest import RunningServer, make_app


@dataclass
class Broker:
    url: str
    app: FastAPI
    backend: SimBackend


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    url = f"sqlite:///{tmp_path_factory.mktemp('client') / 'broker.db'}"
    upgrade(url)
    backend = SimBackend()
    app = make_app(url, backend)
    with RunningServer(app) as running:
        yield Broker(running.url, app, backend)


@pytest.fixture
def api(broker: Broker) -> Iterator[BrokerClient]:
    with BrokerClient(broker.url, token="", retries=0) as c:
        yield c
