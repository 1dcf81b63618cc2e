"""A tiny metrics registry and the Prometheus text exposition format (version 0.0.4).

Counters, gauges and histograms with fixed buckets, each a family of series keyed by label
values. Updating one is a dict lookup and an addition, cheap enough for every step a worker
runs; rendering walks the families once per scrape. No dependency: the format is a few lines
of text per series (https://prometheus.io/docs/instrumenting/exposition_formats/).

Everything here runs on the worker's event loop, so nothing needs a lock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeVar

#: What a scrape answers with (the version of the text format is part of the content type).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, ...]
#: A gauge read when scraped: its series as (label values, value) pairs.
Reading = Callable[[], Iterable[tuple[Labels, float]]]


class _Family:
    """The metadata every metric family shares; subclasses hold the series."""

    kind: str = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def _series(self, suffix: str, values: Labels, value: float, extra: str = "") -> str:
        return f"{self.name}{suffix}{_label_text(self.labels, values, extra)} {_number(value)}"


class Counter(_Family):
    """A value that only goes up, per label values. Its name ends in ``_total``: in this
    format (unlike OpenMetrics) the HELP and TYPE lines name the samples exactly."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total (got {name})")
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {}

    def inc(self, *values: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series of the label ``values``."""
        self.values[values] = self.values.get(values, 0.0) + amount

    def get(self, *values: str) -> float:
        return self.values.get(values, 0.0)

    def samples(self) -> list[str]:
        return [self._series("", k, v) for k, v in sorted(self.values.items())]


class Gauge(_Family):
    """A value that goes up and down: set directly, or read by ``reading`` when scraped."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        reading: Reading | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {}
        self.reading = reading

    def set(self, value: float, *values: str) -> None:
        self.values[values] = value

    def samples(self) -> list[str]:
        series = self.values.items() if self.reading is None else self.reading()
        return [self._series("", k, v) for k, v in sorted(series)]


class Histogram(_Family):
    """Observations counted into fixed buckets, with their sum and count, per label values."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        if "le" in labels:
            raise ValueError("a histogram cannot have a label named le")
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be distinct and in increasing order")
        super().__init__(name, help_text, labels)
        self.bounds = tuple(float(b) for b in buckets if b != math.inf)
        #: Per label values: the count of each bucket on its own (the +Inf one last), the sum.
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *values: str) -> None:
        """Count ``value`` into the series of the label ``values``."""
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = ([0] * (len(self.bounds) + 1), [0.0])
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def count(self, *values: str) -> int:
        series = self.series.get(values)
        return 0 if series is None else sum(series[0])

    def samples(self) -> list[str]:
        lines = []
        for values, (counts, total) in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += count
                le = 'le="' + _number(bound) + '"'
                lines.append(self._series("_bucket", values, cumulative, le))
            lines.append(self._series("_sum", values, total[0]))
            lines.append(self._series("_count", values, cumulative))
        return lines


_F = TypeVar("_F", bound=_Family)


class Registry:
    """The metric families one process exposes, in the order they were added."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, family: _F) -> _F:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is registered already")
        self._families[family.name] = family
        return family

    def render(self) -> str:
        """Every family in the text format: HELP and TYPE lines, then its samples."""
        lines: list[str] = []
        for family in self._families.values():
            lines += family.header()
            lines += family.samples()
        return "\n".join(lines) + "\n"


def _label_text(names: Labels, values: Labels, extra: str) -> str:
    if len(names) != len(values):
        raise ValueError(f"expected label values for {names}, got {values}")
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
