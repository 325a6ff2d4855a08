"""The FastAPI application factory: wiring only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine

from . import __version__
from .api import problems
from .api.middleware import RequestIdMiddleware
from .api.routes import events, memfds, memory, memslots, migration, system, vms
from .backends.factory import make_backend
from .backends.protocol import MemoryBackend
from .operations.broker import Broker
from .operations.events import EventHub
from .operations.recovery import recover
from .settings import Settings
from .store.db import make_engine
from .store.migrate import schema_status
from .store.uow import SqlUnitOfWork

TAGS = [
    {"name": "vms", "description": "Guests: lifecycle, generation and ETag."},
    {"name": "memfds", "description": "guest_memfds: create, allocate, punch-hole, extents."},
    {"name": "memslots", "description": "Bindings of gpa ranges to memfd offsets."},
    {"name": "memory", "description": "Private/shared conversion, the VM's extent map, the journal."},
    {"name": "migration", "description": "migrate-page, and the guest's and the host's view of a page."},
    {"name": "events", "description": "The journal as server-sent events, per VM and host-wide."},
    {"name": "host", "description": "The backend and what the kernel offers."},
    {"name": "health", "description": "Liveness and readiness."},
    {"name": "problems", "description": "RFC 9457 problem types."},
]


def _operation_id(route: APIRoute) -> str:
    return route.name


class SchemaMismatch(RuntimeError):
    pass


def create_app(
    settings: Settings | None = None, *, backend: MemoryBackend | None = None, engine: Engine | None = None
) -> FastAPI:
    settings = settings or Settings()
    engine = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
    backend = backend or make_backend(settings)
    hub = EventHub()
    broker = Broker(
        uow=lambda: SqlUnitOfWork(engine, on_commit=hub.notify),
        backend=backend,
        max_batch=settings.max_batch,
        events=hub,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        status = schema_status(engine, settings.database_url)
        if not status.ok:
            raise SchemaMismatch(status.problem())
        recover(broker)
        yield
        backend.close()

    app = FastAPI(
        title="gmem-broker",
        version=__version__,
        summary="Control plane for confidential-VM private memory (guest_memfd)",
        openapi_tags=TAGS,
        generate_unique_id_function=_operation_id,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.broker = broker
    for module in (vms, memfds, memslots, memory, migration, events, system):
        app.include_router(module.router)
    problems.install(app)
    app.add_middleware(RequestIdMiddleware)
    return app
