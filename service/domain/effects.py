"""Backend calls an accepted operation requires, as plain data.

The VM aggregate decides what must happen; these records say it to the backend. They are
journalled with the operation (so a pending operation can be replayed after a crash) and every one
of them is idempotent: applying one twice leaves the backend as applying it once does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Effect:
    name: ClassVar[str] = "effect"
    vm_id: str

    def to_json(self) -> dict[str, Any]:
        # Field names per class, looked up once: asdict() deep-copies and is slow on hot paths.
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in fields(self))
        out: dict[str, Any] = {"call": self.name}
        for name in names:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


_FIELD_NAMES: dict[type[Effect], tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class CreateVm(Effect):
    name: ClassVar[str] = "create-vm"
    vm_type: str


@dataclass(frozen=True, slots=True)
class DestroyVm(Effect):
    name: ClassVar[str] = "destroy-vm"


@dataclass(frozen=True, slots=True)
class CreateMemfd(Effect):
    name: ClassVar[str] = "create-memfd"
    memfd_id: str
    npages: int
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CloseMemfd(Effect):
    name: ClassVar[str] = "close-memfd"
    memfd_id: str


@dataclass(frozen=True, slots=True)
class BindMemslot(Effect):
    name: ClassVar[str] = "bind-memslot"
    slot: int
    gfn: int
    npages: int
    memfd_id: str
    pgoff: int


@dataclass(frozen=True, slots=True)
class UnbindMemslot(Effect):
    name: ClassVar[str] = "unbind-memslot"
    slot: int


@dataclass(frozen=True, slots=True)
class Allocate(Effect):
    name: ClassVar[str] = "allocate"
    memfd_id: str
    pgoff: int
    npages: int
    # The NUMA node new pages must land on; None: wherever the backend places them.
    node: int | None = None


@dataclass(frozen=True, slots=True)
class PunchHole(Effect):
    name: ClassVar[str] = "punch-hole"
    memfd_id: str
    pgoff: int
    npages: int


@dataclass(frozen=True, slots=True)
class SetAttributes(Effect):
    name: ClassVar[str] = "set-attributes"
    gfn: int
    npages: int
    attribute: str


@dataclass(frozen=True, slots=True)
class PopulateShared(Effect):
    name: ClassVar[str] = "populate-shared"
    gfn: int
    npages: int


@dataclass(frozen=True, slots=True)
class DiscardShared(Effect):
    name: ClassVar[str] = "discard-shared"
    gfn: int
    npages: int


@dataclass(frozen=True, slots=True)
class MoveFrames(Effect):
    """Move ``npages`` pages of a backing (memfd ``memfd_id`` at ``pgoff``, or with ``memfd_id`` ""
    the shared backing at gfn ``pgoff``), bound at ``gfn``, from the frames at ``old_pfn`` to those
    at ``new_pfn`` on ``node``, by ``method`` (copy or trusted-agent)."""

    name: ClassVar[str] = "move-frames"
    memfd_id: str
    pgoff: int
    gfn: int
    npages: int
    old_pfn: int | None
    new_pfn: int | None
    node: int
    method: str


EFFECT_TYPES: dict[str, type[Effect]] = {
    cls.name: cls
    for cls in (
        CreateVm,
        DestroyVm,
        CreateMemfd,
        CloseMemfd,
        BindMemslot,
        UnbindMemslot,
        Allocate,
        PunchHole,
        SetAttributes,
        PopulateShared,
        DiscardShared,
        MoveFrames,
    )
}


def effect_from_json(data: dict[str, Any]) -> Effect:
    cls = EFFECT_TYPES[data["call"]]
    # A field missing from an older journal row takes its default.
    kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
    if "flags" in kwargs:
        kwargs["flags"] = tuple(kwargs["flags"])
    return cls(**kwargs)
