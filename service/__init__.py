"""gmem-broker: the control plane for confidential-VM private memory (guest_memfd)."""

__version__ = "0.1.0"
