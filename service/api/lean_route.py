"""A route class whose well-formed JSON requests skip FastAPI's general parameter machinery.

FastAPI answers every request by solving the endpoint's dependency graph: each parameter kind is
walked, the body is parsed with ``json.loads`` after its media type is read through the ``email``
package, then validated as a Python object. On the single-range convert path that costs more than
the mutation's own work in the domain (measured with cProfile: about 60 µs of the ~210 µs a convert
spends in the HTTP layer). Mutation endpoints here all have one shape: ``str`` path parameters, one
pydantic body, and dependencies that read only the request. For that shape this route validates
the raw body with ``model_validate_json`` and calls the endpoint directly.

Only the happy path is taken here. Anything else (another media type, an empty body, a body the
model refuses, an endpoint of another shape, an app with dependency overrides) goes to FastAPI's
own handler, so every error a client can see (422 documents, their ``loc``, the JSON decode
error's position) is FastAPI's, byte for byte. The OpenAPI document is untouched: it is built
from the route's declaration.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
JSON = b"application/json"


class LeanRoute(APIRoute):
    """An :class:`APIRoute` with a direct path for well-formed JSON bodies of mutation endpoints."""

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        plan = direct_plan(self)
        if plan is None:
            return full
        endpoint, body_name, model, path_names, dependencies = plan

        async def handler(request: Request) -> Response:
            if getattr(request.app, "dependency_overrides", None):
                return await full(request)  # only FastAPI's handler knows how to apply them
            for name, value in request.scope["headers"]:
                if name == b"content-type":
                    if value.lower() != JSON:
                        return await full(request)
                    break
            else:
                return await full(request)
            raw = await request.body()
            try:
                body = model.model_validate_json(raw)
            except ValidationError:
                return await full(request)  # FastAPI words the error, from the body it has cached
            params = request.path_params
            values: dict[str, Any] = {name: params[name] for name in path_names}
            for name, call in dependencies:
                values[name] = await call(request)
            values[body_name] = body
            response: Response = await endpoint(**values)
            return response

        return handler


Plan = tuple[
    Callable[..., Awaitable[Response]],
    str,
    type[BaseModel],
    list[str],
    list[tuple[str, Callable[[Request], Awaitable[Any]]]],
]


def direct_plan(route: APIRoute) -> Plan | None:
    """What the direct path needs, or None where the endpoint is not of the shape it handles."""
    d = route.dependant
    endpoint = d.call
    if endpoint is None or not inspect.iscoroutinefunction(endpoint):
        return None
    if d.query_params or d.header_params or d.cookie_params or route._embed_body_fields:
        return None
    if any(
        name is not None
        for name in (
            d.request_param_name,
            d.websocket_param_name,
            d.http_connection_param_name,
            d.response_param_name,
            d.background_tasks_param_name,
            d.security_scopes_param_name,
        )
    ):
        return None
    if len(d.body_params) != 1:
        return None
    field = d.body_params[0]
    model = field.field_info.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or field.alias != field.name:
        return None
    if any(p.field_info.annotation is not str or p.alias != p.name for p in d.path_params):
        return None
    dependencies: list[tuple[str, Callable[[Request], Awaitable[Any]]]] = []
    for sub in d.dependencies:
        call = sub.call
        if (
            sub.name is None
            or call is None
            or not inspect.iscoroutinefunction(call)
            or sub.request_param_name is None
            or sub.dependencies
            or sub.path_params
            or sub.query_params
            or sub.header_params
            or sub.cookie_params
            or sub.body_params
        ):
            return None
        dependencies.append((sub.name, call))
    hints = typing.get_type_hints(endpoint)
    returns = hints.get("return")
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        return None  # a plain value would need FastAPI's response-model serialisation
    return endpoint, field.name, model, [p.name for p in d.path_params], dependencies
