"""The journal's record of one accepted mutation (DESIGN section 6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class OperationStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    FAILED = "failed"


@dataclass(slots=True)
class Operation:
    id: str
    vm_id: str
    kind: str
    status: OperationStatus
    request: dict[str, Any]
    effects: list[dict[str, Any]]
    generation: int
    created_at: datetime
    seq: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    response_status: int | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    finished_at: datetime | None = None
