"""Durable waits at scale: many instances sleeping or waiting for signals, one worker.

    python benchmarks/bench_waits.py [--dsn URL] [--instances 100000] [--burst 10000]

Without --dsn it starts a private PostgreSQL (the embedded one, default durability settings)
in a temporary directory. Measured in one run against one database, with one
``pg-durable worker`` process:

* the ceiling: single-row INSERT transactions per second (autocommit) from the same number of
  clients as start the instances — what PostgreSQL itself does for one small write;
* ``df.start`` rate for ``--instances`` instances, half ``df.sleep(7200)`` and half
  ``df.wait_for_signal('go')``, from 4 client connections with
  one start per transaction: for the first tenth while no worker runs (df.start on its own),
  for the rest while the worker takes each new instance to its wait (on the same machine);
* the worker while they all wait: CPU used over 10 s (it should be ~0: no per-instance
  polling) and its resident memory, with a tenth and with all of the instances waiting;
* timer lag: ``--burst`` more instances whose ``df.wait_for_schedule`` falls on the same
  second; lag = completion − the tick, p50/p99/max. Before the tick the benchmark runs
  VACUUM ANALYZE on the df tables, as autovacuum would have long done for instances that
  wait in steady state, so that the burst does not compete with the load phase's maintenance;
* signal latency: ``--signals`` more instances wait for a signal and then run a step that
  records when it started; from the commit of ``df.signal`` to that start (both on the
  database clock), p50/p99, while all the others wait too.

Targets (issue 3, on a 2-core machine): >= 2,000 df.start/s, worker CPU ~0 while waiting,
RSS < 150 MB whatever the number waiting, timer lag p99 <= 1 s, signal latency p50 <= 10 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

import harness

Conn = harness.Conn
CLIENTS = 4
SLEEPER = "df.sleep(7200)"
WAITER = "df.wait_for_signal('go')"
#: For signal latency: the step after the wait records when it started.
SIGNALLED = "df.wait_for_signal('ping') ~> 'SELECT clock_timestamp() AS at'"
#: The ceiling: a single-row INSERT, what PostgreSQL itself does for one small write.
INSERT_SETUP = "CREATE TABLE IF NOT EXISTS bench_ceiling (id bigserial, v text)"
INSERT = "INSERT INTO bench_ceiling (v) VALUES ('x')"


def wait_count(
    conn: Conn, query: str, expected: int, timeout: float, what: str, every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(query).fetchone()
        if row is not None and row[0] >= expected:
            return
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def all_waiting(conn: Conn, expected: int) -> None:
    wait_count(
        conn,
        "SELECT count(*) FROM df._fibers WHERE run_at > now() + interval '1 minute'",
        expected,
        1800,
        "every instance to wait",
    )


def idle_cpu(pid: int, seconds: float = 10.0) -> tuple[float, int]:
    """CPU seconds the worker used over ``seconds`` of waiting, and its RSS."""
    before = harness.proc_stats(pid)
    time.sleep(seconds)
    after = harness.proc_stats(pid)
    return after.cpu - before.cpu, after.rss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn")
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with harness.database(args.dsn) as dsn:
        run(dsn, args)


def run(dsn: str, args: argparse.Namespace) -> None:
    conn = harness.prepare(dsn)
    facts = harness.machine(conn)
    print(
        harness.describe(
            "pg_durable waits benchmark", facts, f"worker concurrency {args.concurrency}"
        )
    )
    ceiling = harness.ceiling(dsn, CLIENTS, 5.0, INSERT, INSERT_SETUP)
    print(f"ceiling  : {ceiling:8.0f} single-row INSERT transactions/s ({CLIENTS} psycopg clients)")
    # df.start on its own: the first tenth, while no worker runs.
    tenth = args.instances // 10
    mixed = [SLEEPER if i % 2 else WAITER for i in range(tenth)]
    alone = harness.start_instances(dsn, CLIENTS, mixed)
    print(
        f"starts   : {alone:8.0f} df.start/s with no worker running "
        f"({alone / ceiling:.0%} of the ceiling)"
    )
    worker = harness.start_worker(dsn, args.concurrency, conn)
    try:
        all_waiting(conn, tenth)
        cpu, rss = idle_cpu(worker.pid)
        print(
            f"waiting  : {tenth:7d} instances; worker while they wait: {cpu / 10:.3f} CPU s "
            f"per s, RSS {rss / 2**20:.0f} MiB"
        )
        # The rest while the worker serves them: every new instance is one more transaction
        # of the worker's on the same machine.
        served = harness.start_instances(
            dsn, CLIENTS, [SLEEPER if i % 2 else WAITER for i in range(args.instances - tenth)]
        )
        print(
            f"starts   : {served:8.0f} df.start/s while the worker serves them "
            f"({served / ceiling:.0%} of the ceiling)"
        )
        all_waiting(conn, args.instances)
        cpu, rss = idle_cpu(worker.pid)
        print(
            f"waiting  : {args.instances:7d} instances; worker while they wait: {cpu / 10:.3f} "
            f"CPU s per s, RSS {rss / 2**20:.0f} MiB"
        )
        harness.start_instances(dsn, CLIENTS, [SIGNALLED] * args.signals)
        all_waiting(conn, args.instances + args.signals)
        waiters = [
            r[0] for r in conn.execute("SELECT instance_id FROM df._fibers WHERE awaiting = 'ping'")
        ]
        timer_burst(conn, dsn, args.burst)
        signal_latency(conn, waiters)
        rss = harness.proc_stats(worker.pid).rss
        print(f"worker   : RSS {rss / 2**20:.0f} MiB at the end")
    finally:
        harness.stop_worker(worker)
        conn.close()


def timer_burst(conn: Conn, dsn: str, count: int) -> None:
    """``count`` instances whose schedule falls on one second; lag from that second."""
    now = conn.execute("SELECT now() AT TIME ZONE 'UTC'").fetchone()
    assert now is not None
    tick = (now[0] + dt.timedelta(seconds=75)).replace(second=0, microsecond=0)
    cron = f"{tick.minute} {tick.hour} {tick.day} {tick.month} *"
    harness.start_instances(dsn, CLIENTS, [f"df.wait_for_schedule('{cron}')"] * count)
    for table in ("df.instances", "df.nodes", "df._fibers", "df._instance_state"):
        conn.execute(f"VACUUM ANALYZE {table}")
    # The only instances that complete before the signal phase; a cheap look, once a second,
    # not to take the CPU from the worker while it works the burst off.
    done_query = "SELECT count(*) FROM df.instances WHERE status = 'completed'"
    wait_count(conn, done_query, count, 600, "the timer burst", every=1.0)
    lags = [
        float(r[0])
        for r in conn.execute(
            "SELECT extract(epoch FROM i.completed_at - (%s::timestamp AT TIME ZONE 'UTC')) "
            "FROM df.instances i JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node "
            "WHERE n.node_type = 'WAIT_SCHEDULE'",
            (tick,),
        ).fetchall()
    ]
    print(
        f"timers   : {count} waits on one second fired with lag p50 {statistics.median(lags):.3f}"
        f" s, p99 {harness.percentile(lags, 99):.3f} s, max {max(lags):.3f} s"
        f" (min {min(lags):.3f} s)"
    )


def signal_latency(conn: Conn, waiters: list[str]) -> None:
    """From the commit of df.signal to the start of the step after the wait."""
    lags = []
    for iid in waiters:
        row = conn.execute("SELECT df.signal(%s, 'ping'), clock_timestamp()", (iid,)).fetchone()
        assert row is not None
        sent = row[1]
        deadline = time.monotonic() + 10
        while True:
            got = conn.execute(
                "SELECT (n.result->'rows'->0->>'at')::timestamptz FROM df.instances i "
                "JOIN df.nodes n ON n.instance_id = i.id AND n.id = i.root_node "
                "WHERE i.id = %s AND i.status = 'completed'",
                (iid,),
            ).fetchone()
            if got is not None:
                lags.append((got[0] - sent).total_seconds())
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"instance {iid} did not complete after its signal")
            time.sleep(0.001)
    print(
        f"signals  : df.signal → next step started p50 {1000 * statistics.median(lags):.1f} ms,"
        f" p99 {1000 * harness.percentile(lags, 99):.1f} ms ({len(lags)} signals, sequential)"
    )


if __name__ == "__main__":
    main()
