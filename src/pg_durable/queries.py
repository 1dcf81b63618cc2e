"""Named SQL statements from ``sql/queries.sql`` (procrastinate's pattern: SQL stays in SQL)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@cache
def _all() -> dict[str, str]:
    text = (resources.files("pg_durable") / "sql" / "queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


def query(name: str) -> LiteralString:
    """The statement called ``name``; a KeyError names a query that does not exist."""
    # The text comes from a file shipped with the package, never from input: a literal.
    return cast(LiteralString, _all()[name])
