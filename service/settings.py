"""All settings, from environment variables ``GMEM_BROKER_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")
    access_log: bool = Field(False, description="log one line per request (measured: about 20 us a request as JSON)")
    tokens: SecretStr | None = Field(
        None, description="bearer tokens: `token scope[ scope]` entries separated by newlines or ';'"
    )
    tokens_file: Path | None = Field(None, description="a file of `token scope[ scope]` lines ('#' comments)")
    max_body_bytes: int = Field(1 << 20, ge=1, description="larger request bodies get 413")
    max_batch: int = Field(
        10_000, ge=1, description="most ranges accepted in one convert batch, and moves in one migrate-page batch"
    )
    sim_numa_nodes: int = Field(2, ge=1, le=64)
    sim_frames_per_node: int = Field(4 << 20, ge=1, description="4 KiB frames per NUMA node in the sim")
    db_pool_size: int = Field(10, ge=1)
    kvm_device: str = Field("/dev/kvm", description="the KVM device the kvm backend opens")
    kvm_memory_reserve: int = Field(
        512 << 20,
        ge=0,
        description="bytes of the host's MemAvailable that kvm allocations must leave (more: 507 insufficient-memory)",
    )
    handoff_socket: str = Field(
        "./gmem-broker.sock", description="Unix socket (mode 0600) where VMMs redeem memfd export tickets"
    )
    handoff_ticket_seconds: float = Field(60.0, gt=0, description="how long an export ticket stays valid")
