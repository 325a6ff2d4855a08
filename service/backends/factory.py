"""Choose the backend named by the settings."""

from __future__ import annotations

from ..settings import Settings
from .protocol import MemoryBackend
from .sim import SimBackend


class BackendUnavailable(RuntimeError):
    pass


def make_backend(settings: Settings) -> MemoryBackend:
    if settings.backend == "sim":
        return SimBackend(numa_nodes=settings.sim_numa_nodes, frames_per_node=settings.sim_frames_per_node)
    raise BackendUnavailable(
        f"backend {settings.backend!r} is not available in this build; use GMEM_BROKER_BACKEND=sim"
    )
