"""The background WAL checkpointer: it copies the log back while writers go on, and only for SQLite files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from service.store import checkpointer as checkpointer_module
from service.store.checkpointer import NUDGE_COMMITS, WalCheckpointer
from tests.conftest import RunningServer, make_app


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


def _wal_writer(db: Path) -> sqlite3.Connection:
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    return writer


def _wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_commits_nudge_a_checkpoint_before_the_timer(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    writer = _wal_writer(db)
    checkpointer = WalCheckpointer(str(db), interval=3600)  # the timer never fires here
    checkpointer.start()
    try:
        writer.execute("INSERT INTO t VALUES (1, ?)", ("x" * 2000,))
        for _ in range(NUDGE_COMMITS - 1):
            checkpointer.nudge()
        assert not _wait_for(lambda: checkpointer.checkpoints > 0, 0.3)
        checkpointer.nudge()
        assert _wait_for(lambda: checkpointer.checkpoints > 0, 10)
    finally:
        checkpointer.stop()
        writer.close()


def test_the_app_nudges_its_checkpointer_on_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.store.migrate import upgrade

    monkeypatch.setattr(checkpointer_module, "INTERVAL_SECONDS", 3600.0)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    app = make_app(url, handoff_socket=str(tmp_path / "h.sock"))
    with RunningServer(app) as server, httpx.Client(base_url=server.url) as client:
        checkpointer = app.state.checkpointer
        assert checkpointer is not None
        assert checkpointer.checkpoints == 0
        for i in range(NUDGE_COMMITS):  # a VM's creation commits twice (journalled, then applied)
            assert client.post("/v1/vms", json={"name": f"n{i}", "vm_type": "sw_protected"}).status_code == 201
        assert _wait_for(lambda: checkpointer.checkpoints > 0, 10)
