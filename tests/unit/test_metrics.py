"""The metrics registry and its text format (engine/metrics.py), and the stamp journal."""

from __future__ import annotations

import math

import pytest

from pg_durable.engine.metrics import Counter, Gauge, Histogram, Registry
from pg_durable.engine.worker_metrics import StampJournal
from pg_durable.errors import ConfigurationError
from pg_durable.graph.interpreter import Stamp
from pg_durable.settings import Settings


def test_counter_renders_help_type_and_escaped_labels() -> None:
    registry = Registry()
    steps = registry.add(Counter("x_steps_total", 'Steps "done"\\ by\ntype.', ("node_type",)))
    steps.inc("SQL")
    steps.inc("SQL", amount=2)
    steps.inc('we"ird\\\n')
    assert registry.render() == (
        '# HELP x_steps_total Steps "done"\\\\ by\\ntype.\n'
        "# TYPE x_steps_total counter\n"
        'x_steps_total{node_type="SQL"} 3\n'
        'x_steps_total{node_type="we\\"ird\\\\\\n"} 1\n'
    )
    assert steps.get("SQL") == 3 and steps.get("nothing") == 0


def test_gauges_set_or_read_when_scraped() -> None:
    registry = Registry()
    registry.add(Gauge("x_up", "Up.")).set(1)
    readings = iter([[(("busy",), 2.0), (("idle",), 1.5)]])
    registry.add(Gauge("x_slots", "Slots.", ("state",), reading=lambda: next(readings)))
    registry.add(Gauge("x_never", "Not sampled yet.", reading=list))
    assert registry.render().splitlines() == [
        "# HELP x_up Up.",
        "# TYPE x_up gauge",
        "x_up 1",
        "# HELP x_slots Slots.",
        "# TYPE x_slots gauge",
        'x_slots{state="busy"} 2',
        'x_slots{state="idle"} 1.5',
        "# HELP x_never Not sampled yet.",
        "# TYPE x_never gauge",
    ]


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    registry = Registry()
    seconds = registry.add(Histogram("x_seconds", "Time.", (0.1, 1, 10), ("kind",)))
    for value in (0.05, 0.1, 0.5, 1, 20):
        seconds.observe(value, "a")
    assert registry.render().splitlines()[2:] == [
        'x_seconds_bucket{kind="a",le="0.1"} 2',
        'x_seconds_bucket{kind="a",le="1"} 4',
        'x_seconds_bucket{kind="a",le="10"} 4',
        'x_seconds_bucket{kind="a",le="+Inf"} 5',
        'x_seconds_sum{kind="a"} 21.65',
        'x_seconds_count{kind="a"} 5',
    ]
    assert seconds.count("a") == 5 and seconds.count("b") == 0


def test_special_values_and_mistakes() -> None:
    registry = Registry()
    gauge = registry.add(Gauge("x_g", "G."))
    for value, text in ((math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"), (0.25, "0.25")):
        gauge.set(value)
        assert registry.render().endswith(f"x_g {text}\n")
    with pytest.raises(ValueError, match="registered already"):
        registry.add(Gauge("x_g", "again"))
    with pytest.raises(ValueError, match="increasing"):
        Histogram("x_h", "H.", (1, 0.5))
    with pytest.raises(ValueError, match="_total"):
        Counter("x_c", "C.")
    with pytest.raises(ValueError, match="le"):
        Histogram("x_h", "H.", (1,), ("le",))
    counter = registry.add(Counter("x_c_total", "C.", ("a",)))
    counter.inc()  # (no label value for a)
    with pytest.raises(ValueError, match="expected label values"):
        registry.render()


def test_stamp_journal_remembers_every_stamp() -> None:
    stamps = StampJournal()
    stamps["n1"] = Stamp("n1", "running", None, "e")
    stamps.pop("n1", None)
    stamps["n1"] = Stamp("n1", "completed", "1", "e")
    assert list(stamps.values()) == [Stamp("n1", "completed", "1", "e")]
    assert stamps.events == [("n1", "running"), ("n1", "completed")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"metrics_port": -1}, "metrics_port must be a TCP port"),
        ({"metrics_port": 65536}, "metrics_port must be a TCP port"),
        ({"metrics_port": 9187, "metrics_host": ""}, "metrics_host cannot be empty"),
    ],
)
def test_metrics_settings_are_checked(overrides: dict[str, object], message: str) -> None:
    flags: dict[str, object | None] = {"dsn": "dbname=x", **overrides}
    with pytest.raises(ConfigurationError, match=message):
        Settings.resolve(flags, environ={})


def test_metrics_settings_from_the_environment() -> None:
    settings = Settings.resolve(
        {"dsn": "dbname=x"},
        environ={"PG_DURABLE_METRICS_PORT": "9187", "PG_DURABLE_METRICS_HOST": "0.0.0.0"},
    )
    assert (settings.metrics_port, settings.metrics_host) == (9187, "0.0.0.0")
    assert Settings.resolve({"dsn": "dbname=x"}, environ={}).metrics_port == 0
