"""The instances page: filters, one keyset page of df.list_instances, links to the next one."""

from __future__ import annotations

from pg_durable.cli.terminal import clip
from pg_durable.client.records import Instance, Page
from pg_durable.ui.filters import LIMITS, STATUSES, Filters
from pg_durable.ui.markup import Markup, element
from pg_durable.ui.widgets import badge, duration, moment


def _option(value: str, text: str, chosen: object) -> Markup:
    return element("option", {"value": value, "selected": value == chosen}, text)


def _form(filters: Filters) -> Markup:
    limits = sorted({*LIMITS, filters.limit})
    fields = [
        element(
            "label",
            None,
            "Status ",
            element(
                "select",
                {"name": "status"},
                _option("", "any", filters.status or ""),
                [_option(s, s, filters.status) for s in STATUSES],
            ),
        ),
        element(
            "label",
            None,
            "Label ",
            element("input", {"name": "label", "value": filters.label or "", "size": 18}),
        ),
        element(
            "label",
            None,
            "Since ",
            element(
                "input",
                {
                    "name": "since",
                    "value": filters.since or "",
                    "size": 16,
                    "placeholder": "2h, 7d, 2024-05-01",
                },
            ),
        ),
        element(
            "label",
            None,
            "Until ",
            element(
                "input",
                {
                    "name": "until",
                    "value": filters.until or "",
                    "size": 16,
                    "placeholder": "30m, 2024-05-02 12:00",
                },
            ),
        ),
        element(
            "label",
            None,
            "Per page ",
            element(
                "select",
                {"name": "limit"},
                [_option(str(n), str(n), str(filters.limit)) for n in limits],
            ),
        ),
        element("button", {"type": "submit"}, "Filter"),
        element("a", {"href": "/instances", "class_": "clear"}, "clear"),
    ]
    return element("form", {"class_": "filters", "method": "get", "action": "/instances"}, fields)


def _row(instance: Instance) -> Markup:
    took = (
        duration((instance.completed_at - instance.created_at).total_seconds())
        if instance.completed_at is not None
        else "–"
    )
    return element(
        "tr",
        {"data_instance": instance.id, "data_status": instance.status},
        element(
            "td",
            None,
            element("a", {"href": f"/instances/{instance.id}"}, element("code", None, instance.id)),
        ),
        element("td", None, badge(instance.status)),
        element("td", {"class_": "label"}, instance.label or ""),
        element("td", None, moment(instance.created_at)),
        element("td", None, took),
        element("td", {"class_": "number"}, str(instance.execution_count)),
        element("td", {"class_": "output"}, clip(instance.output, 100)),
    )


def _table(page: Page) -> Markup:
    if not page.instances:
        return element("p", {"class_": "empty"}, "No instances match.")
    head = element(
        "tr",
        None,
        [
            element("th", None, name)
            for name in ("ID", "Status", "Label", "Created", "Took", "Runs", "Output")
        ],
    )
    return element(
        "table",
        {"class_": "instances"},
        element("thead", None, head),
        element("tbody", None, [_row(i) for i in page.instances]),
    )


def _pages(filters: Filters, page: Page) -> Markup:
    links = []
    if filters.after is not None:
        links.append(element("a", {"href": filters.link(after=None)}, "« newest"))
    if page.next_cursor is not None:
        links.append(
            element("a", {"href": filters.link(after=page.next_cursor), "rel": "next"}, "older »")
        )
    return element("nav", {"class_": "pages"}, links)


def render(filters: Filters, page: Page | None, problem: str | None, refresh: float) -> Markup:
    """The page's body; ``problem`` (a filter the database could not read) instead of a
    listing when ``page`` is None."""
    listing = (
        element("p", {"class_": "problem", "role": "alert"}, problem)
        if page is None
        else [_table(page), _pages(filters, page)]
    )
    return Markup(
        element("h1", None, "Instances")
        + _form(filters)
        + element("section", {"id": "live", "data_live": f"{refresh:g}"}, listing)
    )
