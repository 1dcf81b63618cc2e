"""The commands for people in a terminal — start, ls, show, signal, cancel, wait — run as a
user runs them: ``pg-durable`` in a subprocess, against the test database, with a worker
running. Their JSON outputs, their exit statuses, the live progress of ``wait`` on a
terminal, and row-level security: through ``--dsn`` with its own role, a role sees and steers
only its own instances.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.acceptance.test_cli import cli, cli_env
from tests.fixtures.engine import WorkerThread, wait_for
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run(
    *args: str, stdin: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """``pg-durable ARGS`` (its stdout and stderr are pipes, not a terminal)."""
    return subprocess.run(
        [*cli(), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
    )


def ok(*args: str, stdin: str | None = None, **env: str) -> str:
    """The stdout of ``pg-durable ARGS``, which must succeed."""
    proc = run(*args, stdin=stdin, **env)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The error a command reported: one line on stderr, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pg-durable: error: "), proc.stderr
    return lines[0]


def start_file(tmp_path: Path, expression: str, *options: str, dsn: str) -> str:
    path = tmp_path / f"wf{time.monotonic_ns()}.sql"
    path.write_text(expression, encoding="utf-8")
    return ok("start", str(path), "--dsn", dsn, *options).strip()


# -------------------------------------------------------------------------------------------
# help


def test_help_lists_the_commands() -> None:
    out = ok("--help")
    for name in ("start", "ls", "show", "wait", "signal", "cancel"):
        assert re.search(rf"^\s+{name}\s", out, re.MULTILINE), name
    wait_help = ok("wait", "--help")
    assert "0 completed, 1 failed, 2 cancelled, 3" in " ".join(wait_help.split())


def test_no_database_is_one_clear_line() -> None:
    for args in (["ls"], ["show", "deadbeef"], ["cancel", "deadbeef"], ["signal", "a", "b"]):
        proc = run(*args)
        assert proc.returncode == 1
        assert one_error_line(proc).endswith("no database given: pass --dsn or set PG_DURABLE_DSN")
    proc = run("wait", "deadbeef")
    assert proc.returncode == 4 and "no database given" in proc.stderr


# -------------------------------------------------------------------------------------------
# start


def test_start_from_a_file_and_from_stdin(
    tmp_path: Path, dsn: str, conn: Conn, worker: WorkerThread
) -> None:
    # As df.start's argument is written in psql, % and all; a final ';' and comments are fine.
    expression = (
        "-- two steps\n"
        "('SELECT 1' |=> 'one')\n"
        "  ~> df.sleep(0)\n"
        "  ~> 'SELECT $one + 10 % 3 AS r'; \n"
    )
    instance = start_file(tmp_path, expression, "--label", "from a file", dsn=dsn)
    assert re.fullmatch(r"[0-9a-f]{8}", instance)
    assert wait_for(conn, instance) == "completed"
    assert json.loads(one(conn, "SELECT df.result(%s)", (instance,))) == {
        "rows": [{"r": 2}],
        "row_count": 1,
    }
    assert one(conn, "SELECT label FROM df.instances WHERE id = %s", (instance,)) == "from a file"

    piped = ok("start", "-", "--dsn", dsn, stdin="df.sql('SELECT ''{ 1, 2 }'' AS p')").strip()
    assert wait_for(conn, piped) == "completed"
    assert json.loads(one(conn, "SELECT df.result(%s)", (piped,)))["rows"] == [{"p": "{ 1, 2 }"}]
    assert one(conn, "SELECT label FROM df.instances WHERE id = %s", (piped,)) is None

    # PG_DURABLE_DSN instead of --dsn.
    env_started = ok("start", "-", stdin="'SELECT 2'", PG_DURABLE_DSN=dsn).strip()
    assert wait_for(conn, env_started) == "completed"


def test_start_errors(tmp_path: Path, dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE precious (v int)")
    empty = tmp_path / "empty.sql"
    empty.write_text("  ;\n")
    statement = tmp_path / "statement.sql"
    statement.write_text("SELECT df.start('SELECT 1');")
    bad = tmp_path / "bad.sql"
    bad.write_text("df.sleep(-1)")
    two = tmp_path / "two.sql"
    # Each statement would be valid: one statement is all the extended protocol runs.
    two.write_text("'SELECT 1'); DROP TABLE precious; SELECT df.start('SELECT 2'")
    cases = {
        str(tmp_path / "missing.sql"): "cannot read",
        str(empty): "holds no workflow",
        str(statement): "holds a statement; it should hold only the workflow",
        str(bad): "Sleep duration must be non-negative",
        str(two): "cannot insert multiple commands into a prepared statement",
    }
    for path, message in cases.items():
        proc = run("start", path, "--dsn", dsn)
        assert proc.returncode == 1, proc.stdout
        assert message in one_error_line(proc)
    assert one(conn, "SELECT count(*) FROM precious") == 0  # still there
    assert one(conn, "SELECT count(*) FROM df.instances") == 0


# -------------------------------------------------------------------------------------------
# ls


def test_ls_table_json_filters_and_pages(dsn: str, conn: Conn, worker: WorkerThread) -> None:
    ids = []
    for i in range(5):
        label = "even" if i % 2 == 0 else "odd"
        ids.append(one(conn, "SELECT df.start(%s, %s)", (f"SELECT {i}", label)))
        conn.execute("SELECT pg_sleep(0.01)")
    failed = one(conn, "SELECT df.start('SELECT 1/0', 'broken')")
    for instance in [*ids, failed]:
        wait_for(conn, instance)
    newest_first = [failed, *reversed(ids)]

    listing = json.loads(ok("ls", "--dsn", dsn, "--json"))
    assert [i["id"] for i in listing["instances"]] == newest_first
    assert listing["next_cursor"] is None
    first = listing["instances"][0]
    assert first["status"] == "failed" and "division by zero" in first["output"]
    assert set(first) == {
        "id", "label", "status", "execution_count", "output", "created_at", "completed_at"
    }  # fmt: skip

    table = ok("ls", "--dsn", dsn)
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "LABEL", "CREATED", "TOOK", "RUNS", "OUTPUT"]
    assert [line.split()[0] for line in lines[1:]] == newest_first
    assert "\x1b[" not in table  # not a terminal: no colour
    coloured = ok("ls", "--dsn", dsn, "--color", "always")
    assert "\x1b[31mfailed" in coloured and "\x1b[32mcompleted" in coloured
    assert ANSI.sub("", coloured).split() == table.split()

    # Filters.
    def listed(*options: str) -> list[str]:
        return [
            i["id"] for i in json.loads(ok("ls", "--dsn", dsn, "--json", *options))["instances"]
        ]

    assert listed("--label", "even") == [ids[4], ids[2], ids[0]]
    assert listed("--status", "failed") == [failed]
    assert listed("--status", "completed", "--label", "odd") == [ids[3], ids[1]]
    assert listed("--since", "1 hour") == newest_first
    assert listed("--since", "2 days ago", "--until", "2000-01-01") == []
    assert listed("--until", "tomorrow") == newest_first

    # Keyset pages: --limit, then --cursor where it stopped; --all.
    page = json.loads(ok("ls", "--dsn", dsn, "--json", "--limit", "4"))
    assert [i["id"] for i in page["instances"]] == newest_first[:4]
    rest = json.loads(ok("ls", "--dsn", dsn, "--json", "--cursor", page["next_cursor"]))
    assert [i["id"] for i in rest["instances"]] == newest_first[4:]
    limited = run("ls", "--dsn", dsn, "--limit", "2")
    assert len(limited.stdout.splitlines()) == 3
    assert f"more: pg-durable ls --cursor {page['next_cursor']}" not in limited.stderr
    assert "more: pg-durable ls --cursor " in limited.stderr
    assert listed("--all") == newest_first

    for options, message in [
        (["--since", "not a time"], "--since 'not a time' is not a time"),
        (["--until", "3 fortnights"], "--until '3 fortnights' is not a time"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--cursor", "zz"], "df.list_instances: invalid after_cursor"),
    ]:
        proc = run("ls", "--dsn", dsn, *options)
        assert proc.returncode == 1
        assert message in one_error_line(proc)


def test_ls_with_nothing_to_list(dsn: str) -> None:
    proc = run("ls", "--dsn", dsn)
    assert proc.returncode == 0 and proc.stdout == "" and "no instances" in proc.stderr
    assert json.loads(ok("ls", "--dsn", dsn, "--json")) == {"instances": [], "next_cursor": None}


# -------------------------------------------------------------------------------------------
# show


def test_show_tree_colours_and_json(dsn: str, conn: Conn, worker: WorkerThread) -> None:
    instance = one(
        conn,
        "SELECT df.start(('SELECT 42 AS n' |=> 'n') ~> df.if('SELECT false', 'SELECT 1',"
        " 'SELECT 1/0'), 'shown')",
    )
    assert wait_for(conn, instance) == "failed"
    tree = ok("show", instance.upper(), "--dsn", dsn)
    expected = one(conn, "SELECT df.explain(%s)", (instance,))
    assert tree.splitlines() == [line.rstrip() for line in expected.splitlines()]
    assert tree.startswith(f"Instance: {instance} (shown)\nStatus:   ✗ Failed\n")
    assert "\x1b[" not in tree

    coloured = ok("show", instance, "--dsn", dsn, "--color", "always")
    assert ANSI.sub("", coloured) == tree
    assert "Status:   \x1b[31m✗ Failed\x1b[0m" in coloured
    assert "\x1b[2m" in coloured  # the skipped then-branch is dimmed
    assert "✓\x1b[0m" in coloured  # a completed node's marker is green

    document = json.loads(ok("show", instance, "--dsn", dsn, "--json"))
    assert document["instance"]["id"] == instance
    assert document["instance"]["status"] == "failed"
    assert document["tree"] == tree.rstrip("\n")
    kinds = [(n["node_type"], n["inferred_status"]) for n in document["nodes"]]
    assert kinds[0] == ("THEN", "failed")
    assert ("SQL", "skipped") in kinds and len(kinds) == 6

    for bad, code_message in [
        ("deadbeef", "instance deadbeef not found"),
        ("df.start('SELECT 1')", "is not an instance id"),
    ]:
        proc = run("show", bad, "--dsn", dsn)
        assert proc.returncode == 1
        assert code_message in one_error_line(proc)
    assert one(conn, "SELECT count(*) FROM df.instances") == 1  # nothing was evaluated


# -------------------------------------------------------------------------------------------
# signal, cancel, wait


def test_signal_then_wait(dsn: str, conn: Conn, worker: WorkerThread) -> None:
    instance = one(conn, "SELECT df.start('SELECT 1' ~> df.wait_for_signal('approve'))")
    assert ok("signal", instance, "approve", '{"by": "alice"}', "--dsn", dsn) == (
        f"sent signal 'approve' to {instance}\n"
    )
    document = json.loads(ok("wait", instance, "--dsn", dsn, "--json"))
    assert document["status"] == "completed" and document["error"] is None
    assert document["result"] == {
        "signal_name": "approve",
        "timed_out": False,
        "data": {"by": "alice"},
    }
    assert document["elapsed"] >= 0

    # Text is a string; - reads the payload from stdin; no DATA sends {}.
    for extra, stdin, expected in [
        (["yes"], None, "yes"),
        (["-"], "[1, 2]", [1, 2]),
        ([], None, {}),
    ]:
        other = one(conn, "SELECT df.start(df.wait_for_signal('go'))")
        ok("signal", other, "go", *extra, "--dsn", dsn, stdin=stdin)
        result = json.loads(ok("wait", other, "--dsn", dsn, "--json"))["result"]
        assert result["data"] == expected

    proc = run("signal", instance, "approve", "--dsn", dsn)
    assert proc.returncode == 1
    assert one_error_line(proc).endswith(
        f"instance {instance} is completed: signals can only be sent to a pending or running "
        "instance"
    )


def test_cancel_and_the_exit_statuses_of_wait(dsn: str, conn: Conn, worker: WorkerThread) -> None:
    completed = one(conn, "SELECT df.start('SELECT 7 AS seven')")
    failed = one(conn, "SELECT df.start('SELECT 1/0')")
    sleeping = one(conn, "SELECT df.start(df.sleep(600))")

    proc = run("wait", completed, "--dsn", dsn)
    assert proc.returncode == 0
    head, result = proc.stdout.splitlines()
    assert re.fullmatch(rf"{completed} completed \(\d+\.\ds\)", head)
    assert json.loads(result) == {"rows": [{"seven": 7}], "row_count": 1}

    proc = run("wait", failed, "--dsn", dsn)
    assert proc.returncode == 1 and "division by zero" in proc.stdout
    assert proc.stdout.startswith(f"{failed} failed (")

    proc = run("wait", sleeping, "--dsn", dsn, "--timeout", "0.5")
    assert proc.returncode == 3 and proc.stdout == ""
    assert f"instance {sleeping} is still running after 0.5 s" in proc.stderr
    timed_out = json.loads(
        ok_status(3, "wait", sleeping, "--dsn", dsn, "--timeout", "0.3", "--json")
    )
    assert timed_out == {"instance_id": sleeping, "status": "running", "timed_out": True}

    assert (
        ok("cancel", sleeping, "--reason", "not needed", "--dsn", dsn) == f"{sleeping} cancelled\n"
    )
    proc = run("wait", sleeping, "--dsn", dsn, "-q")
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", "")
    document = json.loads(ok_status(2, "wait", sleeping, "--dsn", dsn, "--json"))
    assert document["status"] == "cancelled" and document["result"] is None
    assert ok("cancel", sleeping, "--dsn", dsn) == (
        f"{sleeping} had already finished (cancelled); nothing to cancel\n"
    )
    assert ok("cancel", completed, "--dsn", dsn).endswith("(completed); nothing to cancel\n")
    assert one(conn, "SELECT df.status(%s)", (completed,)) == "completed"

    # No answer: exit 4, the error on stderr as every command reports one.
    for bad, message in [
        ("deadbeef", "instance deadbeef not found"),
        ("nope", "not an instance id"),
    ]:
        proc = run("wait", bad, "--dsn", dsn)
        assert proc.returncode == 4 and proc.stdout == ""
        assert message in one_error_line(proc)
    proc = run("cancel", "deadbeef", "--dsn", dsn)
    assert proc.returncode == 1 and "instance deadbeef not found" in one_error_line(proc)
    proc = run("wait", completed, "--dsn", dsn, "--timeout", "0")
    assert proc.returncode == 2 and "must be a positive number of seconds" in proc.stderr


def ok_status(status: int, *args: str) -> str:
    """The stdout of ``pg-durable ARGS``, which must exit with ``status``."""
    proc = run(*args)
    assert proc.returncode == status, (args, proc.stdout, proc.stderr)
    return proc.stdout


def test_wait_shows_progress_on_a_terminal(dsn: str, conn: Conn, worker: WorkerThread) -> None:
    instance = one(
        conn,
        "SELECT df.start('SELECT 1' ~> df.sleep(2) ~> 'SELECT 2', 'long work')",
    )
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*cli(), "wait", instance, "--dsn", dsn, "--interval", "0.2", "--color", "never"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            env=cli_env(COLUMNS="160"),
        )
        os.close(follower)
        seen = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the other end closed
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        stdout, _ = proc.communicate(timeout=30)
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert stdout.startswith(f"{instance} completed (")
    shown = [ANSI.sub("", s).strip() for s in seen.decode("utf-8").split("\r") if s.strip()]
    assert any(f"{instance} (long work) · running · " in s for s in shown), shown
    assert any("/5 nodes" in s and "sleeping 2s" in s for s in shown), shown
    # (A SQL step commits with its checkpoint, so it is seen when done, never while it runs.)
    assert any("· completed · 5/5 nodes · " in s for s in shown), shown
    assert seen.endswith(b"\r\x1b[K")  # erased before the result is printed


# -------------------------------------------------------------------------------------------
# row-level security


def test_a_role_sees_and_steers_only_its_own_instances(
    tmp_path: Path, conn: Conn, roles: Roles, worker: WorkerThread
) -> None:
    alice, bob = roles.create("alice", grant=True), roles.create("bob", grant=True)
    alice_dsn, bob_dsn = roles.dsn(alice), roles.dsn(bob)
    hers = start_file(tmp_path, "df.wait_for_signal('go') ~> 'SELECT current_user AS u'",
                      "--label", "alice's", dsn=alice_dsn)  # fmt: skip
    his = start_file(tmp_path, "'SELECT current_user AS u'", dsn=bob_dsn)
    assert wait_for(conn, his) == "completed"

    assert [i["id"] for i in json.loads(ok("ls", "--dsn", alice_dsn, "--json"))["instances"]] == [
        hers
    ]
    assert [i["id"] for i in json.loads(ok("ls", "--dsn", bob_dsn, "--json"))["instances"]] == [his]
    for args in (["show", hers], ["signal", hers, "go"], ["cancel", hers]):
        proc = run(*args, "--dsn", bob_dsn)
        assert proc.returncode == 1
        assert f"instance {hers} not found" in one_error_line(proc)
    proc = run("wait", hers, "--dsn", bob_dsn)
    assert proc.returncode == 4 and f"instance {hers} not found" in proc.stderr
    assert one(conn, "SELECT status FROM df.instances WHERE id = %s", (hers,)) in (
        "pending",
        "running",
    )

    ok("signal", hers, "go", "--dsn", alice_dsn)
    document = json.loads(ok("wait", hers, "--dsn", alice_dsn, "--json"))
    assert document["result"] == {"rows": [{"u": alice}], "row_count": 1}
    assert "(alice's)" in ok("show", hers, "--dsn", alice_dsn)
