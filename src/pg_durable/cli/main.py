"""The ``pg-durable`` entry point: parse the command line, configure logging, report errors.

Every failure ends here: the message and its cause chain go to stderr and the exit status is
non-zero (1; 2 for a usage error; 130 after Ctrl-C). ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

import psycopg

from pg_durable import __version__, schema
from pg_durable.cli import cancel, install, ls, show, start, ui, up, wait, worker
from pg_durable.cli import logging as cli_logging
from pg_durable.cli import signal as signal_command
from pg_durable.errors import PgDurableError
from pg_durable.settings import ENV_PREFIX, Settings

#: Failures a user can act on from the message alone; anything else is a bug: traceback.
_EXPECTED = (PgDurableError, psycopg.Error, OSError)


def version_command(args: argparse.Namespace) -> int:
    """``pg-durable version``."""
    print(f"pg-durable {__version__} (df schema {schema.SCHEMA_VERSION})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pg-durable`` and all its commands."""
    parser = argparse.ArgumentParser(
        prog="pg-durable",
        description=(
            "Durable SQL workflows inside PostgreSQL: the df schema of pg_durable, "
            "executed by a Python worker."
        ),
        epilog="Run `pg-durable COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"pg-durable {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up.register(commands)
    install.register(commands)
    worker.register(commands)
    start.register(commands)
    ls.register(commands)
    show.register(commands)
    wait.register(commands)
    signal_command.register(commands)
    cancel.register(commands)
    ui.register(commands)
    version = commands.add_parser("version", help="print the version and exit")
    version.set_defaults(func=version_command)
    for sub in commands.choices.values():
        # Accepted after the command name too; SUPPRESS keeps a global -v from being reset.
        sub.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of an error",
        )
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    defaults = Settings()
    level = (
        getattr(args, "log_level", None)
        or os.environ.get(ENV_PREFIX + "LOG_LEVEL")
        or defaults.log_level
    )
    fmt = (
        getattr(args, "log_format", None)
        or os.environ.get(ENV_PREFIX + "LOG_FORMAT")
        or defaults.log_format
    )
    cli_logging.configure(level, fmt)


def describe(exc: BaseException) -> str:
    """One line for an exception: its message, with the type unless it is one of ours."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, PgDurableError):
        return text
    return f"{type(exc).__name__}: {text}"


def cause_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions that caused it, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return chain


def report(exc: BaseException, *, verbose: bool) -> None:
    """Print ``exc`` and its causes (and, when verbose or unexpected, the traceback)."""
    if verbose or not isinstance(exc, _EXPECTED):
        traceback.print_exception(exc, file=sys.stderr)
    first, *causes = cause_chain(exc)
    print(f"pg-durable: error: {describe(first)}", file=sys.stderr)
    for cause in causes:
        print(f"  caused by: {describe(cause)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pg-durable`` with ``argv`` (default: the process's arguments); the exit status."""
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    try:
        _configure_logging(args)
        return int(args.func(args))
    except KeyboardInterrupt:
        print("pg-durable: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the boundary of the program: every error becomes a message
        report(exc, verbose=verbose)
        return 1
