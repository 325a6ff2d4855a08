"""The broker's refusals, each with the stable code a client can branch on.

A code names *why* a request was refused (DESIGN section 4); ``errno`` names the kernel's own
answer where the rule mirrors one. How a code maps to an HTTP status is the API layer's business.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request the broker refuses; raising one guarantees nothing was changed."""

    code = "conflict"

    def __init__(self, detail: str, *, errno: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = f"{errno}: {detail}" if errno else detail
        self.errno = errno
        self.extra = extra


class Unaligned(DomainError):
    code = "unaligned"


class InvalidLength(DomainError):
    code = "invalid-length"


class OutOfRange(DomainError):
    code = "out-of-range"


class Overlap(DomainError):
    code = "overlap"


class UnsupportedFlags(DomainError):
    code = "unsupported-flags"


class UnsupportedMode(DomainError):
    code = "unsupported-mode"


class UnsupportedAttribute(DomainError):
    code = "unsupported-attribute"


class UnsupportedVmType(DomainError):
    code = "unsupported-vm-type"


class AttributeMismatch(DomainError):
    code = "attribute-mismatch"


class PrivateInUse(DomainError):
    code = "private-in-use"


class InUse(DomainError):
    code = "in-use"


class SlotInUse(DomainError):
    code = "slot-in-use"


class ForeignMemfd(DomainError):
    code = "foreign-memfd"


class NotFound(DomainError):
    code = "not-found"


class Conflict(DomainError):
    code = "conflict"


class NameTaken(DomainError):
    code = "name-taken"


class InvalidTransition(DomainError):
    code = "invalid-transition"


class InsufficientMemory(DomainError):
    code = "insufficient-memory"


class NotSupportedByKernel(DomainError):
    code = "not-supported-by-kernel"


class PreconditionFailed(DomainError):
    code = "precondition-failed"


class IdempotencyKeyReused(DomainError):
    code = "idempotency-key-reused"


class InvalidCursor(DomainError):
    code = "invalid-cursor"


class BatchTooLarge(DomainError):
    code = "batch-too-large"


class VmLost(DomainError):
    code = "vm-lost"


class PrivatePage(DomainError):
    code = "private-page"


class NotAllocated(DomainError):
    code = "not-allocated"


class FrameInUse(DomainError):
    code = "frame-in-use"


class UnknownNode(DomainError):
    code = "unknown-node"


class EventsExpired(DomainError):
    code = "events-expired"
