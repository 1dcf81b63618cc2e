"""``pg-durable cancel ID``: cancel an instance (``df.cancel``)."""

from __future__ import annotations

import argparse

from pg_durable import client
from pg_durable.cli.connection import add_dsn_argument, connect


def command(args: argparse.Namespace) -> int:
    """``pg-durable cancel``: exit status 0 also when the instance had already finished."""
    with connect(args) as conn:
        cancelled = client.cancel(conn, args.id, args.reason)
        state = client.status(conn, args.id)
    instance = args.id.strip().lower()
    if cancelled:
        print(f"{instance} cancelled")
    else:
        print(f"{instance} had already finished ({state}); nothing to cancel")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``cancel`` command."""
    parser = subparsers.add_parser(
        "cancel",
        help="cancel an instance (df.cancel)",
        description=(
            "Cancel a pending or running instance: no further step runs, and a step running "
            "now does not commit. An instance that has finished stays as it is."
        ),
    )
    parser.add_argument("id", metavar="ID", help="the instance id (8 hexadecimal characters)")
    parser.add_argument("--reason", help="why, for df.cancel's reply (default: Cancelled by user)")
    add_dsn_argument(parser)
    parser.set_defaults(func=command)
