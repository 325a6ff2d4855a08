"""The background WAL checkpointer: it copies the log back while writers go on, and only for SQLite files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from service.store.checkpointer import WalCheckpointer


def test_the_log_is_copied_back_in_the_background(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # only the checkpointer copies the log back
    writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    checkpointer = WalCheckpointer(str(db), interval=0.01)
    checkpointer.start()
    try:
        for k in range(300):
            writer.execute("INSERT INTO t VALUES (?, ?)", (k, "x" * 2000))  # a page and more each
        # With the writer's own checkpoints off, the database file grows only by checkpoints.
        deadline = time.monotonic() + 10
        while db.stat().st_size < 300 * 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stat().st_size >= 300 * 2000
        assert checkpointer.checkpoints > 0
    finally:
        checkpointer.stop()
        writer.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone() == (300,)


def test_only_sqlite_files_get_one() -> None:
    assert WalCheckpointer.for_url("postgresql+psycopg://u@localhost/db") is None
    assert WalCheckpointer.for_url("sqlite://") is None
    assert WalCheckpointer.for_url("sqlite:///:memory:") is None
    made = WalCheckpointer.for_url("sqlite:///./here/broker.db")
    assert made is not None
    assert made._path == "./here/broker.db"


def test_stop_without_start_and_twice() -> None:
    c = WalCheckpointer("/nonexistent/dir/x.db", interval=0.01)
    c.stop()
    c.start()  # cannot open: logs and ends, SQLite's own checkpoints go on
    c.stop()
    c.stop()
