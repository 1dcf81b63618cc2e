"""What the benchmarks share: a private PostgreSQL, the raw ceiling, a worker process and the
resources it uses, the df.start → completed latency as a client sees it.

The benchmarks import it as a sibling module (``python benchmarks/bench_core.py`` puts
benchmarks/ first on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

import pg_durable
from pg_durable import schema
from pg_durable.embedded import EmbeddedPostgres, Installation, installations

Conn = psycopg.Connection[Any]

#: The ceiling's statement: the simplest transaction there is, nothing durable written.
SELECT_1: LiteralString = "SELECT 1"

#: Benchmark-only: tells the latency client when an instance completed. Dropped again after
#: the latency run (latency_run), so that no other figure pays for a NOTIFY per instance.
_DONE_TRIGGER = """
CREATE OR REPLACE FUNCTION public.bench_notify_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_done', NEW.id);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_done AFTER UPDATE OF status ON df.instances
    FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION public.bench_notify_done();
"""
_DROP_DONE_TRIGGER = "DROP TRIGGER IF EXISTS bench_done ON df.instances"


# -- the database --------------------------------------------------------------------------
@contextlib.contextmanager
def database(
    dsn: str | None,
    *,
    max_connections: int = 200,
    installation: Installation | None = None,
    settings: dict[str, str] | None = None,
    remove: bool = False,
) -> Iterator[str]:
    """The DSN of the database to measure: ``dsn`` itself, or without one a database ``bench``
    on a private PostgreSQL (the embedded one, default durability settings: fsync and
    synchronous_commit on) in a temporary directory, stopped on exit — and its files removed
    with ``remove`` (a long run leaves gigabytes of tables behind)."""
    if dsn is not None:
        yield dsn
        return
    tmp = Path(tempfile.mkdtemp(prefix="pg-durable-bench-"))
    tmp.chmod(0o755)
    server = EmbeddedPostgres(
        tmp / "data",
        installation=installation,
        extra_settings={"max_connections": str(max_connections), **(settings or {})},
    )
    server.start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield server.dsn("bench")
    finally:
        server.stop()
        if remove:
            shutil.rmtree(tmp, ignore_errors=True)


def profiling() -> tuple[Installation, dict[str, str]]:
    """What a private server needs for ``--profile``: the machine's own PostgreSQL (pgserver's
    build has no contrib modules) with pg_stat_statements loaded, nested statements tracked."""
    system = [i for i in installations() if i.source != "pgserver"]
    if not system:
        raise SystemExit("--profile needs a PostgreSQL installed on the machine")
    return system[0], {
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.track": "all",
    }


def top_statements(conn: Conn, limit: int = 25) -> list[dict[str, Any]]:
    """The statements (top level and nested) that took the most time since the last
    ``pg_stat_statements_reset()`` (VACUUM aside: the suite's own, between workloads)."""
    rows = conn.execute(
        "SELECT calls, total_exec_time, total_exec_time / calls, toplevel, "
        "regexp_replace(left(query, 110), '\\s+', ' ', 'g') "
        "FROM pg_stat_statements WHERE query NOT LIKE 'VACUUM%%' "
        "ORDER BY total_exec_time DESC LIMIT %s",
        (limit,),
    ).fetchall()
    keys = ("calls", "total_ms", "ms_per_call", "toplevel", "query")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def profile_lines(statements: list[dict[str, Any]]) -> list[str]:
    """:func:`top_statements` as the lines of a table."""
    lines = [f"{'calls':>9} {'total ms':>10} {'ms/call':>8} top  query"]
    for s in statements:
        lines.append(
            f"{s['calls']:9} {s['total_ms']:10.0f} {s['ms_per_call']:8.4f} "
            f"{'y' if s['toplevel'] else 'n':>3}  {s['query']}"
        )
    return lines


def print_profile(conn: Conn, limit: int = 25) -> None:
    """Print :func:`top_statements`."""
    print()
    for line in profile_lines(top_statements(conn, limit)):
        print(line)


def prepare(dsn: str) -> Conn:
    """Install the df schema and let the superuser start instances (in this database and in
    the session returned, autocommit)."""
    schema.install(dsn)
    conn = psycopg.connect(dsn, autocommit=True)
    name = conn.execute("SELECT current_database()").fetchone()
    assert name is not None
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET pg_durable.enable_superuser_instances = on").format(
            sql.Identifier(name[0])
        )
    )
    conn.execute("SET pg_durable.enable_superuser_instances = on")
    return conn


def machine(conn: Conn) -> dict[str, Any]:
    """Where and when this run happens: date, CPU, PostgreSQL, Python, the pg_durable measured,
    load averages."""
    version = conn.execute("SHOW server_version").fetchone()
    assert version is not None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "postgresql": version[0],
        "python": platform.python_version(),
        "pg_durable": engine_revision(),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def engine_revision() -> str:
    """The pg_durable measured: its version, and the git commit of its source tree when it
    is one (``+changes`` when that tree differs from the commit)."""
    source = Path(pg_durable.__file__).parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{pg_durable.__version__} ({source})"
    return f"{pg_durable.__version__} at {commit}{'+changes' if changed else ''}"


