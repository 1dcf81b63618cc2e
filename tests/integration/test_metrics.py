"""GET /metrics from a real worker: step counters, histograms, queue gauges, liveness."""

from __future__ import annotations

import math
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pg_durable.embedded import free_port
from pg_durable.errors import ConfigurationError
from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.http_server import HttpServer
from tests.integration.test_http_worker import http, set_policy

Conn = psycopg.Connection[Any]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """The samples of a scrape, and each family's TYPE; fails on anything malformed."""
    samples: Samples = {}
    types: dict[str, str] = {}
    helps: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps, f"TYPE before HELP for {name}"
            assert name not in types, f"two TYPE lines for {name}"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        # The TYPE line names the sample, but for a histogram's _bucket, _sum and _count.
        if name in types:
            assert types[name] in ("counter", "gauge"), line
            assert (types[name] == "counter") == name.endswith("_total"), line
        else:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert types.get(family) == "histogram", f"{name} has no TYPE line"
        pairs: list[tuple[str, str]] = []
        if labels:
            inner = labels[1:-1]
            found = list(_LABEL.finditer(inner))
            assert "".join(m.group(0) for m in found) == inner, f"bad labels: {labels}"
            pairs = [(m.group(1), _unescape(m.group(2))) for m in found]
        key = (name, frozenset(pairs))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(value)
    return samples, types


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def scrape(port: int, path: str = "/metrics") -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples, types = parse(response.read().decode("utf-8"))
    check_histograms(samples, types)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def check_histograms(samples: Samples, types: dict[str, str]) -> None:
    """Every histogram series: cumulative buckets up to +Inf, which equals _count; a _sum."""
    for family in (name for name, kind in types.items() if kind == "histogram"):
        series: dict[frozenset[tuple[str, str]], list[tuple[float, float]]] = {}
        for (name, labels), count in samples.items():
            if name == family + "_bucket":
                le = dict(labels)["le"]
                rest = frozenset(p for p in labels if p[0] != "le")
                series.setdefault(rest, []).append((float(le), count))
        for labels, buckets in series.items():
            buckets.sort()
            assert buckets[-1][0] == math.inf
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), f"{family} buckets not cumulative"
            assert samples[(family + "_count", labels)] == counts[-1]
            assert samples[(family + "_sum", labels)] >= 0


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the metrics never showed what was expected")
        time.sleep(0.05)


def settles(read: Callable[[], object], expected: object, timeout: float = 10.0) -> None:
    """``read()`` comes to equal ``expected`` (the worker counts just after its commit, which
    the test may see first) and stays there."""
    deadline = time.monotonic() + timeout
    while read() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert read() == expected


def start(conn: Conn, dsl: str) -> str:
    row = conn.execute(f"SELECT df.start({dsl})").fetchone()
    assert row is not None
    return str(row[0])


def wait_until(conn: Conn, sql: str, *params: object) -> None:
    eventually(lambda: bool((conn.execute(sql, params).fetchone() or (False,))[0]), 20)


@pytest.fixture
def metrics_worker(
    start_worker: Callable[..., WorkerThread],
) -> Callable[..., tuple[WorkerThread, int]]:
    def factory(**overrides: Any) -> tuple[WorkerThread, int]:
        port = free_port()
        return start_worker(metrics_port=port, **overrides), port

    return factory


def test_steps_and_instances_are_counted_once_by_node_type(
    conn: Conn, metrics_worker: Callable[..., tuple[WorkerThread, int]]
) -> None:
    _, port = metrics_worker()
    before = scrape(port)
    conn.execute("CREATE TABLE side (n int)")
    assert run_workflow(conn, "'INSERT INTO side VALUES (1)' ~> 'SELECT 2 AS two'")[1] == (
        "completed"
    )
    assert run_workflow(conn, "'SELECT 1' ~> 'SELECT x/0 FROM side AS s(x)'")[1] == "failed"
    assert run_workflow(conn, "df.sleep(0) ~> df.sleep(1) ~> 'SELECT 3'")[1] == "completed"
    waiting = start(conn, "df.wait_for_signal('go') ~> 'SELECT 4'")
    wait_until(conn, "SELECT count(*) = 1 FROM df._fibers WHERE awaiting = 'go'")
    conn.execute("SELECT df.signal(%s, 'go')", (waiting,))
    assert wait_for(conn, waiting) == "completed"

    expected = {
        ("pg_durable_steps_started_total", "SQL"): 6,
        ("pg_durable_steps_completed_total", "SQL"): 5,
        ("pg_durable_steps_failed_total", "SQL"): 1,
        # (One of them started and finished in the same transaction.)
        ("pg_durable_steps_started_total", "SLEEP"): 2,
        ("pg_durable_steps_completed_total", "SLEEP"): 2,
        ("pg_durable_steps_started_total", "SIGNAL"): 1,
        ("pg_durable_steps_completed_total", "SIGNAL"): 1,
    }

    def moved(samples: Samples) -> dict[tuple[str, str], float]:
        return {
            (name, node_type): value(samples, name, node_type=node_type)
            - value(before, name, node_type=node_type)
            for name, node_type in expected
        }

    settles(lambda: moved(scrape(port)), expected)
    after = scrape(port)
    for node_type in ("SLEEP", "SIGNAL"):
        assert value(after, "pg_durable_steps_failed_total", node_type=node_type) == 0
    # Control flow (the sequences) is not a step.
    assert not any(dict(labels).get("node_type") == "SEQ" for _, labels in after)
    for status, count in (("completed", 3), ("failed", 1)):
        name = "pg_durable_instances_finished_total"
        assert value(after, name, status=status) - value(before, name, status=status) == count
    # Every SQL step ran its statement here, each timed once.
    assert value(after, "pg_durable_step_duration_seconds_count", node_type="SQL") == 6
    assert value(after, "pg_durable_step_duration_seconds_sum", node_type="SQL") > 0


