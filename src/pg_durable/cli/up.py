"""``pg-durable up``: an embedded PostgreSQL with the df schema and a worker, until Ctrl-C.

The cluster lives in a data directory the user chooses and is reused on the next start. Its
only role is the superuser ``postgres``, so database ``postgres`` gets
``pg_durable.enable_superuser_instances = on``; the banner says so and how to add a normal role.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import sys
from dataclasses import replace
from pathlib import Path

import psycopg

from pg_durable import __version__, schema
from pg_durable.cli.worker import (
    EXIT_CANCELLED,
    add_settings_arguments,
    load_worker_class,
    serve,
    settings_from_args,
)
from pg_durable.embedded import EmbeddedPostgres
from pg_durable.errors import ConfigurationError, EmbeddedServerError
from pg_durable.settings import ENV_PREFIX, Settings

logger = logging.getLogger(__name__)

DEFAULT_PORT = 55432
_DATABASE = "postgres"


def default_data_dir() -> Path:
    """$PG_DURABLE_DATA_DIR, else /var/lib/pg-durable for root, else ~/.local/share/pg-durable
    (or $XDG_DATA_HOME/pg-durable)."""
    explicit = os.environ.get(ENV_PREFIX + "DATA_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/pg-durable")
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "pg-durable"


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    raw = os.environ.get(ENV_PREFIX + "PORT")
    if not raw:
        return DEFAULT_PORT
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"PG_DURABLE_PORT: {raw!r} is not a port number") from exc


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port in TIME_WAIT is free for PostgreSQL too; a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _enable_superuser_instances(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER DATABASE postgres SET pg_durable.enable_superuser_instances = on")


def _psql(server: EmbeddedPostgres) -> str:
    if shutil.which("psql"):
        return "psql"
    shipped = server.installation.bin_dir / "psql"
    return str(shipped) if shipped.exists() else "psql"


def banner(server: EmbeddedPostgres, settings: Settings, *, reused: bool) -> str:
    """What ``up`` prints once everything runs: how to connect and what to try first."""
    inst = server.installation
    url = server.url(_DATABASE)
    host = f"127.0.0.1:{server.port}"
    kept = "reused" if reused else "created; reused on the next start"
    return f"""
pg-durable {__version__} is up: PostgreSQL {inst.major} ({inst.source}), df schema installed,
worker running (concurrency {settings.concurrency}, polling every {settings.poll_interval:g} s).
Data directory: {server.data_dir} ({kept})

Connect:
    {_psql(server)} {url}

A first workflow:
    SELECT df.start('SELECT ''Hello, durable world!''');  -- returns an instance id, e.g. 1a2b3c4d
    SELECT df.status('1a2b3c4d');
    SELECT df.result('1a2b3c4d');

This development server's only role is the superuser "postgres", so database "postgres" has
pg_durable.enable_superuser_instances = on (ALTER DATABASE postgres SET ...). For a normal role:
    CREATE ROLE alice LOGIN PASSWORD 'change-me';
    SELECT df.grant_usage('alice');
    -- then: psql postgresql://alice:change-me@{host}/{_DATABASE}

Press Ctrl-C to stop the worker and the server.
"""


def command(args: argparse.Namespace) -> int:
    """``pg-durable up``."""
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    port = _port(args)
    # Check every flag, the port and that an engine exists before touching the data directory.
    settings = settings_from_args(args, dsn="embedded")
    server = EmbeddedPostgres(data_dir, port=port)
    reused = server.initialized
    already = server.running_port()
    if already is not None:
        logger.warning(
            "PostgreSQL already runs in %s on port %d (a previous `pg-durable up`?); "
            "using it, and stopping it on exit",
            server.data_dir,
            already,
            extra={"action": "embedded_reuse_running"},
        )
        server.port = already
    elif not _port_is_free(port):
        raise EmbeddedServerError(
            f"port {port} on 127.0.0.1 is already in use; choose another with --port "
            "(or PG_DURABLE_PORT)"
        )
    load_worker_class()
    what = "Starting" if reused else "Creating"
    print(f"{what} PostgreSQL {server.installation.major} in {server.data_dir} ...", flush=True)
    try:
        server.start()
        dsn = server.dsn(_DATABASE)
        print(schema.install(dsn), flush=True)
        _enable_superuser_instances(dsn)
        settings = replace(settings, dsn=dsn)
        text = banner(server, settings, reused=reused)
        graceful = asyncio.run(serve(settings, on_started=lambda: print(text, flush=True)))
    finally:
        print("Stopping PostgreSQL ...", file=sys.stderr, flush=True)
        server.stop("fast")
    print("Stopped.", file=sys.stderr, flush=True)
    return 0 if graceful else EXIT_CANCELLED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``up`` command."""
    parser = subparsers.add_parser(
        "up",
        help="run an embedded PostgreSQL with the df schema and a worker, until Ctrl-C",
        description=(
            "Start an embedded PostgreSQL (pgserver's binaries or the machine's own), install "
            "the df schema, run a worker, print how to connect, and serve until Ctrl-C. "
            "The data directory is reused on the next start."
        ),
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help=(
            "the cluster's directory (env PG_DURABLE_DATA_DIR; default ~/.local/share/"
            "pg-durable, or /var/lib/pg-durable as root)"
        ),
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help=f"TCP port on 127.0.0.1 (env PG_DURABLE_PORT; default {DEFAULT_PORT})",
    )
    add_settings_arguments(parser, with_dsn=False)
    parser.set_defaults(func=command)
