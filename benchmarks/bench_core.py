"""Core engine benchmark: throughput and latency beside the raw PostgreSQL ceiling.

    python benchmarks/bench_core.py [--dsn URL] [--concurrency 4] [--instances 1000]

Without --dsn it starts a private PostgreSQL (the embedded one, default durability settings:
fsync and synchronous_commit on) in a temporary directory. Everything is measured in one run
against one database, with one ``pg-durable worker`` process of the given concurrency:

* the ceiling: single-statement transactions per second (``SELECT 1``, autocommit) from as many
  plain psycopg clients as the worker has connections executing steps;
* throughput: 1,000 instances x 10 trivial SQL steps (``SELECT 1``), started in one transaction
  while the worker is already running: steps/s from that commit to the last completion, and
  its ratio to the ceiling; the worker's CPU seconds and peak RSS meanwhile;
* latency: ``df.start`` → completed for 200 sequential one-step workflows, as the client sees
  it — from sending ``df.start`` to receiving the NOTIFY that a trigger on df.instances sends
  when the instance completes (no polling).

Targets (issue 2, on a 2-core machine): >= 2,000 steps/s, >= 25 % of the ceiling, latency p50
<= 5 ms and p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from pg_durable import schema
from pg_durable.embedded import EmbeddedPostgres

Conn = psycopg.Connection[Any]

#: Benchmark-only: tells the latency client when an instance completed.
DONE_TRIGGER = """
CREATE OR REPLACE FUNCTION public.bench_notify_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_done', NEW.id);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_done AFTER UPDATE OF status ON df.instances
    FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION public.bench_notify_done();
"""


def ceiling(dsn: str, clients: int, seconds: float) -> float:
    """Single-statement transactions per second from ``clients`` psycopg connections."""

    async def client(stop: float, counts: list[int]) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            n = 0
            while time.monotonic() < stop:
                await conn.execute("SELECT 1")
                n += 1
            counts.append(n)

    async def main() -> float:
        counts: list[int] = []
        started = time.monotonic()
        stop = started + seconds
        await asyncio.gather(*(client(stop, counts) for _ in range(clients)))
        return sum(counts) / (time.monotonic() - started)

    return asyncio.run(main())


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in bytes) of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, peak


def wait_all_done(conn: Conn, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status NOT IN ('completed','failed','cancelled')), "
            "count(*) FILTER (WHERE status = 'failed') FROM df.instances"
        ).fetchone()
        assert row is not None
        if row[1]:
            raise SystemExit(f"{row[1]} instances failed during the benchmark")
        if row[0] == 0:
            return
        time.sleep(0.01)
    raise SystemExit("benchmark instances did not finish in time")


def start_worker(dsn: str, concurrency: int, conn: Conn) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pg_durable.cli.main import main; raise SystemExit(main())",
            "worker",
            "--dsn",
            dsn,
            "--concurrency",
            str(concurrency),
            "--log-level",
            "WARNING",
        ],
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM df.workers WHERE pid = %s AND alive", (worker.pid,)
        ).fetchone()
        if row is not None and row[0]:
            time.sleep(0.5)  # its slots connect
            return worker
        time.sleep(0.05)
    worker.kill()
    raise SystemExit("the worker did not start")


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="a database to use instead of a private server")
    parser.add_argument("--concurrency", type=int, default=4, help="worker connections")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    args = parser.parse_args()

    server = None
    dsn = args.dsn
    if dsn is None:
        tmp = Path(tempfile.mkdtemp(prefix="pg-durable-bench-"))
        tmp.chmod(0o755)
        server = EmbeddedPostgres(tmp / "data", extra_settings={"max_connections": "200"})
        server.start()
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        dsn = server.dsn("bench")
    try:
        run(dsn, args)
    finally:
        if server is not None:
            server.stop()


def run(dsn: str, args: argparse.Namespace) -> None:
    schema.install(dsn)
    conn = psycopg.connect(dsn, autocommit=True)
    version = conn.execute("SHOW server_version").fetchone()
    database = conn.execute("SELECT current_database()").fetchone()
    assert version is not None and database is not None
    conn.execute(
        psycopg.sql.SQL("ALTER DATABASE {} SET pg_durable.enable_superuser_instances = on").format(
            psycopg.sql.Identifier(database[0])
        )
    )
    conn.execute("SET pg_durable.enable_superuser_instances = on")
    conn.execute(DONE_TRIGGER)
    print(f"pg_durable core benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"machine  : {platform.machine()}, {os.cpu_count()} cores; PostgreSQL {version[0]}; "
        f"worker concurrency {args.concurrency}"
    )

    raw = ceiling(dsn, args.concurrency, args.ceiling_seconds)
    print(
        f"ceiling  : {raw:10.0f} single-statement transactions/s "
        f"(SELECT 1, {args.concurrency} psycopg clients)"
    )

    worker = start_worker(dsn, args.concurrency, conn)
    try:
        chain = " ~> ".join(["'SELECT 1'"] * args.steps)
        cpu_before, _ = proc_stats(worker.pid)
        started = time.monotonic()
        with conn.transaction():
            for _ in range(args.instances):
                conn.execute(f"SELECT df.start({chain})")
        committed = time.monotonic()
        wait_all_done(conn, 600)
        elapsed = time.monotonic() - committed
        cpu, rss = proc_stats(worker.pid)
        total = args.instances * args.steps
        rate = total / elapsed
        print(
            f"starts   : {args.instances / (committed - started):10.0f} df.start/s "
            f"({args.steps}-step workflows, one transaction)"
        )
        print(
            f"engine   : {rate:10.0f} steps/s "
            f"({args.instances} instances x {args.steps} steps in {elapsed:.2f}s)"
            f" = {100 * rate / raw:.1f}% of the ceiling"
        )
        print(
            f"worker   : {(cpu - cpu_before) / total * 10000:.2f} CPU s per 10,000 steps, "
            f"peak RSS {rss / 2**20:.0f} MiB"
        )
        latency(dsn, conn, args.latency_runs)
    finally:
        worker.terminate()
        worker.wait(30)
        conn.close()


def latency(dsn: str, conn: Conn, runs: int) -> None:
    """df.start → completed, as the client sees it, for ``runs`` sequential workflows."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN bench_done")
        seen: list[float] = []
        db: list[float] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            row = conn.execute("SELECT df.start('SELECT 1')").fetchone()
            assert row is not None
            for note in listener.notifies(timeout=10):
                if note.payload == row[0]:
                    seen.append(time.perf_counter() - t0)
                    break
            else:
                raise SystemExit(f"instance {row[0]} did not complete within 10 s")
            got = conn.execute(
                "SELECT extract(epoch FROM completed_at - created_at) FROM df.instances "
                "WHERE id = %s",
                (row[0],),
            ).fetchone()
            assert got is not None
            db.append(float(got[0]))
    for name, values in (("client", seen), ("db clock", db)):
        print(
            f"latency  : df.start→completed p50 {1000 * statistics.median(values):6.2f} ms, "
            f"p99 {1000 * percentile(values, 99):6.2f} ms ({name}, {runs} sequential one-step "
            "workflows)"
        )


if __name__ == "__main__":
    main()
