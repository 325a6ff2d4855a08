"""What every client command shares: the options that pick the broker, output, and error reporting.

Exit status: 0 done, 1 the broker refused (its problem document is printed), 2 bad usage, 3 the
broker could not be reached.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..client import BrokerClient, ProblemError
from ..client.retry import DEFAULT_URL, URL_ENV
from .sizes import size_value

Url = Annotated[
    str | None,
    typer.Option("--url", envvar=URL_ENV, help=f"the broker (default {DEFAULT_URL}); token from GMEM_BROKER_TOKEN"),
]
Json = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
VmId = Annotated[str, typer.Argument(metavar="VM", help="the VM's id")]
Size = Annotated[
    int, typer.Argument(metavar="SIZE", parser=size_value, help="bytes: 4096, 4K, 2M, 1G or 0x1000", show_default=False)
]

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


@dataclass
class Session:
    client: BrokerClient
    json: bool
    out: Console
    err: Console

    def emit(self, value: Any, human: Any = None) -> None:
        """Print ``value`` as JSON with --json, else ``human`` (a rich renderable or text)."""
        if self.json:
            sys.stdout.write(json.dumps(jsonable(value), indent=2) + "\n")
        elif human is not None:
            self.out.print(human)

    def say(self, text: str) -> None:
        """A line for people; --json output stays pure."""
        if not self.json:
            self.out.print(text, highlight=False)


PIPE_WIDTH = 160


def consoles() -> tuple[Console, Console]:
    out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)
    for console in (out, err):
        # Tables squeezed to a pipe's default 80 columns wrap every cell; a log or a grep wants rows whole.
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console.width = PIPE_WIDTH
    return out, err


@contextmanager
def session(url: str | None, json_out: bool) -> Iterator[Session]:
    out, err = consoles()
    client = BrokerClient(url)
    try:
        with client:
            yield Session(client, json_out, out, err)
    except ProblemError as exc:
        report_problem(exc, json_out, err)
        raise typer.Exit(EXIT_REFUSED) from exc
    except httpx.TransportError as exc:
        said = escape(str(exc) or type(exc).__name__)
        err.print(f"[bold red]error:[/] cannot reach the broker at {escape(client.url)}: {said}")
        raise typer.Exit(EXIT_UNREACHABLE) from exc


def report_problem(exc: ProblemError, json_out: bool, err: Console) -> None:
    problem = exc.problem
    if json_out:
        err.print_json(data=problem.model_dump(mode="json", exclude_none=True))
        return
    err.print(f"[bold red]error:[/] {problem.status} [bold]{escape(problem.code)}[/]: {escape(problem.title)}")
    if problem.detail:
        err.print(f"  {problem.detail}", markup=False)
    facts = {"type": problem.type, "instance": problem.instance, "errno": problem.errno, "request": problem.request_id}
    facts.update({k: v for k, v in (problem.model_extra or {}).items() if k != "errors"})
    err.print("  " + "  ".join(f"{k}: {v}" for k, v in facts.items() if v is not None), markup=False)
    for e in (problem.model_extra or {}).get("errors", []):
        where = ".".join(str(p) for p in e.get("loc", []))
        err.print(f"  - {where}: {e.get('msg', '')}", markup=False)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    t = Table(*columns, title=title, title_justify="left")
    for row in rows:
        t.add_row(*(str(c) for c in row))
    return t


def fields(pairs: dict[str, Any]) -> Table:
    """A two-column key/value table."""
    t = Table.grid(padding=(0, 2))
    for key, value in pairs.items():
        t.add_row(f"[bold]{key}[/]", str(value))
    return t
