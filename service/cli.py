"""The ``gmem-broker`` command: serve, db upgrade, openapi, bench, and the client commands (cli_commands)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from . import cli_commands
from .settings import Settings

# Event streams never finish on their own; without a bound, shutdown would wait for them forever.
# Their clients reconnect with Last-Event-ID.
GRACEFUL_SHUTDOWN_SECONDS = 3

cli = typer.Typer(
    help="gmem-broker: the control plane for confidential-VM private memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
cli.add_typer(db, name="db")
cli_commands.register(cli)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default GMEM_BROKER_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default GMEM_BROKER_PORT or 8000)")] = None,
    uds: Annotated[Path | None, typer.Option(help="listen on this Unix socket (mode 0600) instead of TCP")] = None,
) -> None:
    """Serve the REST API (one process: it owns the VMs' kernel objects)."""
    import uvicorn

    from .api.auth import TokenConfigError, exposure_problem, load_tokens
    from .app import create_app
    from .backends.factory import BackendUnavailable
    from .logs import configure
    from .store.db import make_engine
    from .store.migrate import schema_status
    from .transport import SocketPathInUse, unix_listener

    settings = Settings()
    configure(settings.log_format, settings.log_level)
    bind_host = host or settings.host
    try:
        # A Unix socket is reached only by local users the file mode admits: like loopback, it may go open.
        refusal = exposure_problem(None if uds else bind_host, load_tokens(settings))
    except TokenConfigError as exc:
        refusal = str(exc)
    if refusal is not None:
        typer.echo(f"gmem-broker: refusing to start: {refusal}", err=True)
        raise typer.Exit(2)
    engine = make_engine(settings.database_url)
    status = schema_status(engine, settings.database_url)
    if not status.ok:
        typer.echo(f"gmem-broker: refusing to start: {status.problem()}", err=True)
        raise typer.Exit(2)
    try:
        app = create_app(settings, engine=engine, serving=True)
    except BackendUnavailable as exc:
        typer.echo(f"gmem-broker: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from exc
    # log_config=None keeps uvicorn from replacing the handlers `configure` installed.
    if uds is None:
        port = port if port is not None else settings.port
        uvicorn.run(
            app,
            host=bind_host,
            port=port,
            log_level=settings.log_level,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        return
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    # uvicorn re-raises the SIGTERM it caught once it has shut down; exiting through Python instead
    # lets the listener remove its socket file.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        with unix_listener(uds) as sock:
            uvicorn.Server(config).run(sockets=[sock])
    except SocketPathInUse as exc:
        typer.echo(f"gmem-broker: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from exc


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@db.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Run the Alembic migrations up to REVISION."""
    from .store.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url, revision)
    typer.echo(f"gmem-broker: database at {revision}")


@db.command("status")
def db_status() -> None:
    """Show the schema revision of the database and of the code."""
    from .store.db import make_engine
    from .store.migrate import schema_status

    settings = Settings()
    status = schema_status(make_engine(settings.database_url), settings.database_url)
    typer.echo(f"database: {status.current or '(none)'}  code: {status.head}")
    if not status.ok:
        typer.echo(status.problem(), err=True)
        raise typer.Exit(1)


@db.command("prune-journal")
def db_prune_journal(
    keep: Annotated[int, typer.Option(min=0, help="finished operations to keep, newest first")] = 100_000,
) -> None:
    """Forget old finished operations; event streams resuming from before them get 410."""
    from .operations.events import prune_journal
    from .store.db import make_engine
    from .store.uow import SqlUnitOfWork

    settings = Settings()
    engine = make_engine(settings.database_url)
    removed = prune_journal(lambda: SqlUnitOfWork(engine), keep)
    typer.echo(f"gmem-broker: {removed} operation(s) pruned from the journal")


@cli.command()
def openapi(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default stdout)")] = None,
) -> None:
    """Print (or write) the OpenAPI document generated from the app."""
    from .openapi_doc import openapi_json

    text = openapi_json()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")


@cli.command()
def bench(
    duration: Annotated[float, typer.Option(help="seconds per measurement")] = 5.0,
    connections: Annotated[int, typer.Option(help="concurrent connections")] = 16,
    batch_ranges: Annotated[int, typer.Option(help="ranges per convert batch")] = 1000,
    range_pages: Annotated[int, typer.Option(help="pages per range in batches")] = 64,
    rounds: Annotated[int, typer.Option(help="alternating rounds of (a) and (b); figures are medians")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
    kvm: Annotated[
        bool, typer.Option("--kvm", help="also measure the kvm backend on /dev/kvm next to the raw syscalls")
    ] = False,
) -> None:
    """Start the service on a fresh SQLite file and measure it over loopback."""
    from .bench import run_bench

    figures = run_bench(
        duration=duration, connections=connections, batch_ranges=batch_ranges, range_pages=range_pages, rounds=rounds
    )
    if kvm:
        from .bench_kvm import run_kvm_bench

        figures["kvm"] = run_kvm_bench(duration=duration, batch_ranges=batch_ranges, range_pages=range_pages)
    if json_out:
        typer.echo(json.dumps(figures, indent=2))


def main() -> None:
    cli()
