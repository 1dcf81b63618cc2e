"""Small pieces the dashboard's pages share: status badges, times, durations, long text."""

from __future__ import annotations

import json
from datetime import datetime

from pg_durable.cli.terminal import duration
from pg_durable.ui.markup import Markup, element

__all__ = ["badge", "duration", "long_text", "moment", "pretty_json"]

#: Characters of a result, an error or a statement shown in a page; the JSON API has it all.
SHOWN = 4000


def badge(status: str) -> Markup:
    """A status as a coloured label (class ``status-<status>``)."""
    return element("span", {"class_": f"badge status-{status}"}, status)


def moment(at: datetime | None) -> Markup:
    """A time to the second, as the database's session gives it (its zone in the tooltip)."""
    if at is None:
        return Markup("–")
    return element(
        "time",
        {"datetime": at.isoformat(), "title": at.isoformat()},
        at.strftime("%Y-%m-%d %H:%M:%S"),
    )


def pretty_json(text: str | None) -> str:
    """JSON text indented for reading (other text as it is)."""
    if text is None:
        return ""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return json.dumps(value, indent=2, ensure_ascii=False)


def long_text(text: str, css_class: str, more_at: str | None = None) -> Markup:
    """``text`` in a ``<pre>``, its first :data:`SHOWN` characters; what is left out is
    counted, and ``more_at`` (a URL) says where it all is."""
    if len(text) <= SHOWN:
        return element("pre", {"class_": css_class}, text)
    rest = len(text) - SHOWN
    note = [f"… {rest} more characters"]
    if more_at is not None:
        note += [" (all of it: ", element("a", {"href": more_at}, more_at), ")"]
    return element(
        "div",
        None,
        element("pre", {"class_": css_class}, text[:SHOWN]),
        element("p", {"class_": "muted"}, note),
    )
