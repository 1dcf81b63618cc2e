"""The suite's workloads written for DBOS Transact, run in the benchmark's own process.

Every step is a DBOS transactional step (``@datasource.transaction()`` — DBOS 3's form of
what DBOS 1 and 2 spelled ``@DBOS.transaction()``): ``SELECT 1`` in a transaction on the same
database pg_durable uses, its output recorded in that same transaction (in the schema ``dbos``
of that database). DBOS's system database is a database of its own on the same server.
Transactions run at READ COMMITTED, as pg_durable's steps do (DBOS's default is SERIALIZABLE).
Workflows are started with ``DBOS.start_workflow`` and run on DBOS's thread pool; a JOIN is a
parent workflow that starts one child workflow per branch and waits for their results (DBOS
has no JOIN of its own: child workflows are how it runs branches in parallel, durably).

Needs the ``bench`` extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict


@dataclass(frozen=True, slots=True)
class Timed:
    """How long a workload took, and the CPU this process used meanwhile."""

    seconds: float
    cpu: float
    #: Of ``seconds``: the calls of DBOS.start_workflow (the workflows run meanwhile).
    start_seconds: float = 0.0


def installed() -> str | None:
    """The installed DBOS Transact version, or None."""
    try:
        return version("dbos")
    except PackageNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class DbosWorkloads:
    """The workloads, on a DBOS launched by :func:`launched`."""

    #: Starts a workflow of n sequential steps; its handle's result is n.
    start_chain: Callable[[int], Any]
    #: Starts a workflow that runs n one-step child workflows at once and waits for them.
    start_join: Callable[[int], Any]

    def chain(self, instances: int, steps: int) -> Timed:
        """``instances`` workflows of ``steps`` sequential steps, all started at once."""
        cpu = time.process_time()
        started = time.monotonic()
        handles = [self.start_chain(steps) for _ in range(instances)]
        all_started = time.monotonic()
        for handle in handles:
            _check(handle.get_result(), steps)
        return Timed(time.monotonic() - started, time.process_time() - cpu, all_started - started)

    def join(self, branches: int) -> Timed:
        """One workflow whose ``branches`` one-step branches run at once."""
        cpu = time.process_time()
        started = time.monotonic()
        _check(self.start_join(branches).get_result(), branches)
        return Timed(time.monotonic() - started, time.process_time() - cpu)

    def latency(self, runs: int) -> list[float]:
        """DBOS.start_workflow → result, in seconds, for ``runs`` sequential one-step
        workflows."""
        seen = []
        for _ in range(runs):
            t0 = time.perf_counter()
            _check(self.start_chain(1).get_result(), 1)
            seen.append(time.perf_counter() - t0)
        return seen


def _check(result: object, expected: int) -> None:
    if result != expected:
        raise SystemExit(f"a DBOS workflow returned {result!r} instead of {expected}")


@contextlib.contextmanager
def launched(dsn: str, *, threads: int, pool: int) -> Iterator[DbosWorkloads]:
    """DBOS launched in this process, its system database ``<database>_dbos_sys`` (made
    afresh) on the server of ``dsn``, its datasource the database of ``dsn``; at most
    ``threads`` workflows run at once, with ``pool`` connections to each database. Destroyed
    on exit."""
    import sqlalchemy as sa
    from dbos import DBOS, SQLAlchemyDatasource

    params = conninfo_to_dict(dsn)
    database = str(params["dbname"])
    system_database = f"{database}_dbos_sys"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(system_database)
            )
        )

    def url(name: str) -> str:
        port = params.get("port")
        return sa.URL.create(
            "postgresql+psycopg",
            username=_opt(params.get("user")),
            password=_opt(params.get("password")),
            host=_opt(params.get("host")),
            port=int(port) if port else None,
            database=name,
        ).render_as_string(hide_password=False)

    DBOS(
        config={
            "name": "pg-durable-bench",
            "system_database_url": url(system_database),
            "sys_db_pool_size": pool,
            "max_executor_threads": threads,
            "log_level": "WARNING",
        }
    )
    source = SQLAlchemyDatasource.create(
        url(database), engine_kwargs={"pool_size": pool, "max_overflow": 0}
    )

    @source.transaction(isolation_level="READ COMMITTED")
    def step() -> int:
        return int(source.sql_session().execute(sa.text("SELECT 1")).scalar_one())

    @DBOS.workflow()
    def chain(steps: int) -> int:
        return sum(step() for _ in range(steps))

    @DBOS.workflow()
    def join(branches: int) -> int:
        handles = [DBOS.start_workflow(chain, 1) for _ in range(branches)]
        return sum(h.get_result() for h in handles)

    DBOS.launch()
    try:
        yield DbosWorkloads(
            lambda steps: DBOS.start_workflow(chain, steps),
            lambda branches: DBOS.start_workflow(join, branches),
        )
    finally:
        DBOS.destroy()


def _opt(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
