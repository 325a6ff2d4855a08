"""Small client-side helpers for the API tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

PAGE = 4096
GIB = 1 << 30
MIB = 1 << 20
BASE_GPA = 4 * GIB


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    body: dict[str, Any] = resp.json()
    return body


def problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers["content-type"]
    body: dict[str, Any] = resp.json()
    assert body["type"] == f"/problems/{code}", body
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def create_vm(client: httpx.Client, vm_type: str = "sw_protected", **extra: Any) -> dict[str, Any]:
    return ok(client.post("/v1/vms", json={"name": f"vm-{uuid.uuid4().hex[:10]}", "vm_type": vm_type, **extra}), 201)


def create_memfd(client: httpx.Client, vm_id: str, size: int, flags: list[str] | None = None) -> dict[str, Any]:
    return ok(client.post(f"/v1/vms/{vm_id}/memfds", json={"size": size, "flags": flags or []}), 201)


def create_memslot(
    client: httpx.Client, vm_id: str, memfd_id: str, *, slot: int = 0, gpa: int = BASE_GPA, size: int, offset: int = 0
) -> dict[str, Any]:
    body = {"slot": slot, "gpa": gpa, "size": size, "memfd_id": memfd_id, "offset": offset}
    return ok(client.post(f"/v1/vms/{vm_id}/memslots", json=body), 201)


def guest(client: httpx.Client, size: int = 16 * MIB, vm_type: str = "sw_protected") -> tuple[str, str]:
    """A VM with one memfd bound by memslot 0 at BASE_GPA; returns (vm_id, memfd_id)."""
    vm = create_vm(client, vm_type)
    memfd = create_memfd(client, vm["id"], size)
    create_memslot(client, vm["id"], memfd["id"], size=size)
    return vm["id"], memfd["id"]


def all_extents(client: httpx.Client, vm_id: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {**params, **({"cursor": cursor} if cursor else {})}
        page = ok(client.get(f"/v1/vms/{vm_id}/extents", params=q))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def memfd_extents(client: httpx.Client, vm_id: str, memfd_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q: dict[str, str] = {"cursor": cursor} if cursor else {}
        page = ok(client.get(f"/v1/vms/{vm_id}/memfds/{memfd_id}/extents", params=q))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def snapshot(client: httpx.Client, vm_id: str) -> dict[str, Any]:
    """Everything observable about a VM, to compare before and after a refused request."""
    vm = ok(client.get(f"/v1/vms/{vm_id}"))
    memfds = ok(client.get(f"/v1/vms/{vm_id}/memfds"))["items"]
    return {
        "vm": vm,
        "extents": all_extents(client, vm_id),
        "memfds": memfds,
        "memfd_extents": {m["id"]: memfd_extents(client, vm_id, m["id"]) for m in memfds},
        "memslots": ok(client.get(f"/v1/vms/{vm_id}/memslots"))["items"],
    }