def describe(title: str, facts: dict[str, Any], extra: str) -> str:
    """The two header lines of a benchmark's report."""
    return (
        f"{title} — {facts['date']}\n"
        f"machine  : {facts['machine']}, {facts['cores']} cores; PostgreSQL "
        f"{facts['postgresql']}; {extra}"
    )


# -- the ceiling -----------------------------------------------------------------------------
def ceiling(
    dsn: str,
    clients: int,
    seconds: float,
    statement: LiteralString = SELECT_1,
    setup: LiteralString | None = None,
) -> float:
    """Single-statement autocommit transactions per second of ``statement`` from ``clients``
    psycopg connections driven by one asyncio loop (as the worker drives its slots);
    ``setup`` runs once before."""
    if setup is not None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(setup)

    async def client(stop: float, counts: list[int]) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            n = 0
            while time.monotonic() < stop:
                await conn.execute(statement)
                n += 1
            counts.append(n)

    async def run() -> float:
        counts: list[int] = []
        started = time.monotonic()
        await asyncio.gather(*(client(started + seconds, counts) for _ in range(clients)))
        return sum(counts) / (time.monotonic() - started)

    return asyncio.run(run())


def start_instances(dsn: str, clients: int, dsls: list[str]) -> float:
    """Start one instance per item of ``dsls`` (DSL expressions) from ``clients`` connections,
    one df.start per transaction; returns df.start calls per second."""

    async def client(items: list[str]) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for dsl in items:
                await conn.execute(f"SELECT df.start({dsl})")

    async def run() -> float:
        started = time.monotonic()
        await asyncio.gather(*(client(dsls[i::clients]) for i in range(clients)))
        return len(dsls) / (time.monotonic() - started)

    return asyncio.run(run())


# -- processes -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProcStats:
    """What a process has used so far."""

    cpu: float  #: CPU seconds, user + system
    rss: int  #: resident memory now, bytes
    peak_rss: int  #: the most resident memory it ever had, bytes


def proc_stats(pid: int) -> ProcStats:
    """CPU and memory of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    memory = {"VmRSS:": 0, "VmHWM:": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(maxsplit=1)[0]
            if key in memory:
                memory[key] = int(line.split()[1]) * 1024
    return ProcStats(cpu, memory["VmRSS:"], memory["VmHWM:"])


def server_cpu(conn: Conn) -> float | None:
    """CPU seconds the PostgreSQL server has used so far — the postmaster, its live children
    and those it has reaped — or None when it does not run on this machine (or /proc says
    nothing)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    try:
        with open(f"/proc/{row[0]}/stat") as f:
            postmaster = int(f.read().rsplit(")", 1)[1].split()[1])
        ticks = 0
        with open(f"/proc/{postmaster}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        with open(f"/proc/{postmaster}/task/{postmaster}/children") as f:
            children = [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
        return None
    for pid in children:
        with contextlib.suppress(OSError):  # (it exited meanwhile: counted once reaped)
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_worker(dsn: str, concurrency: int, conn: Conn, *options: str) -> subprocess.Popen[bytes]:
    """A ``pg-durable worker`` process of ``concurrency`` slots (and ``options``), once it
    has registered and its slots have connected."""
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
            *options,
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
        if worker.poll() is not None:
            break
        time.sleep(0.05)
    worker.kill()
    raise SystemExit("the worker did not start")


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    worker.wait(30)


# -- waiting and statistics ------------------------------------------------------------------
def all_done(conn: Conn, timeout: float, every: float = 0.01) -> bool:
    """Whether, within ``timeout`` seconds, no instance is pending or running any more
    (raises if any failed). Polled every ``every`` seconds at first, then less and less often
    (at most every 2 % of the time waited so far, and every half second): the polls are
    server CPU the figures count, and a long run does not need them often — how long it took
    is read from the database clock (completed_at), not from when a poll saw it done."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM df.instances WHERE status IN ('pending', 'running'))"
        ).fetchone()
        assert row is not None
        if not row[0]:
            break
        now = time.monotonic()
        if now > deadline:
            return False
        time.sleep(max(every, min(0.5, (now - began) / 50)))
    failed = conn.execute("SELECT count(*) FROM df.instances WHERE status = 'failed'").fetchone()
    assert failed is not None
    if failed[0]:
        raise SystemExit(f"{failed[0]} instances failed during the benchmark")
    return True


def wait_all_done(conn: Conn, timeout: float, every: float = 0.01) -> None:
    """Until no instance is pending or running (raises if any failed, or after ``timeout``)."""
    if not all_done(conn, timeout, every):
        raise SystemExit("benchmark instances did not finish in time")


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1]


# -- latency ---------------------------------------------------------------------------------
def latency_run(dsn: str, conn: Conn, runs: int) -> tuple[list[float], list[float]]:
    """``df.start`` → completed for ``runs`` sequential one-step workflows, in seconds: as the
    client sees it (from sending df.start to receiving the NOTIFY a trigger sends when the
    instance completes — no polling), and on the database clock (completed_at - created_at)."""
    conn.execute(_DONE_TRIGGER)
    try:
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
    finally:
        conn.execute(_DROP_DONE_TRIGGER)
    return seen, db
