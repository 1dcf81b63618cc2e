"""The ``pg-durable`` command line, run in a subprocess as a user would run it."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import psycopg
import pytest

from pg_durable import schema
from pg_durable.embedded import (
    EmbeddedPostgres,
    Installation,
    default_shared_buffers,
    free_port,
    installations,
)
from pg_durable.settings import Settings
from tests.fixtures.postgres import Server

# --------------------------------------------------------------------------------------------
# helpers


def cli() -> list[str]:
    """The installed ``pg-durable`` script of this interpreter, else ``python -m pg_durable``."""
    script = Path(sys.executable).parent / "pg-durable"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pg_durable"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment without PG_DURABLE_* settings that would change what a test sees."""
    keep = {"PG_DURABLE_PG_BIN", "PG_DURABLE_RUN_AS", "PG_DURABLE_CACHE_DIR"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_DURABLE_") or k in keep}
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
        stdin=subprocess.DEVNULL,
    )


def private_tmpdir(prefix: str) -> Path:
    """A temporary directory the unprivileged PostgreSQL user can traverse when we are root
    (pytest's tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def empty_db(pg_server: Server) -> Iterator[str]:
    """The DSN of a new database without the df schema."""
    name = f"cli_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.dsn(name)
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------
# help, version, errors


def test_help_lists_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("up", "install", "install-extension", "worker", "ui", "version"):
        assert command in proc.stdout


def test_worker_has_a_flag_for_every_setting() -> None:
    proc = run_cli("worker", "--help")
    assert proc.returncode == 0, proc.stderr
    for f in fields(Settings):
        assert "--" + f.name.replace("_", "-") in proc.stdout
        assert "PG_DURABLE_" + f.name.upper() in proc.stdout.replace("\n", "").replace(" ", "")


def test_version() -> None:
    proc = run_cli("version")
    assert proc.returncode == 0
    assert schema.SCHEMA_VERSION in proc.stdout


def test_missing_dsn_is_a_clear_error_without_traceback() -> None:
    proc = run_cli("install")
    assert proc.returncode == 1
    assert "no database given: pass --dsn or set PG_DURABLE_DSN" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("worker")
    assert proc.returncode == 1
    assert "no database given" in proc.stderr


def test_errors_print_the_cause_chain_and_v_adds_the_traceback() -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=3"
    proc = run_cli("install", "--dsn", dsn)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pg-durable: error: OperationalError")
    assert "Traceback" not in proc.stderr
    proc = run_cli("-v", "install", "--dsn", dsn)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "pg-durable: error: OperationalError" in proc.stderr


def test_invalid_setting_is_rejected() -> None:
    proc = run_cli("worker", "--dsn", "postgresql:///x", "--concurrency", "0")
    assert proc.returncode == 1
    assert "concurrency must be at least 1" in proc.stderr
    proc = run_cli("worker", "--dsn", "postgresql:///x", PG_DURABLE_POLL_INTERVAL="soon")
    assert proc.returncode == 1
    assert "poll_interval" in proc.stderr


# --------------------------------------------------------------------------------------------
# install


def test_install_twice_is_idempotent(empty_db: str) -> None:
    first = run_cli("install", "--dsn", empty_db)
    assert first.returncode == 0, first.stderr
    assert f"df schema {schema.SCHEMA_VERSION} installed" in first.stdout
    # The second run takes the database from the environment.
    second = run_cli("install", PG_DURABLE_DSN=empty_db)
    assert second.returncode == 0, second.stderr
    assert "already installed" in second.stdout
    with psycopg.connect(empty_db) as conn:
        assert schema.installed_version(conn) == schema.SCHEMA_VERSION


def test_install_extension_into_target_dir(tmp_path: Path) -> None:
    proc = run_cli("install-extension", "--target-dir", str(tmp_path / "ext"))
    assert proc.returncode == 0, proc.stderr
    control = tmp_path / "ext" / "pg_durable.control"
    script = tmp_path / "ext" / f"pg_durable--{schema.SCHEMA_VERSION}.sql"
    assert str(control) in proc.stdout
    assert str(script) in proc.stdout
    assert "CREATE EXTENSION pg_durable" in proc.stdout
    assert f"default_version = '{schema.SCHEMA_VERSION}'" in control.read_text()
    body = script.read_text()
    assert body.startswith('\\echo Use "CREATE EXTENSION pg_durable"')
    assert body.endswith(schema.install_script())
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == sorted(
        [control.name, script.name]
    )


def test_install_extension_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_cli("install-extension", "--target-dir", str(blocker / "ext"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("pg-durable: error:")


# --------------------------------------------------------------------------------------------
# CREATE EXTENSION == pg-durable install, on every PostgreSQL installation of this machine

#: Namespaces that hold no pg_durable objects; everything else in the database is compared.
_NS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
)
CATALOG_QUERIES: dict[str, str] = {
    "schemas": f"SELECT n.nspname, n.nspacl::text, pg_get_userbyid(n.nspowner) "
    f"FROM pg_namespace n WHERE {_NS}",
    "functions": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), p.prokind, p.provolatile, p.proparallel,
               p.prosecdef, p.proisstrict, p.proleakproof, p.proconfig::text, p.prosrc,
               p.proacl::text, p.procost, p.prorows, obj_description(p.oid, 'pg_proc')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_NS}""",
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
               c.relforcerowsecurity, c.relacl::text, c.reloptions::text,
               obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_NS}""",
    "columns": f"""
        SELECT n.nspname, c.relname, a.attnum, a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
               a.attgenerated, pg_get_expr(d.adbin, d.adrelid), a.attacl::text,
               col_description(c.oid, a.attnum)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped AND {_NS}""",
    "constraints": f"""
        SELECT n.nspname, co.conrelid::regclass::text, co.contypid::regtype::text,
               co.conname, co.contype, pg_get_constraintdef(co.oid), co.convalidated,
               co.condeferrable, co.condeferred
        FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace WHERE {_NS}""",
    "indexes": f"""
        SELECT n.nspname, c.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_NS}""",
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual,
               with_check
        FROM pg_policies WHERE schemaname NOT IN ('pg_catalog', 'information_schema')""",
    "operators": f"""
        SELECT n.nspname, o.oid::regoperator::text, o.oprkind, o.oprresult::regtype::text,
               o.oprcode::regprocedure::text, o.oprcom::regoperator::text,
               o.oprnegate::regoperator::text, o.oprrest::text, o.oprjoin::text
        FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace WHERE {_NS}""",
    "triggers": f"""
        SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {_NS}""",
    "views": f"""
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_NS}""",
    "types": f"""
        SELECT n.nspname, t.typname, t.typtype, format_type(t.typbasetype, t.typtypmod),
               t.typnotnull, t.typdefault, t.typacl::text,
               (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)::text
                FROM pg_enum e WHERE e.enumtypid = t.oid)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {_NS}""",
    "sequences": """
        SELECT schemaname, sequencename, data_type::text, start_value, increment_by, cycle
        FROM pg_sequences WHERE schemaname NOT IN ('pg_catalog', 'information_schema')""",
    "event_triggers": """
        SELECT evtname, evtevent, evtfoid::regprocedure::text, evtenabled, evttags::text
        FROM pg_event_trigger""",
    "default_privileges": """
        SELECT pg_get_userbyid(defaclrole), defaclnamespace::regnamespace::text,
               defaclobjtype, defaclacl::text
        FROM pg_default_acl""",
}


