"""DESIGN section 4, as the errno the kernel gives for each rule the broker mirrors.

The raw-kernel tests check each entry against /dev/kvm; the API tests check that both backends
answer the same request with the same problem type and this errno. When a kernel changes an errno,
the raw test of that entry fails and names the rule that moved.
"""

from __future__ import annotations

KERNEL_ERRNO: dict[str, str] = {
    "1 memfd size zero": "EINVAL",
    "1 memfd size unaligned": "EINVAL",
    "1 memfd unknown flag": "EINVAL",
    "2 fallocate without KEEP_SIZE": "EOPNOTSUPP",
    "2 fallocate other mode": "EOPNOTSUPP",
    "3 allocate unaligned offset": "EINVAL",
    "3 allocate unaligned length": "EINVAL",
    "3 allocate zero length": "EINVAL",
    "3 allocate past the end": "EINVAL",
    "3 punch zero length": "EINVAL",
    "3 punch unaligned length": "EINVAL",
    "4 memslot unaligned gpa": "EINVAL",
    "4 memslot offset+size past the memfd": "EINVAL",
    "4 memslot gpa overlap": "EEXIST",
    "4 memslot memfd overlap": "EINVAL",
    "4 memslot foreign memfd": "EINVAL",
    "4 memslot past the guest address space": "EINVAL",
    "5 set-attributes without the capability": "ENOTTY",
    "6 VM ioctl from another process": "EIO",
    "7 read of a memfd": "EINVAL",
    "7 lseek of a memfd": "ESPIPE",
    "7 mmap without the mmap flag": "ENODEV",
    "7 MAP_PRIVATE": "EINVAL",
    # and a touch of a private page through a mapping is SIGBUS (test_rule_7_touching_...)
    "8 resize": "EINVAL",
    "8 memslot moved": "EINVAL",
    "8 memslot read-only": "EINVAL",
    "8 memslot dirty logging": "EINVAL",
    "vm type not offered": "EINVAL",
    # move_pages(2) to a node without memory fails the whole call (test_move_pages_rules).
    "migrate to a node not online": "ENODEV",
}
