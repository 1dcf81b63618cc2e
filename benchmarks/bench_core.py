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
import statistics
import time

import harness


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
    with harness.database(args.dsn) as dsn:
        run(dsn, args)


def run(dsn: str, args: argparse.Namespace) -> None:
    conn = harness.prepare(dsn)
    facts = harness.machine(conn)
    print(
        harness.describe(
            "pg_durable core benchmark", facts, f"worker concurrency {args.concurrency}"
        )
    )

    raw = harness.ceiling(dsn, args.concurrency, args.ceiling_seconds)
    print(
        f"ceiling  : {raw:10.0f} single-statement transactions/s "
        f"(SELECT 1, {args.concurrency} psycopg clients)"
    )

    worker = harness.start_worker(dsn, args.concurrency, conn)
    try:
        chain = " ~> ".join(["'SELECT 1'"] * args.steps)
        before = harness.proc_stats(worker.pid)
        started = time.monotonic()
        with conn.transaction():
            for _ in range(args.instances):
                conn.execute(f"SELECT df.start({chain})")
        committed = time.monotonic()
        harness.wait_all_done(conn, 600)
        elapsed = time.monotonic() - committed
        after = harness.proc_stats(worker.pid)
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
            f"worker   : {(after.cpu - before.cpu) / total * 10000:.2f} CPU s per 10,000 steps, "
            f"peak RSS {after.peak_rss / 2**20:.0f} MiB"
        )
        seen, db = harness.latency_run(dsn, conn, args.latency_runs)
        for name, values in (("client", seen), ("db clock", db)):
            print(
                f"latency  : df.start→completed p50 {1000 * statistics.median(values):6.2f} ms, "
                f"p99 {1000 * harness.percentile(values, 99):6.2f} ms ({name}, "
                f"{args.latency_runs} sequential one-step workflows)"
            )
    finally:
        harness.stop_worker(worker)
        conn.close()


if __name__ == "__main__":
    main()