def test_batched_steps_count_as_the_database_records_them(
    conn: Conn, metrics_worker: Callable[..., tuple[WorkerThread, int]]
) -> None:
    """A backlog worked off in batches — quick steps, slow ones that run first or alone, a
    failing one among them — counts exactly what df.nodes records."""
    conn.execute("CREATE TABLE side (n int)")
    ids = [start(conn, "'INSERT INTO side VALUES (1)' ~> 'SELECT 2'") for _ in range(20)]
    ids += [start(conn, "'SELECT pg_sleep(0.05)' ~> 'SELECT 3'") for _ in range(3)]
    ids += [start(conn, "'SELECT 1' ~> 'SELECT n/0 FROM side'") for _ in range(2)]
    _, port = metrics_worker(concurrency=2)
    for instance_id in ids:
        wait_for(conn, instance_id)
    recorded = dict(
        conn.execute(
            "SELECT status, count(*) FROM df.nodes WHERE node_type = 'SQL' GROUP BY status"
        ).fetchall()
    )
    assert recorded == {"completed": 48, "failed": 2}

    def counted() -> dict[str, float]:
        samples = scrape(port)
        return {
            status: value(samples, f"pg_durable_steps_{status}_total", node_type="SQL")
            for status in ("started", "completed", "failed")
        }

    settles(counted, {"started": 50, "completed": 48, "failed": 2})
    samples = scrape(port)
    assert value(samples, "pg_durable_step_duration_seconds_count", node_type="SQL") == 50
    assert value(samples, "pg_durable_instances_finished_total", status="completed") == 23
    assert value(samples, "pg_durable_instances_finished_total", status="failed") == 2


def test_queue_depth_reflects_a_backlog(
    conn: Conn, dsn: str, metrics_worker: Callable[..., tuple[WorkerThread, int]]
) -> None:
    ids = [start(conn, "'SELECT 1'") for _ in range(7)]
    # Another session holds the fibers: runnable, but no worker can claim them yet.
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM df._fibers FOR UPDATE")
        _, port = metrics_worker()
        samples = scrape(port)
        assert value(samples, "pg_durable_queue_depth") == 7
        assert value(samples, "pg_durable_fibers_waiting", reason="timer") == 0
        assert value(samples, "pg_durable_fibers_waiting", reason="signal") == 0
        sampled = value(samples, "pg_durable_queue_sampled_timestamp_seconds")
        assert abs(sampled - time.time()) < 10
        # Sampled at most every few seconds: a scrape right after reads the same sample.
        assert value(scrape(port), "pg_durable_queue_sampled_timestamp_seconds") == sampled
    for instance_id in ids:
        assert wait_for(conn, instance_id) == "completed"


def test_waiting_timers_and_signals(
    conn: Conn, metrics_worker: Callable[..., tuple[WorkerThread, int]]
) -> None:
    worker, port = metrics_worker()
    for _ in range(2):
        start(conn, "df.sleep(600) ~> 'SELECT 1'")
    for name in ("a", "b", "c"):
        start(conn, f"df.wait_for_signal('{name}')")
    wait_until(
        conn,
        "SELECT count(*) FILTER (WHERE awaiting IS NOT NULL) = 3"
        " AND count(*) FILTER (WHERE awaiting IS NULL AND run_at > now() + interval '1 minute')"
        " = 2 FROM df._fibers",
    )
    samples = scrape(port)  # (this worker's first scrape: a fresh sample)
    assert value(samples, "pg_durable_fibers_waiting", reason="timer") == 2
    assert value(samples, "pg_durable_fibers_waiting", reason="signal") == 3
    assert value(samples, "pg_durable_queue_depth") == 0
    assert worker.worker is not None


