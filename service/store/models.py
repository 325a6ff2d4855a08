"""Tables: VMs, memfds, memslots, extents, and the operation journal.

Per-page state lives only in ``extents``, one row per maximal run, so no table grows with pages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[dict[str, Any]]: JSON}


class VmRow(Base):
    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    vm_type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MemfdRow(Base):
    __tablename__ = "memfds"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"), index=True)
    npages: Mapped[int] = mapped_column(BigInteger)
    flags: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MemslotRow(Base):
    __tablename__ = "memslots"

    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    gfn: Mapped[int] = mapped_column(BigInteger)
    npages: Mapped[int] = mapped_column(BigInteger)
    memfd_id: Mapped[str] = mapped_column(ForeignKey("memfds.id"), index=True)
    pgoff: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExtentRow(Base):
    """One maximal run of one map: ``map`` is attribute, shared or population (owner = memfd id)."""

    __tablename__ = "extents"

    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"), primary_key=True)
    map: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    end: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[str] = mapped_column(String(16))


class OperationRow(Base):
    __tablename__ = "operations"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    # No foreign key: the journal outlives the VMs it records (audit of deletions).
    vm_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    effects: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(BigInteger)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_operations_vm_id_seq", "vm_id", "seq"),
        Index("ix_operations_status", "status"),
    )


class FrameRunRow(Base):
    """Pages ``[start, end)`` of one backing on the consecutive host frames from ``pfn``.

    ``owner`` is the memfd id, or "" for the VM's shared backing (where ``start`` is a gfn). A
    fresh allocation on unfragmented frames is one row; moving a page out of it splits it.
    """

    __tablename__ = "frame_runs"

    # No foreign key: rows are written after the backend call, in the transaction that marks the
    # operation applied, and a VM's rows go with it (repository), not by cascade.
    vm_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    end: Mapped[int] = mapped_column(BigInteger)
    pfn: Mapped[int] = mapped_column(BigInteger)
