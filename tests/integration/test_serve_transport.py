"""`gmem-broker serve` as operators run it: a Unix socket, tokens from a file, JSON logs, and refusals."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import httpx

from service.store.migrate import upgrade

from ..conftest import free_port
from .test_cli_serve import CLI, run_cli

TOKEN = "uds-admin-token-0123456789"


def test_serve_on_a_unix_socket_with_tokens_and_json_logs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    sock = tmp_path / "broker.sock"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# operators\n{TOKEN} admin\n")
    env = {
        **os.environ,
        "GMEM_BROKER_DATABASE_URL": url,
        "GMEM_BROKER_TOKENS_FILE": str(tokens),
        "GMEM_BROKER_LOG_FORMAT": "json",
        "GMEM_BROKER_ACCESS_LOG": "true",
    }
    serve = [*CLI, "serve", "--uds", str(sock)]
    proc = subprocess.Popen(serve, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no socket"
            time.sleep(0.05)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://broker", timeout=30) as c:
            while c.get("/readyz").status_code != 200:
                time.sleep(0.05)
            assert c.get("/v1/vms", headers={"X-Request-ID": "uds-401"}).status_code == 401
            authed = {"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "uds-201"}
            resp = c.post("/v1/vms", json={"name": "vm-uds", "vm_type": "default"}, headers=authed)
            assert resp.status_code == 201, resp.text
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert not sock.exists(), "the socket file is removed on shutdown"
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records, "no log lines"
    access = {r["request_id"]: r for r in records if r["logger"] == "gmem_broker.access"}
    assert access["uds-401"]["status"] == 401
    assert access["uds-201"]["status"] == 201
    assert access["uds-201"]["route"] == "/v1/vms"
    assert access["uds-201"]["principal"] == "token-1"
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert TOKEN not in stderr


def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    result = run_cli(["serve", "--host", "0.0.0.0", "--port", str(free_port())], url, tmp_path)
    assert result.returncode == 2
    assert "0.0.0.0 is not a loopback address and no tokens are configured" in result.stderr


def test_serve_refuses_bad_token_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    env = {**os.environ, "GMEM_BROKER_DATABASE_URL": url, "GMEM_BROKER_TOKENS": "tok-0123456789abcdef superuser"}
    result = subprocess.run(
        [*CLI, "serve", "--port", str(free_port())], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "unknown scope(s) superuser" in result.stderr
    assert "tok-0123456789abcdef" not in result.stderr


def test_serve_refuses_a_socket_path_that_is_a_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(url)
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    result = run_cli(["serve", "--uds", str(path)], url, tmp_path)
    assert result.returncode == 2
    assert "exists and is not a socket" in result.stderr
    assert path.read_text() == "keep me"
