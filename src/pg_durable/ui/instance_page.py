"""The instance page: its header, its graph drawn as nested boxes (each node's inferred status,
timings, attempts, result or error), df.explain's text tree, and — when the dashboard allows
actions — the forms that signal and cancel it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from pg_durable.cli.terminal import clip
from pg_durable.client.records import Node, Progress
from pg_durable.ui import tree
from pg_durable.ui.markup import Markup, element
from pg_durable.ui.widgets import badge, duration, long_text, moment, pretty_json

#: Unreached nodes listed at most.
UNREACHED_SHOWN = 200
#: What a notice code in the URL (after an action) says; nothing else is ever shown.
NOTICES = {
    "signalled": "Signal sent.",
    "cancelled": "Instance cancelled.",
    "not-cancelled": "The instance had already finished: nothing was cancelled.",
    "finished": "The instance has finished: it takes no more signals.",
}


@dataclass(frozen=True, slots=True)
class Actions:
    """The action forms' needs: the CSRF token they carry."""

    csrf_token: str


def _now(progress: Progress) -> datetime:
    """The database's time of the read (created_at + elapsed, while it runs)."""
    return progress.instance.created_at + timedelta(seconds=progress.elapsed)


def _timing(node: Node, progress: Progress) -> list[object]:
    if node.updated_at is None or node.inferred_status in ("pending", "skipped"):
        return []
    since_start = (node.updated_at - progress.instance.created_at).total_seconds()
    if node.inferred_status == "running" and not progress.instance.finished:
        running_for = (_now(progress) - node.updated_at).total_seconds()
        return [f"running for {duration(max(running_for, 0.0))}, since ", moment(node.updated_at)]
    return [
        "finished " if node.status in ("completed", "failed") else "updated ",
        moment(node.updated_at),
        f" (+{duration(max(since_start, 0.0))})",
    ]


def _attempts(node: Node) -> list[Markup]:
    """A RETRY's attempts (status_details), and its last error."""
    found = tree.details(node)
    if node.node_type != "RETRY" or "attempt" not in found:
        return []
    parts = [
        element(
            "span",
            {"class_": "attempts"},
            f"attempt {found.get('attempt')} of {found.get('max_attempts', '?')}",
        )
    ]
    if found.get("next_attempt_at"):
        parts.append(element("span", None, f"next attempt at {found['next_attempt_at']}"))
    if found.get("last_error"):
        parts.append(
            element("span", {"class_": "last-error"}, f"last error: {found['last_error']}")
        )
    return parts


def _result_summary(text: str) -> str:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return "result"
    if isinstance(value, dict) and isinstance(value.get("row_count"), int):
        count = value["row_count"]
        return f"result: {count} row{'' if count == 1 else 's'}"
    return "result"


def _what(node: Node) -> str:
    """What a node's box says beside its type: the description, without the type again."""
    text = tree.describe(node)
    return text.removeprefix(node.node_type).strip()


def _card(drawn: tree.Drawn, progress: Progress, api: str) -> Markup:
    node = drawn.node
    status = node.inferred_status
    head = [
        badge(status),
        element("span", {"class_": "kind"}, node.node_type),
        element("span", {"class_": "what"}, _what(node)),
        element("span", {"class_": "name"}, f"|=> '{node.result_name}'")
        if node.result_name
        else "",
    ]
    meta: list[object] = [element("span", None, f"node {node.id}")]
    if node.execution_id > 1:
        meta.append(element("span", None, f"generation {node.execution_id}"))
    if node.status != status:
        meta.append(element("span", None, f"stored status {node.status}"))
    timing = _timing(node, progress)
    if timing:
        meta.append(element("span", None, timing))
    meta.extend(_attempts(node))
    body: list[object] = [element("div", {"class_": "head"}, head)]
    if node.node_type == "SQL" and node.query is not None:
        body.append(long_text(node.query, "sql", api))
    body.append(element("div", {"class_": "meta"}, meta))
    failure = tree.error(node)
    if failure is not None:
        body.append(
            element("div", {"class_": "error", "role": "note"}, long_text(failure, "error-text"))
        )
    elif node.result is not None and node.status == "completed":
        body.append(
            element(
                "details",
                {"class_": "result", "id": f"result-{node.id}"},
                element("summary", None, _result_summary(node.result)),
                long_text(pretty_json(node.result), "json", api),
            )
        )
    for section in drawn.sections:
        inner: list[object] = [element("div", {"class_": "section-title"}, section.title)]
        if section.note:
            inner.append(element("div", {"class_": "note"}, section.note))
        if section.steps:
            inner.append(_steps(section.steps, progress, api))
        body.append(element("div", {"class_": "section"}, inner))
    kind = " branches" if node.node_type in ("JOIN", "RACE") else ""
    return element(
        "div",
        {
            "class_": f"node status-{status}{kind}",
            "id": f"node-{node.id}",
            "data_node": node.id,
            "data_status": status,
            "data_type": node.node_type,
        },
        body,
    )


def _steps(steps: tuple[tree.Drawn, ...], progress: Progress, api: str) -> Markup:
    return element(
        "ol", {"class_": "steps"}, [element("li", None, _card(d, progress, api)) for d in steps]
    )


