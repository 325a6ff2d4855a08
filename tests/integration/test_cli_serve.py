"""The installed command: `db upgrade`, `serve` refusing bad schemas, and durability across kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from service.store.migrate import upgrade

from ..api.helpers import MIB, all_extents, guest, ok
from ..conftest import free_port

CLI = [sys.executable, "-c", "from service.cli import main; main()"]


def run_cli(args: list[str], url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GMEM_BROKER_DATABASE_URL": url}
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def start(url: str, cwd: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "GMEM_BROKER_DATABASE_URL": url}
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not become ready")


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = run_cli(["serve", "--port", str(free_port())], url, tmp_path)
    assert result.returncode == 2
    assert "gmem-broker db upgrade" in result.stderr


def test_serve_refuses_a_newer_schema(fresh_db_url: str, tmp_path: Path) -> None:
    engine = create_engine(fresh_db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    result = run_cli(["serve", "--port", str(free_port())], fresh_db_url, tmp_path)
    assert result.returncode == 2
    assert "newer than this code" in result.stderr


def test_db_upgrade_then_status(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    assert run_cli(["db", "status"], url, tmp_path).returncode == 1
    up = run_cli(["db", "upgrade"], url, tmp_path)
    assert up.returncode == 0, up.stderr
    status = run_cli(["db", "status"], url, tmp_path)
    assert status.returncode == 0
    assert "database: 0003" in status.stdout


def test_default_database_is_a_sqlite_file_in_the_working_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMEM_BROKER_")}
    subprocess.run([*CLI, "db", "upgrade"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    assert (tmp_path / "gmem-broker.db").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="kill -9 semantics")
def test_acknowledged_operations_survive_kill_9(fresh_db_url: str, tmp_path: Path) -> None:
    proc, base = start(fresh_db_url, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            vm_id, memfd_id = guest(c, MIB)
            ok(c.post(f"/v1/vms/{vm_id}/memfds/{memfd_id}/allocate", json={"offset": 0, "length": MIB // 2}))
            ok(c.post(f"/v1/vms/{vm_id}/convert", json={"ranges": [{"gpa": 4 << 30, "size": 8192, "to": "shared"}]}))
            expected = all_extents(c, vm_id)
            generation = ok(c.get(f"/v1/vms/{vm_id}"))["generation"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    proc, base = start(fresh_db_url, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            assert all_extents(c, vm_id) == expected
            assert ok(c.get(f"/v1/vms/{vm_id}"))["generation"] == generation
            assert ok(c.get("/v1/host"))["reconcile"] == []
    finally:
        proc.terminate()
        proc.wait(30)


def test_upgrade_is_idempotent(fresh_db_url: str) -> None:
    upgrade(fresh_db_url)
    upgrade(fresh_db_url)


def test_serve_stops_on_sigterm_with_an_event_stream_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    proc, base = start(url, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=30) as c, c.stream("GET", "/v1/events") as stream:
            assert stream.status_code == 200
            began = time.monotonic()
            proc.terminate()
            # uvicorn re-raises the signal once it has shut down.
            assert proc.wait(20) in (0, -signal.SIGTERM)
            assert time.monotonic() - began < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_prune_journal_keeps_the_newest_operations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    proc, base = start(url, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            vm_id, _ = guest(c, MIB)  # three operations: VM, memfd, memslot
    finally:
        proc.terminate()
        proc.wait(30)
    pruned = run_cli(["db", "prune-journal", "--keep", "1"], url, tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert "2 operation(s) pruned" in pruned.stdout
    engine = create_engine(url)
    with engine.connect() as conn:
        kinds = conn.execute(text("SELECT kind FROM operations WHERE vm_id = :v"), {"v": vm_id}).scalars().all()
    engine.dispose()
    assert kinds == ["create-memslot"]