_LOOPBACK_ROLE = re.compile(r"df_loopback_[0-9a-f]{8}")


def catalog_snapshot(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    """Every object a df install creates, as sorted rows of comparable text per kind."""
    snapshot: dict[str, list[tuple[object, ...]]] = {}
    with psycopg.connect(dsn) as conn:
        for kind, sql in CATALOG_QUERIES.items():
            rows = [
                # Each setup of transaction_mode => 'new' names its loopback role anew.
                tuple(
                    _LOOPBACK_ROLE.sub("df_loopback_*", v) if isinstance(v, str) else v for v in row
                )
                for row in conn.execute(sql.encode()).fetchall()
            ]
            snapshot[kind] = sorted(rows, key=repr)
        meta = conn.execute("SELECT to_regclass('df._meta') IS NOT NULL").fetchone()
        if meta is not None and meta[0]:
            rows = conn.execute("SELECT key, value FROM df._meta").fetchall()
            snapshot["meta_rows"] = sorted(rows, key=repr)
    return snapshot


@contextlib.contextmanager
def restored(paths: list[Path]) -> Iterator[None]:
    """Put ``paths`` back as they were (absent, or with their old content) afterwards."""
    before = {p: (p.read_bytes() if p.exists() else None) for p in paths}
    try:
        yield
    finally:
        for path, content in before.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)


def _installation(index: int) -> Installation:
    found = installations()
    if index >= len(found):
        pytest.skip(
            f"only {len(found)} PostgreSQL installation(s) on this machine: "
            + ", ".join(f"{i.major} ({i.source})" for i in found)
        )
    return found[index]


