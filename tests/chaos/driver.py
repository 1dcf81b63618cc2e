"""The chaos driver: a fleet of worker processes, the faults injected into it, and the client
that starts instances and sends their signals through those faults.

Faults, one at a time at random intervals:

* ``kill``: SIGKILL a random worker process, then start a new one;
* ``pg_restart``: ``pg_ctl stop -m immediate`` (a crash: no checkpoint, recovery at start),
  a pause, then start PostgreSQL again;
* ``terminate``: ``pg_terminate_backend`` on the worker connections (application_name
  ``pg_durable:worker:…``): all of them, or a random half.

The client's own statements may fail while PostgreSQL is down or at the moment it goes down;
it retries them, and makes each retry safe for a COMMIT whose outcome it never heard: a
start looks its label up first, a signal its row in ``chaos_sent``.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg

from pg_durable.embedded import EmbeddedPostgres
from tests.chaos.workload import Shape, Started
from tests.fixtures.crash import spawn_cli_worker

Conn = psycopg.Connection[Any]
T = TypeVar("T")

#: Flags of every worker of the fleet: small and quick to react, so that a short run sees
#: many recoveries.
WORKER_FLAGS = (
    "--concurrency",
    "3",
    "--poll-interval",
    "0.5",
    "--loop-min-interval",
    "0.2",
    "--reconnect-max-backoff",
    "1",
    "--lease-seconds",
    "5",
    "--shutdown-grace",
    "10",
    "--log-format",
    "json",
)
FAULT_KINDS = ("kill", "pg_restart", "terminate")
#: Faults come in rounds of these, shuffled: every kind often, kills most.
FAULT_ROUND = ("kill", "kill", "terminate", "pg_restart")


class Client:
    """A connection of the test's own that survives restarts: ``run`` retries on a lost
    connection until ``patience`` seconds have passed."""

    def __init__(self, dsn: str, patience: float = 90.0) -> None:
        self.dsn = dsn
        self.patience = patience
        self.retries = 0
        self._conn: Conn | None = None

    def run(self, body: Callable[[Conn], T]) -> T:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=5, application_name="chaos"
                    )
                return body(self._conn)
            except psycopg.OperationalError:
                self.retries += 1
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(slots=True)
class WorkerProcess:
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    killed: bool = False


@dataclass(slots=True)
class Fleet:
    """``size`` worker processes on one database; logs go to ``log_dir``, one per process."""

    dsn: str
    size: int
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    retired: list[WorkerProcess] = field(default_factory=list)
    #: Workers that exited although nobody killed or stopped them: (log, exit status).
    unexpected_exits: list[tuple[Path, int]] = field(default_factory=list)
    _spawned: int = 0

    def start(self) -> None:
        for _ in range(self.size):
            self.workers.append(self._spawn())

    def _spawn(self) -> WorkerProcess:
        self._spawned += 1
        path = self.log_dir / f"worker-{self._spawned:03d}.log"
        log = path.open("ab")
        proc = WorkerProcess(spawn_cli_worker(self.dsn, *WORKER_FLAGS, log=log), path, log)
        # Wait until it serves: a worker that cannot reach the database at start-up exits,
        # by design, and the next fault must not take the database away before it is up.
        # (One that exits anyway is noted by refill.)
        deadline = time.monotonic() + 30
        while b'"worker_started"' not in path.read_bytes():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return proc

    def kill_one(self, rng: random.Random) -> None:
        victim = rng.choice(self.workers)
        victim.killed = True
        os.kill(victim.popen.pid, signal.SIGKILL)
        victim.popen.wait(10)
        victim.log.close()
        self.workers.remove(victim)
        self.retired.append(victim)

    def refill(self) -> None:
        """Replace the workers that died by themselves (noting them) and the killed ones."""
        for w in list(self.workers):
            code = w.popen.poll()
            if code is not None:
                self.unexpected_exits.append((w.log_path, code))
                w.log.close()
                self.workers.remove(w)
                self.retired.append(w)
        while len(self.workers) < self.size:
            self.workers.append(self._spawn())

    def stop(self, timeout: float = 30.0) -> list[tuple[Path, int | None]]:
        """SIGTERM every worker; returns (log, exit status) of those that did not exit 0."""
        for w in self.workers:
            if w.popen.poll() is None:
                w.popen.send_signal(signal.SIGTERM)
        bad: list[tuple[Path, int | None]] = []
        for w in self.workers:
            try:
                code: int | None = w.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                w.popen.kill()
                w.popen.wait(10)
                code = None
            if code != 0:
                bad.append((w.log_path, code))
            w.log.close()
        self.retired.extend(self.workers)
        self.workers = []
        return bad

    def all_logs(self) -> list[Path]:
        return sorted(w.log_path for w in (*self.retired, *self.workers))


@dataclass(slots=True)
class LogFindings:
    """What the workers' logs say: warnings by action, and the lines that should not be."""

    records: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    #: Tracebacks, ERROR records and lines that are not JSON (a crash's output).
    bad: list[str] = field(default_factory=list)


