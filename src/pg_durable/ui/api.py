"""The JSON the dashboard serves under /api/: what its pages show, for scripts and for the
tests. Instances and nodes are written as ``pg-durable ls --json`` and ``show --json`` write
them."""

from __future__ import annotations

import json

from pg_durable.cli.json_output import instance_json, node_json
from pg_durable.client.records import Node, Page, Progress
from pg_durable.ui.fleet import Fleet


def dumps(document: object) -> bytes:
    """``document`` as UTF-8 JSON. ``<``, ``>`` and ``&`` are written as \\u escapes, so the
    text stays inert even where a browser would sniff it as HTML."""
    text = json.dumps(document, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def page_json(page: Page) -> dict[str, object]:
    """One page of instances and the cursor of the next (None: the last page)."""
    return {
        "instances": [instance_json(i) for i in page.instances],
        "next_cursor": page.next_cursor,
    }


def instance_document(progress: Progress, nodes: list[Node], explained: str) -> dict[str, object]:
    """An instance, how far it has come, its nodes (root first) and df.explain's tree."""
    return {
        "instance": instance_json(progress.instance),
        "progress": {
            "elapsed": progress.elapsed,
            "nodes_total": progress.nodes_total,
            "nodes_done": progress.nodes_done,
            "running": [n.id for n in progress.running],
        },
        "nodes": [node_json(n) for n in nodes],
        "tree": "\n".join(line.rstrip() for line in explained.splitlines()),
    }


def fleet_json(fleet: Fleet) -> dict[str, object]:
    """df.workers: the workers listed and the counts."""
    return {
        "alive": fleet.alive,
        "total": fleet.total,
        "workers": [
            {
                "worker_id": w.id,
                "hostname": w.hostname,
                "pid": w.pid,
                "version": w.version,
                "concurrency": w.concurrency,
                "started_at": w.started_at.isoformat(),
                "last_seen_at": w.last_seen_at.isoformat(),
                "stopped_at": None if w.stopped_at is None else w.stopped_at.isoformat(),
                "alive": w.alive,
                "seen_ago": w.seen_ago,
            }
            for w in fleet.workers
        ],
    }
