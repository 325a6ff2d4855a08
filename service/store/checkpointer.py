"""Background WAL checkpoints for the SQLite store.

SQLite copies the write-ahead log back into the database file inside whichever commit takes the
log past ``wal_autocheckpoint`` pages (1,000), fsyncing both files there. That commit belongs to a
batch of mutations whose requests all wait for it: measured in-process, checkpoints made the
average commit 250-280 µs instead of 190-200 µs, and each one stalled its batch for milliseconds.
This thread checkpoints in PASSIVE mode (it never waits for a lock and never blocks a reader or
the writer) often enough that the log rarely reaches the automatic threshold, which stays as the
backstop should this thread fall behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from sqlalchemy.engine import URL, make_url

log = logging.getLogger("gmem_broker")

INTERVAL_SECONDS = 0.05


class WalCheckpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection."""

    def __init__(self, path: str, interval: float = INTERVAL_SECONDS) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # passes that copied frames back, for tests and curiosity

    @classmethod
    def for_url(cls, url: str | URL, interval: float = INTERVAL_SECONDS) -> WalCheckpointer | None:
        """One for a SQLite file URL; None for other databases and in-memory SQLite."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return None
        return cls(parsed.database, interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error:
            log.exception("WAL checkpointer: cannot open %s; SQLite's own checkpoints go on", self._path)
            return
        try:
            while not self._stop.wait(self._interval):
                try:
                    # (busy, frames in the log, frames copied back)
                    _, _, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    log.exception("WAL checkpointer: checkpoint failed; retrying")
                    continue
                if copied > 0:
                    self.checkpoints += 1
        finally:
            conn.close()
