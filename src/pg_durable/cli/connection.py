"""The database connection of the commands that read and steer workflows (ls, show, signal,
cancel, wait, start): ``--dsn`` or ``PG_DURABLE_DSN``, as ``pg-durable worker`` takes it.

They connect as the role the DSN names and go only through the df SQL API, so row-level
security applies: a role sees and steers its own instances only.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pg_durable.errors import ConfigurationError, PgDurableError
from pg_durable.settings import ENV_PREFIX


class DatabaseError(PgDurableError):
    """What the database said, in one line: its message without CONTEXT and the like."""


def one_line(exc: psycopg.Error) -> str:
    """The message of a database error on one line (the primary message, and a server's hint)."""
    primary = exc.diag.message_primary if exc.diag is not None else None
    if not primary:
        return " ".join(str(exc).split()) or type(exc).__name__
    hint = exc.diag.message_hint
    return f"{primary} (hint: {' '.join(hint.split())})" if hint else primary


def add_dsn_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--dsn``."""
    parser.add_argument(
        "--dsn",
        metavar="URL",
        help=(
            "database to connect to, as a libpq URL or key=value string, as the role whose "
            f"instances to see (env {ENV_PREFIX}DSN)"
        ),
    )


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to ``--dsn`` (else ``PG_DURABLE_DSN``), closed on exit; a
    database error raised inside becomes a :class:`DatabaseError` of one line.

    Raises:
        ConfigurationError: neither is given.
        DatabaseError: the connection failed, or a statement did.
    """
    dsn = getattr(args, "dsn", None) or os.environ.get(ENV_PREFIX + "DSN")
    if not dsn:
        raise ConfigurationError("no database given: pass --dsn or set PG_DURABLE_DSN")
    try:
        with psycopg.connect(
            dsn, autocommit=True, application_name=f"pg-durable {args.command}"
        ) as conn:
            yield conn
    except psycopg.Error as exc:
        # One line: the CONTEXT lines of a PL/pgSQL error and the chain add nothing a user
        # can act on.
        raise DatabaseError(one_line(exc)) from None
