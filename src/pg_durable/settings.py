"""Worker settings: one frozen value, resolved as CLI flag > PG_DURABLE_* variable > default.

Settings that SQL must see (``pg_durable.enable_superuser_instances`` and friends) are not here:
they are custom server settings read with ``current_setting(name, true)``, so they are set with
``postgresql.conf``, ``ALTER SYSTEM`` or ``ALTER DATABASE … SET`` and both SQL and the worker
see the same value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

from pg_durable.errors import ConfigurationError

LogFormat = Literal["text", "json"]
ENV_PREFIX = "PG_DURABLE_"

#: Largest result one SQL step may return, in bytes of its rows' JSON. 16 MiB holds any result
#: a workflow can reasonably pass on (``$name.*`` expands at most 10,000 rows: 1.6 KiB each),
#: while a batch's results — up to twice this, see ``engine/identity.py`` — and their parsed
#: form in the worker stay in the tens of megabytes per slot.
DEFAULT_MAX_RESULT_BYTES = 16 * 1024 * 1024
#: Largest number of rows one SQL step may return. The bytes cap alone would let through over
#: two million tiny rows, and the worker holds every row as Python objects (some hundreds of
#: bytes each) while it shapes the result; 100,000 rows is ten times what ``$name.*`` expands.
DEFAULT_MAX_RESULT_ROWS = 100_000
#: Largest HTTP response body a step reads, in bytes; a larger one fails the step. Its result —
#: the body, as base64 if binary (a third more) — is stored with the instance and carried to the
#: steps after it, so it is kept to the size of a result a workflow passes on.
DEFAULT_HTTP_MAX_RESPONSE_BYTES = 10 * 1024 * 1024

#: Largest step_timeout: what PostgreSQL's statement_timeout holds (INT_MAX milliseconds).
MAX_STEP_TIMEOUT = 2_147_483


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker needs to know; see ``pg-durable worker --help``."""

    dsn: str = ""
    #: Steps executed at once by this worker (one database connection each).
    concurrency: int = 10
    #: Runnable steps a connection claims and commits together in one transaction.
    batch_size: int = 64
    #: Seconds after which a batch takes no more steps (how long a quick step's commit may
    #: wait for the steps batched with it).
    batch_window: float = 0.02
    #: Iterations a loop may run before it fails (pg_durable: 100,000).
    loop_max_iterations: int = 100_000
    #: Seconds an iteration of a loop takes at least (pg_durable: 1).
    loop_min_interval: float = 1.0
    #: Bytes (of its rows' JSON) a SQL step's result may hold; a larger one fails the step.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    #: Rows a SQL step's result may hold; more fail the step.
    max_result_rows: int = DEFAULT_MAX_RESULT_ROWS
    #: Bytes of an HTTP response's body a step reads; a larger response fails the step. (The
    #: policy and the limits on requests are server settings: docs/http.md.)
    http_max_response_bytes: int = DEFAULT_HTTP_MAX_RESPONSE_BYTES
    #: Seconds a SQL step's statement may run before it is cancelled and the step fails; 0: no
    #: limit but the role's own statement_timeout (pg_durable's default). With that and
    #: df.timeout, the smallest applies (docs/reliability.md).
    step_timeout: float = 0.0
    #: Seconds another worker waits before it takes over a step running outside any
    #: transaction (VACUUM and the like) from a worker that stopped renewing its lease — died,
    #: or lost the database. Renewed every third of it while the statement runs.
    lease_seconds: float = 30.0
    #: Seconds between polls for work when no NOTIFY arrives (NOTIFY is a hint, not the truth).
    poll_interval: float = 1.0
    #: Seconds between heartbeats written to df._workers.
    heartbeat_interval: float = 5.0
    #: Seconds a graceful shutdown waits for in-flight steps before cancelling them.
    shutdown_grace: float = 30.0
    #: Longest pause between reconnection attempts after the server went away.
    reconnect_max_backoff: float = 10.0
    #: TCP port of the worker's Prometheus endpoint, GET /metrics (docs/operations.md#metrics);
    #: 0: no endpoint.
    metrics_port: int = 0
    #: Address the metrics endpoint listens on: 127.0.0.1 serves this machine only, 0.0.0.0
    #: every interface (the metrics name hosts and workflows' node types, nothing secret).
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: LogFormat = "text"

    @classmethod
    def resolve(
        cls, flags: Mapping[str, object | None], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from CLI flags (None = not given), then the environment, then defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            given = flags.get(f.name)
            if given is None:
                raw = env.get(ENV_PREFIX + f.name.upper())
                if raw is None:
                    continue
                given = raw
            values[f.name] = _coerce(f.name, f.default, given)
        settings = cls(**values)  # type: ignore[arg-type]  # values are coerced per field above
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.dsn:
            raise ConfigurationError("no database given: pass --dsn or set PG_DURABLE_DSN")
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1 (got {self.concurrency})")
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1 (got {self.batch_size})")
        if self.batch_window < 0:
            raise ConfigurationError("batch_window cannot be negative")
        if self.loop_max_iterations < 1:
            raise ConfigurationError(
                f"loop_max_iterations must be at least 1 (got {self.loop_max_iterations})"
            )
        if self.loop_min_interval < 0:
            raise ConfigurationError("loop_min_interval cannot be negative")
        for name in ("max_result_bytes", "max_result_rows", "http_max_response_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in (
            "poll_interval",
            "heartbeat_interval",
            "reconnect_max_backoff",
            "lease_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive (got {getattr(self, name)})")
        if not 0 <= self.step_timeout <= MAX_STEP_TIMEOUT:
            raise ConfigurationError(
                f"step_timeout must be between 0 (off) and {MAX_STEP_TIMEOUT} seconds "
                f"(got {self.step_timeout})"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(
                f"metrics_port must be a TCP port, or 0 for none (got {self.metrics_port})"
            )
        if self.metrics_port and not self.metrics_host:
            raise ConfigurationError("metrics_host cannot be empty when metrics_port is set")
        if self.shutdown_grace < 0:
            raise ConfigurationError("shutdown_grace cannot be negative")
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(f"log format must be text or json (got {self.log_format!r})")


def _coerce(name: str, default: object, value: object) -> object:
    try:
        if isinstance(default, bool):
            return str(value).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(str(value))
        if isinstance(default, float):
            return float(str(value))
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {value!r} is not a valid number") from exc
    return str(value)
