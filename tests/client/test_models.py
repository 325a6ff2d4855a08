"""The client's models and methods against the committed OpenAPI document, so neither drifts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from service.client import AsyncBrokerClient, BrokerClient, models
from service.client.operations import Operations

OPENAPI = json.loads((Path(__file__).parents[2] / "openapi" / "openapi.json").read_text())
SCHEMAS: dict[str, Any] = OPENAPI["components"]["schemas"]

# client model -> the server's schema of the same thing
COUNTERPARTS: dict[type[BaseModel], str] = {
    models.Vm: "Vm",
    models.Deleted: "Deleted",
    models.Memfd: "Memfd",
    models.Memslot: "Memslot",
    models.Allocated: "Allocated",
    models.Punched: "Punched",
    models.Converted: "Converted",
    models.VmExtent: "VmExtent",
    models.VmExtentPage: "VmExtents",
    models.MemfdExtent: "MemfdExtent",
    models.MemfdExtentPage: "MemfdExtents",
    models.Operation: "OperationView",
    models.OperationPage: "OperationList",
    models.NumaNode: "NumaNodeView",
    models.Host: "Host",
    models.Page: "Page",
    models.FrameRun: "FrameRunView",
    models.FrameRunPage: "FrameRuns",
    models.GuestPage: "PageView",
    models.Migrated: "Migrated",
    models.PageMove: "PageMove",
    models.ExportTicket: "ExportTicket",
    models.Health: "Health",
    models.Problem: "Problem",
}
# operationId -> client method, where the names differ
METHOD_NAMES = {"patch_vm": "set_vm_state", "problem_page": "problem_type"}


@pytest.mark.parametrize("model", list(COUNTERPARTS), ids=lambda m: m.__name__)
def test_model_fields_match_the_server_schema(model: type[BaseModel]) -> None:
    schema = SCHEMAS[COUNTERPARTS[model]]
    assert set(model.model_fields) == set(schema["properties"])
    if model is not models.Problem:  # the client reads problems from anything, even a proxy's error page
        required = {name for name, field in model.model_fields.items() if field.is_required()}
        assert required == set(schema.get("required", []))


def test_every_operation_has_a_client_method() -> None:
    operation_ids = {op["operationId"] for path in OPENAPI["paths"].values() for op in path.values()}
    methods = {METHOD_NAMES.get(op, op) for op in operation_ids}
    # Streams are methods of the two clients; everything else is in the shared table.
    missing = sorted(
        m
        for m in methods
        if not hasattr(Operations, m) and not (hasattr(BrokerClient, m) and hasattr(AsyncBrokerClient, m))
    )
    assert missing == [], f"operations without a client method in service/client/operations.py: {missing}"
