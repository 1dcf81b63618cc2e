"""``pg-durable signal ID NAME [DATA]``: send a signal to an instance (``df.signal``)."""

from __future__ import annotations

import argparse
import sys

from pg_durable import client
from pg_durable.cli.connection import add_dsn_argument, connect


def command(args: argparse.Namespace) -> int:
    """``pg-durable signal``."""
    data: str = sys.stdin.read() if args.data == "-" else args.data
    with connect(args) as conn:
        client.signal(conn, args.id, args.name, data)
    print(f"sent signal {args.name!r} to {args.id.strip().lower()}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``signal`` command."""
    parser = subparsers.add_parser(
        "signal",
        help="send a signal to an instance (df.signal)",
        description=(
            "Send the signal NAME to a pending or running instance; its df.wait_for_signal "
            "for NAME receives DATA. A signal sent before the workflow waits for it is kept "
            "until it does."
        ),
    )
    parser.add_argument("id", metavar="ID", help="the instance id (8 hexadecimal characters)")
    parser.add_argument("name", metavar="NAME", help="the signal's name")
    parser.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        default="{}",
        help=(
            "the payload: JSON text is taken as that JSON value, other text as a string "
            "(default {}); - reads it from stdin"
        ),
    )
    add_dsn_argument(parser)
    parser.set_defaults(func=command)
