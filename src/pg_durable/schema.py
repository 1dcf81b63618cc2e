"""Install, upgrade and inspect the df schema — by plain script or as an extension.

The schema ships as ordered parts in ``sql/schema/NN_*.sql``. Both ways of installing run the
very same text: ``pg-durable install`` executes it in one transaction (no superuser or file
access needed, so it works on managed PostgreSQL), and ``pg-durable install-extension`` writes it
as ``pg_durable--<version>.sql`` beside ``pg_durable.control`` for ``CREATE EXTENSION``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from pg_durable import __version__
from pg_durable.errors import SchemaError

logger = logging.getLogger(__name__)

EXTENSION = "pg_durable"
SCHEMA_VERSION = __version__
# Arbitrary but fixed: serialises concurrent `pg-durable install` runs on one database.
_INSTALL_LOCK_KEY = 0x50474446_0001


def schema_parts() -> list[tuple[str, str]]:
    """The schema's SQL parts as (file name, text), in installation order."""
    folder = resources.files("pg_durable") / "sql" / "schema"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


def exec_kit_script() -> str:
    """The step runner's part of the schema (65_exec.sql), which the worker also installs in
    other databases its instances run steps in (engine/remote.py)."""
    folder = resources.files("pg_durable") / "sql" / "schema"
    return (folder / "65_exec.sql").read_text(encoding="utf-8")


def built_at() -> str:
    """When the schema files of this package were built (the newest file's modification time,
    UTC): what ``df.version()`` reports as "built", the same for every install from it."""
    folder = resources.files("pg_durable") / "sql" / "schema"
    newest = max(Path(str(folder / p.name)).stat().st_mtime for p in folder.iterdir())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest))


def install_script() -> str:
    """The complete install script (the body of ``pg_durable--<version>.sql``)."""
    chunks = [f"-- {name}\n{text.rstrip()}\n" for name, text in schema_parts()]
    chunks.append(
        "INSERT INTO df._meta (key, value) VALUES "
        f"('schema_version', '{SCHEMA_VERSION}'), ('built_at', '{built_at()}');\n"
    )
    return "\n".join(chunks)


def control_file() -> str:
    """The extension control file."""
    return (
        "# pg_durable: durable execution of SQL workflows (Python worker edition)\n"
        "comment = 'Durable SQL workflows: df schema for the pg_durable Python worker'\n"
        f"default_version = '{SCHEMA_VERSION}'\n"
        "relocatable = false\n"
        "schema = pg_catalog\n"
        "superuser = true\n"
        "requires = 'plpgsql'\n"
    )


def installed_version(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """The df schema version installed in the connected database, or None."""
    row = conn.execute(
        "SELECT to_regclass('df._meta') IS NOT NULL, "
        "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'df')"
    ).fetchone()
    assert row is not None
    has_meta, has_schema = row
    if not has_schema:
        return None
    if not has_meta:
        raise SchemaError(
            'a schema named "df" exists but was not created by pg_durable; '
            "drop or rename it before installing"
        )
    got = conn.execute("SELECT value FROM df._meta WHERE key = 'schema_version'").fetchone()
    return str(got[0]) if got else None


def install(dsn: str) -> str:
    """Install or upgrade the df schema in the database at ``dsn``; returns what was done.

    Idempotent: rerunning on an up-to-date database changes nothing. The whole install runs in
    one transaction under an advisory lock, so a failure leaves the database untouched and two
    concurrent installs do not interleave.
    """
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK_KEY,))
        current = installed_version(conn)
        if current == SCHEMA_VERSION:
            conn.rollback()
            return f"df schema {SCHEMA_VERSION} is already installed"
        if current is not None:
            ext = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = %s", (EXTENSION,)
            ).fetchone()
            if ext is not None:
                conn.execute(
                    sql.SQL("ALTER EXTENSION pg_durable UPDATE TO {}").format(
                        sql.Literal(SCHEMA_VERSION)
                    )
                )
                conn.commit()
                return f"extension pg_durable updated from {current} to {SCHEMA_VERSION}"
            raise SchemaError(
                f"df schema {current} is installed and no upgrade path to {SCHEMA_VERSION} "
                "is shipped with this version of pg-durable"
            )
        conn.execute(install_script().encode())
        conn.commit()
        return f"df schema {SCHEMA_VERSION} installed"


def extension_dir(pg_config: str | None = None) -> Path:
    """The extension directory of the local server (``pg_config --sharedir``/extension)."""
    exe = pg_config or shutil.which("pg_config")
    if exe is None:
        raise SchemaError("pg_config not found: pass --pg-config or put it on PATH")
    try:
        out = subprocess.run([exe, "--sharedir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SchemaError(f"cannot ask {exe} for the server's share directory") from exc
    return Path(out.stdout.strip()) / "extension"


def write_extension_files(target: Path) -> list[Path]:
    """Write ``pg_durable.control`` and ``pg_durable--<version>.sql`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    control = target / f"{EXTENSION}.control"
    script = target / f"{EXTENSION}--{SCHEMA_VERSION}.sql"
    control.write_text(control_file())
    script.write_text(
        '\\echo Use "CREATE EXTENSION pg_durable" to load this file. \\quit\n' + install_script()
    )
    return [control, script]


def setup_new_transaction_mode(dsn: str) -> str:
    """Set up ``df.start(…, transaction_mode => 'new')`` in the database at ``dsn`` when the
    connected role can (dblink available, and a superuser — or CREATEROLE once a superuser put
    dblink in schema df_dblink); returns one line saying what was done, or why not.

    Never fails the install: everything but the 'new' mode works without it, and a superuser
    can set it up later with ``SELECT df.enable_new_transaction_mode();``.
    """
    later = "a superuser can enable it later with SELECT df.enable_new_transaction_mode();"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT r.rolsuper, r.rolcreaterole,"
                " EXISTS (SELECT 1 FROM pg_available_extensions x WHERE x.name = 'dblink'),"
                " (SELECT n.nspname FROM pg_extension e"
                "   JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'dblink')"
                " FROM pg_roles r WHERE r.rolname = current_user"
            ).fetchone()
            assert row is not None
            superuser, createrole, available, dblink_schema = row
            enabled = conn.execute(
                "SELECT l.role_name FROM df._loopback l"
                " WHERE EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = l.role_name)"
            ).fetchone()
            if enabled is not None:
                done = f"transaction_mode => 'new' is enabled (loopback role {enabled[0]})"
            elif not available:
                return (
                    "transaction_mode => 'new' not enabled: this PostgreSQL server has no "
                    "dblink extension (it ships with PostgreSQL's contrib modules); " + later
                )
            elif not (superuser or (createrole and dblink_schema == "df_dblink")):
                return (
                    "transaction_mode => 'new' not enabled: setting it up needs a superuser "
                    "(or CREATEROLE once dblink is installed in schema df_dblink); " + later
                )
            else:
                got = conn.execute("SELECT df.enable_new_transaction_mode()").fetchone()
                assert got is not None
                done = str(got[0])
            problem = conn.execute("SELECT df._loopback_probe()").fetchone()
    except psycopg.Error as exc:
        logger.debug("setting up transaction_mode => 'new' failed", exc_info=True)
        reason = exc.diag.message_primary or str(exc)
        return f"transaction_mode => 'new' not enabled: {reason}; {later}"
    if problem is not None and problem[0] is not None:
        return f"{done}, but its loopback connection fails: {problem[0]}"
    return done
