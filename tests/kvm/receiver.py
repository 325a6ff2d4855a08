"""A separate process that fetches a memfd over the hand-off socket, as a VMM would.

Usage: python -m tests.kvm.receiver SOCKET TICKET PGOFF. Prints one JSON line: what it received,
the sha256 of the page it read through its own mapping, and whether its fallocate worked.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import sys

from service.backends.kvm import uapi
from service.client.handoff import HandoffRefused, fetch_memfd

PAGE = 4096


def main(socket_path: str, ticket: str, pgoff: int) -> dict[str, object]:
    try:
        memfd = fetch_memfd(socket_path, ticket)
    except HandoffRefused as refused:
        return {"refused": refused.code, "detail": refused.detail}
    with memfd, mmap.mmap(memfd.fd, PAGE, mmap.MAP_SHARED, offset=pgoff * PAGE) as page:
        digest = hashlib.sha256(page[:]).hexdigest()
        # fds handed off are good for fallocate (DESIGN rule 6): allocate the page after it.
        uapi.fallocate(memfd.fd, uapi.FALLOC_FL_KEEP_SIZE, (pgoff + 1) * PAGE, PAGE, "fallocate")
        return {"size": memfd.size, "flags": memfd.flags, "sha256": digest, "fallocate": "ok"}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))  # noqa: T201
