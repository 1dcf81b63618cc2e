"""The dashboard's server (pg_durable.ui) over plain HTTP, no browser: its HTML and JSON
endpoints against the test database, as the roles the tests make.

Row-level security (a role lists only its own instances; another role's id is a 404), the
read-only mode (every POST refused with 403), the CSRF token and the Origin check, escaping of
everything users wrote (labels, SQL, results, errors, signal names), keyset pagination with the
filters, the Host check, the security headers, the graph with its statuses and attempts, and
the worker fleet.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest

from pg_durable.ui import Dashboard, Database, Options, make_server, viewer
from pg_durable.ui.server import DashboardServer
from tests.acceptance.test_cli import cli, cli_env, run_cli
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.postgres import Server
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]
XSS_LABEL = "<script>alert(1)</script>"
UI_SESSIONS = (
    "pg_stat_activity WHERE application_name = 'pg-durable ui' AND datname = current_database()"
)
ACTIVE_UI_SESSIONS = f"SELECT count(*) FROM {UI_SESSIONS}"
END_UI_SESSIONS = f"SELECT count(pg_terminate_backend(pid)) FROM {UI_SESSIONS}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.text)


@dataclass
class Served:
    """A dashboard serving in a thread of this process."""

    url: str
    dashboard: Dashboard
    server: DashboardServer

    @property
    def host(self) -> str:
        return str(urlsplit(self.url).netloc)

    def request(
        self,
        method: str,
        path: str,
        *,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        connection = http.client.HTTPConnection(self.host, timeout=30)
        try:
            body = None if form is None else urlencode(form)
            sent = {"Host": self.host, **(headers or {})}
            if form is not None:
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            text = response.read().decode("utf-8")
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, text)
        finally:
            connection.close()

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, form: dict[str, str], **headers: str) -> Reply:
        return self.request("POST", path, form=form, headers=headers)

    def token(self, instance_id: str) -> str:
        """The CSRF token in the instance page's forms."""
        page = self.get(f"/instances/{instance_id}")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None, page.text
        return html.unescape(found.group(1))


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start dashboards (as many as the test wants), each as the role of the DSN given."""
    started: list[tuple[DashboardServer, Database, threading.Thread]] = []

    def factory(dsn: str, **options: Any) -> Served:
        database = Database(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            who = viewer(conn)
        dashboard = Dashboard(database, who, Options(**options))
        server = make_server(dashboard, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, name="ui-test", daemon=True)
        thread.start()
        started.append((server, database, thread))
        return Served(f"http://127.0.0.1:{server.server_address[1]}", dashboard, server)

    yield factory
    for server, database, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(10)
        database.close()


def start(conn: Conn, dsl: str, label: str | None = None) -> str:
    return str(one(conn, f"SELECT df.start({dsl}, %s)", (label,)))


def ids_in(page: str) -> list[str]:
    """The instance ids of the rows of an instances page, in order."""
    return re.findall(r'<tr data-instance="([0-9a-f]{8})"', page)


# -------------------------------------------------------------------------------------------
# who sees what


def test_a_role_sees_only_its_own_instances(
    roles: Roles, dsn: str, serve: Callable[..., Served]
) -> None:
    alice, bob = roles.create("alice", grant=True), roles.create("bob", grant=True)
    alice_conn, bob_conn = roles.connect(alice), roles.connect(bob)
    mine = [start(alice_conn, "'SELECT 1'", "alice job") for _ in range(2)]
    theirs = start(bob_conn, "'SELECT 2'", "bob's secret job")
    ui = serve(roles.dsn(alice))

    page = ui.get("/instances")
    assert page.status == 200
    assert sorted(ids_in(page.text)) == sorted(mine)
    assert "bob&#x27;s secret job" not in page.text and theirs not in page.text
    assert f"as role <strong>{alice}</strong>" in page.text
    listed = ui.get("/api/instances").json()
    assert sorted(i["id"] for i in listed["instances"]) == sorted(mine)

    # Another role's instance is not found, exactly like an id never used.
    for path in (f"/instances/{theirs}", f"/api/instances/{theirs}", "/instances/00000000"):
        reply = ui.get(path)
        assert reply.status == 404, (path, reply.text)
        assert "secret" not in reply.text
    assert ui.get(f"/api/instances/{theirs}").json() == {
        "error": f"instance {theirs} not found (no such id, or another role's instance)"
    }
    assert ui.get(f"/instances/{mine[0].upper()}").status == 200

    # A superuser sees everyone's, and the header says so.
    everyone = serve(dsn).get("/instances")
    assert sorted(ids_in(everyone.text)) == sorted([*mine, theirs])
    assert "this role sees every role&#x27;s instances" in everyone.text


def test_another_roles_instance_cannot_be_signalled_or_cancelled(
    roles: Roles, serve: Callable[..., Served]
) -> None:
    alice, bob = roles.create("alice", grant=True), roles.create("bob", grant=True)
    theirs = start(roles.connect(bob), "df.wait_for_signal('go')")
    ui = serve(roles.dsn(alice), allow_actions=True)
    token = ui.dashboard.csrf_token
    for action, form in (("cancel", {}), ("signal", {"name": "go", "data": "{}"})):
        reply = ui.post(f"/instances/{theirs}/{action}", {"csrf": token, **form})
        assert reply.status == 404, reply.text
    assert one(roles.connect(bob), "SELECT df.status(%s)", (theirs,)) == "pending"


# -------------------------------------------------------------------------------------------
# actions: off by default, then CSRF and Origin


def test_read_only_mode_refuses_every_post(
    roles: Roles, conn: Conn, serve: Callable[..., Served]
) -> None:
    alice = roles.create("alice", grant=True)
    iid = start(roles.connect(alice), "df.wait_for_signal('go')")
    ui = serve(roles.dsn(alice))
    page = ui.get(f"/instances/{iid}")
    assert page.status == 200
    assert 'method="post"' not in page.text
    assert "Read-only: start pg-durable ui with --allow-actions" in page.text
    token = ui.dashboard.csrf_token
    for action, form in (("cancel", {}), ("signal", {"name": "go"})):
        reply = ui.post(f"/instances/{iid}/{action}", {"csrf": token, **form})
        assert reply.status == 403
        assert "read-only: start pg-durable ui with --allow-actions" in reply.text
    assert ui.post("/instances", {"csrf": token}).status == 404
    assert ui.post(f"/instances/{iid}", {"csrf": token}).status == 405
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "pending"


def test_actions_need_the_csrf_token_and_no_foreign_origin(
    roles: Roles, conn: Conn, serve: Callable[..., Served]
) -> None:
    alice = roles.create("alice", grant=True)
    iid = start(roles.connect(alice), "df.wait_for_signal('go')")
    ui = serve(roles.dsn(alice), allow_actions=True)
    token = ui.token(iid)
    assert token == ui.dashboard.csrf_token
    path = f"/instances/{iid}/cancel"
    refused = [
        ui.post(path, {}),
        ui.post(path, {"csrf": ""}),
        ui.post(path, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}),
        ui.post(path, {"csrf": token}, Origin="http://evil.example"),
        ui.post(path, {"csrf": token}, Origin="null"),
        ui.post(path, {"csrf": token}, **{"Sec-Fetch-Site": "cross-site"}),
    ]
    assert [r.status for r in refused] == [403] * len(refused)
    assert "CSRF token is missing or stale" in refused[0].text
    assert "another site" in refused[3].text
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "pending"

    done = ui.post(path, {"csrf": token}, Origin=ui.url)
    assert done.status == 303
    assert done.headers["location"] == f"/instances/{iid}?notice=cancelled"
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "cancelled"
    page = ui.get(done.headers["location"])
    assert "Instance cancelled." in page.text
    assert 'method="post"' not in page.text  # nothing left to act on
    again = ui.post(path, {"csrf": token})
    assert again.headers["location"] == f"/instances/{iid}?notice=not-cancelled"


def test_a_signal_sent_from_the_dashboard_reaches_the_workflow(
    roles: Roles, conn: Conn, worker: WorkerThread, serve: Callable[..., Served]
) -> None:
    alice = roles.create("alice", grant=True)
    iid = start(
        roles.connect(alice),
        "'SELECT 1' ~> df.wait_for_signal('approve') |=> 'ok' ~> 'SELECT $ok::text AS got'",
    )
    ui = serve(roles.dsn(alice), allow_actions=True)
    deadline = time.monotonic() + 20
    while "Waits for signal" not in (page := ui.get(f"/instances/{iid}")).text:
        assert time.monotonic() < deadline, page.text
        time.sleep(0.1)
    assert 'value="approve" list="waiting-signals"' in page.text  # the form offers it
    reply = ui.post(
        f"/instances/{iid}/signal",
        {"csrf": ui.token(iid), "name": "approve", "data": '{"by": "alice"}'},
    )
    assert reply.status == 303, reply.text
    assert reply.headers["location"] == f"/instances/{iid}?notice=signalled"
    assert wait_for(conn, iid) == "completed"
    got = json.loads(one(conn, "SELECT df.result(%s)", (iid,)))["rows"][0]["got"]
    assert json.loads(got) == {
        "signal_name": "approve",
        "timed_out": False,
        "data": {"by": "alice"},
    }
    late = ui.post(f"/instances/{iid}/signal", {"csrf": ui.dashboard.csrf_token, "name": "x"})
    assert late.headers["location"] == f"/instances/{iid}?notice=finished"
    nameless = ui.post(f"/instances/{iid}/signal", {"csrf": ui.dashboard.csrf_token})
    assert nameless.status == 400


# -------------------------------------------------------------------------------------------
# escaping


def test_everything_users_wrote_is_escaped(
    roles: Roles, conn: Conn, worker: WorkerThread, serve: Callable[..., Served]
) -> None:
    alice = roles.create("alice", grant=True)
    alice_conn = roles.connect(alice)
    ok = start(
        alice_conn,
        """'SELECT ''<img src=x onerror=alert(2)>'' AS "</pre><script>alert(3)</script>"'""",
        XSS_LABEL,
    )
    bad = start(alice_conn, "'SELECT ''<svg onload=alert(4)>''::int'", '"><b onmouseover=x>')
    waiting = start(alice_conn, """df.wait_for_signal('"><script>alert(5)</script>')""")
    assert wait_for(conn, ok) == "completed"
    assert wait_for(conn, bad) == "failed"
    ui = serve(roles.dsn(alice), allow_actions=True)
    deadline = time.monotonic() + 20
    while "Waits for signal" not in ui.get(f"/instances/{waiting}").text:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    pages = [
        ui.get("/instances"),
        ui.get(f"/instances?label={XSS_LABEL}"),
        ui.get(f"/instances/{ok}"),
        ui.get(f"/instances/{bad}"),
        ui.get(f"/instances/{waiting}"),
        ui.get(f"/instances/{ok}?notice=<script>alert(6)</script>"),
        ui.get("/instances?since=<script>alert(7)</script>"),
        ui.get("/nowhere<script>alert(8)</script>"),
    ]
    for reply in pages:
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        lowered = reply.text.lower()
        # The only script element is the dashboard's own, and no tag of theirs survived.
        assert lowered.count("<script") == 1, reply.text
        for raw in ("<img", "<svg", "<b "):
            assert raw not in lowered, (raw, reply.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0].text
    assert ids_in(pages[1].text) == [ok]  # the label filter matched it exactly
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[2].text
    assert "&lt;/pre&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in pages[2].text
    assert "&lt;svg onload=alert(4)&gt;" in pages[3].text  # in the error
    assert "&quot;&gt;&lt;script&gt;alert(5)&lt;/script&gt;" in pages[4].text
    assert pages[6].status == 400 and "is not a time" in pages[6].text
    assert pages[7].status == 404

    # JSON: the same text, inert even if a browser sniffed it (and nosniff says it must not).
    for path in (f"/api/instances/{ok}", "/api/instances", f"/api/instances/{bad}"):
        reply = ui.get(path)
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert "<" not in reply.text and ">" not in reply.text
    document = ui.get(f"/api/instances/{ok}").json()
    assert document["instance"]["label"] == XSS_LABEL


# -------------------------------------------------------------------------------------------
# pagination and filters


def test_keyset_pages_and_filters(roles: Roles, serve: Callable[..., Served]) -> None:
    alice = roles.create("alice", grant=True)
    alice_conn = roles.connect(alice)
    started = [start(alice_conn, "'SELECT 1'", "batch" if i % 2 else "other") for i in range(25)]
    with alice_conn.transaction():  # three sharing one created_at: the id breaks the tie
        started += [start(alice_conn, "'SELECT 1'", "batch") for _ in range(3)]
    cancelled = started[:4]
    for iid in cancelled:
        alice_conn.execute("SELECT df.cancel(%s)", (iid,))
    ui = serve(roles.dsn(alice))

    # JSON pages of 10: 10, 10, 8, each id once, newest first.
    seen: list[str] = []
    after: str | None = None
    sizes = []
    while True:
        query = "limit=10" + (f"&after={after}" if after else "")
        page = ui.get(f"/api/instances?{query}").json()
        sizes.append(len(page["instances"]))
        seen += [i["id"] for i in page["instances"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert sizes == [10, 10, 8]
    assert sorted(seen) == sorted(started) and len(set(seen)) == len(seen)

    # HTML pages: follow the "older" links; the filters ride along.
    html_seen: list[str] = []
    path: str | None = "/instances?label=batch&limit=5"
    while path is not None:
        reply = ui.get(path)
        assert reply.status == 200, reply.text
        html_seen += ids_in(reply.text)
        assert len(ids_in(reply.text)) <= 5
        found = re.search(r'<a href="([^"]+)" rel="next">', reply.text)
        path = html.unescape(found.group(1)) if found else None
        if path is not None:
            assert "label=batch" in path and "limit=5" in path
    assert html_seen == [i for i in seen if i in started[1::2] or i in started[25:]]

    status = ui.get("/api/instances?status=cancelled").json()
    assert sorted(i["id"] for i in status["instances"]) == sorted(cancelled)
    assert len(ui.get("/api/instances?since=1h&limit=100").json()["instances"]) == 28
    assert ui.get("/api/instances?until=1h").json()["instances"] == []
    assert len(ui.get("/api/instances?until=2999-01-01&limit=100").json()["instances"]) == 28
    assert ui.get("/api/instances?since=2999-01-01").json() == {
        "instances": [],
        "next_cursor": None,
    }

    for query, message in (
        ("status=done", "status 'done' is not one of"),
        ("limit=0", "limit must be a whole number from 1 to 500"),
        ("limit=ten", "limit must be a whole number"),
        ("after=zz", "after is not a cursor"),
        ("after=abcd", "invalid after_cursor"),
        ("since=someday", "since 'someday' is not a time"),
    ):
        reply = ui.get(f"/api/instances?{query}")
        assert reply.status == 400, (query, reply.text)
        assert message in reply.json()["error"], (query, reply.text)
        assert ui.get(f"/instances?{query}").status == 400


# -------------------------------------------------------------------------------------------
# the instance page


def test_the_graph_shows_statuses_attempts_and_errors(
    roles: Roles, conn: Conn, worker: WorkerThread, serve: Callable[..., Served]
) -> None:
    alice = roles.create("alice", grant=True)
    alice_conn = roles.connect(alice)
    failed = start(alice_conn, "df.retry('SELECT 1 / 0', 2, 0) ~> 'SELECT 2'", "flaky")
    shaped = start(
        alice_conn,
        "('SELECT 1 AS a' & 'SELECT 2 AS b') |=> 'both'"
        " ~> ('SELECT true' ?> 'SELECT 3 AS yes' !> 'SELECT 4 AS no')",
    )
    assert wait_for(conn, failed) == "failed"
    assert wait_for(conn, shaped) == "completed"
    ui = serve(roles.dsn(alice))

    page = ui.get(f"/instances/{failed}").text
    assert re.search(r'class="node status-failed" id="node-\w+"[^>]*data-type="RETRY"', page)
    assert "attempt 2 of 2" in page
    assert "last error: SQL execution failed: error returned from database: division by zero" in (
        page
    )
    assert re.search(r'data-status="skipped" data-type="SQL"', page)
    assert '<span class="badge status-failed">failed</span>' in page
    assert '<span class="what">(max 2 attempts, backoff 0s ×2)</span>' in page
    assert "As df.explain draws it" in page and "RETRY" in page

    page = ui.get(f"/instances/{shaped}").text
    titles = re.findall(r'<div class="section-title">([^<]+)</div>', page)
    assert titles == ["branch 1", "branch 2", "condition", "then", "else"]
    statuses = re.findall(r'data-status="(\w+)" data-type="(\w+)"', page)
    assert statuses.count(("skipped", "SQL")) == 1  # the else
    assert ("completed", "JOIN") in statuses and ("completed", "IF") in statuses
    assert "|=&gt; &#x27;both&#x27;" in page
    assert "result: 1 row" in page

    document = ui.get(f"/api/instances/{shaped}").json()
    assert len(document["nodes"]) == one(
        conn, "SELECT count(*) FROM df.instance_nodes(%s)", (shaped,)
    )
    assert document["progress"]["nodes_done"] == document["progress"]["nodes_total"]
    assert document["tree"].startswith(f"Instance: {shaped}")


def test_a_running_instance_refreshes_and_a_finished_one_does_not(
    roles: Roles, conn: Conn, worker: WorkerThread, serve: Callable[..., Served]
) -> None:
    alice = roles.create("alice", grant=True)
    iid = start(roles.connect(alice), "'SELECT 1' ~> df.sleep(60)")
    ui = serve(roles.dsn(alice), refresh=1.5)
    deadline = time.monotonic() + 20
    while 'data-status="running" data-type="SLEEP"' not in (
        page := ui.get(f"/instances/{iid}").text
    ):
        assert time.monotonic() < deadline, page
        time.sleep(0.1)
    assert 'data-live="1.5"' in page
    assert "running for" in page and "sleep 60s" in page
    conn.execute("SELECT df.cancel(%s)", (iid,))
    page = ui.get(f"/instances/{iid}").text
    assert 'data-live="0"' in page and "data-finished" in page
    assert ui.get("/instances").text.count('data-live="1.5"') == 1


# -------------------------------------------------------------------------------------------
# the workers


def test_workers_page_shows_the_fleet_to_a_role_allowed_to_read_it(
    roles: Roles, conn: Conn, dsn: str, worker: WorkerThread, serve: Callable[..., Served]
) -> None:
    fleet = serve(dsn).get("/api/workers").json()
    assert fleet["alive"] == 1 and fleet["total"] == 1
    assert fleet["workers"][0]["alive"] is True
    assert fleet["workers"][0]["seen_ago"] < 30
    page = serve(dsn).get("/workers")
    assert page.status == 200 and "1 alive of 1 registered" in page.text
    assert 'data-alive="true"' in page.text

    alice = roles.create("alice", grant=True)
    ui = serve(roles.dsn(alice))
    refused = ui.get("/workers")
    assert refused.status == 403
    assert f"GRANT SELECT ON df.workers TO {alice};" in refused.text
    assert ui.get("/api/workers").status == 403
    conn.execute(f"GRANT SELECT ON df.workers TO {alice}")
    assert ui.get("/api/workers").json()["alive"] == 1


def test_connections_lost_between_requests_are_replaced(
    roles: Roles, conn: Conn, serve: Callable[..., Served]
) -> None:
    alice = roles.create("alice", grant=True)
    iid = start(roles.connect(alice), "'SELECT 1'")
    ui = serve(roles.dsn(alice))
    for _ in range(3):
        assert ui.get(f"/api/instances/{iid}").status == 200
        # As a restart of the server would: every connection of the dashboard goes.
        ended = one(conn, END_UI_SESSIONS)
        assert ended >= 1
        deadline = time.monotonic() + 10
        while one(conn, ACTIVE_UI_SESSIONS):  # gone for good before the next request
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert ui.get("/instances").status == 200


# -------------------------------------------------------------------------------------------
# HTTP: hosts, headers, files


def test_host_header_headers_and_static_files(roles: Roles, serve: Callable[..., Served]) -> None:
    alice = roles.create("alice", grant=True)
    ui = serve(roles.dsn(alice))
    port = urlsplit(ui.url).port
    # A page that rebinds its own name to 127.0.0.1 gets nothing.
    rebound = ui.get("/api/instances", Host=f"evil.example:{port}")
    assert rebound.status == 403
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        assert ui.get("/api/instances", Host=host).status == 200

    page = ui.get("/instances")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "https://" not in page.text and "//cdn" not in page.text  # nothing from elsewhere

    root = ui.get("/")
    assert root.status == 303 and root.headers["location"] == "/instances"
    script = ui.get("/static/app.js")
    assert script.status == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert ui.get("/static/style.css").headers["content-type"] == "text/css; charset=utf-8"
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/x.css", "/api"):
        assert ui.get(path).status == 404, path
    assert ui.request("DELETE", "/instances").status == 501


# -------------------------------------------------------------------------------------------
# the command (pg-durable ui in a subprocess; no browser: tests/acceptance/test_ui.py)


def test_the_command_starts_says_where_and_stops_on_ctrl_c(dsn: str) -> None:
    proc = subprocess.Popen(
        [*cli(), "ui", "--dsn", dsn, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.fullmatch(
            r"pg-durable ui: serving (http://127\.0\.0\.1:(\d+)/) as role (\S+) \(read-only\); "
            r"Ctrl-C stops\n",
            line,
        )
        assert found is not None, line
        connection = http.client.HTTPConnection("127.0.0.1", int(found.group(2)), timeout=10)
        connection.request("GET", "/api/instances")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "is a superuser or bypasses row-level security" in err
    assert err.rstrip().endswith("pg-durable ui: stopped")


def test_the_command_explains_what_stops_it(dsn: str, pg_server: Server) -> None:
    help_text = " ".join(run_cli("ui", "--help").stdout.split())
    for option in ("--dsn", "--host", "--port", "--allow-actions", "--refresh"):
        assert option in help_text
    assert "default 127.0.0.1: this machine only" in help_text

    proc = run_cli("ui")
    assert proc.returncode == 1
    assert "no database given: pass --dsn or set PG_DURABLE_DSN" in proc.stderr
    empty = f"ui_empty_{os.getpid()}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{empty}"')
        try:
            proc = run_cli("ui", "--dsn", pg_server.dsn(empty))
        finally:
            admin.execute(f'DROP DATABASE "{empty}" WITH (FORCE)')
    assert proc.returncode == 1
    assert "the df schema is not installed in this database" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("ui", "--dsn", dsn, "--port", str(port))
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in proc.stderr
    assert "Traceback" not in proc.stderr
