"""``pg-durable ui``: the web dashboard (pg_durable.ui) until Ctrl-C.

It binds to 127.0.0.1 unless told otherwise, reads as the role of ``--dsn`` (row-level
security applies) and is read-only unless ``--allow-actions`` lets it signal and cancel.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from pg_durable.cli.connection import add_dsn_argument, connect
from pg_durable.errors import ConfigurationError, SchemaError
from pg_durable.settings import ENV_PREFIX
from pg_durable.ui.app import LOOPBACK_NAMES, Dashboard, Options
from pg_durable.ui.database import Database, viewer
from pg_durable.ui.server import make_server

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def command(args: argparse.Namespace) -> int:
    """``pg-durable ui``."""
    if args.refresh < 0:
        raise ConfigurationError(f"--refresh must be 0 or more seconds (got {args.refresh:g})")
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be from 0 to 65535 (got {args.port})")
    with connect(args) as conn:  # fail now, in one line, rather than on the first page
        who = viewer(conn)
    if not who.installed:
        raise SchemaError(
            "the df schema is not installed in this database: run pg-durable install first"
        )
    host = args.host.strip("[]")
    loopback = is_loopback(host)
    options = Options(
        allow_actions=args.allow_actions,
        refresh=args.refresh,
        allowed_hosts=LOOPBACK_NAMES | {host.lower()} if loopback else None,
    )
    dsn = args.dsn or os.environ[ENV_PREFIX + "DSN"]
    database = Database(dsn)
    dashboard = Dashboard(database, who, options)
    try:
        server = make_server(dashboard, host, args.port)
    except OSError as exc:
        database.close()
        raise ConfigurationError(
            f"cannot listen on {host} port {args.port}: {exc.strerror or exc}; "
            "choose another with --port (0: any free port)"
        ) from None
    port = int(server.server_address[1])
    mode = "signal and cancel allowed" if args.allow_actions else "read-only"
    print(
        f"pg-durable ui: serving {_url(host, port)} as role {who.role} ({mode}); Ctrl-C stops",
        flush=True,
    )
    if who.sees_all:
        print(
            f"pg-durable ui: note: role {who.role} is a superuser or bypasses row-level "
            "security: the dashboard shows every role's instances",
            file=sys.stderr,
        )
    if not loopback:
        print(
            f"pg-durable ui: warning: listening on {host}, beyond this machine: whoever "
            f"reaches it sees what role {who.role} sees"
            + (" and can signal and cancel" if args.allow_actions else "")
            + ", without logging in",
            file=sys.stderr,
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("pg-durable ui: stopped", file=sys.stderr)
    finally:
        server.server_close()
        database.close()
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ui`` command."""
    parser = subparsers.add_parser(
        "ui",
        help="serve a web dashboard of instances, their graphs and the workers",
        description=(
            "Serve a web dashboard: instances with filters and live refresh, each instance's "
            "graph with its nodes' statuses, timings, attempts, results and errors, and the "
            "worker fleet. It reads through the df SQL API as the role of --dsn, so "
            "row-level security applies. Read-only unless --allow-actions (docs/ui.md)."
        ),
    )
    add_dsn_argument(parser)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on (default {DEFAULT_PORT}; 0: any free port, printed)",
    )
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="let the dashboard signal and cancel instances (as the --dsn role)",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between live refreshes of a page (default 2; 0: none)",
    )
    parser.set_defaults(func=command)
