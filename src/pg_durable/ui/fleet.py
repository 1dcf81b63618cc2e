"""The worker fleet as df.workers shows it: each worker's heartbeat, and whether it is alive
(seen within 30 seconds and not stopped).

df.grant_usage does not grant df.workers: a role reads it once an administrator grants
``SELECT ON df.workers`` (docs/ui.md). Without that, the database refuses the read and the
dashboard says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import dict_row

from pg_durable.queries import query
from pg_durable.ui.database import Conn

#: Workers listed at most (alive ones first).
LIMIT = 200


@dataclass(frozen=True, slots=True)
class Worker:
    """One row of df.workers."""

    id: str
    hostname: str
    pid: int
    version: str
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    alive: bool
    #: Seconds since its last heartbeat, by the database's clock.
    seen_ago: float


@dataclass(frozen=True, slots=True)
class Fleet:
    """The workers listed, and how many there are (alive, all) in df.workers."""

    workers: tuple[Worker, ...]
    alive: int
    total: int


def read(conn: Conn, limit: int = LIMIT) -> Fleet:
    """df.workers, alive workers first, then the most recently seen.

    Raises:
        psycopg.errors.InsufficientPrivilege: the role may not read df.workers.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("ui_workers"), {"limit": limit}).fetchall()
    workers = tuple(
        Worker(
            id=row["worker_id"],
            hostname=row["hostname"],
            pid=int(row["pid"]),
            version=row["version"],
            concurrency=int(row["concurrency"]),
            started_at=row["started_at"],
            last_seen_at=row["last_seen_at"],
            stopped_at=row["stopped_at"],
            alive=bool(row["alive"]),
            seen_ago=float(row["seen_ago"]),
        )
        for row in rows
    )
    alive = int(rows[0]["alive_total"]) if rows else 0
    total = int(rows[0]["total"]) if rows else 0
    return Fleet(workers=workers, alive=alive, total=total)
