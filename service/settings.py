"""All settings, from environment variables ``GMEM_BROKER_*``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GMEM_BROKER_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./gmem-broker.db", description="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://..."
    )
    backend: Literal["sim", "kvm"] = "sim"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: str = "info"
    max_batch: int = Field(10_000, ge=1, description="most ranges accepted in one convert batch")
    sim_numa_nodes: int = Field(2, ge=1, le=64)
    sim_frames_per_node: int = Field(4 << 20, ge=1, description="4 KiB frames per NUMA node in the sim")
    db_pool_size: int = Field(10, ge=1)
    kvm_device: str = Field("/dev/kvm", description="the KVM device the kvm backend opens")
    handoff_socket: str = Field(
        "./gmem-broker.sock", description="Unix socket (mode 0600) where VMMs redeem memfd export tickets"
    )
    handoff_ticket_seconds: float = Field(60.0, gt=0, description="how long an export ticket stays valid")
