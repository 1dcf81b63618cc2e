"""The suite's workloads for pg_durable, and how one is measured: instances started in one
transaction while the worker runs, timed on the database clock from that commit to the last
completion, with the CPU the worker and the server used meanwhile."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import harness
from psycopg import sql

Conn = harness.Conn
#: The workflow of 1,000 x 10 and of the scale table: 10 trivial SQL steps in a row.
CHAIN = " ~> ".join(["'SELECT 1'"] * 10)


@dataclass(frozen=True, slots=True)
class Run:
    """What one pg_durable workload took."""

    #: Steps done: all of the workload's, or those done within the window (``complete``).
    steps: int
    #: From the commit of the starts to the last completion, on the database clock (or to
    #: the end of the window).
    seconds: float
    #: Starting the instances (client clock): the transaction of df.start calls.
    start_seconds: float
    #: From the commit of the starts to the last completion: CPU seconds of the worker and of
    #: the server (None: the server does not run on this machine).
    worker_cpu: float
    server_cpu: float | None
    #: CPU seconds of the server while the instances were started.
    start_server_cpu: float | None
    peak_rss: int
    #: False: the window closed first; the rest of the instances were cancelled.
    complete: bool = True

    @property
    def rate(self) -> float:
        return self.steps / self.seconds

    def per_step(self, cpu: float | None) -> float | None:
        return None if cpu is None else cpu / self.steps


class Engine:
    """The pg_durable side: the worker process, and the connection that starts instances."""

    def __init__(self, conn: Conn, worker: subprocess.Popen[bytes]) -> None:
        self.conn = conn
        self.worker = worker

    def run(
        self,
        steps: int,
        start: Callable[[Conn], object],
        rounds: int = 1,
        window: float | None = None,
    ) -> Run:
        """Start instances with ``start`` (in one transaction: ``steps`` steps in all; that
        ``rounds`` times, one round after the other) and wait for all of them to complete —
        or, with a ``window``, for that many seconds at most: then the figures are those of
        the steps done so far (SQL nodes completed), and the rest is cancelled."""
        self.settle()
        seconds = start_seconds = worker_cpu = 0.0
        done = 0
        complete = True
        server: list[float] = []
        starting: list[float] = []
        for _ in range(rounds):
            began = self._clock()
            before = harness.server_cpu(self.conn)
            t0 = time.monotonic()
            with self.conn.transaction():
                start(self.conn)
            start_seconds += time.monotonic() - t0
            # The worker starts at once: the clock first, then what it and the server used.
            committed_at = self._clock()
            worker = harness.proc_stats(self.worker.pid).cpu
            committed = harness.server_cpu(self.conn)
            if harness.all_done(self.conn, window or 3600, every=0.02):
                last = self.conn.execute("SELECT max(completed_at) FROM df.instances").fetchone()
                assert last is not None
                seconds += (last[0] - committed_at).total_seconds()
                done += steps
            elif window is None:
                raise SystemExit("benchmark instances did not finish in time")
            else:
                row = self.conn.execute(
                    "SELECT clock_timestamp(), count(*) FROM df.nodes WHERE node_type = 'SQL' "
                    "AND status = 'completed' AND created_at >= %s",
                    (began,),
                ).fetchone()
                assert row is not None
                seconds += (row[0] - committed_at).total_seconds()
                done += row[1]
                complete = False
            worker_cpu += harness.proc_stats(self.worker.pid).cpu - worker
            finished = harness.server_cpu(self.conn)
            if before is not None and committed is not None and finished is not None:
                starting.append(committed - before)
                server.append(finished - committed)
            if not complete:
                self.conn.execute(
                    "SELECT count(df.cancel(id, 'the benchmark window closed')) "
                    "FROM df.instances WHERE status IN ('pending', 'running')"
                )
                harness.wait_all_done(self.conn, 600, every=0.2)
                break
        return Run(
            done,
            seconds,
            start_seconds,
            worker_cpu,
            sum(server) if server else None,
            sum(starting) if starting else None,
            harness.proc_stats(self.worker.pid).peak_rss,
            complete,
        )

    def _clock(self) -> dt.datetime:
        row = self.conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def settle(self) -> None:
        """VACUUM ANALYZE the engine's tables, as autovacuum would have done since the last
        workload: the garbage of one workload (or of DBOS's) is not cleaned up in the time of
        the next, and every workload starts from statistics taken with nothing to do (the
        state a quiet engine is in when work arrives)."""
        for table in ("instances", "nodes", "_fibers", "_instance_state"):
            self.conn.execute(sql.SQL("VACUUM ANALYZE df.{}").format(sql.Identifier(table)))


def balanced_sequence(steps: int) -> str:
    """The envelope of ``steps`` ``SELECT 1`` steps in a row, as a balanced tree of THEN
    nodes (a chain built with ~> nests one level per step; the DSL allows 256)."""

    def build(n: int) -> dict[str, Any]:
        if n == 1:
            return {"node_type": "SQL", "query": "SELECT 1"}
        return {"node_type": "THEN", "left_node": build(n // 2), "right_node": build(n - n // 2)}

    return json.dumps(build(steps))


def join_envelope(branches: int) -> str:
    """The envelope of one JOIN of ``branches`` ``SELECT 1`` steps (what df.join3 builds for
    three)."""
    step = {"node_type": "SQL", "query": "SELECT 1"}
    return json.dumps(
        {
            "node_type": "JOIN",
            "left_node": step,
            "right_node": step,
            "extra_nodes": [step] * (branches - 2),
        }
    )
