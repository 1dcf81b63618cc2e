"""The embedded PostgreSQL used by `pg-durable up` and by the test suite.

Binaries come from, in order: an explicit directory (``PG_DURABLE_PG_BIN``), the ``pgserver``
wheel from PyPI, or the machine's own installation (``/usr/lib/postgresql/*/bin``,
``pg_config --bindir``, ``postgres`` on PATH). PostgreSQL refuses to run as root, so when we are
root the server runs as an unprivileged system user (``PG_DURABLE_RUN_AS``, else ``postgres``
if it exists, else ``nobody``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pg_durable.errors import EmbeddedServerError

logger = logging.getLogger(__name__)

SUPERUSER = "postgres"
_STATE_FILE = "pg_durable.json"


@dataclass(frozen=True, slots=True)
class Installation:
    """A directory holding PostgreSQL server binaries, and the major version they report."""

    bin_dir: Path
    major: int
    source: str


def _major_of(bin_dir: Path, user: pwd.struct_passwd | None = None) -> int:
    # Run as the user the server will run as: a binary that user cannot execute (pgserver
    # installed under root's 0700 home, say) is no use to us.
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if match is None:
        raise EmbeddedServerError(f"cannot read the PostgreSQL version from {out!r}")
    return int(match.group(1))


def _candidate_dirs() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    explicit = os.environ.get("PG_DURABLE_PG_BIN")
    if explicit:
        found.append((Path(explicit), "PG_DURABLE_PG_BIN"))
    # Locate pgserver's binaries without importing it: importing it has side effects
    # (platformdirs warnings, runtime directories) that an embedded server does not need.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found.append((Path(location) / "pginstall" / "bin", "pgserver"))
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        found.append((d, "system"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            found.append((Path(out), "pg_config"))
    postgres = shutil.which("postgres")
    if postgres:
        found.append((Path(postgres).parent, "PATH"))
    return found


def installations() -> list[Installation]:
    """Every usable PostgreSQL installation on this machine, most preferred first.

    When we are root, "usable" means usable by the unprivileged user the server runs as; a
    pgserver installation that user cannot reach is copied to :func:`_relocated_pgserver`.
    """
    try:
        user = _run_as_user()
    except EmbeddedServerError:
        user = None
    result: list[Installation] = []
    seen: set[Path] = set()
    for bin_dir, source in _candidate_dirs():
        if not (bin_dir / "postgres").exists() or not (bin_dir / "initdb").exists():
            continue
        # Resolve the binary, not the directory: /usr/local/bin/postgres may be a symlink
        # into an installation found already.
        real = (bin_dir / "postgres").resolve().parent
        if real in seen:
            continue
        seen.add(real)
        try:
            result.append(Installation(bin_dir, _major_of(bin_dir, user), source))
            continue
        except (OSError, subprocess.CalledProcessError, EmbeddedServerError):
            if user is None or source != "pgserver":
                continue
        try:
            copy = _relocated_pgserver(bin_dir.parent)
            result.append(Installation(copy / "bin", _major_of(copy / "bin", user), source))
        except (OSError, subprocess.CalledProcessError, EmbeddedServerError) as exc:
            logger.debug("cannot relocate pgserver's PostgreSQL: %s", exc)
    return result


def _relocated_pgserver(pginstall: Path) -> Path:
    """A copy of pgserver's installation that the unprivileged server user can execute.

    pgserver's build is relocatable (paths are relative to the binary; its binaries find their
    bundled libraries at ``$ORIGIN/../../../pgserver.libs``), so a copy of ``pginstall`` and
    ``pgserver.libs`` keeping that layout works. It goes to a root-owned cache
    (``PG_DURABLE_CACHE_DIR``, else ``/var/cache/pg-durable``), keyed by the source's path and
    modification time, and is made once.
    """
    libs = pginstall.parent.parent / "pgserver.libs"
    stamp = f"{pginstall.resolve()}:{(pginstall / 'bin' / 'postgres').stat().st_mtime_ns}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("PG_DURABLE_CACHE_DIR") or "/var/cache/pg-durable")
    target = cache / f"pgserver-{key}"
    if (target / ".complete").exists():
        return target / "pgserver" / "pginstall"
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)
    partial = Path(tempfile.mkdtemp(prefix="pgserver-", dir=cache))
    try:
        tree = partial / "tree"
        shutil.copytree(pginstall, tree / "pgserver" / "pginstall", symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tree / "pgserver.libs", symlinks=True)
        (tree / ".complete").touch()
        for path in (tree, tree / "pgserver"):
            path.chmod(0o755)
        try:
            tree.rename(target)
        except OSError:
            if not (target / ".complete").exists():  # else: lost a race to an identical copy
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("copied pgserver's PostgreSQL to %s (executable by the server user)", target)
    return target / "pgserver" / "pginstall"


def find_installation(major: int | None = None) -> Installation:
    """The preferred PostgreSQL installation (of major version ``major`` when given), or a
    clear error naming how to get one."""
    found = installations()
    if not found:
        raise EmbeddedServerError(
            "no PostgreSQL server binaries found: install the embedded server with "
            "`pip install 'pg-durable[embedded]'`, install PostgreSQL, "
            "or point PG_DURABLE_PG_BIN at a directory holding `postgres` and `initdb`"
        )
    if major is None:
        return found[0]
    for installation in found:
        if installation.major == major:
            return installation
    have = ", ".join(f"{i.major} ({i.source})" for i in found)
    raise EmbeddedServerError(
        f"the cluster was created by PostgreSQL {major}, but only PostgreSQL {have} is "
        f"installed here: install PostgreSQL {major}, point PG_DURABLE_PG_BIN at its "
        "binaries, or choose another data directory"
    )


def cluster_major(data_dir: Path) -> int | None:
    """The major version of the cluster in ``data_dir`` (from PG_VERSION), or None."""
    try:
        return int((data_dir / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PG_DURABLE_RUN_AS")
    candidates = [name] if name else ["postgres", "nobody"]
    for candidate in candidates:
        try:
            return pwd.getpwnam(candidate)
        except KeyError:
            continue
    raise EmbeddedServerError(
        "running as root, and no unprivileged user to run PostgreSQL as: "
        "set PG_DURABLE_RUN_AS to an existing system user"
    )


#: The most shared_buffers the embedded server takes by default (a quarter of the machine's
#: memory up to this): enough for the df tables of 100,000 instances of ten steps in flight.
_SHARED_BUFFERS_CAP = 1024 * 1024 * 1024
_SHARED_BUFFERS_FLOOR = 128 * 1024 * 1024


def default_shared_buffers() -> str:
    """shared_buffers for the embedded server: a quarter of the machine's memory — the usual
    advice for a PostgreSQL server — between PostgreSQL's own 128 MB and 1 GB. PostgreSQL's
    default of 128 MB is sized for any machine, not for the work: once the rows of the
    instances in flight outgrow it, every step writes and reads pages through the kernel and
    costs the server about three times as much (docs/performance.md: 100,000 instances of ten
    steps in flight). The memory is reserved, not used, until PostgreSQL touches it."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # (not a POSIX system that says)
        memory = 0
    size = min(max(memory // 4, _SHARED_BUFFERS_FLOOR), _SHARED_BUFFERS_CAP)
    return f"{size // (1024 * 1024)}MB"


class EmbeddedPostgres:
    """A private PostgreSQL cluster in a data directory, listening on 127.0.0.1.

    The superuser ``postgres`` gets a random password kept in the data directory, so the TCP
    listener needs no ``trust``; the Unix socket lives inside the (mode 0700) data directory.
    Its shared_buffers are sized for the machine (:func:`default_shared_buffers`) unless
    ``extra_settings`` says otherwise.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        installation: Installation | None = None,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        # An existing cluster can only be run by binaries of the major version that made it.
        self.installation = installation or find_installation(cluster_major(self.data_dir))
        self.extra_settings = dict(extra_settings or {})
        self._user = _run_as_user()
        state = self._read_state()
        self.password: str = state.get("password") or secrets.token_urlsafe(18)
        self.port: int = port or int(state.get("port") or 0) or free_port()

    # -- state kept beside the cluster ----------------------------------------------------
    def _state_path(self) -> Path:
        return self.data_dir / _STATE_FILE

    def _read_state(self) -> dict[str, str]:
        try:
            data = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _write_state(self) -> None:
        path = self._state_path()
        path.write_text(json.dumps({"password": self.password, "port": str(self.port)}))
        path.chmod(0o600)
        self._chown(path)

    # -- process helpers ------------------------------------------------------------------
    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            env=env,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
            extra_groups=[] if self._user else None,
            cwd="/",
            # Its own session: a Ctrl-C at the terminal is for us, not for the postmaster
            # (which pg_ctl leaves running in the background); we stop it ourselves.
            start_new_session=True,
        )
        if check and proc.returncode != 0:
            raise EmbeddedServerError(
                f"{Path(args[0]).name} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def _bin(self, name: str) -> str:
        return str(self.installation.bin_dir / name)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def initialize(self) -> None:
        """Create the cluster if the data directory does not hold one yet."""
        if self.initialized:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} is not empty and holds no PostgreSQL cluster; "
                "choose an empty or new directory"
            )
        self.data_dir.chmod(0o700)
        self._chown(self.data_dir)
        if self._user is not None:
            self._check_traversable()
        # The password file must live outside the (still empty) data directory.
        fd, name = tempfile.mkstemp(prefix="pg-durable-pw-")
        pwfile = Path(name)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.password + "\n")
        self._chown(pwfile)
        try:
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_state()

    def _check_traversable(self) -> None:
        assert self._user is not None
        probe = self._run(["/bin/sh", "-c", f"test -x {str(self.data_dir.parent)!r}"], check=False)
        if probe.returncode != 0:
            raise EmbeddedServerError(
                f"PostgreSQL runs as system user {self._user.pw_name!r}, which cannot reach "
                f"{self.data_dir.parent}; choose a data directory it can traverse "
                "(for example under /var/lib or /tmp)"
            )

    @property
    def running(self) -> bool:
        proc = self._run([self._bin("pg_ctl"), "status", "-D", str(self.data_dir)], check=False)
        return proc.returncode == 0

    def running_port(self) -> int | None:
        """The port the running server of this data directory listens on (from
        ``postmaster.pid``), or None when it is not running."""
        if not self.running:
            return None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[3])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, *, timeout: int = 60) -> None:
        """Start the server (initialising it first when needed) and wait until it accepts."""
        self.initialize()
        if self.running:
            return
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "shared_buffers": default_shared_buffers(),
            **self.extra_settings,
        }
        opts = " ".join(f"-c {k}={_quote_opt(v)}" for k, v in settings.items())
        self._run(
            [
                self._bin("pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(timeout),
                "-l",
                str(self.data_dir / "server.log"),
                "-o",
                opts,
            ]
        )
        self._write_state()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean), or ``immediate`` (a crash, recovery on next start)."""
        if not self.initialized or not self.running:
            return
        self._run([self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A libpq connection string for this server over TCP."""
        pw = f" password={self.password}" if user == SUPERUSER else ""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}{pw}"

    def url(self, dbname: str = "postgres") -> str:
        """The same as :meth:`dsn`, as a ``postgresql://`` URL (what psql users paste)."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.data_dir / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""


def _quote_opt(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:-]+", value):
        return value
    return "'" + value.replace("'", "''") + "'"


def wait_until_accepting(dsn: str, timeout: float = 30.0) -> None:
    """Block until a connection to ``dsn`` succeeds (used right after a restart)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
