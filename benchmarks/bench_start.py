"""df.start benchmark: instances started per second beside the raw PostgreSQL ceiling.

    python benchmarks/bench_start.py [--dsn URL] [--clients 4] [--seconds 5] [--batch 500]
    python benchmarks/bench_start.py --profile     # + pg_stat_statements (machine's PostgreSQL)

Without --dsn it starts a private PostgreSQL (the embedded one, default durability settings:
fsync and synchronous_commit on) in a temporary directory, installs the schema and starts
workflows as a plain role (LOGIN, granted df usage; RLS applies, as for any user). No worker
runs: this measures the cost of starting, not of running.

Workflows: ``df.start(df.sleep(3600))`` and ``df.start('SELECT 1')`` (one node each) and a
chain of 10 SQL steps (``'SELECT 1' ~> … ~> 'SELECT 1'``), the DSL evaluated in each call.
For each, with 1 client and with ``--clients`` clients (separate processes, one connection each):

* autocommit — every call a transaction of its own;
* one txn    — ``--batch`` calls (separate statements) per transaction.

Beside them, the ceiling of the same run with the same clients: plain single-row INSERT
autocommit transactions/s into a table comparable to df.instances (and the same INSERTs
``--batch`` per transaction), measured first and again at the end. The tables are not
emptied between cases, so later cases start into tables of a few hundred thousand rows, as a
busy database would.

With ``--total N``, N more ``df.start(df.sleep(3600))`` from ``--clients`` autocommit clients,
then N in one transaction from one client: all calls over the elapsed time.

Target (issue 3, on a 2-core machine): >= 2,000 df.start/s for one-node workflows, both as
autocommit calls from a few clients and as many calls in one transaction (100,000 instances).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import harness
import psycopg
from psycopg import sql

ROLE = "bench_starter"
CEILING_TABLE = """
CREATE TABLE IF NOT EXISTS public.bench_ceiling (
    id           varchar(8) PRIMARY KEY,
    label        text,
    root_node    varchar(8) NOT NULL,
    submitted_by regrole NOT NULL,
    created_at   timestamptz DEFAULT now()
);
GRANT INSERT ON public.bench_ceiling TO {role};
"""
CEILING_INSERT = (
    "INSERT INTO public.bench_ceiling (id, root_node, submitted_by) "
    "VALUES (right(gen_random_uuid()::text, 8), 'abcdef01', 'bench_starter') "
    "ON CONFLICT DO NOTHING"
)


def chain(steps: int) -> str:
    return " ~> ".join(["'SELECT 1'"] * steps)


WORKFLOWS = {
    "SLEEP": "SELECT df.start(df.sleep(3600))",
    "SQL": "SELECT df.start('SELECT 1')",
    "10-step": f"SELECT df.start({chain(10)})",
}


def _client(
    dsn: str, role: str | None, statement: str, batch: int, seconds: float, calls: int, q: Any
) -> None:
    """One client process: run ``statement`` for ``seconds`` (or ``calls`` times, when given),
    ``batch`` calls per transaction; report (calls, seconds)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if role:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for _ in range(10):  # warm up: plan caches, prepared statement
            conn.execute(statement)
        n = 0
        started = time.monotonic()
        stop = started + seconds
        while (n < calls) if calls else (time.monotonic() < stop):
            size = min(batch, calls - n) if calls else batch
            if size <= 1:
                conn.execute(statement)
            else:
                with conn.transaction():
                    for _ in range(size):
                        conn.execute(statement)
            n += size
        q.put((n, time.monotonic() - started))


