"""The committed OpenAPI document, generated from the app (``gmem-broker openapi -o openapi/openapi.json``)."""

from __future__ import annotations

import json

from sqlalchemy import create_engine

from .app import create_app
from .backends.sim import SimBackend
from .settings import Settings


def openapi_json() -> str:
    # The document depends on the routes only; no database is touched to build it.
    app = create_app(Settings(database_url="sqlite://"), backend=SimBackend(), engine=create_engine("sqlite://"))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
