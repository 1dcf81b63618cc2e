"""Core engine benchmark: throughput and latency beside the raw PostgreSQL ceiling.

    python benchmarks/bench_core.py [--dsn URL] [--concurrency 10] [--instances 1000]

Without --dsn it starts a private PostgreSQL (the embedded one, default durability settings:
fsync and synchronous_commit on) in a temporary directory. Everything is measured in one run
against one database:

* the ceiling: single-statement transactions per second (``SELECT 1``, autocommit) from plain
  psycopg clients, as many as the worker's concurrency;
* the engine: 1,000 instances x 10 trivial SQL steps (``SELECT 1``), run by one
  ``pg-durable worker`` process with that concurrency: steps/s and the ratio to the ceiling;
  the worker's CPU seconds and peak RSS;
* latency from ``df.start`` to completed for 200 sequential one-step workflows (p50/p99),
  measured on the database clock (created_at → completed_at) and as the client sees it.
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

import psycopg

from pg_durable import schema
from pg_durable.embedded import EmbeddedPostgres


def ceiling(dsn: str, clients: int, seconds: float) -> float:
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


def wait_all_done(conn: psycopg.Connection[tuple[object, ...]], timeout: float) -> None:
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
        time.sleep(0.05)
    raise SystemExit("benchmark instances did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn")
    parser.add_argument("--concurrency", type=int, default=10)
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
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        conn.execute("ALTER DATABASE bench SET pg_durable.enable_superuser_instances = on")
    print(f"pg_durable core benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
        f"PostgreSQL {version[0] if version else '?'}; concurrency {args.concurrency}"
    )

    raw = ceiling(dsn, args.concurrency, args.ceiling_seconds)
    print(
        f"ceiling  : {raw:10.0f} single-statement transactions/s "
        f"(SELECT 1, {args.concurrency} psycopg clients)"
    )

    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET pg_durable.enable_superuser_instances = on")
    chain = " ~> ".join(["'SELECT 1'"] * args.steps)
    with conn.transaction():
        for _ in range(args.instances):
            conn.execute(f"SELECT df.start({chain})")

    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pg_durable.cli.main import main; raise SystemExit(main())",
            "worker",
            "--dsn",
            dsn,
            "--concurrency",
            str(args.concurrency),
            "--log-level",
            "WARNING",
        ],
    )
    try:
        started = time.monotonic()
        wait_all_done(conn, 600)
        elapsed = time.monotonic() - started
        total = args.instances * args.steps
        rate = total / elapsed
        cpu, rss = proc_stats(worker.pid)
        print(
            f"engine   : {rate:10.0f} steps/s "
            f"({args.instances} instances x {args.steps} steps in {elapsed:.2f}s)"
            f" = {100 * rate / raw:.1f}% of the ceiling"
        )
        print(
            f"worker   : {cpu:.2f} CPU s for {total} steps "
            f"({cpu / total * 10000:.2f} CPU s per 10,000 steps),"
            f" peak RSS {rss / 2**20:.0f} MiB"
        )

        db_lat: list[float] = []
        client_lat: list[float] = []
        for _ in range(args.latency_runs):
            t0 = time.monotonic()
            row = conn.execute("SELECT df.start('SELECT 1')").fetchone()
            assert row is not None
            iid = row[0]
            while True:
                got = conn.execute(
                    "SELECT status, extract(epoch FROM completed_at - created_at) "
                    "FROM df.instances WHERE id = %s",
                    (iid,),
                ).fetchone()
                assert got is not None
                if got[0] == "completed":
                    client_lat.append(time.monotonic() - t0)
                    db_lat.append(float(got[1]))
                    break
                if got[0] == "failed":
                    raise SystemExit("latency workflow failed")
                time.sleep(0.0002)
        for name, values in (("db clock", db_lat), ("client", client_lat)):
            q = statistics.quantiles(values, n=100)
            print(
                f"latency  : df.start→completed p50 {1000 * statistics.median(values):6.2f} ms,"
                f" p99 {1000 * q[98]:6.2f} ms ({name}, {len(values)} sequential one-step workflows)"
            )
    finally:
        worker.terminate()
        worker.wait(30)
        conn.close()


if __name__ == "__main__":
    main()
