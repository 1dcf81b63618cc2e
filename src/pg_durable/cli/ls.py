"""``pg-durable ls``: the instances the connecting role can see, newest first.

Pages through ``df.list_instances``'s keyset-paginated overload; ``--cursor`` continues where
a listing stopped (its last line on stderr says how), ``--json`` writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from typing import Any

import psycopg

from pg_durable import client
from pg_durable.cli.connection import add_dsn_argument, connect
from pg_durable.cli.json_output import instance_json
from pg_durable.cli.terminal import (
    STATUS_STYLES,
    add_color_argument,
    clip,
    duration,
    table,
    timestamp,
    use_color,
)
from pg_durable.client.records import Instance, Status
from pg_durable.errors import ConfigurationError
from pg_durable.queries import query

#: The most rows one page asks for (the server's default pg_durable.list_instances_max_limit
#: is 1000).
PAGE_SIZE = 500
#: "10m", "2 hours", "3d ago": a time that long before the database's now().
_RELATIVE = re.compile(r"\s*(\d+(?:\.\d+)?\s*[A-Za-z]+)(?:\s+ago)?\s*")


def parse_time(conn: psycopg.Connection[Any], option: str, text: str) -> datetime:
    """``--since`` / ``--until``: a time PostgreSQL reads ('2024-05-01', '2024-05-01 12:00+02',
    'yesterday'), or a span before now ('30m', '2 hours', '7d ago'), read by the database.

    Raises:
        ConfigurationError: PostgreSQL reads neither.
    """
    relative = _RELATIVE.fullmatch(text)
    try:
        if relative is not None:
            row = conn.execute(query("cli_time_ago"), {"ago": relative.group(1)}).fetchone()
        else:
            row = conn.execute(query("cli_time_at"), {"at": text}).fetchone()
    except psycopg.DataError as exc:
        raise ConfigurationError(
            f"{option} {text!r} is not a time: {exc.diag.message_primary}; give a time such as "
            "'2024-05-01 12:00' or a span before now such as 30m, 2h or 7d"
        ) from None
    assert row is not None
    moment: datetime = row[0]
    return moment


def _row(instance: Instance) -> tuple[list[str], list[str | None]]:
    took = (
        duration((instance.completed_at - instance.created_at).total_seconds())
        if instance.completed_at is not None
        else "-"
    )
    cells = [
        instance.id,
        instance.status,
        clip(instance.label, 30) or "-",
        timestamp(instance.created_at),
        took,
        str(instance.execution_count),
        clip(instance.output, 60),
    ]
    styles: list[str | None] = [None, STATUS_STYLES.get(instance.status), None, None, None, None]
    styles.append("dim")
    return cells, styles


def command(args: argparse.Namespace) -> int:
    """``pg-durable ls``."""
    if args.limit < 1:
        raise ConfigurationError(f"--limit must be at least 1 (got {args.limit})")
    status: Status | None = args.status
    with connect(args) as conn:
        since = None if args.since is None else parse_time(conn, "--since", args.since)
        until = None if args.until is None else parse_time(conn, "--until", args.until)
        found: list[Instance] = []
        after: str | None = args.cursor
        while True:
            wanted = PAGE_SIZE if args.all else min(PAGE_SIZE, args.limit - len(found))
            page = client.list_instances(
                conn,
                status=status,
                label=args.label,
                since=since,
                until=until,
                limit=wanted,
                after=after,
            )
            found.extend(page.instances)
            after = page.next_cursor
            if after is None or (not args.all and len(found) >= args.limit):
                break
    if args.json:
        print(json.dumps({"instances": [instance_json(i) for i in found], "next_cursor": after}))
        return 0
    if not found:
        print("no instances", file=sys.stderr)
        return 0
    header = ["ID", "STATUS", "LABEL", "CREATED", "TOOK", "RUNS", "OUTPUT"]
    rows = [_row(i) for i in found]
    color = use_color(args, sys.stdout)
    print(table(header, [r[0] for r in rows], [r[1] for r in rows], color))
    if after is not None:
        print(f"more: pg-durable ls --cursor {after} (with the same filters)", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ls`` command."""
    parser = subparsers.add_parser(
        "ls",
        help="list workflow instances, newest first",
        description=(
            "List the workflow instances the connecting role can see (row-level security), "
            "newest first, through df.list_instances. Times are the database's."
        ),
    )
    add_dsn_argument(parser)
    parser.add_argument(
        "--status",
        choices=("pending", "running", "completed", "failed", "cancelled"),
        help="only instances with this status",
    )
    parser.add_argument("--label", help="only instances with this label")
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="only instances created at or after TIME: '2024-05-01 12:00', or 30m, 2h, 7d ago",
    )
    parser.add_argument(
        "--until", metavar="TIME", help="only instances created before TIME (as --since)"
    )
    parser.add_argument(
        "--limit", type=int, default=20, metavar="N", help="list at most N (default 20)"
    )
    parser.add_argument("--all", action="store_true", help="list every instance (no --limit)")
    parser.add_argument(
        "--cursor",
        metavar="CURSOR",
        help="continue after an earlier listing (the cursor it printed)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='write {"instances": [...], "next_cursor": ...} as one JSON object',
    )
    add_color_argument(parser)
    parser.set_defaults(func=command)
