"""RFC 9457 problem documents: one catalogue of codes, one handler per exception family."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..domain.errors import DomainError

log = logging.getLogger("gmem_broker.api")
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    status: int
    title: str
    description: str


CATALOGUE: dict[str, ProblemType] = {
    "unaligned": ProblemType(
        422, "Not page aligned", "An offset, length, gpa or size is not a multiple of the page size (EINVAL)."
    ),
    "invalid-length": ProblemType(422, "Invalid length", "A length or size is zero or negative (EINVAL)."),
    "out-of-range": ProblemType(
        422, "Out of range", "A range reaches past the memfd, outside every memslot, or past a kernel limit."
    ),
    "overlap": ProblemType(
        409,
        "Overlapping memslot",
        "The gpa range overlaps another memslot (EEXIST) or the memfd range another binding (EINVAL).",
    ),
    "unsupported-flags": ProblemType(
        422, "Unsupported memfd flags", "The kernel refuses these guest_memfd flags (EINVAL)."
    ),
    "unsupported-mode": ProblemType(
        422, "Unsupported fallocate mode", "guest_memfd takes only KEEP_SIZE and KEEP_SIZE|PUNCH_HOLE (EOPNOTSUPP)."
    ),
    "unsupported-attribute": ProblemType(
        422, "Unsupported attribute", "Memory attributes are private or shared (EINVAL)."
    ),
    "unsupported-vm-type": ProblemType(422, "Unsupported VM type", "The backend cannot create VMs of this type."),
    "attribute-mismatch": ProblemType(
        409,
        "Attribute mismatch",
        "Private backing is populated only for private gfns, shared backing only for shared ones.",
    ),
    "private-in-use": ProblemType(
        409, "Private memory in use", "Punching allocated private pages of a running VM needs allow_private=true."
    ),
    "in-use": ProblemType(
        409, "In use", "The object is still used (memfd bound by memslots, VM with memfds or memslots)."
    ),
    "slot-in-use": ProblemType(409, "Memslot exists", "A guest_memfd memslot is immutable: delete it first (EINVAL)."),
    "foreign-memfd": ProblemType(
        422, "Memfd of another VM", "A memfd binds only to memslots of the VM that created it (EINVAL)."
    ),
    "not-found": ProblemType(404, "Not found", "No such resource."),
    "conflict": ProblemType(409, "Conflict", "The request conflicts with the current state."),
    "name-taken": ProblemType(409, "Name taken", "VM names are unique per host."),
    "invalid-transition": ProblemType(
        409, "Invalid state transition", "VMs go created -> running|stopped, running -> stopped, stopped -> running."
    ),
    "insufficient-memory": ProblemType(
        507, "Insufficient memory", "The host budget or the backend ran out of memory (ENOMEM/ENOSPC); nothing changed."
    ),
    "not-supported-by-kernel": ProblemType(
        501, "Not supported by the kernel", "This kernel does not offer the capability the request needs."
    ),
    "precondition-failed": ProblemType(
        412, "Precondition failed", "If-Match does not match the VM's current ETag (generation)."
    ),
    "idempotency-key-reused": ProblemType(
        422, "Idempotency-Key reused", "The key was used before with a different request."
    ),
    "invalid-cursor": ProblemType(422, "Invalid cursor", "The paging cursor was not issued by this service."),
    "batch-too-large": ProblemType(422, "Batch too large", "More ranges than the configured batch limit."),
    "backend-error": ProblemType(
        502, "Backend error", "The backend refused a call for a reason no rule names; nothing changed."
    ),
    "replay-pending": ProblemType(
        503, "Replay pending", "The operation is journalled but not all backend calls applied; it will be replayed."
    ),
    "vm-lost": ProblemType(
        409,
        "VM lost",
        "The broker restarted and the VM's kernel objects are gone; its extents are kept, it can only be deleted.",
    ),
    "private-page": ProblemType(
        409,
        "Private page",
        "The host may read only shared pages of an mmap + init_shared memfd; touching a private one is SIGBUS.",
    ),
    "ticket-unknown": ProblemType(403, "Unknown ticket", "The export ticket was not issued by this broker."),
    "ticket-used": ProblemType(403, "Ticket used", "An export ticket is good for one fd only."),
    "ticket-expired": ProblemType(403, "Ticket expired", "Export tickets are valid for 60 seconds."),
    "not-allocated": ProblemType(
        409, "Not allocated", "The page the gpa uses (private or shared backing) has no allocated page to act on."
    ),
    "frame-in-use": ProblemType(409, "Frame in use", "The target host frame already backs a page (EBUSY)."),
    "unknown-node": ProblemType(422, "Unknown NUMA node", "The target NUMA node is not online on this host (ENODEV)."),
    "events-expired": ProblemType(
        410,
        "Events expired",
        "Last-Event-ID names an operation no longer in the retained journal: re-read the extent map, then "
        "subscribe afresh.",
    ),
    "validation-error": ProblemType(422, "Invalid request", "The request does not match the schema."),
    "unauthorized": ProblemType(
        401, "Unauthorized", "The request needs an `Authorization: Bearer <token>` header with a known token."
    ),
    "forbidden": ProblemType(403, "Forbidden", "The token lacks the scope this request needs (read, write, or admin)."),
    "payload-too-large": ProblemType(413, "Payload too large", "The request body is larger than the configured limit."),
    "method-not-allowed": ProblemType(405, "Method not allowed", "The resource does not support this method."),
    "http-error": ProblemType(400, "HTTP error", "The request could not be served."),
    "not-ready": ProblemType(503, "Not ready", "The service has not finished start-up recovery."),
    "internal-error": ProblemType(500, "Internal error", "An unexpected error; the request id locates it in the logs."),
}


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errno: str | None = None
    request_id: str | None = None


def problem_uri(code: str) -> str:
    return f"/problems/{code}"


def problem_body(
    code: str, detail: str, *, instance: str, request_id: str | None, status: int | None = None, **extra: Any
) -> dict[str, Any]:
    kind = CATALOGUE.get(code, CATALOGUE["conflict"])
    body: dict[str, Any] = {
        "type": problem_uri(code),
        "title": kind.title,
        "status": status or kind.status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(
    request: Request,
    code: str,
    detail: str,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = problem_body(code, detail, instance=request.url.path, request_id=request_id, status=status, **extra)
    if extra.get("allow"):
        headers = {**(headers or {}), "Allow": extra["allow"]}
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_JSON, headers=headers)


def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return problem_response(request, exc.code, exc.detail, errno=exc.errno, **exc.extra)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    # A bad attribute in a convert range is the kernel's EINVAL on unknown attributes: name it so.
    for e in errors:
        if e["loc"][-1:] == ["to"] and e["type"] == "enum":
            return problem_response(
                request, "unsupported-attribute", f"EINVAL: {e['msg']}", errno="EINVAL", errors=errors
            )
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return problem_response(request, "validation-error", summary, errors=errors)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}.get(exc.status_code, "http-error")
    allow = (exc.headers or {}).get("Allow")
    return problem_response(request, code, str(exc.detail), status=exc.status_code, allow=allow)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    # Logged outside the request-id middleware (Starlette's error middleware wraps it), so name the id here.
    log.exception(
        "unhandled error in %s %s (request %s)",
        request.method,
        request.url.path,
        request_id,
        extra={"request_id": request_id},
    )
    return problem_response(request, "internal-error", f"unexpected error; request id {request_id}")


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


#: What every journalled mutation of an existing VM may also answer, whatever its own rules: the VM is
#: unknown, lost at a kvm restart, has an earlier operation the backend refused to finish (503), or the
#: backend failed for a reason no rule names (502); a stale If-Match, a reused Idempotency-Key.
VM_MUTATION: tuple[str, ...] = (
    "not-found",
    "vm-lost",
    "replay-pending",
    "backend-error",
    "precondition-failed",
    "idempotency-key-reused",
)


def responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the problems an endpoint can answer with (each code once)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in dict.fromkeys((*codes, "validation-error", "internal-error")):
        kind = CATALOGUE[code]
        entry = out.setdefault(
            kind.status,
            {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": ""},
        )
        entry["description"] = "; ".join(filter(None, [entry["description"], f"`{code}`: {kind.title}"]))
    return out
