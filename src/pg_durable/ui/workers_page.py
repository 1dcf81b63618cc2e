"""The workers page: the fleet's health from df.workers (heartbeats, alive or not)."""

from __future__ import annotations

from pg_durable.ui.fleet import Fleet, Worker
from pg_durable.ui.markup import Markup, element
from pg_durable.ui.widgets import duration, moment

#: What to tell a role that may not read df.workers.
NOT_GRANTED = (
    "Role {role} may not read df.workers: df.grant_usage does not grant it. An administrator "
    "can: GRANT SELECT ON df.workers TO {role_ident};"
)


def _row(worker: Worker) -> Markup:
    if worker.stopped_at is not None:
        state, css = "stopped", "status-cancelled"
    elif worker.alive:
        state, css = "alive", "status-completed"
    else:
        state, css = "silent", "status-failed"
    return element(
        "tr",
        {"data_worker": worker.id, "data_alive": "true" if worker.alive else "false"},
        element("td", None, element("span", {"class_": f"badge {css}"}, state)),
        element("td", None, worker.hostname),
        element("td", {"class_": "number"}, str(worker.pid)),
        element("td", None, element("code", None, worker.id[:8])),
        element("td", None, worker.version),
        element("td", {"class_": "number"}, str(worker.concurrency)),
        element("td", None, moment(worker.started_at)),
        element("td", None, f"{duration(max(worker.seen_ago, 0.0))} ago"),
        element("td", None, moment(worker.stopped_at)),
    )


def render(fleet: Fleet | None, problem: str | None, refresh: float) -> Markup:
    """The page's body; ``problem`` (df.workers could not be read) when ``fleet`` is None."""
    if fleet is None:
        content: object = element("p", {"class_": "problem", "role": "alert"}, problem)
    elif not fleet.workers:
        content = element("p", {"class_": "empty"}, "No worker has registered yet.")
    else:
        head = element(
            "tr",
            None,
            [
                element("th", None, name)
                for name in (
                    "State",
                    "Host",
                    "PID",
                    "ID",
                    "Version",
                    "Slots",
                    "Started",
                    "Last heartbeat",
                    "Stopped",
                )
            ],
        )
        summary = f"{fleet.alive} alive of {fleet.total} registered"
        if fleet.total > len(fleet.workers):
            summary += f" (the {len(fleet.workers)} most recent shown)"
        content = [
            element("p", {"class_": "summary"}, summary),
            element(
                "table",
                {"class_": "workers"},
                element("thead", None, head),
                element("tbody", None, [_row(w) for w in fleet.workers]),
            ),
            element(
                "p",
                {"class_": "muted"},
                "A worker is alive while it has sent a heartbeat within 30 seconds and has "
                "not stopped.",
            ),
        ]
    return Markup(
        element("h1", None, "Workers")
        + element("section", {"id": "live", "data_live": f"{refresh:g}"}, content)
    )