def test_liveness_and_claims(
    conn: Conn, metrics_worker: Callable[..., tuple[WorkerThread, int]]
) -> None:
    worker, port = metrics_worker(concurrency=3, heartbeat_interval=0.2)
    assert worker.worker is not None
    row = conn.execute("SELECT worker_id::text, hostname, version FROM df.workers").fetchone()
    assert row is not None
    worker_id, hostname, version = row
    eventually(lambda: value(scrape(port), "pg_durable_claim_duration_seconds_count") > 0)
    samples = scrape(port)
    assert value(samples, "pg_durable_worker_up") == 1
    assert (
        value(
            samples,
            "pg_durable_worker_info",
            worker_id=worker_id,
            hostname=hostname,
            version=version,
        )
        == 1
    )
    now = time.time()
    assert now - 60 < value(samples, "pg_durable_worker_start_time_seconds") <= now
    heartbeat = value(samples, "pg_durable_worker_last_heartbeat_timestamp_seconds")
    assert now - 5 < heartbeat <= now
    eventually(
        lambda: (
            value(scrape(port), "pg_durable_worker_last_heartbeat_timestamp_seconds") > heartbeat
        )
    )
    busy = value(samples, "pg_durable_worker_slots", state="busy")
    idle = value(samples, "pg_durable_worker_slots", state="idle")
    assert busy + idle == 3
    # Claims are timed, found work or not.
    assert value(samples, "pg_durable_claim_duration_seconds_sum") > 0
    # Nothing ran: no step series at all.
    assert not any(name.startswith("pg_durable_steps_") for name, _ in samples)


def test_other_paths_and_methods(
    metrics_worker: Callable[..., tuple[WorkerThread, int]],
) -> None:
    _, port = metrics_worker()
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert not_found.value.code == 404
    not_found.value.close()  # (an HTTPError holds the response's socket)
    post = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as not_allowed:
        urllib.request.urlopen(post, timeout=10)
    assert not_allowed.value.code == 405
    not_allowed.value.close()
    head = urllib.request.Request(f"http://127.0.0.1:{port}/metrics?x=1", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""
    # Not HTTP at all: a 400, and the server carries on.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"hello\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    scrape(port)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_no_endpoint_unless_enabled_and_none_after_stop(
    start_worker: Callable[..., WorkerThread],
) -> None:
    off = start_worker()
    assert off.worker is not None and off.worker.metrics is None
    port = free_port()
    on = start_worker(metrics_port=port)
    scrape(port)
    on.stop()
    assert refused(port)


def test_a_port_in_use_stops_the_worker_at_start(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        thread = WorkerThread(dsn, metrics_port=port)
        with pytest.raises(ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            thread.start()  # (raises, unless the thread reports ready just before it fails)
            thread.stop()


def test_retries_http_and_autocommit_steps(
    conn: Conn,
    db_name: str,
    http_server: HttpServer,
    metrics_worker: Callable[..., tuple[WorkerThread, int]],
) -> None:
    """Each attempt of a retried step counts; an HTTP request and a statement run outside any
    transaction (VACUUM) are timed once, as they ran, and count once."""
    set_policy(conn, db_name, "allow-all")
    http_server.reply("/ok", body=b"fine")
    conn.execute("CREATE TABLE side (n int)")
    conn.execute("INSERT INTO side VALUES (1)")
    _, port = metrics_worker()
    before = scrape(port)
    assert run_workflow(conn, "df.retry('SELECT n/0 FROM side', 3, 0)")[1] == "failed"
    assert run_workflow(conn, http(http_server.url("/ok")) + " ~> 'SELECT 1'")[1] == "completed"
    assert run_workflow(conn, "'VACUUM side'")[1] == "completed"
    expected = {
        ("pg_durable_steps_started_total", "SQL"): 5,
        ("pg_durable_steps_failed_total", "SQL"): 3,
        ("pg_durable_steps_completed_total", "SQL"): 2,
        ("pg_durable_step_duration_seconds_count", "SQL"): 5,
        ("pg_durable_steps_started_total", "HTTP"): 1,
        ("pg_durable_steps_completed_total", "HTTP"): 1,
        ("pg_durable_step_duration_seconds_count", "HTTP"): 1,
    }

    def moved() -> dict[tuple[str, str], float]:
        samples = scrape(port)
        return {
            (name, node_type): value(samples, name, node_type=node_type)
            - value(before, name, node_type=node_type)
            for name, node_type in expected
        }

    settles(moved, expected)
    assert len(http_server.received) == 1
    samples = scrape(port)
    assert not any(dict(labels).get("node_type") == "RETRY" for _, labels in samples)
