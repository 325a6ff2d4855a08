"""The FastAPI application factory: wiring only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine

from . import __version__
from .api import auth, metrics, problems
from .api.deps import Handoff
from .api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from .api.routes import events, memfds, memory, memslots, migration, system, vms
from .backends.factory import make_backend
from .backends.protocol import MemoryBackend
from .gc_policy import settle_for_serving
from .handoff_server import HandoffServer
from .operations.broker import Broker
from .operations.events import EventHub
from .operations.handoff import Tickets
from .operations.recovery import recover
from .settings import Settings
from .store.checkpointer import WalCheckpointer
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
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics (no token needed)."},
    {"name": "problems", "description": "RFC 9457 problem types."},
]


def _operation_id(route: APIRoute) -> str:
    return route.name


class SchemaMismatch(RuntimeError):
    pass


def create_app(
    settings: Settings | None = None,
    *,
    backend: MemoryBackend | None = None,
    engine: Engine | None = None,
    serving: bool = False,
) -> FastAPI:
    """The app; ``serving`` when it is the process's only app (``gmem-broker serve``), which tunes the GC."""
    settings = settings or Settings()
    engine = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
    backend = backend or make_backend(settings)
    # Absolute, because the path is told to clients that may run in another directory.
    handoff = Handoff(Tickets(settings.handoff_ticket_seconds), os.path.abspath(settings.handoff_socket))
    hub = EventHub()
    checkpointer = WalCheckpointer.for_url(engine.url)

    def on_commit(vm_ids: frozenset[str]) -> None:
        hub.notify(vm_ids)
        if checkpointer is not None:
            checkpointer.nudge()

    broker = Broker(
        uow=lambda: SqlUnitOfWork(engine, on_commit=on_commit),
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
        if checkpointer is not None:
            checkpointer.start()
        # Only a backend with real fds has something to hand off (the sim answers export with 501).
        listener = None
        if backend.host_info().details.get("fd_handoff"):
            listener = HandoffServer(broker, handoff.tickets, handoff.path)
            listener.start()
        if serving:
            settle_for_serving()
        yield
        if listener is not None:
            listener.stop()
        if checkpointer is not None:
            checkpointer.stop()
        backend.close()

    tokens = auth.load_tokens(settings)
    # The docs console's Swagger UI and ReDoc assets come from the fastapi-offline package, not a CDN.
    app = FastAPIOffline(
        title="gmem-broker",
        version=__version__,
        summary="Control plane for confidential-VM private memory (guest_memfd)",
        openapi_tags=TAGS,
        generate_unique_id_function=_operation_id,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.broker = broker
    app.state.checkpointer = checkpointer
    app.state.handoff = handoff
    app.state.metrics = observed = metrics.Metrics()
    observed.watch(broker)
    for module in (memory, vms, memfds, memslots, migration, events, system, metrics):
        app.include_router(module.router)
    problems.install(app)
    # Middleware added last runs first: request id, metrics (and access log), the token check, the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    auth.install(app, tokens)
    app.add_middleware(metrics.HttpMetricsMiddleware, metrics=observed, access_log=settings.access_log)
    app.add_middleware(RequestIdMiddleware)
    return app