def rate(
    dsn: str,
    role: str | None,
    statement: str,
    clients: int,
    batch: int,
    seconds: float,
    total: int = 0,
) -> float:
    """Calls per second of ``statement`` from ``clients`` processes: for ``seconds`` each (the
    sum of their rates), or ``total`` calls shared out (all calls over the slowest client's
    time)."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    shares = [total // clients + (i < total % clients) for i in range(clients)] if total else []
    procs = [
        ctx.Process(
            target=_client,
            args=(dsn, role, statement, batch, seconds, shares[i] if total else 0, q),
        )
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    results: list[tuple[int, float]] = [q.get(timeout=seconds + 3600) for _ in procs]
    for p in procs:
        p.join()
    if total:
        return total / max(elapsed for _, elapsed in results)
    return sum(n / elapsed for n, elapsed in results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="a database to use instead of a private server")
    parser.add_argument("--clients", type=int, default=4, help="clients of the multi-client cases")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each case")
    parser.add_argument("--batch", type=int, default=500, help="calls per transaction")
    parser.add_argument("--only", help="comma-separated workflows to measure (SLEEP, SQL, 10-step)")
    parser.add_argument(
        "--total",
        type=int,
        default=0,
        help="then start this many df.sleep(3600) instances from --clients autocommit clients, "
        "and as many again in one transaction (e.g. 100000)",
    )
    parser.add_argument(
        "--superuser", action="store_true", help="start as the superuser instead of a plain role"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="private server from the machine's PostgreSQL with pg_stat_statements preloaded; "
        "print the statements that took the most time",
    )
    args = parser.parse_args()

    installation, settings = harness.profiling() if args.profile else (None, {})
    with harness.database(
        args.dsn, max_connections=100, installation=installation, settings=settings, remove=True
    ) as dsn:
        run(dsn, args)


def run(dsn: str, args: argparse.Namespace) -> None:
    conn = harness.prepare(dsn)  # (superuser instances on: for --superuser)
    conn.execute(f"DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE} LOGIN")
    conn.execute("SET client_min_messages = warning")
    conn.execute("SELECT df.grant_usage(%s)", (ROLE,))
    conn.execute(CEILING_TABLE.format(role=ROLE))
    role: str | None = None if args.superuser else ROLE
    if args.profile:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    print(
        harness.describe(
            "pg_durable df.start benchmark",
            harness.machine(conn),
            f"starting as {'the superuser' if role is None else 'a plain role'}; "
            f"{args.seconds:g} s per case; one txn = {args.batch} calls",
        )
    )
    counts = sorted({1, args.clients})
    print(f"{'':34}" + "".join(f"{f'{c} client' + ('s' if c > 1 else ''):>22}" for c in counts))

    def case(name: str, statement: str, batch: int, ceiling: list[float] | None) -> list[float]:
        rates = [rate(dsn, role, statement, c, batch, args.seconds) for c in counts]
        cells = [
            f"{r:8.0f}/s" + (f" ({100 * r / top:3.0f} %)" if ceiling else " " * 8)
            for r, top in zip(rates, ceiling or rates, strict=True)
        ]
        print(f"{name:34}" + "".join(f"{cell:>22}" for cell in cells), flush=True)
        return rates

    top_auto = case("ceiling INSERT, autocommit", CEILING_INSERT, 1, None)
    top_txn = case("ceiling INSERT, one txn", CEILING_INSERT, args.batch, None)
    only = [w.strip() for w in args.only.split(",")] if args.only else list(WORKFLOWS)
    if args.profile:
        conn.execute("SELECT pg_stat_statements_reset()")
    for name in only:
        case(f"df.start {name}, autocommit", WORKFLOWS[name], 1, top_auto)
        case(f"df.start {name}, one txn", WORKFLOWS[name], args.batch, top_txn)
    if args.total:
        sleep = WORKFLOWS["SLEEP"]
        auto = rate(dsn, role, sleep, args.clients, 1, 0, args.total)
        print(
            f"{args.total} x df.start(df.sleep(3600)), {args.clients} clients, autocommit: "
            f"{auto:8.0f}/s",
            flush=True,
        )
        txn = rate(dsn, role, sleep, 1, args.total, 0, args.total)
        print(f"{args.total} x df.start(df.sleep(3600)), one transaction: {txn:8.0f}/s")
    # Again at the end: the machine's own drift during the run shows beside the figures.
    case("ceiling INSERT, autocommit, again", CEILING_INSERT, 1, None)
    case("ceiling INSERT, one txn, again", CEILING_INSERT, args.batch, None)
    row = conn.execute("SELECT count(*) FROM df.instances").fetchone()
    assert row is not None
    print(
        f"instances: {row[0]} started in all (percentages: of the first ceiling with as many "
        "clients)"
    )
    if args.profile:
        harness.print_profile(conn)
    conn.close()


if __name__ == "__main__":
    main()
