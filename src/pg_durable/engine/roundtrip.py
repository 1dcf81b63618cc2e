"""Several statements in one round trip: one query string, the simple query protocol.

The worker's transactions are short strings of statements whose parameters it knows up front
— BEGIN and a claim; a savepoint and a step; the plans, COMMIT and the next claim. Sent as
one query string (parameters bound here, psycopg quoting them as literals) they take one
round trip, and the server counts the transaction idle the moment the last one is done: a
worker frozen after it loses its claims to idle_in_transaction_session_timeout. In pipeline
mode, as before, a lone step took a second round trip (psycopg follows the pipeline's
closing Sync with a Flush, which stops the server's idle timer, so the step needed a Sync of
its own), and the worker spent a tenth more CPU on a one-step workflow (1.2-1.4 ms against
1.0-1.1 on the benchmark's VM).

A statement that fails ends the string there: the ones after it do not run, and the error
is raised (in a transaction, the transaction is aborted and the caller rolls back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg.rows import AsyncRowFactory

R = TypeVar("R")
Part: TypeAlias = tuple[str, Mapping[str, Any] | Sequence[Any] | None]


async def run_together(
    conn: psycopg.AsyncConnection[Any],
    statements: Sequence[Part],
    row_factory: AsyncRowFactory[R],
) -> list[list[R]]:
    """Run ``statements`` (query, parameters) in one round trip; returns the rows of each, in
    order (an empty list for a statement that returns none)."""
    cur = psycopg.AsyncClientCursor(conn, row_factory=row_factory)
    # (A statement without parameters as it is: binding parses it for placeholders.)
    await cur.execute(
        "; ".join(
            text if params is None else cur.mogrify(text, params) for text, params in statements
        )
    )
    results: list[list[R]] = []
    while True:
        results.append(await cur.fetchall() if cur.description is not None else [])
        if not cur.nextset():
            return results
