"""Log formats and error reports of the command line (no database)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pg_durable.cli import logging as cli_logging
from pg_durable.cli.main import cause_chain, describe, main
from pg_durable.errors import ConfigurationError, SchemaError


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _emit(fmt: str, level: str = "INFO") -> str:
    stream = io.StringIO()
    cli_logging.configure(level, fmt, stream)
    log = logging.getLogger("pg_durable.test")
    log.debug("hidden")
    log.info(
        "step %s done",
        "n1",
        extra={
            "action": "step_completed",
            "instance_id": "ab12cd34",
            "node_id": "ef56ab78",
            "worker_id": "w-1",
            "attempt": 2,
        },
    )
    log.warning("plain")
    return stream.getvalue()


@pytest.mark.usefixtures("restore_root_logger")
def test_json_is_one_object_per_line_with_the_extra_fields() -> None:
    lines = _emit("json").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "pg_durable.test"
    assert first["message"] == "step n1 done"
    assert first["ts"].endswith("+00:00")
    assert (first["action"], first["instance_id"], first["node_id"], first["worker_id"]) == (
        "step_completed",
        "ab12cd34",
        "ef56ab78",
        "w-1",
    )
    assert first["attempt"] == 2
    assert set(second) == {"ts", "level", "logger", "message"}


@pytest.mark.usefixtures("restore_root_logger")
def test_json_carries_the_exception() -> None:
    stream = io.StringIO()
    cli_logging.configure("INFO", "json", stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    record = json.loads(stream.getvalue())
    assert "ValueError: boom" in record["exception"]


@pytest.mark.usefixtures("restore_root_logger")
def test_text_shows_the_extra_fields() -> None:
    out = _emit("text", "DEBUG")
    assert "hidden" in out
    assert (
        "INFO    pg_durable.test: step n1 done [action=step_completed instance_id=ab12cd34 "
        "node_id=ef56ab78 worker_id=w-1 attempt=2]" in out
    )


def test_unknown_level_or_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="log level"):
        cli_logging.configure("LOUD", "text")
    with pytest.raises(ConfigurationError, match="log format"):
        cli_logging.configure("INFO", "xml")


def test_cause_chain_and_descriptions() -> None:
    try:
        try:
            raise OSError("disk full")
        except OSError as exc:
            raise SchemaError("cannot write the extension files") from exc
    except SchemaError as err:
        chain = cause_chain(err)
    assert [describe(e) for e in chain] == [
        "cannot write the extension files",
        "OSError: disk full",
    ]


@pytest.mark.usefixtures("restore_root_logger")
def test_main_reports_errors_and_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--log-level", "LOUD", "--dsn", "postgresql:///x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pg-durable: error: log level must be one of")
    assert "Traceback" not in err
    assert main(["worker", "-v", "--log-level", "LOUD", "--dsn", "postgresql:///x"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--concurrency", "many"])
    assert exc.value.code == 2


@pytest.mark.usefixtures("restore_root_logger")
def test_psycopgs_echo_of_a_lost_connection_is_dropped() -> None:
    stream = io.StringIO()
    cli_logging.configure("INFO", "text", stream)
    psycopg_logger = logging.getLogger("psycopg")
    psycopg_logger.warning("error ignored terminating %s: the connection is lost", "<pipeline>")
    psycopg_logger.warning("something else")
    assert "error ignored terminating" not in stream.getvalue()
    assert "something else" in stream.getvalue()
