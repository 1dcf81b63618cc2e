"""``pg-durable install`` (the df schema by script) and ``pg-durable install-extension``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pg_durable import schema
from pg_durable.errors import ConfigurationError, SchemaError
from pg_durable.settings import ENV_PREFIX


def install_command(args: argparse.Namespace) -> int:
    """``pg-durable install``: install or upgrade the df schema in one database."""
    dsn = args.dsn or os.environ.get(ENV_PREFIX + "DSN")
    if not dsn:
        raise ConfigurationError("no database given: pass --dsn or set PG_DURABLE_DSN")
    print(schema.install(dsn))
    print(schema.setup_new_transaction_mode(dsn))
    return 0


def install_extension_command(args: argparse.Namespace) -> int:
    """``pg-durable install-extension``: write the control and script files for CREATE
    EXTENSION into a server's extension directory (or ``--target-dir``)."""
    target = Path(args.target_dir) if args.target_dir else schema.extension_dir(args.pg_config)
    try:
        written = schema.write_extension_files(target)
    except PermissionError as exc:
        raise SchemaError(
            f"cannot write into {target}: run as a user who may write there (the owner of the "
            "PostgreSQL installation, or root), or pass --target-dir"
        ) from exc
    for path in written:
        print(f"wrote {path}")
    if args.target_dir:
        print(
            "next: copy these files into the server's extension directory "
            "($(pg_config --sharedir)/extension), then, as a superuser, in each database: "
            "CREATE EXTENSION pg_durable;"
        )
    else:
        print("next: as a superuser, in each database: CREATE EXTENSION pg_durable;")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``install`` and ``install-extension`` commands."""
    install = subparsers.add_parser(
        "install",
        help="install or upgrade the df schema in a database",
        description=(
            "Install or upgrade the df schema by running its SQL script in one transaction. "
            "Idempotent and safe to rerun; needs no superuser and no file access on the "
            "server, so it works on managed PostgreSQL. The connecting role owns the schema. "
            "When the role may (a superuser, on a server with the dblink extension), it also "
            "sets up df.start(..., transaction_mode => 'new') and says so; otherwise it says "
            "why not."
        ),
    )
    install.add_argument(
        "--dsn", metavar="URL", help="database to install into (env PG_DURABLE_DSN)"
    )
    install.set_defaults(func=install_command)

    extension = subparsers.add_parser(
        "install-extension",
        help="write pg_durable's extension files for CREATE EXTENSION pg_durable",
        description=(
            "Write pg_durable.control and pg_durable--<version>.sql into the extension "
            "directory of a local PostgreSQL server (pg_config --sharedir), so that "
            "CREATE EXTENSION pg_durable creates the very same objects as `pg-durable install`."
        ),
    )
    extension.add_argument(
        "--pg-config",
        metavar="PATH",
        help="pg_config of the target server (default: pg_config on PATH)",
    )
    extension.add_argument(
        "--target-dir",
        metavar="DIR",
        help="write the files here instead of the server's extension directory",
    )
    extension.set_defaults(func=install_extension_command)
