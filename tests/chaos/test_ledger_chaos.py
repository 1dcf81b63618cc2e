"""Chaos: a ledger workload through killed workers, crashed PostgreSQL and killed connections.

One run (a module fixture) starts a fleet of ``pg-durable worker`` processes on a private
cluster, starts instances of every shape in tests/chaos/workload.py over the fault window and
sends their signals, while tests/chaos/driver.py kill -9s workers, crashes and restarts
PostgreSQL and terminates worker backends. Then the faults stop, every instance must finish,
and the tests below each check one promise against the ledger and the engine's tables:

* every transactional step exactly once (no duplicate, none lost), the autocommit step at
  least once, nothing else in the ledger;
* every instance completed, or failed where its shape fails by design; none left running;
* no fiber and no signal left behind; every signal consumed by its own wait;
* no worker died by itself, and none logged a traceback or an error for a mere fault.

Bounded by default (150 instances, ~20 faults, well under 90 s on two cores);
``PG_DURABLE_SLOW=1`` runs 2,000 instances through ~7 minutes of faults.
``PG_DURABLE_CHAOS_INSTANCES``, ``PG_DURABLE_CHAOS_SECONDS`` (the fault window) and
``PG_DURABLE_CHAOS_SEED`` override either. Worker logs of a failing run stay in
/tmp/chaos-logs/ (``PG_DURABLE_CHAOS_KEEP_LOGS=1`` keeps them always).
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_durable import schema
from tests.chaos.driver import (
    FAULT_KINDS,
    Client,
    FaultDriver,
    Fleet,
    LogFindings,
    WorkloadClient,
    read_logs,
)
from tests.chaos.workload import (
    BY_NAME,
    MIX,
    SETUP,
    TERMINAL,
    Shape,
    Started,
    Verdict,
    describe,
    envelopes,
    verify,
)
from tests.fixtures.crash import private_cluster

LOG_ROOT = Path("/tmp/chaos-logs")
DBNAME = "chaos"


@dataclass(frozen=True, slots=True)
class Config:
    instances: int
    #: Seconds during which faults are injected (instances start in its first 75 %).
    fault_seconds: float
    #: Mean seconds between two faults.
    fault_interval: float
    workers: int
    #: Seconds the instances get to finish once the faults stop.
    drain_seconds: float


def _config() -> Config:
    if os.environ.get("PG_DURABLE_SLOW"):
        base = Config(2000, 420.0, 2.5, 3, 240.0)
    else:
        base = Config(150, 40.0, 1.6, 3, 40.0)
    instances = int(os.environ.get("PG_DURABLE_CHAOS_INSTANCES") or base.instances)
    seconds = float(os.environ.get("PG_DURABLE_CHAOS_SECONDS") or base.fault_seconds)
    return Config(instances, seconds, base.fault_interval, base.workers, base.drain_seconds)


CONFIG = _config()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(int(CONFIG.fault_seconds + CONFIG.drain_seconds + 120)),
]


@dataclass(slots=True)
class ChaosRun:
    config: Config
    seed: int
    started: list[Started]
    verdict: Verdict
    faults: dict[str, int]
    backends_terminated: int
    downtime: float
    client_retries: int
    stuck: list[str]
    unexpected_exits: list[tuple[Path, int]]
    bad_stops: list[tuple[Path, int | None]]
    logs: LogFindings
    log_dir: Path
    wall: float
    drain: float
    worker_processes: int
    summary: str = ""

    @property
    def clean(self) -> bool:
        """Whether every check below passes (else the logs are kept)."""
        v = self.verdict
        return not (
            v.duplicates
            or v.lost
            or v.unexpected
            or v.autocommit_missing
            or v.wrong_status
            or v.fibers_left
            or v.signals_left
            or self.stuck
            or self.unexpected_exits
            or self.bad_stops
            or self.logs.bad
        )

    @property
    def steps(self) -> int:
        return self.verdict.steps_expected + self.verdict.autocommit_steps


def _plan(config: Config, rng: random.Random, t0: float) -> list[tuple[float, str, Shape]]:
    window = config.fault_seconds * 0.75
    times = sorted(rng.uniform(0.0, window) for _ in range(config.instances))
    return [
        (t0 + when, f"chaos-{i:05d}-{MIX[i % len(MIX)]}", BY_NAME[MIX[i % len(MIX)]])
        for i, when in enumerate(times)
    ]


def _wait_for_the_end(client: Client, seconds: float) -> list[str]:
    """Wait until every instance is terminal; returns the ids of those that are not."""
    deadline = time.monotonic() + seconds

    def unfinished(conn: psycopg.Connection[Any]) -> list[str]:
        return [
            str(r[0])
            for r in conn.execute(
                "SELECT id FROM df.instances WHERE status <> ALL(%s) ORDER BY id", (list(TERMINAL),)
            )
        ]

    while True:
        left = client.run(unfinished)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def _summary(run: ChaosRun) -> str:
    v = run.verdict
    faults = ", ".join(f"{k} {run.faults.get(k, 0)}" for k in FAULT_KINDS)
    statuses = ", ".join(f"{k} {n}" for k, n in sorted(v.by_status.items()))
    lines = [
        f"chaos: seed {run.seed}, {run.config.workers} workers "
        f"({run.worker_processes} processes in all), fault window {run.config.fault_seconds:.0f} s",
        f"  instances {v.instances} ({statuses})",
        f"  steps {run.steps}: transactional {v.steps_expected} (found {v.steps_found}), "
        f"autocommit {v.autocommit_steps}; race losers that ran {v.race_losers_run}",
        f"  signals {v.signals_sent} (sent before the wait: {v.signals_before_wait})",
        f"  faults {sum(run.faults.values())}: {faults}; backends terminated "
        f"{run.backends_terminated}; PostgreSQL down {run.downtime:.1f} s; "
        f"client retries {run.client_retries}",
        f"  duplicates = {v.duplicates}, lost = {v.lost}, unexpected = {v.unexpected}, "
        f"autocommit missing = {v.autocommit_missing}, stuck = {len(run.stuck)}, "
        f"fibers left = {v.fibers_left}, signals left = {v.signals_left}",
        f"  lost signals = {len(v.lost_signals)} (steps not run after them: "
        f"{v.lost_after_signal}, later signals taken by the wait that lost one: "
        f"{v.misdelivered})",
        f"  worker log: {run.logs.records} records, warnings by action "
        f"{dict(run.logs.actions)}, bad lines {len(run.logs.bad)}, "
        f"unexpected exits {len(run.unexpected_exits)}",
        f"  wall time {run.wall:.1f} s (drain after the faults {run.drain:.1f} s)",
    ]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def chaos() -> Iterator[ChaosRun]:
    config = CONFIG
    seed = int(os.environ.get("PG_DURABLE_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    log_dir = LOG_ROOT / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with private_cluster("pg-durable-chaos-", max_connections="200") as server:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DBNAME}")
            conn.execute(f"ALTER DATABASE {DBNAME} SET pg_durable.enable_superuser_instances = on")
        dsn = server.dsn(DBNAME)
        schema.install(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in SETUP:
                conn.execute(statement)
            shapes = envelopes(conn)

        fleet = Fleet(dsn, config.workers, log_dir)
        client = Client(dsn)
        admin = Client(server.dsn("postgres"))
        try:
            fleet.start()
            t0 = time.monotonic()
            load = WorkloadClient(
                client, shapes, _plan(config, rng, t0), random.Random(rng.random())
            )
            driver = FaultDriver(
                fleet,
                server,
                admin,
                DBNAME,
                random.Random(rng.random()),
                until=t0 + config.fault_seconds,
                interval=config.fault_interval,
            )
            load.start()
            driver.start()
            load.join()
            driver.join()
            if load.error is not None:
                raise load.error
            if driver.error is not None:
                raise driver.error
            fleet.refill()  # a full fleet for the drain
            drain_began = time.monotonic()
            stuck = _wait_for_the_end(client, config.drain_seconds)
            drain = time.monotonic() - drain_began
            details = [client.run(functools.partial(describe, instance_id=i)) for i in stuck[:5]]
            verdict = client.run(lambda c: verify(c, load.started))
        finally:
            bad_stops = fleet.stop()
            client.close()
            admin.close()
            shutil.copy(server.data_dir / "server.log", log_dir / "postgresql.log")
        run = ChaosRun(
            config=config,
            seed=seed,
            started=load.started,
            verdict=verdict,
            faults=dict(driver.counts),
            backends_terminated=driver.backends_terminated,
            downtime=driver.downtime,
            client_retries=client.retries,
            stuck=stuck,
            unexpected_exits=fleet.unexpected_exits,
            bad_stops=bad_stops,
            logs=read_logs(fleet.all_logs()),
            log_dir=log_dir,
            wall=time.monotonic() - began,
            drain=drain,
            worker_processes=len(fleet.all_logs()),
        )
        run.summary = _summary(run)
        (log_dir / "summary.txt").write_text(
            run.summary + "\n\n" + "\n".join(run.verdict.problems) + "\n\n" + "\n\n".join(details)
        )
    yield run
    if run.clean and not os.environ.get("PG_DURABLE_CHAOS_KEEP_LOGS"):
        shutil.rmtree(log_dir, ignore_errors=True)


def _where(run: ChaosRun) -> str:
    return f"(seed {run.seed}; summary and worker logs in {run.log_dir})"


def test_the_run_injected_every_kind_of_fault(
    chaos: ChaosRun, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print("\n" + chaos.summary)
    if CONFIG.fault_seconds >= 20:
        for kind in ("kill", "pg_restart", "terminate"):
            assert chaos.faults.get(kind, 0) >= 1, f"no {kind} fault was injected {_where(chaos)}"
    assert len(chaos.started) == CONFIG.instances


def test_every_transactional_step_ran_exactly_once(chaos: ChaosRun) -> None:
    v = chaos.verdict
    assert (v.duplicates, v.lost, v.unexpected) == (0, 0, 0), (
        f"duplicates = {v.duplicates}, lost = {v.lost}, unexpected = {v.unexpected} "
        f"{_where(chaos)}:\n" + "\n".join(v.problems)
    )


def test_every_autocommit_step_ran_at_least_once(chaos: ChaosRun) -> None:
    v = chaos.verdict
    assert v.autocommit_missing == 0, "\n".join(p for p in v.problems if "autocommit" in p)


def test_no_signal_is_lost(chaos: ChaosRun) -> None:
    assert chaos.verdict.signals_left == 0, f"signals nobody received {_where(chaos)}"
    lost = chaos.verdict.lost_signals
    assert lost == {}, f"instances waiting for a signal that was taken {_where(chaos)}: {lost}"


def test_no_instance_is_left_running(chaos: ChaosRun) -> None:
    stuck = [i for i in chaos.stuck if i not in chaos.verdict.lost_signals]
    assert stuck == [], (
        f"{len(stuck)} instances still running {chaos.config.drain_seconds:.0f} s after "
        f"the last fault {_where(chaos)}: {stuck[:20]}"
    )


def test_every_instance_ended_as_its_shape_says(chaos: ChaosRun) -> None:
    wrong = [w for w in chaos.verdict.wrong_status if w.split()[0] not in chaos.stuck]
    assert wrong == [], f"{_where(chaos)}\n" + "\n".join(wrong[:20])


def test_no_fiber_is_left(chaos: ChaosRun) -> None:
    assert chaos.verdict.fibers_left == 0, _where(chaos)


def test_workers_survive_faults_without_a_traceback(chaos: ChaosRun) -> None:
    assert chaos.unexpected_exits == [], f"workers exited by themselves: {chaos.unexpected_exits}"
    assert chaos.bad_stops == [], f"workers that did not stop cleanly: {chaos.bad_stops}"
    assert chaos.logs.bad == [], f"{_where(chaos)}\n" + "\n".join(chaos.logs.bad[:10])
