"""Page arithmetic: the API speaks bytes like the kernel, the domain speaks pages.

Bytes become pages here, once, at the boundary; everything inside works on half-open page ranges.
"""

from __future__ import annotations

from .errors import InvalidLength, OutOfRange, Unaligned

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
# loff_t is signed 64-bit: the largest file a memfd can be.
MAX_FILE_BYTES = (1 << 63) - PAGE_SIZE
# Guest physical addresses are u64; gpa + size may not wrap (kvm_set_memory_region).
GPA_LIMIT = 1 << 64


def to_pages(offset: int, length: int, *, what: str) -> tuple[int, int]:
    """``[offset, offset+length)`` in bytes as a page range ``(start, end)``, checked like the kernel."""
    if offset % PAGE_SIZE or length % PAGE_SIZE:
        raise Unaligned(
            f"{what}: offset {offset:#x} and length {length:#x} must be multiples of {PAGE_SIZE}",
            errno="EINVAL",
        )
    if length <= 0:
        raise InvalidLength(f"{what}: length must be > 0", errno="EINVAL")
    if offset < 0:
        raise OutOfRange(f"{what}: offset must be >= 0", errno="EINVAL")
    return offset >> PAGE_SHIFT, (offset + length) >> PAGE_SHIFT


def to_bytes(npages: int) -> int:
    return npages << PAGE_SHIFT