def graph(nodes: list[Node], progress: Progress, api: str) -> Markup:
    """The graph as nested boxes, with what could not be drawn said below it."""
    drawn = tree.build(nodes)
    parts: list[object] = [_steps(drawn.steps, progress, api)]
    if drawn.left_out:
        parts.append(
            element(
                "p",
                {"class_": "muted"},
                f"… {drawn.left_out} more nodes are not drawn (the graph is larger or deeper "
                "than the dashboard draws); ",
                element("a", {"href": api}, "the JSON"),
                " has them all.",
            )
        )
    if drawn.unreached:
        shown = drawn.unreached[:UNREACHED_SHOWN]
        parts.append(element("h3", None, "Nodes the root does not reach"))
        parts.append(_steps(tuple(tree.Drawn(n, ()) for n in shown), progress, api))
    return element("div", {"class_": "graph"}, parts)


def _facts(progress: Progress, nodes: list[Node]) -> Markup:
    instance = progress.instance
    rows: list[tuple[str, object]] = [
        ("Status", badge(instance.status)),
        ("Label", instance.label or "–"),
        ("Created", moment(instance.created_at)),
        ("Took" if instance.finished else "Running for", duration(progress.elapsed)),
        ("Root generation", str(instance.execution_count)),
        (
            "Progress",
            [
                element(
                    "progress",
                    {"max": max(progress.nodes_total, 1), "value": progress.nodes_done},
                ),
                f" {progress.nodes_done} of {progress.nodes_total} nodes done",
            ],
        ),
    ]
    if progress.running and not instance.finished:
        rows.append(
            (
                "Now",
                element(
                    "ul",
                    {"class_": "now"},
                    [
                        element(
                            "li",
                            None,
                            f"SQL: {clip(n.query, 80)}"
                            if n.node_type == "SQL"
                            else tree.describe(n),
                        )
                        for n in progress.running
                    ],
                ),
            )
        )
    waiting = tree.signal_names(nodes)
    if waiting and not instance.finished:
        rows.append(("Waits for signal", ", ".join(waiting)))
    return element(
        "dl",
        {"class_": "facts"},
        [[element("dt", None, name), element("dd", None, value)] for name, value in rows],
    )


def _output(progress: Progress, api: str) -> Markup:
    instance = progress.instance
    if instance.output is None:
        return Markup("")
    css = "error" if instance.status == "failed" else "output"
    title = "Error" if instance.status == "failed" else "Output"
    return element(
        "div",
        {"class_": css},
        element("h2", None, title),
        long_text(pretty_json(instance.output), "json", api),
    )


def _actions(progress: Progress, nodes: list[Node], actions: Actions | None) -> Markup:
    instance = progress.instance
    if instance.finished:
        return Markup("")
    if actions is None:
        return element(
            "p",
            {"class_": "muted read-only", "data_while_running": True},
            "Read-only: start pg-durable ui with --allow-actions to signal and cancel.",
        )
    token = element("input", {"type": "hidden", "name": "csrf", "value": actions.csrf_token})
    waiting = tree.signal_names(nodes)
    signal_form = element(
        "form",
        {"method": "post", "action": f"/instances/{instance.id}/signal", "class_": "signal"},
        token,
        element(
            "label",
            None,
            "Signal ",
            element(
                "input",
                {
                    "name": "name",
                    "required": True,
                    "value": waiting[0] if waiting else "",
                    "list": "waiting-signals",
                },
            ),
        ),
        element(
            "datalist",
            {"id": "waiting-signals"},
            [element("option", {"value": w}) for w in waiting],
        ),
        element(
            "label",
            None,
            "Data ",
            element("textarea", {"name": "data", "rows": 2, "cols": 40}, "{}"),
        ),
        element("button", {"type": "submit"}, "Send signal"),
    )
    cancel_form = element(
        "details",
        {"class_": "cancel"},
        element("summary", None, "Cancel this instance…"),
        element(
            "form",
            {"method": "post", "action": f"/instances/{instance.id}/cancel"},
            token,
            element("span", None, "No further step will run; a step running now rolls back. "),
            element("button", {"type": "submit", "class_": "danger"}, "Cancel instance"),
        ),
    )
    return element(
        "section",
        {"class_": "actions", "data_while_running": True},
        element("h2", None, "Actions"),
        signal_form,
        cancel_form,
    )


def render(
    progress: Progress,
    nodes: list[Node],
    explained: str,
    *,
    actions: Actions | None,
    notice: str | None,
    refresh: float,
) -> Markup:
    """The page's body."""
    instance = progress.instance
    api = f"/api/instances/{instance.id}"
    title = [
        "Instance ",
        element("code", None, instance.id),
        " ",
        element("span", {"class_": "label"}, instance.label or ""),
    ]
    message = NOTICES.get(notice or "")
    live = element(
        "section",
        {
            "id": "live",
            "data_live": "0" if instance.finished else f"{refresh:g}",
            "data_finished": instance.finished,
        },
        _facts(progress, nodes),
        _output(progress, api),
        element("h2", None, "Graph"),
        graph(nodes, progress, api),
        element(
            "details",
            {"class_": "explain", "id": "explain-text"},
            element("summary", None, "As df.explain draws it"),
            element("pre", None, "\n".join(line.rstrip() for line in explained.splitlines())),
        ),
    )
    return Markup(
        element("p", {"class_": "crumbs"}, element("a", {"href": "/instances"}, "« instances"))
        + element("h1", None, title)
        + (element("p", {"class_": "notice", "role": "status"}, message) if message else "")
        + _actions(progress, nodes, actions)
        + live
        + element("p", {"class_": "muted"}, element("a", {"href": api}, "as JSON"))
    )
