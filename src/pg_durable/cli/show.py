"""``pg-durable show ID``: an instance drawn as df.explain draws it — its tree, each node with
its status — coloured on a terminal; ``--json`` for the instance, its nodes and the tree."""

from __future__ import annotations

import argparse
import json
import sys

from pg_durable import client
from pg_durable.cli.connection import add_dsn_argument, connect
from pg_durable.cli.json_output import instance_json, node_json
from pg_durable.cli.terminal import STATUS_STYLES, add_color_argument, paint, use_color

#: df.explain's status markers (docs/explain.md) and the status each stands for.
MARKERS = {"✓": "completed", "✗": "failed", "⏳": "running", "○": "pending", "⊘": "skipped"}


def color_tree(tree: str, color: bool) -> str:
    """df.explain's live tree with its status markers (and the header's status) coloured.

    A node's marker is the last character of its line; a section line (``✓ then:``) starts
    with one and is left as it is. Skipped and pending nodes are dimmed, failed ones red.
    """
    lines = []
    for raw in tree.splitlines():
        line = raw.rstrip()  # df.explain pads every line to one width
        if line.startswith("Status:"):
            status = line.split()[-1].lower()
            line = "Status:   " + paint(
                " ".join(line.split()[1:]), STATUS_STYLES.get(status), color
            )
        elif line[-1:] in MARKERS and line[-2:-1] == " ":
            style = STATUS_STYLES[MARKERS[line[-1]]]
            if style == "dim":
                line = paint(line, "dim", color)
            elif style == "red":
                line = paint(line, "red", color)
            else:
                line = line[:-1] + paint(line[-1], style, color)
        lines.append(line)
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``pg-durable show``."""
    with connect(args) as conn:
        instance = client.info(conn, args.id)  # (not found: an error, not a tree saying so)
        tree = client.explain(conn, instance.id)
        graph = client.nodes(conn, instance.id) if args.json else []
    if args.json:
        document = {
            "instance": instance_json(instance),
            "nodes": [node_json(n) for n in graph],
            "tree": "\n".join(line.rstrip() for line in tree.splitlines()),
        }
        print(json.dumps(document, ensure_ascii=False))
        return 0
    print(color_tree(tree, use_color(args, sys.stdout)))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``show`` command."""
    parser = subparsers.add_parser(
        "show",
        help="draw an instance's graph with each node's status",
        description=(
            "Draw a workflow instance as df.explain does: a header (id, label, status, "
            "output), then its graph with each node's status — ✓ completed, ✗ failed, "
            "⏳ running, ○ pending, ⊘ skipped. Coloured on a terminal."
        ),
    )
    parser.add_argument("id", metavar="ID", help="the instance id (8 hexadecimal characters)")
    add_dsn_argument(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help='write {"instance": ..., "nodes": [...], "tree": ...} as one JSON object',
    )
    add_color_argument(parser)
    parser.set_defaults(func=command)
