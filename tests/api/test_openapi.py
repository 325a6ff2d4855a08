"""The committed OpenAPI document is the app's, and it documents every operation fully."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.openapi_doc import openapi_json

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_spec_matches_the_app() -> None:
    assert COMMITTED.read_text() == openapi_json(), (
        "openapi/openapi.json drifted from the app: run `make openapi` (gmem-broker openapi -o openapi/openapi.json)"
    )


def test_every_operation_is_documented() -> None:
    spec: dict[str, Any] = json.loads(openapi_json())
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), where
            assert op.get("tags"), where
            if path == "/healthz":
                continue
            errors = [code for code in op["responses"] if code.startswith(("4", "5"))]
            assert errors, f"{where} documents no error responses"
            for code in errors:
                content = op["responses"][code].get("content", {})
                assert "application/problem+json" in content, f"{where} {code}"


def test_mutations_document_idempotency_and_if_match() -> None:
    spec: dict[str, Any] = json.loads(openapi_json())
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("post", "patch", "delete") and path.startswith("/v1/"):
                names = {p["name"] for p in op.get("parameters", [])}
                assert {"Idempotency-Key", "If-Match"} <= names, f"{method} {path}"


def test_vm_mutations_document_what_any_mutation_of_a_vm_may_answer() -> None:
    """Any journalled mutation of a VM may meet a lost VM (kvm restart), an operation left pending (503), or a
    backend failure no rule names (502); the document says so for each one."""
    spec: dict[str, Any] = json.loads(openapi_json())
    checked = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("post", "patch", "delete") or not path.startswith("/v1/vms/{vm_id}"):
                continue
            documented = " ".join(r.get("description", "") for r in op["responses"].values())
            want = {"not-found", "precondition-failed", "idempotency-key-reused"}
            if (method, path) != ("patch", "/v1/vms/{vm_id}"):  # a state change calls no backend
                want.add("backend-error")
            if not path.endswith("/export"):  # an export ticket is not journalled: nothing to replay
                want.add("replay-pending")
            if (method, path) != ("delete", "/v1/vms/{vm_id}"):  # deleting is what a lost VM may still do
                want.add("vm-lost")
            missing = {code for code in want if f"`{code}`" not in documented}
            assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
            checked += 1
    assert checked >= 11
