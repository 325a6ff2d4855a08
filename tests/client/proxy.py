"""A TCP proxy in front of the test broker that can lose an answer: the request reaches the broker
and is applied, then the client's connection is closed before the response gets back to it, or the
answer is replaced by a gateway's error (as a load balancer that timed out would send)."""

from __future__ import annotations

import contextlib
import socket
import threading


class LossyProxy:
    def __init__(self, upstream_url: str) -> None:
        host, port = upstream_url.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sent: list[bytes] = []  # every chunk the client sent, in order
        self.dropped = 0
        self._to_drop = 0
        self._instead = b""
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_answers(self, count: int = 1, *, instead: int | None = None) -> None:
        """Lose the next ``count`` answers; with ``instead``, send that status in their place."""
        with self._lock:
            self._to_drop = count
            self._instead = (
                f"HTTP/1.1 {instead} Gateway\r\ncontent-type: text/plain\r\ncontent-length: 7\r\n"
                "connection: close\r\n\r\ngateway".encode()
                if instead
                else b""
            )

    def requests_text(self) -> str:
        return b"".join(self.sent).decode("latin-1")

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(conn, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, True), daemon=True).start()

    def _take_drop(self) -> bool:
        with self._lock:
            if self._to_drop == 0:
                return False
            self._to_drop -= 1
            self.dropped += 1
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                # The broker only answers once it has applied the request: losing the answer here is
                # the case an Idempotency-Key exists for.
                if answers and self._take_drop():
                    if self._instead:
                        dst.sendall(self._instead)
                    break
                if not answers:
                    with self._lock:
                        self.sent.append(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
