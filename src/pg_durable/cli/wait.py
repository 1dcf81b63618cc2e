"""``pg-durable wait ID``: wait until an instance finishes; the exit status says how it ended.

=====  ==================================================================================
exit   meaning
=====  ==================================================================================
0      completed
1      failed
2      cancelled
3      still not finished when ``--timeout`` ran out
4      no answer: the instance was not found (or is another role's), the id is not one, the
       database could not be reached (the error is on stderr)
=====  ==================================================================================

On a terminal (stderr), a progress line shows while it waits: the status, nodes done of all,
the time since it started and the step running now. ``--quiet`` prints nothing at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

import psycopg

from pg_durable import client
from pg_durable.cli.connection import add_dsn_argument, connect
from pg_durable.cli.terminal import (
    STATUS_STYLES,
    add_color_argument,
    clip,
    duration,
    paint,
    use_color,
    width,
)
from pg_durable.client.errors import WaitTimeout
from pg_durable.client.records import Node, Outcome, Progress
from pg_durable.errors import PgDurableError

EXIT_STATUS = {"completed": 0, "failed": 1, "cancelled": 2}
EXIT_TIMEOUT = 3
EXIT_ERROR = 4


def describe_step(node: Node) -> str:
    """What a running step is doing, in a few words."""
    config: dict[str, object] = {}
    if node.node_type != "SQL" and node.query and node.query.startswith("{"):
        try:
            loaded = json.loads(node.query)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            config = loaded
    if node.node_type == "SQL":
        return "SQL: " + clip(node.query, 60)
    if node.node_type == "SLEEP":
        return f"sleeping {node.query}s"
    if node.node_type == "SIGNAL":
        return f"waiting for signal {config.get('signal_name')!r}"
    if node.node_type == "WAIT_SCHEDULE":
        return f"waiting for schedule {config.get('cron_expr')!r}"
    if node.node_type in ("HTTP", "HTTP_MULTIPART"):
        return f"HTTP {config.get('method', '')} {clip(str(config.get('url', '')), 50)}"
    return node.node_type


class ProgressLine:
    """One line on a terminal, written over at each poll and erased at the end."""

    def __init__(self, stream: TextIO, color: bool) -> None:
        self.stream = stream
        self.color = color
        self.shown = False

    def update(self, progress: Progress) -> None:
        """Show ``progress``."""
        instance = progress.instance
        parts: list[tuple[str, str | None]] = [
            (instance.id + (f" ({clip(instance.label, 24)})" if instance.label else ""), None),
            (instance.status, STATUS_STYLES.get(instance.status)),
            (f"{progress.nodes_done}/{progress.nodes_total} nodes", None),
            (duration(progress.elapsed), None),
        ]
        if instance.execution_count > 1:
            parts.append((f"iteration {instance.execution_count}", None))
        if progress.running:
            now = describe_step(progress.running[0])
            if len(progress.running) > 1:
                now += f" (+{len(progress.running) - 1} more)"
            parts.append((now, None))
        plain = " · ".join(text for text, _ in parts)
        visible = width(self.stream) - 1
        if len(plain) > visible:  # (uncoloured: clipping must not cut a colour code)
            line = clip(plain, visible)
        else:
            line = " · ".join(paint(text, style, self.color) for text, style in parts)
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """Erase the line."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _report(outcome: Outcome, args: argparse.Namespace) -> None:
    if args.quiet:
        return
    if args.json:
        document = {
            "instance_id": outcome.instance_id,
            "status": outcome.status,
            "result": outcome.result,
            "error": outcome.error,
            "elapsed": round(outcome.elapsed, 3),
        }
        print(json.dumps(document, ensure_ascii=False))
        return
    color = use_color(args, sys.stdout)
    status = paint(outcome.status, STATUS_STYLES.get(outcome.status), color)
    head = f"{outcome.instance_id} {status} ({duration(outcome.elapsed)})"
    if outcome.status == "completed":
        print(head)
        print(json.dumps(outcome.result, ensure_ascii=False))
    elif outcome.status == "failed":
        print(f"{head}: {outcome.error}")
    else:
        print(head)


def command(args: argparse.Namespace) -> int:
    """``pg-durable wait``: the exit status of the module's table."""
    line = None
    if not args.quiet and not args.json and sys.stderr.isatty():
        line = ProgressLine(sys.stderr, use_color(args, sys.stderr))
    try:
        with connect(args) as conn:
            outcome = client.await_instance(
                conn,
                args.id,
                timeout=args.timeout,
                poll_interval=args.interval,
                on_progress=None if line is None else line.update,
            )
    except WaitTimeout as exc:
        if line is not None:
            line.close()
        if args.json:
            timed_out = {"instance_id": exc.instance_id, "status": exc.status, "timed_out": True}
            print(json.dumps(timed_out))
        elif not args.quiet:
            print(f"pg-durable: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (PgDurableError, psycopg.Error, OSError) as exc:
        if line is not None:
            line.close()
        # Exit 4, not main's 1 (which would read as "failed"); reported as main reports.
        from pg_durable.cli.main import report  # (main imports this module)

        report(exc, verbose=bool(getattr(args, "verbose", False)))
        return EXIT_ERROR
    finally:
        if line is not None:
            line.close()
    _report(outcome, args)
    return EXIT_STATUS[outcome.status]


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``wait`` command."""
    parser = subparsers.add_parser(
        "wait",
        help="wait until an instance finishes; exit 0 completed, 1 failed, 2 cancelled",
        description=(
            "Wait until an instance has finished, showing its progress on a terminal, then "
            "print how it ended (the result once completed, the error once failed). Exit "
            "status: 0 completed, 1 failed, 2 cancelled, 3 --timeout ran out, 4 no answer "
            "(instance not found, invalid id, database unreachable)."
        ),
    )
    parser.add_argument("id", metavar="ID", help="the instance id (8 hexadecimal characters)")
    add_dsn_argument(parser)
    parser.add_argument(
        "--timeout",
        type=_positive,
        metavar="SECONDS",
        help="give up after SECONDS (exit 3); default: wait as long as it takes",
    )
    parser.add_argument(
        "--interval",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="poll at most every SECONDS (default 1; it starts faster)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing: the exit status says it all"
    )
    output.add_argument(
        "--json",
        action="store_true",
        help='write {"instance_id", "status", "result", "error", "elapsed"} as one JSON object',
    )
    add_color_argument(parser)
    parser.set_defaults(func=command)