@pytest.mark.parametrize("index", [0, 1], ids=["first-installation", "second-installation"])
def test_create_extension_matches_script_install(index: int) -> None:
    inst = _installation(index)
    pg_config = inst.bin_dir / "pg_config"
    if not pg_config.exists():
        pytest.skip(f"PostgreSQL {inst.major} at {inst.bin_dir} has no pg_config")
    ext_dir = schema.extension_dir(str(pg_config))
    if not os.access(ext_dir, os.W_OK):
        pytest.skip(f"cannot write into {ext_dir} (run the tests as its owner or root)")
    files = [
        ext_dir / f"{schema.EXTENSION}.control",
        ext_dir / f"{schema.EXTENSION}--{schema.SCHEMA_VERSION}.sql",
    ]
    tmp = private_tmpdir(f"pg-durable-ext-{inst.major}-")
    server = EmbeddedPostgres(tmp / "data", installation=inst, extra_settings={"fsync": "off"})
    try:
        server.start()
        with restored(files):
            proc = run_cli("install-extension", "--pg-config", str(pg_config))
            assert proc.returncode == 0, proc.stderr
            assert all(str(f) in proc.stdout for f in files)
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE by_extension")
                conn.execute("CREATE DATABASE by_script")
            with psycopg.connect(server.dsn("by_extension"), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_durable")
                row = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'pg_durable'"
                ).fetchone()
                assert row == (schema.SCHEMA_VERSION,)
            proc = run_cli("install", "--dsn", server.dsn("by_script"))
            assert proc.returncode == 0, proc.stderr
            if "transaction_mode => 'new' enabled" in proc.stdout:
                # What `pg-durable install` adds where it can (dblink, as a superuser), CREATE
                # EXTENSION users add with this function.
                with psycopg.connect(server.dsn("by_extension"), autocommit=True) as conn:
                    conn.execute("SELECT df.enable_new_transaction_mode()")
            by_extension = catalog_snapshot(server.dsn("by_extension"))
            by_script = catalog_snapshot(server.dsn("by_script"))
            assert by_extension["functions"] or by_extension["relations"]
            for kind in CATALOG_QUERIES:
                assert by_extension[kind] == by_script[kind], (
                    f"{kind} differ on PostgreSQL {inst.major}"
                )
            assert by_extension.get("meta_rows") == by_script.get("meta_rows")
            # `pg-durable install` on an extension install has nothing to do.
            proc = run_cli("install", "--dsn", server.dsn("by_extension"))
            assert proc.returncode == 0, proc.stderr
            assert "already installed" in proc.stdout
            # And the engine runs on this PostgreSQL version.
            assert_a_workflow_runs(server.dsn("by_extension"))
    finally:
        server.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def assert_a_workflow_runs(dsn: str) -> None:
    """A worker runs a workflow of every control-flow node type on the server at ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET "
            "pg_durable.enable_superuser_instances = on', current_database()); END $$"
        )
        conn.execute("SET pg_durable.enable_superuser_instances = on")
        conn.execute("CREATE TABLE visits (n int)")
        row = conn.execute(
            "SELECT df.start("
            "('SELECT 1 AS a' & 'SELECT 2 AS b') |=> 'both'"
            " ~> ('SELECT true' ?> 'INSERT INTO visits VALUES (1)' !> 'SELECT 0')"
            " ~> df.sleep(0)"
            " ~> (@> ('INSERT INTO visits VALUES (2) RETURNING n' |=> 'v'"
            "         ~> df.break('$v')))"
            " ~> ('SELECT 3 AS c' | 'SELECT pg_sleep(5)'))"
        ).fetchone()
        assert row is not None
        worker = subprocess.Popen(
            [*cli(), "worker", "--dsn", dsn, "--poll-interval", "0.2"],
            env=cli_env(PG_DURABLE_LOG_LEVEL="WARNING"),
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            status = None
            while time.monotonic() < deadline:
                got = conn.execute("SELECT df.status(%s)", (row[0],)).fetchone()
                status = None if got is None else got[0]
                if status in ("completed", "failed"):
                    break
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        assert status == "completed", conn.execute(
            "SELECT output FROM df.instance_info(%s)", (row[0],)
        ).fetchone()
        assert conn.execute("SELECT array_agg(n ORDER BY n) FROM visits").fetchone() == ([1, 2],)
        assert conn.execute("SELECT df.result(%s)", (row[0],)).fetchone() == (
            '{"rows": [{"c": 3}], "row_count": 1}',
        )


def test_machine_offers_two_installations_here() -> None:
    """The extension test above should run on two PostgreSQL versions on CI; say when not."""
    found = installations()
    if len(found) < 2:
        pytest.skip(f"one PostgreSQL installation only: {found}")
    assert len({i.bin_dir.resolve() for i in found}) == len(found)


# --------------------------------------------------------------------------------------------
# pg-durable up, end to end

_HAS_ENGINE = importlib.util.find_spec("pg_durable.engine.worker") is not None
_URL = re.compile(r"postgresql://\S+")


class Up:
    """A ``pg-durable up`` subprocess whose output lines are collected by a thread."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.proc = subprocess.Popen(
            [
                *cli(),
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--poll-interval",
                "0.2",
                "--concurrency",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=cli_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.threads = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for thread in self.threads:
            thread.start()

    def _pump(self, stream: object, sink: list[str]) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, ""):
            sink.append(line)
            if sink is self.stdout:
                self.lines.put(line)

    def wait_for_url(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self.lines.empty():
                break
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "Connect:" in line:
                match = _URL.search(self.lines.get(timeout=10))
                assert match is not None
                return match.group(0)
        raise AssertionError(f"no banner from pg-durable up: {self.output()}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for thread in self.threads:
                thread.join(timeout=10)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def output(self) -> str:
        for thread in self.threads:
            thread.join(timeout=2)
        return "".join(self.stdout) + "\n--- stderr ---\n" + "".join(self.stderr)


def _wait_for_status(url: str, instance: str, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT df.status(%s)", (instance,)).fetchone()
        status = None if row is None else row[0]
        if status == wanted:
            return
        time.sleep(0.2)
    raise AssertionError(f"instance {instance} is {status!r}, not {wanted!r}")


@pytest.mark.skipif(
    not _HAS_ENGINE, reason="the worker engine (pg_durable.engine.worker) has not landed yet"
)
@pytest.mark.timeout(300)
def test_up_serves_the_hello_example_and_reuses_its_data_dir() -> None:
    tmp = private_tmpdir("pg-durable-up-")
    data_dir = tmp / "data"
    port = free_port()
    try:
        up = Up(data_dir, port)
        try:
            url = up.wait_for_url()
            banner = "".join(up.stdout)
            assert "Hello, durable world!" in banner
            assert "enable_superuser_instances" in banner
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute("SELECT df.start('SELECT ''Hello, durable world!''')").fetchone()
            assert row is not None
            instance = str(row[0])
            _wait_for_status(url, instance, "completed")
            with psycopg.connect(url) as conn:
                result = conn.execute("SELECT df.result(%s)", (instance,)).fetchone()
                # Sized for the machine, not PostgreSQL's 128 MB (embedded.default_shared_buffers).
                buffers = conn.execute(
                    "SELECT setting::bigint * 8192 / 1048576 || 'MB' FROM pg_settings "
                    "WHERE name = 'shared_buffers'"
                ).fetchone()
            assert result is not None
            assert "Hello, durable world!" in str(result[0])
            assert buffers == (default_shared_buffers(),)
        finally:
            rc = up.stop()
        assert rc == 0, up.output()
        assert "Stopped." in "".join(up.stderr), up.output()
        assert not EmbeddedPostgres(data_dir).running

        again = Up(data_dir, port)
        try:
            url2 = again.wait_for_url()
            assert url2 == url  # same cluster: same password, same port
            out = "".join(again.stdout)
            assert "Starting PostgreSQL" in out and "reused" in out
            assert "already installed" in out
            with psycopg.connect(url2) as conn:
                row = conn.execute("SELECT df.status(%s)", (instance,)).fetchone()
            assert row == ("completed",)
        finally:
            rc = again.stop()
        assert rc == 0, again.output()
    finally:
        with contextlib.suppress(Exception):
            EmbeddedPostgres(data_dir).stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def test_up_refuses_a_port_in_use(pg_server: Server) -> None:
    if pg_server.embedded is None:
        pytest.skip("needs the embedded test server's port")
    if not _HAS_ENGINE:
        pytest.skip("the worker engine (pg_durable.engine.worker) has not landed yet")
    tmp = private_tmpdir("pg-durable-up-port-")
    try:
        proc = run_cli(
            "up", "--data-dir", str(tmp / "data"), "--port", str(pg_server.embedded.port)
        )
        assert proc.returncode == 1
        assert "already in use" in proc.stderr
        assert not (tmp / "data").exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
