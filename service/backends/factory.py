"""Choose the backend named by the settings."""

from __future__ import annotations

from ..settings import Settings
from .kvm.backend import KvmBackend
from .protocol import BackendError, MemoryBackend
from .sim import SimBackend


class BackendUnavailable(RuntimeError):
    pass


def make_backend(settings: Settings) -> MemoryBackend:
    if settings.backend == "sim":
        return SimBackend(numa_nodes=settings.sim_numa_nodes, frames_per_node=settings.sim_frames_per_node)
    try:
        return KvmBackend(settings.kvm_device, memory_reserve=settings.kvm_memory_reserve)
    except BackendError as err:
        raise BackendUnavailable(f"the kvm backend cannot start: {err}; use GMEM_BROKER_BACKEND=sim") from err
