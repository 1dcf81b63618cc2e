"""``pg-durable worker``: execute workflows from one database until SIGTERM or SIGINT.

Also home of what ``pg-durable up`` shares with it: the settings flags and :func:`serve`, which
runs the engine's worker with signal handlers (first signal: graceful stop; second: cancel).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

from pg_durable.errors import PgDurableError
from pg_durable.settings import ENV_PREFIX, Settings

if TYPE_CHECKING:
    from pg_durable.engine.worker import Worker

logger = logging.getLogger(__name__)

#: Exit status when a second signal cancelled in-flight steps (they run again elsewhere).
EXIT_CANCELLED = 1

_HELP = {
    "dsn": "database to serve, as a libpq URL or key=value string",
    "concurrency": "steps executed at once, one database connection each",
    "batch_size": "most runnable steps a connection runs and commits in one transaction",
    "batch_window": "seconds after which a batch takes no more steps",
    "loop_max_iterations": "iterations a loop may run before it fails",
    "loop_min_interval": "seconds an iteration of a loop takes at least",
    "max_result_bytes": "bytes a SQL step's result may hold (its rows as JSON); more fail the step",
    "max_result_rows": "rows a SQL step's result may hold; more fail the step",
    "http_max_response_bytes": "bytes of an HTTP response's body a step reads; more fail the step",
    "step_timeout": (
        "seconds a SQL step's statement may run before it fails; 0: no limit but the role's "
        "own statement_timeout (with df.timeout, the smallest applies)"
    ),
    "lease_seconds": (
        "seconds before another worker takes over a step running outside any transaction "
        "from a worker that stopped renewing its lease"
    ),
    "poll_interval": "seconds between polls for work when no NOTIFY arrives",
    "heartbeat_interval": "seconds between heartbeats written to df._workers",
    "shutdown_grace": "seconds a graceful stop waits for in-flight steps before cancelling",
    "reconnect_max_backoff": "longest pause in seconds between reconnection attempts",
    "metrics_port": "serve Prometheus metrics at http://HOST:PORT/metrics; 0: off",
    "metrics_host": "address the metrics endpoint listens on (0.0.0.0: every interface)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text for people, or json: one object per line",
}
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_settings_arguments(parser: argparse.ArgumentParser, *, with_dsn: bool = True) -> None:
    """Add one flag per :class:`Settings` field (``--poll-interval`` for ``poll_interval``)."""
    group = parser.add_argument_group(
        "worker settings", f"each flag overrides the variable {ENV_PREFIX}<NAME>, then the default"
    )
    for f in fields(Settings):
        if f.name == "dsn" and not with_dsn:
            continue
        env = ENV_PREFIX + f.name.upper()
        default = "" if f.default is MISSING or f.default == "" else f"; default {f.default}"
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": None,  # None = not given: Settings.resolve falls back to env, default
            "help": f"{_HELP[f.name]} (env {env}{default})",
        }
        if f.name == "log_format":
            kwargs["choices"] = ("text", "json")
        elif isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(f.default, int):
            kwargs.update(type=int, metavar="N")
        elif isinstance(f.default, float):
            kwargs.update(type=float, metavar="SECONDS")
        elif f.name == "log_level":
            kwargs["metavar"] = "LEVEL"
        elif f.name == "dsn":
            kwargs["metavar"] = "URL"
        elif f.name == "metrics_host":
            kwargs["metavar"] = "ADDRESS"
        else:
            kwargs["metavar"] = f.name.upper()
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def settings_from_args(args: argparse.Namespace, **overrides: object) -> Settings:
    """Settings from the parsed flags (and ``overrides``), then PG_DURABLE_*, then defaults."""
    flags: dict[str, object | None] = {
        f.name: getattr(args, f.name, None) for f in fields(Settings)
    }
    flags.update(overrides)
    return Settings.resolve(flags)


def load_worker_class() -> type[Worker]:
    """The engine's Worker class, imported only when a command runs one."""
    try:
        from pg_durable.engine.worker import Worker
    except ModuleNotFoundError as exc:
        if exc.name not in ("pg_durable.engine", "pg_durable.engine.worker"):
            raise
        raise PgDurableError(
            "this installation of pg-durable has no worker engine (pg_durable.engine.worker)"
        ) from exc
    return Worker


#: Allocations between two collections of Python's youngest generation (700 by default).
_GC_YOUNG_THRESHOLD = 50_000


def _collect_garbage_less_often() -> None:
    """A worker allocates a few hundred objects per step (rows, plans, the interpreter's
    state), nearly none of them in reference cycles, and keeps caches of thousands of graph
    nodes: at Python's default thresholds the cyclic garbage collector took some 15 % of its
    CPU, scanning those caches again and again. What it holds at start-up (modules, settings)
    is set aside for good (gc.freeze), and young objects are collected every 50,000
    allocations instead of every 700 — the few cycles (an exception and its traceback) live a
    little longer."""
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(settings: Settings, on_started: Callable[[], None] | None = None) -> bool:
    """Run a worker until SIGINT or SIGTERM; call ``on_started`` once it serves.

    The first signal asks the worker to stop gracefully (in-flight steps finish, up to
    ``shutdown_grace``); a second one cancels it at once — its uncommitted steps run again on
    another worker, exactly as after a crash.

    Returns:
        True when the worker stopped gracefully, False when a second signal cancelled it.
    """
    _collect_garbage_less_often()
    worker = load_worker_class()(settings)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(worker.run(), name="pg-durable-worker")
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            logger.info(
                "%s received: stopping gracefully (send it again to stop at once)",
                sig.name,
                extra={"action": "shutdown_requested"},
            )
            worker.request_stop()
        else:
            logger.warning(
                "%s received again: cancelling in-flight steps (they will run again)",
                sig.name,
                extra={"action": "shutdown_forced"},
            )
            task.cancel()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        if on_started is not None:
            started = asyncio.create_task(worker.started.wait(), name="pg-durable-started")
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
            if started.done() and not task.done():
                on_started()
            started.cancel()
            await asyncio.wait({started})
        await asyncio.wait({task})
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
        if not task.done():  # we are being cancelled ourselves: take the worker with us
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return False
    task.result()  # re-raises the worker's failure, if it failed
    return True


def command(args: argparse.Namespace) -> int:
    """``pg-durable worker``."""
    settings = settings_from_args(args)
    return 0 if asyncio.run(serve(settings)) else EXIT_CANCELLED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``worker`` command."""
    parser = subparsers.add_parser(
        "worker",
        help="execute workflows from a database until SIGTERM/SIGINT",
        description=(
            "Execute the workflows of one database. Several workers may serve the same "
            "database at once; each step runs exactly once. SIGTERM or SIGINT stops the "
            "worker gracefully, a second one at once."
        ),
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=command)
