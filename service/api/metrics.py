"""Prometheus metrics: HTTP requests, journalled operations, backend calls, and per-VM state.

What happens on every request is kept to a dictionary lookup and two increments (labelled children
are cached per route template and status). Per-VM gauges and the journal's pending count are read
when Prometheus scrapes, from the broker's cached aggregates, so mutations pay nothing for them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..backends.protocol import MemoryBackend
from ..operations.broker import Broker
from .problems import responses

access_log = logging.getLogger("gmem_broker.access")
NAMESPACE = "gmem_broker"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BACKEND_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)
UNMATCHED = "<unmatched>"


class Metrics:
    """One registry per app, so several apps in one process (the tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests", "HTTP requests by method, route template and status",
            ["method", "route", "status"], namespace=NAMESPACE, registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency by method, route template and status",
            ["method", "route", "status"], namespace=NAMESPACE, registry=self.registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.operations = Counter(
            "operations", "Journalled operations applied, by kind", ["kind"], namespace=NAMESPACE,
            registry=self.registry,
        )  # fmt: skip
        self.operation_pages = Counter(
            "operation_pages", "Pages allocated, freed, converted or migrated by applied operations, by kind",
            ["kind"], namespace=NAMESPACE, registry=self.registry,
        )  # fmt: skip
        self.backend_latency = Histogram(
            "backend_call_duration_seconds", "Backend call latency by call", ["call"], namespace=NAMESPACE,
            registry=self.registry, buckets=BACKEND_BUCKETS,
        )  # fmt: skip
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._operations: dict[str, tuple[Any, Any]] = {}

    def http_children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        children = self._http.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = self._http[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        return children

    def operations_applied(self, applied: list[tuple[str, dict[str, Any]]]) -> None:
        """Count a group's applied operations: one increment per kind and counter, not per operation."""
        counts: dict[str, list[int]] = {}
        for kind, body in applied:
            if kind == "migrate-page":  # one page, or a batch of single pages
                pages = len(body["moves"]) if body.get("moves") else 1
            else:
                pages = sum(v for k, v in body.items() if k.startswith("pages_") and isinstance(v, int))
            tally = counts.get(kind)
            if tally is None:
                counts[kind] = [1, pages]
            else:
                tally[0] += 1
                tally[1] += pages
        for kind, (n, pages) in counts.items():
            # Children looked up once per kind: ``labels()`` costs several µs.
            children = self._operations.get(kind)
            if children is None:
                children = self._operations[kind] = (self.operations.labels(kind), self.operation_pages.labels(kind))
            count, page_count = children
            count.inc(n)
            if pages:
                page_count.inc(pages)

    def watch(self, broker: Broker) -> None:
        """Count the broker's operations, time its backend, and read its VMs at scrape time."""
        broker.observers.append(self.operations_applied)
        broker.backend = cast(MemoryBackend, TimedBackend(broker.backend, self.backend_latency))
        self.registry.register(BrokerCollector(broker))


class HttpMetricsMiddleware:
    """Counts and times each request under its route template (``/v1/vms/{vm_id}``), not its path.

    With ``access_log`` it also logs one record per request (GMEM_BROKER_ACCESS_LOG), from the same
    observation: method, path, route, status, duration and principal (never the token).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._documented: list[tuple[re.Pattern[str], frozenset[str], str]] | None = None

    def _template(self, scope: Scope) -> str:
        """The route template that served the request; for one refused before routing (401, 403, 413),
        the documented operation it was meant for; ``<unmatched>`` when there is none."""
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", UNMATCHED))
        if self._documented is None:
            openapi = getattr(scope.get("app"), "openapi", None)
            paths: dict[str, dict[str, Any]] = openapi()["paths"] if callable(openapi) else {}
            self._documented = [(_template_pattern(path), frozenset(ops), path) for path, ops in paths.items()]
        method = scope["method"].lower()
        for pattern, methods, path in self._documented:
            if method in methods and pattern.fullmatch(scope["path"]):
                return path
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            template = self._template(scope)
            count, latency = self.metrics.http_children(scope["method"], template, status)
            count.inc()
            latency.observe(elapsed)
            if self.access_log:
                _log_access(scope, template, status, elapsed)


def _template_pattern(template: str) -> re.Pattern[str]:
    """``/v1/vms/{vm_id}/convert`` -> a pattern for its paths: each ``{param}`` one path segment."""
    return re.compile("/".join("[^/]+" if seg.startswith("{") else re.escape(seg) for seg in template.split("/")))


def _log_access(scope: Scope, route: str, status: int, elapsed: float) -> None:
    principal = scope.get("state", {}).get("principal")
    fields = {
        "method": scope["method"],
        "path": scope["path"],
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
        "principal": getattr(principal, "name", None),
    }
    access_log.info("%s %s %d %.3fms", scope["method"], scope["path"], status, elapsed * 1000, extra=fields)


class TimedBackend:
    """Wraps a backend so each call's latency lands in a histogram labelled with the call's name."""

    def __init__(self, inner: MemoryBackend, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram

    @property
    def wrapped(self) -> MemoryBackend:
        """The backend being timed (tests reach the sim's or the kernel's own hooks through it)."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        observe = self._histogram.labels(name).observe

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                observe(time.perf_counter() - start)

        # Cached on the instance: later lookups find it without coming back here.
        setattr(self, name, timed)
        return timed


VM_GAUGES = (
    ("private_pages", "Guest pages whose attribute is private"),
    ("shared_pages", "Guest pages whose attribute is shared"),
    ("allocated_private_pages", "Allocated pages of the VM's guest_memfds (private backing)"),
    ("allocated_shared_pages", "Allocated pages of the VM's shared backing"),
    ("extents", "Extents held for the VM (attribute, shared backing and memfd population maps)"),
)
PENDING, PENDING_DOC = f"{NAMESPACE}_journal_pending_operations", "Journalled operations not yet applied"
AWAITING, AWAITING_DOC = f"{NAMESPACE}_vms_awaiting_replay", "VMs with an operation to replay before the next mutation"


class BrokerCollector(Collector):
    """Per-VM gauges and the journal's pending count, computed when scraped."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not read the database or take VM locks.
        yield from self._vm_families().values()
        yield GaugeMetricFamily(PENDING, PENDING_DOC)
        yield GaugeMetricFamily(AWAITING, AWAITING_DOC)

    def _vm_families(self) -> dict[str, GaugeMetricFamily]:
        return {
            key: GaugeMetricFamily(f"{NAMESPACE}_vm_{key}", doc, labels=["vm_id", "vm_name"]) for key, doc in VM_GAUGES
        }

    def collect(self) -> Iterator[Metric]:
        families = self._vm_families()
        for vm in self.broker.vms():
            # The VM's lock keeps a concurrent mutation from changing the extent maps mid-count.
            with self.broker.locked(vm.id):
                counts = vm.counts()
            for key, family in families.items():
                family.add_metric([vm.id, vm.name], counts[key])
        yield from families.values()
        with self.broker.uow() as uow:
            pending = len(uow.journal.pending())
        yield GaugeMetricFamily(PENDING, PENDING_DOC, value=pending)
        yield GaugeMetricFamily(AWAITING, AWAITING_DOC, value=len(self.broker.needs_replay))


router = APIRouter()


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
    responses=responses(),
)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
