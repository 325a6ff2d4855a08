"""The fd hand-off listener: a Unix socket (mode 0600) where export tickets are redeemed for fds.

An entry point like the HTTP API: it parses a request, calls the hand-off use case, and answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading

from .client.handoff import MAX_MESSAGE, encode
from .domain.errors import DomainError
from .operations.broker import Broker
from .operations.handoff import Tickets, redeemed

log = logging.getLogger("gmem_broker.handoff")


class HandoffServer:
    def __init__(self, broker: Broker, tickets: Tickets, path: str) -> None:
        self.broker = broker
        self.tickets = tickets
        self.path = path
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # a socket left by a previous broker process
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Before listen(), so no client can connect while the mode is still the umask's.
            os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.settimeout(0.2)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="gmem-handoff", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                # EMFILE and the like pass; the listener must outlive them rather than spin.
                log.warning("hand-off accept failed: %s", exc)
                self._stop.wait(0.5)
                continue
            with conn:
                try:
                    self._answer(conn)
                except OSError as exc:
                    log.warning("hand-off connection failed: %s", exc)
                except Exception:
                    log.exception("hand-off request failed")
                    with contextlib.suppress(OSError):
                        conn.sendall(encode("ERR", {"code": "internal-error", "detail": "see the broker's log"}))

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        request = b""
        while not request.endswith(b"\n") and len(request) < MAX_MESSAGE:
            chunk = conn.recv(MAX_MESSAGE)
            if not chunk:
                break
            request += chunk
        verb, _, ticket = request.decode("ascii", "replace").strip().partition(" ")
        if verb != "REDEEM" or not ticket:
            conn.sendall(encode("ERR", {"code": "bad-request", "detail": "send REDEEM <ticket>"}))
            return
        try:
            with redeemed(self.broker, self.tickets, ticket) as memfd:
                body = {"size": memfd.size, "flags": memfd.flags}
                socket.send_fds(conn, [encode("OK", body)], [memfd.fd])
        except DomainError as err:
            log.info("hand-off refused: %s %s", err.code, err.detail)
            conn.sendall(encode("ERR", {"code": err.code, "detail": err.detail}))
