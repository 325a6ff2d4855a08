"""Sizes and addresses as people type them: ``4K``, ``2M``, ``1G``, ``0x100000000``, ``4096``.

Units are binary (K = 1024) like the kernel's; an optional ``iB`` or ``B`` may follow the letter.
"""

from __future__ import annotations

import re

_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}
_SIZE = re.compile(r"^(?P<number>[0-9][0-9_]*)\s*(?P<unit>[KMGTP]?)(?:I?B)?$")
_HEX = re.compile(r"^0X[0-9A-F][0-9A-F_]*$")


def parse_size(text: str) -> int:
    """Bytes from ``text``; raises ValueError saying what is accepted."""
    spec = text.strip().upper()
    if _HEX.match(spec):
        return int(spec, 16)
    found = _SIZE.match(spec)
    if found is None or (found["unit"] == "" and spec.endswith("IB")):
        raise ValueError(f"{text!r} is not a size: use bytes (4096), a unit (4K, 2M, 1G, 1T) or hex (0x100000000)")
    return int(found["number"]) << _UNITS[found["unit"]]


def format_size(nbytes: int) -> str:
    """The largest unit that states ``nbytes`` exactly: 65536 -> ``64K``, 4097 -> ``4097``."""
    for unit, shift in sorted(_UNITS.items(), key=lambda u: -u[1]):
        if shift and nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return str(nbytes)


def size_value(value: str | int) -> int:
    """The typer ``parser`` of size options and arguments (defaults arrive as ints)."""
    return value if isinstance(value, int) else parse_size(value)
