"""A VM's extent map for people: a table, and a compact map of one line per extent with a bar.

Every extent falls in one of three classes: ``private`` (private backing allocated), ``shared``
(shared backing allocated), or ``hole`` (no backing: the page reads as zero until populated).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from ..client.models import VmExtent
from .sizes import format_size

CLASSES = ("private", "shared", "hole")
# Distinct glyphs as well as colours, so the map reads the same without colour.
GLYPH = {"private": "█", "shared": "▒", "hole": "░"}
STYLE = {"private": "green", "shared": "cyan", "hole": "grey50"}
LABEL = {"private": "private backing", "shared": "shared backing", "hole": "hole"}


def backed_by(extent: VmExtent) -> str:
    if extent.private_backing == "allocated":
        return "private"
    if extent.shared_backing == "allocated":
        return "shared"
    return "hole"


def proportions(extents: Sequence[VmExtent]) -> dict[str, int]:
    """Bytes per class."""
    totals = dict.fromkeys(CLASSES, 0)
    for e in extents:
        totals[backed_by(e)] += e.size
    return totals


def _bar(parts: Sequence[tuple[str, int]], width: int) -> Text:
    total = sum(n for _, n in parts) or 1
    bar = Text()
    for cls, n in parts:
        if n:
            bar.append(GLYPH[cls] * max(1, round(width * n / total)), style=STYLE[cls])
    return bar


def summary(extents: Sequence[VmExtent], width: int = 40) -> list[Text]:
    """Two lines: bytes and share per class, then one bar of the three proportions."""
    totals = proportions(extents)
    whole = sum(totals.values())
    line = Text(f"total {format_size(whole)}:")
    for cls in CLASSES:
        share = 100 * totals[cls] / whole if whole else 0.0
        line.append(f"  {GLYPH[cls]} {cls} {format_size(totals[cls])} ({share:.1f}%)", style=STYLE[cls])
    return [line, _bar([(c, totals[c]) for c in CLASSES], width)]


def compact_map(extents: Sequence[VmExtent], width: int = 40) -> list[Text]:
    """The summary, then one line per extent: range, size, attribute, backing, and a bar whose
    length is the extent's share of the whole (at least one cell, so no extent is invisible)."""
    whole = sum(e.size for e in extents) or 1
    digits = max((len(f"{e.gpa + e.size:x}") for e in extents), default=1)
    lines = summary(extents, width)
    for e in extents:
        cls = backed_by(e)
        span = f"{e.gpa:#0{digits + 2}x}-{e.gpa + e.size:#0{digits + 2}x}"
        line = Text(f"{span} {format_size(e.size):>5} {e.attribute:<7} ")
        line.append(f"{LABEL[cls]:<15} ", style=STYLE[cls])
        line.append(GLYPH[cls] * max(1, round(width * e.size / whole)), style=STYLE[cls])
        lines.append(line)
    return lines


def extent_table(extents: Sequence[VmExtent]) -> Table:
    t = Table("gpa", "end", "size", "attribute", "private backing", "shared backing", title_justify="left")
    for e in extents:
        t.add_row(
            f"{e.gpa:#x}",
            f"{e.gpa + e.size:#x}",
            format_size(e.size),
            e.attribute,
            e.private_backing,
            e.shared_backing,
            style=STYLE[backed_by(e)],
        )
    return t
