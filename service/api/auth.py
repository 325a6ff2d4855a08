"""Who may do what: bearer tokens with the scopes read, write and admin.

A token's scopes imply the lesser ones (admin > write > read). The method says what a request
needs: reads need ``read``, mutations ``write``, deletions ``admin``; a few requests name more in
their route (``allow_private`` punch-hole needs ``admin``). With no tokens configured every request
is allowed: ``serve`` permits that only on loopback or a Unix socket (``exposure_problem``).
Health, metrics, the docs console and the problem pages need no token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import Settings
from .middleware import send_problem
from .problems import PROBLEM_JSON, problem_response

READ, WRITE, ADMIN = "read", "write", "admin"
IMPLIED: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    WRITE: frozenset({READ, WRITE}),
    ADMIN: frozenset({READ, WRITE, ADMIN}),
}
MIN_TOKEN_LENGTH = 16
REALM = 'Bearer realm="gmem-broker"'

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PREFIXES = ("/problems/", "/static-offline-docs/")


class TokenConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: a name safe to log (never the token) and the scopes it holds."""

    name: str
    scopes: frozenset[str]


def parse_tokens(text: str, source: str) -> list[tuple[str, frozenset[str]]]:
    """``token scope[ scope]`` entries, one per line (or separated by ';'); '#' starts a comment."""
    entries: list[tuple[str, frozenset[str]]] = []
    for number, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        token, scopes = words[0], words[1:]
        where = f"{source} entry {number}"
        if not scopes:
            raise TokenConfigError(f"{where}: a token needs at least one scope (read, write, admin)")
        unknown = sorted(set(scopes) - IMPLIED.keys())
        if unknown:
            raise TokenConfigError(f"{where}: unknown scope(s) {', '.join(unknown)} (read, write, admin)")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenConfigError(f"{where}: tokens must be at least {MIN_TOKEN_LENGTH} characters")
        entries.append((token, frozenset().union(*(IMPLIED[s] for s in scopes))))
    return entries


class TokenTable:
    """Looks a presented token up in time that does not depend on which token, if any, matches."""

    def __init__(self, entries: Iterable[tuple[str, frozenset[str]]]) -> None:
        self._entries = [
            (_digest(token), Principal(f"token-{i}", scopes)) for i, (token, scopes) in enumerate(entries, 1)
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, presented: str) -> Principal | None:
        # Comparing fixed-length digests hides the stored tokens' lengths; no early exit hides which matched.
        digest = _digest(presented)
        found = None
        for stored, principal in self._entries:
            if hmac.compare_digest(digest, stored):
                found = principal
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load_tokens(settings: Settings) -> TokenTable | None:
    """The configured tokens (GMEM_BROKER_TOKENS and GMEM_BROKER_TOKENS_FILE together), or None."""
    entries: list[tuple[str, frozenset[str]]] = []
    if settings.tokens is not None:
        entries += parse_tokens(settings.tokens.get_secret_value(), "GMEM_BROKER_TOKENS")
    if settings.tokens_file is not None:
        path = Path(settings.tokens_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise TokenConfigError(f"cannot read GMEM_BROKER_TOKENS_FILE {path}: {exc.strerror}") from exc
        entries += parse_tokens(text, str(path))
    return TokenTable(entries) if entries else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str | None, tokens: TokenTable | None) -> str | None:
    """Why serving on ``host`` (None: a Unix socket) would be unsafe, or None.

    Only loopback and Unix sockets may go without tokens."""
    if tokens is not None or host is None or is_loopback(host):
        return None
    return (
        f"{host} is not a loopback address and no tokens are configured; set GMEM_BROKER_TOKENS or "
        "GMEM_BROKER_TOKENS_FILE, or listen on 127.0.0.1 or a Unix socket (--uds)"
    )


def required_scope(method: str) -> str:
    if method in ("GET", "HEAD", "OPTIONS"):
        return READ
    return ADMIN if method == "DELETE" else WRITE


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class AuthMiddleware:
    """Checks the bearer token and the method's scope before routing; installed only when tokens exist."""

    def __init__(self, app: ASGIApp, tokens: TokenTable) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value
                break
        if header is None or header[:7].lower() != b"bearer ":
            await send_problem(scope, send, "unauthorized", "no bearer token", [(b"www-authenticate", REALM.encode())])
            return
        principal = self.tokens.lookup(header[7:].strip().decode("latin-1"))
        if principal is None:
            challenge = f'{REALM}, error="invalid_token"'.encode()
            await send_problem(scope, send, "unauthorized", "unknown token", [(b"www-authenticate", challenge)])
            return
        # Known before the scope check, so the access log names who was refused (by position, never the token).
        scope.setdefault("state", {})["principal"] = principal
        need = required_scope(scope["method"])
        if need not in principal.scopes:
            await _forbid(scope, send, principal, need)
            return
        await self.app(scope, receive, send)


async def _forbid(scope: Scope, send: Send, principal: Principal, need: str) -> None:
    challenge = f'{REALM}, error="insufficient_scope", scope="{need}"'.encode()
    detail = f"{scope['method']} {scope['path']} needs scope {need!r}; {principal.name} has {_listed(principal)}"
    await send_problem(scope, send, "forbidden", detail, [(b"www-authenticate", challenge)])


def _listed(principal: Principal) -> str:
    return ", ".join(sorted(principal.scopes)) or "none"


class MissingScope(Exception):
    def __init__(self, principal: Principal, need: str, why: str) -> None:
        super().__init__(f"{why} needs scope {need!r}; {principal.name} has {_listed(principal)}")
        self.need = need


def principal(request: Request) -> Principal | None:
    """The request's principal; None when no tokens are configured (everything allowed)."""
    found: Principal | None = getattr(request.state, "principal", None)
    return found


PrincipalDep = Annotated[Principal | None, Depends(principal)]


def require(who: Principal | None, need: str, why: str) -> None:
    """Raise 403 unless ``who`` holds ``need``; routes call it for what the method alone does not say."""
    if who is not None and need not in who.scopes:
        raise MissingScope(who, need, why)


def _missing_scope(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MissingScope)
    challenge = f'{REALM}, error="insufficient_scope", scope="{exc.need}"'
    return problem_response(request, "forbidden", str(exc), headers={"WWW-Authenticate": challenge})


def install(app: FastAPI, tokens: TokenTable | None) -> None:
    app.add_exception_handler(MissingScope, _missing_scope)
    if tokens is not None:
        app.add_middleware(AuthMiddleware, tokens=tokens)
    _document(app)


def _document(app: FastAPI) -> None:
    """State the bearer scheme, each operation's scope, and its 401/403/413 in the OpenAPI document."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        schema["components"].setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "Tokens from GMEM_BROKER_TOKENS / GMEM_BROKER_TOKENS_FILE with scopes read < write < "
            "admin. Not needed when the broker runs without tokens (loopback or Unix socket only).",
        }
        problem = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for path, item in schema["paths"].items():
            for method, op in item.items():
                if "requestBody" in op:
                    op["responses"].setdefault("413", {"description": "`payload-too-large`", **problem})
                if is_open(path):
                    continue
                # A route that needs more than its method says declares it (``openapi_extra``).
                need = op.pop("x-required-scope", None) or required_scope(method.upper())
                op["security"] = [{"bearer": [need]}]
                op["responses"].setdefault("401", {"description": "`unauthorized`: no or unknown token", **problem})
                op["responses"].setdefault("403", {"description": "`forbidden`: the token lacks the scope", **problem})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
