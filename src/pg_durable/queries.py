"""Named SQL statements from ``sql/queries.sql`` (procrastinate's pattern: SQL stays in SQL)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@cache
def _all() -> dict[str, LiteralString]:
    text = (resources.files("pg_durable") / "sql" / "queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


def query(name: str) -> LiteralString:
    """The statement called ``name``; a KeyError names a query that does not exist."""
    # The text comes from a file shipped with the package, never from input: a literal
    # (mypy treats LiteralString as str, so no cast is needed for it).
    return _all()[name]
