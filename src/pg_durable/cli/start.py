"""``pg-durable start FILE``: start the workflow a file of DSL SQL describes; print its id.

The file holds what you would pass to ``df.start`` in psql — ``'SELECT 1' ~> df.sleep(2)`` —
and it is run as SQL, as the connecting role: it is your own SQL, like a psql script, run as
one statement (``SELECT df.start(<the file>, label => …)``), committed at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from psycopg import sql

from pg_durable.cli.connection import add_dsn_argument, connect
from pg_durable.errors import ConfigurationError
from pg_durable.queries import query

#: A whole statement where an expression belongs, most likely `SELECT df.start(…)` itself.
_STATEMENT = re.compile(r"(?is)\s*(select|with|insert|update|delete|call|do)\b")


def read_expression(source: str) -> str:
    """The DSL expression in ``source`` (a path, or - for stdin), without a final ';'.

    Raises:
        ConfigurationError: it cannot be read, or it holds no expression, or a statement.
    """
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{source} is not UTF-8 text: {exc}") from None
    expression = text.strip().rstrip(";").rstrip()
    where = "stdin" if source == "-" else source
    if not expression:
        raise ConfigurationError(f"{where} holds no workflow")
    if _STATEMENT.match(expression):
        raise ConfigurationError(
            f"{where} holds a statement; it should hold only the workflow, as df.start's "
            "argument: for example 'SELECT 1' ~> df.sleep(2)"
        )
    return expression


def command(args: argparse.Namespace) -> int:
    """``pg-durable start``."""
    expression = read_expression(args.file)
    # The expression is the user's own SQL, spliced in as SQL: a literal would make it a SQL
    # step of that text instead. Its % are doubled, as the statement has parameters.
    statement = sql.SQL(query("cli_start_expression")).format(
        expression=sql.SQL(expression.replace("%", "%%"))
    )
    with connect(args) as conn:
        row = conn.execute(statement, {"label": args.label, "database": args.database}).fetchone()
    assert row is not None
    print(row[0])
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``start`` command."""
    parser = subparsers.add_parser(
        "start",
        help="start a workflow from a file of DSL SQL; print its id",
        description=(
            "Start the workflow in FILE: a DSL expression, what you would pass to df.start "
            "in psql (for example 'SELECT 1' ~> df.sleep(2)), run as SQL as the connecting "
            "role and committed at once. Prints the instance id."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="the file, or - to read stdin")
    parser.add_argument("--label", help="the instance's label")
    parser.add_argument("--database", help="run the steps in another database of the cluster")
    add_dsn_argument(parser)
    parser.set_defaults(func=command)
