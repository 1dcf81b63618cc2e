"""The filters of the instances page, from its query string and back into links.

``?status=failed&label=nightly&since=2h&until=&limit=50&after=<cursor>``: the same filters as
``pg-durable ls`` (times as it reads them: '2024-05-01 12:00', or 30m, 2h, 7d before now, by the
database), and a keyset cursor for the next page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlencode

from pg_durable.client.records import Status

STATUSES: tuple[Status, ...] = ("pending", "running", "completed", "failed", "cancelled")
#: The page sizes offered; any number from 1 to MAX_LIMIT is taken.
LIMITS = (20, 50, 100)
DEFAULT_LIMIT = 20
MAX_LIMIT = 500
#: A cursor is hex (docs/monitoring.md); anything else is refused before it reaches SQL.
_CURSOR = re.compile(r"[0-9a-f]{1,400}")


class BadFilter(ValueError):
    """A filter's value is not one the page takes; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What the instances page lists: None (or '') for no filter."""

    status: Status | None = None
    label: str | None = None
    #: Times as typed; the database reads them (pg_durable.cli.ls.parse_time).
    since: str | None = None
    until: str | None = None
    limit: int = DEFAULT_LIMIT
    after: str | None = None

    def link(self, *, after: str | None) -> str:
        """The URL of these filters' page after the cursor ``after`` (None: the first page)."""
        target = replace(self, after=after)
        params = [
            (name, value)
            for name, value in (
                ("status", target.status),
                ("label", target.label),
                ("since", target.since),
                ("until", target.until),
                ("limit", None if target.limit == DEFAULT_LIMIT else str(target.limit)),
                ("after", target.after),
            )
            if value
        ]
        return "/instances" + ("?" + urlencode(params) if params else "")


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    return value or None


def parse(query: Mapping[str, str]) -> Filters:
    """The filters in a query string (its first value for each name).

    Raises:
        BadFilter: a status, limit or cursor the page does not take.
    """
    status = _text(query, "status")
    if status is not None and status not in STATUSES:
        raise BadFilter(f"status {status!r} is not one of {', '.join(STATUSES)}")
    raw_limit = _text(query, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise BadFilter(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    after = _text(query, "after")
    if after is not None and _CURSOR.fullmatch(after) is None:
        raise BadFilter("after is not a cursor of this listing (follow the page's links)")
    return Filters(
        status=status,
        label=query.get("label") or None,  # a label is matched exactly: spaces and all
        since=_text(query, "since"),
        until=_text(query, "until"),
        limit=limit,
        after=after,
    )
