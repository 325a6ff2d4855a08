"""Long batch commands: read ranges from a file, send them in batches under a progress bar."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..client import ProblemError
from .sizes import parse_size

T = TypeVar("T")
R = TypeVar("R")


def read_rows(path: Path, min_fields: int, max_fields: int) -> list[list[str]]:
    """Rows of whitespace- or comma-separated fields; ``#`` starts a comment. Bad lines are usage errors."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = [w for w in re.split(r"[\s,]+", line.split("#", 1)[0].strip()) if w]
        if not words:
            continue
        if not min_fields <= len(words) <= max_fields:
            raise typer.BadParameter(f"{path}:{number}: expected {min_fields} to {max_fields} fields, got {line!r}")
        rows.append(words)
    if not rows:
        raise typer.BadParameter(f"{path}: no ranges")
    return rows


def size_at(path: Path, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{path}: {exc}") from exc


def in_batches(
    items: Sequence[T], batch: int, send: Callable[[list[T]], R], label: str, console: Console, *, bar: bool = True
) -> list[R]:
    """Send ``items`` ``batch`` at a time; returns the answers.

    Each batch is one request, all-or-nothing on the broker; a refusal stops here with the earlier
    batches applied, and says how many.
    """
    answers: list[R] = []
    done = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not bar) as progress:
        task = progress.add_task(label, total=len(items))
        for start in range(0, len(items), batch):
            chunk = list(items[start : start + batch])
            try:
                answers.append(send(chunk))
            except ProblemError:
                progress.stop()
                console.print(
                    f"{done} of {len(items)} applied in {len(answers)} earlier batch(es); this batch changed nothing"
                )
                raise
            done += len(chunk)
            progress.update(task, completed=done)
    return answers
