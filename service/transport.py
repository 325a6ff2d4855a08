"""The Unix socket listener: created owner-only, as Firecracker and Cloud Hypervisor do theirs."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SocketPathInUse(RuntimeError):
    pass


@contextmanager
def unix_listener(path: Path) -> Iterator[socket.socket]:
    """A listening socket at ``path``, mode 0600 from the moment it exists; removed on exit.

    uvicorn's own ``uds=`` creates the socket 0666, readable by every local user for an instant
    and thereafter; binding under umask 0177 leaves no such window.
    """
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketPathInUse(f"{path} exists and is not a socket")
        path.unlink()  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(2048)
    sock.set_inheritable(True)
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)
