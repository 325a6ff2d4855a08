"""Throwaway PostgreSQL clusters for tests.

Starts a private, fsync-less PostgreSQL server in a temporary directory on a
free TCP port of 127.0.0.1, so integration tests can run against the real
database engine without Docker or a shared server::

    with ThrowawayCluster() as cluster:
        engine = create_engine(cluster.url)
        other_url = cluster.create_database("scratch")

PostgreSQL refuses to run as root, so when the tests run as root the server
binaries are run as the ``postgres`` user (via ``runuser``) and the temporary
directory is handed to that user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

__all__ = [
    "ClusterError",
    "ThrowawayCluster",
    "find_pg_bindir",
    "pytest_skip_reason",
]

SERVER_USER = "postgres"
"""OS user (and database superuser) the cluster runs as."""

_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_START_ATTEMPTS = 3
_START_TIMEOUT_S = 60

_SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "logging_collector": "off",
}


class ClusterError(RuntimeError):
    """initdb, pg_ctl or CREATE DATABASE failed; the message carries their output."""


def _has_server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin -> numeric version, so 15 sorts above 9.6.
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts)


def find_pg_bindir() -> Path | None:
    """Return a directory holding initdb, pg_ctl and postgres, or None.

    Looks, in order, at ``pg_config --bindir``, the highest-version
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu layout) and ``initdb`` on PATH
    (symlinks resolved, since Debian only links some tools into /usr/bin).
    """
    candidates: list[Path] = []

    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append(Path(out))

    debian = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.is_dir()),
        key=_version_key,
        reverse=True,
    )
    candidates.extend(debian)

    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)

    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    return None


def _running_as_root() -> bool:
    return os.geteuid() == 0


def pytest_skip_reason() -> str | None:
    """Why a throwaway cluster cannot be started here, or None if it can."""
    if find_pg_bindir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via "
            "pg_config, /usr/lib/postgresql/*/bin or PATH; install the "
            "'postgresql' package (Debian/Ubuntu) to run PostgreSQL tests"
        )
    if _running_as_root():
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return (
                f"running as root but there is no {SERVER_USER!r} user to run PostgreSQL as (it refuses to run as root)"
            )
        if shutil.which("runuser") is None:
            return "running as root but 'runuser' is not available to drop privileges"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayCluster:
    """A private PostgreSQL server living in a temporary directory.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). After
    start, :attr:`url` is a SQLAlchemy URL for a freshly created database and
    :meth:`create_database` makes more.
    """

    def __init__(
        self,
        dbname: str = "gmem_broker_test",
        *,
        bindir: Path | None = None,
    ) -> None:
        _check_db_name(dbname)
        self.dbname = dbname
        self._bindir = bindir
        self._root: Path | None = None
        self._port: int | None = None
        self._url: str | None = None
        self._as_root = _running_as_root()
        self.startup_seconds: float | None = None
        """Wall time of :meth:`start` (initdb + server start + createdb)."""

    # -- public API --------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise ClusterError("cluster is not running")
        return self._port

    @property
    def socket_dir(self) -> Path:
        return self._require_root()

    @property
    def url(self) -> str:
        if self._url is None:
            raise ClusterError("cluster is not running")
        return self._url

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy (psycopg 3) URL for database ``dbname`` in this cluster."""
        return f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def dsn_for(self, dbname: str) -> str:
        """libpq connection string (for psycopg.connect) for ``dbname``."""
        return f"host=127.0.0.1 port={self.port} user={SERVER_USER} dbname={dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        _check_db_name(name)
        try:
            with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise ClusterError(f"CREATE DATABASE {name} failed: {exc}") from exc
        return self.url_for(name)

    def start(self) -> Self:
        if self._root is not None:
            raise ClusterError("cluster already started")
        bindir = self._bindir or find_pg_bindir()
        if bindir is None:
            raise ClusterError(pytest_skip_reason() or "PostgreSQL binaries not found")
        self._bindir = bindir

        began = time.monotonic()
        self._root = self._make_root()
        try:
            self._initdb()
            self._start_server()
            self._url = self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (immediate mode) and delete its directory. Idempotent."""
        root, self._root = self._root, None
        self._url = None
        if root is None:
            return
        try:
            if (root / "data" / "postmaster.pid").exists():
                # Best effort: the directory goes away regardless.
                self._run(
                    [
                        "pg_ctl",
                        "stop",
                        "-D",
                        str(root / "data"),
                        "-m",
                        "immediate",
                        "-w",
                    ],
                    cwd=root,
                    check=False,
                )
        finally:
            self._port = None
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------

    def _require_root(self) -> Path:
        if self._root is None:
            raise ClusterError("cluster is not running")
        return self._root

    def _make_root(self) -> Path:
        parent: str | None = None
        if self._as_root and not _world_traversable(Path(tempfile.gettempdir())):
            # e.g. TMPDIR under /root: the postgres user could not reach it.
            parent = "/tmp"
        root = Path(tempfile.mkdtemp(prefix="gmem-pg-", dir=parent))
        if self._as_root:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o700)
        return root

    def _command(self, argv: Sequence[str]) -> list[str]:
        assert self._bindir is not None
        cmd = [str(self._bindir / argv[0]), *argv[1:]]
        if self._as_root:
            return ["runuser", "-u", SERVER_USER, "--", *cmd]
        return cmd

    def _run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self._command(argv)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"{argv[0]} failed to run: {exc}") from exc
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{argv[0]} exited with status {proc.returncode}\n"
                f"command: {' '.join(cmd)}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def _initdb(self) -> None:
        root = self._require_root()
        data = root / "data"
        self._run(
            [
                "initdb",
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                SERVER_USER,
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            cwd=root,
        )
        # Written after initdb instead of passed via pg_ctl -o to avoid quoting
        # issues; appending keeps the file's ownership by the server user.
        settings = dict(_SERVER_SETTINGS)
        settings["unix_socket_directories"] = _quote_conf(str(root))
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# ThrowawayCluster\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def _start_server(self) -> None:
        root = self._require_root()
        data = root / "data"
        log = root / "server.log"
        last_error: ClusterError | None = None
        for _ in range(_START_ATTEMPTS):
            # The port can be taken between probing and binding; retry then.
            port = _free_port()
            log.unlink(missing_ok=True)
            proc = self._run(
                [
                    "pg_ctl",
                    "start",
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "-o",
                    f"-p {port}",
                ],
                cwd=root,
                check=False,
                timeout=_START_TIMEOUT_S + 30,
            )
            if proc.returncode == 0:
                self._port = port
                return
            server_log = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            last_error = ClusterError(
                f"pg_ctl start exited with status {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                f"server log ({log}):\n{server_log}"
            )
            if "Address already in use" not in server_log:
                break
        assert last_error is not None
        raise last_error


def _check_db_name(name: str) -> None:
    if not _DB_NAME_RE.match(name):
        raise ValueError(f"unsafe database name {name!r}; use [a-z_][a-z0-9_]*")


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _world_traversable(path: Path) -> bool:
    """Whether every directory from / to ``path`` is searchable by other users."""
    for p in (path.resolve(), *path.resolve().parents):
        try:
            if not p.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True