def read_logs(paths: list[Path]) -> LogFindings:
    found = LogFindings()
    for path in paths:
        for raw in path.read_text(errors="replace").splitlines():
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                found.bad.append(f"{path.name}: not a log record: {raw[:300]}")
                continue
            found.records += 1
            if rec.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                found.actions[_kind_of(rec)] += 1
            failed = rec.get("level") in ("ERROR", "CRITICAL")
            if failed or rec.get("exception") or rec.get("stack"):
                text = f"{rec.get('level')} {rec.get('message')}"
                if rec.get("exception"):
                    text += "\n" + str(rec["exception"])
                found.bad.append(f"{path.name}: {text[:3000]}")
    return found


def _kind_of(record: dict[str, Any]) -> str:
    """A record's action, else its logger and message without the addresses in it."""
    if record.get("action"):
        return str(record["action"])
    message = re.sub(r"0x[0-9a-f]+", "0x…", str(record.get("message", "")))
    return f"{record.get('logger')}: {message[:80]}"


class FaultDriver(threading.Thread):
    """Injects faults until ``until`` (monotonic clock), one every ``interval`` s on average."""

    def __init__(
        self,
        fleet: Fleet,
        server: EmbeddedPostgres,
        admin: Client,
        dbname: str,
        rng: random.Random,
        until: float,
        interval: float,
    ) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.fleet = fleet
        self.server = server
        self.admin = admin
        self.dbname = dbname
        self.rng = rng
        self.until = until
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.backends_terminated = 0
        self.downtime = 0.0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        rounds: list[str] = []
        try:
            while not self._halt.is_set() and time.monotonic() < self.until:
                if self._halt.wait(self.rng.uniform(0.5, 1.5) * self.interval):
                    break
                if not rounds:
                    rounds = list(FAULT_ROUND)
                    self.rng.shuffle(rounds)
                kind = rounds.pop()
                getattr(self, "_" + kind)()
                self.counts[kind] += 1
                self.fleet.refill()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _kill(self) -> None:
        self.fleet.kill_one(self.rng)
        time.sleep(self.rng.uniform(0.0, 1.0))  # the fleet runs one short for a moment

    def _pg_restart(self) -> None:
        began = time.monotonic()
        self.admin.close()
        self.server.stop("immediate")
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.server.start()
        self.downtime += time.monotonic() - began

    def _terminate(self) -> None:
        share = 1.0 if self.rng.random() < 0.5 else 0.5

        def terminate(conn: Conn) -> int:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name LIKE 'pg\\_durable:worker%%' "
                "AND random() < %s",
                (self.dbname, share),
            ).fetchone()
            return int(row[0]) if row else 0

        self.backends_terminated += self.admin.run(terminate)


class WorkloadClient(threading.Thread):
    """Starts the instances at their times and sends each its signals (0-3 s after its start,
    so some arrive before the instance reaches its wait and some after)."""

    def __init__(
        self,
        client: Client,
        envelopes: dict[str, str],
        plan: list[tuple[float, str, Shape]],
        rng: random.Random,
    ) -> None:
        super().__init__(name="chaos-client", daemon=True)
        self.client = client
        self.envelopes = envelopes
        self.rng = rng
        self.started: list[Started] = []
        self.error: BaseException | None = None
        # (when, order, action, arguments): starts at their times, signals after them.
        self._queue: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._order = 0
        for when, label, shape in plan:
            self._push(when, "start", (label, shape))

    def _push(self, when: float, action: str, args: tuple[Any, ...]) -> None:
        self._order += 1
        heapq.heappush(self._queue, (when, self._order, action, args))

    def run(self) -> None:
        try:
            while self._queue:
                when, _, action, args = heapq.heappop(self._queue)
                delay = when - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if action == "start":
                    self._start(*args)
                else:
                    self._signal(*args)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _start(self, label: str, shape: Shape) -> None:
        envelope = self.envelopes[shape.name]

        def start(conn: Conn) -> str:
            with conn.transaction():
                row = conn.execute(
                    "SELECT id FROM df.instances WHERE label = %s", (label,)
                ).fetchone()
                if row is None:
                    row = conn.execute("SELECT df.start(%s, %s)", (envelope, label)).fetchone()
            assert row is not None
            return str(row[0])

        iid = self.client.run(start)
        self.started.append(Started(label, shape, iid))
        when = time.monotonic()
        for seq, (name, data) in enumerate(shape.signals):
            when += self.rng.uniform(0.0, 3.0 if seq == 0 else 1.0)
            self._push(when, "signal", (iid, seq, name, data))

    def _signal(self, iid: str, seq: int, name: str, data: str) -> None:
        def send(conn: Conn) -> None:
            with conn.transaction():
                if conn.execute(
                    "SELECT 1 FROM chaos_sent WHERE instance = %s AND seq = %s", (iid, seq)
                ).fetchone():
                    return  # the first attempt committed; its COMMIT's answer was lost
                conn.execute("SELECT df.signal(%s, %s, %s)", (iid, name, json.dumps(data)))
                conn.execute(
                    "INSERT INTO chaos_sent (instance, seq, name, data) VALUES (%s, %s, %s, %s)",
                    (iid, seq, name, data),
                )

        self.client.run(send)
