"""The DSL's constructors in Python: each returns the :class:`Workflow` whose envelope is the
text its SQL namesake returns (SPEC §1.3), checked the way that function checks its arguments.

=============================================  ============================================
Python                                         SQL
=============================================  ============================================
``sql("SELECT 1")``                            ``df.sql('SELECT 1')``
``a >> b``, ``seq(a, b, …)``                   ``a ~> b``, ``df.seq(a, b)``
``a.as_("x")``                                 ``a |=> 'x'``, ``df.as(a, 'x')``
``a & b``, ``join(a, b)``, ``join(a, b, c)``   ``a & b``, ``df.join(a, b)``, ``df.join3(a, b, c)``
``a | b``, ``race(a, b)``                      ``a | b``, ``df.race(a, b)``
``if_(cond, then, else_)``                     ``cond ?> then !> else``, ``df.if(…)``
``if_rows("x", then, else_)``                  ``df.if_rows('x', then, else)``
``loop(body)``, ``loop(body, while_=cond)``    ``@> body``, ``df.loop(body, cond)``
``break_()``, ``break_("done")``               ``df.break()``, ``df.break('done')``
``sleep(30)``                                  ``df.sleep(30)``
``wait_for_signal("ok", timeout=3600)``        ``df.wait_for_signal('ok', 3600)``
``wait_for_schedule("0 3 * * *")``             ``df.wait_for_schedule('0 3 * * *')``
``http(url, …)``, ``http_multipart(url, …)``   ``df.http(url, …)``, ``df.http_multipart(…)``
``retry(a, 3)``, ``timeout(a, 30)``            ``df.retry(a, 3)``, ``df.timeout(a, 30)``
=============================================  ============================================

Where a step is expected, text is accepted too (:func:`~pg_durable.client.workflow.as_step`):
plain SQL becomes a SQL step, as the DSL's auto-wrap does.

Some checks need the server and are left to ``df.start``, which applies them to every node
however it was built: a cron expression's syntax, an HTTP step's URL, headers and sizes. The
HTTP policy (``pg_durable.http_policy``) is asked by the worker before each request, so an
HTTP step built here while the policy is off fails when it runs, not when it is built.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

from pg_durable.client.workflow import Step, Workflow, as_step, json_text

__all__ = [
    "Part",
    "break_",
    "http",
    "http_multipart",
    "if_",
    "if_rows",
    "join",
    "loop",
    "race",
    "retry",
    "seq",
    "sleep",
    "sql",
    "timeout",
    "wait_for_schedule",
    "wait_for_signal",
]

_INT4_MAX = 2**31 - 1
_INT8_MAX = 2**63 - 1
_HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
_MULTIPART_METHODS = ("POST", "PUT", "PATCH")


def sql(query: str) -> Workflow:
    """One SQL statement, run as the submitting role (``df.sql``).

    ``query`` is always the statement, even when it looks like JSON: unlike the composers,
    ``sql`` never reads its argument as an envelope.
    """
    if not isinstance(query, str):
        raise TypeError(f"sql() takes the statement as str, not {type(query).__name__}")
    return Workflow("SQL", query=query)


def seq(first: Step, second: Step, *more: Step) -> Workflow:
    """The steps one after the other: ``seq(a, b, c)`` is ``a >> b >> c`` (``df.seq``)."""
    result = Workflow("THEN", left=as_step(first), right=as_step(second))
    for step in more:
        result = Workflow("THEN", left=result, right=as_step(step))
    return result


def join(a: Step, b: Step, c: Step | None = None) -> Workflow:
    """Run the branches at once and wait for all; the result is the array of their results
    (``df.join``, or ``df.join3`` with ``c``)."""
    if c is None:
        return Workflow("JOIN", left=as_step(a), right=as_step(b))
    return Workflow("JOIN", left=as_step(a), right=as_step(b), extra=(as_step(c),))


def race(a: Step, b: Step) -> Workflow:
    """Run both at once; the first to finish wins and the other is cancelled (``df.race``)."""
    return Workflow("RACE", left=as_step(a), right=as_step(b))


def if_(condition: Step, then: Step, else_: Step) -> Workflow:
    """``then`` when ``condition``'s result is true, else ``else_`` (``df.if``; SQL's
    ``condition ?> then !> else``)."""
    return Workflow("IF", left=as_step(then), right=as_step(else_), condition=as_step(condition))


def if_rows(result_name: str, then: Step, else_: Step) -> Workflow:
    """``then`` when the result stored as ``result_name`` has rows, else ``else_``
    (``df.if_rows``; no SQL runs for the test)."""
    config = '{"condition_type":"result_has_rows","result_name":' + json_text(result_name) + "}"
    return Workflow("IF", left=as_step(then), right=as_step(else_), query=config)


def loop(body: Step, while_: Step | None = None) -> Workflow:
    """Repeat ``body`` until a :func:`break_`, or — with ``while_`` — do-while: the body, then
    the condition, until the condition is false (``df.loop``; SQL's ``@> body``)."""
    if while_ is None:
        return Workflow("LOOP", left=as_step(body))
    return Workflow("LOOP", left=as_step(body), condition=as_step(while_))


def break_(value: str | None = None) -> Workflow:
    """Leave the innermost loop with ``value`` as its result (``df.break``): JSON text is
    taken as that JSON value, other text as a string, None as ``null``. Not a step: the value
    is never run as SQL."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"break_() takes str or None, not {type(value).__name__}")
    text = "null" if value is None else json_text(value)
    return Workflow("BREAK", query='{"break_value":' + text + "}")


def _whole_seconds(value: int | timedelta, what: str) -> int:
    if isinstance(value, timedelta):
        seconds, rest = divmod(value, timedelta(seconds=1))
        if rest:
            raise ValueError(f"{what} must be a whole number of seconds (got {value})")
        return int(seconds)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} is an int or a timedelta, not {type(value).__name__}")
    return value


def sleep(seconds: int | timedelta) -> Workflow:
    """A durable timer of ``seconds`` (0 allowed): a worker restart does not restart it
    (``df.sleep``)."""
    n = _whole_seconds(seconds, "a sleep")
    if n < 0:
        raise ValueError("Sleep duration must be non-negative")
    if n > _INT8_MAX:
        raise ValueError(f"a sleep of {n} seconds is out of range (bigint)")
    return Workflow("SLEEP", query=str(n))


def wait_for_signal(name: str, timeout: int | timedelta | None = None) -> Workflow:
    """Wait for ``df.signal(id, name, data)``, at most ``timeout`` (``df.wait_for_signal``).

    The result is ``{"signal_name": name, "timed_out": false, "data": <payload>}``, or with
    ``"timed_out": true`` and ``"data": null`` when the timeout came first.
    """
    if name == "":
        raise ValueError("Signal name cannot be empty")
    if len(name) > 256:
        raise ValueError(f"Signal name is too long ({len(name)} characters); the limit is 256")
    limit = "null"
    if timeout is not None:
        n = _whole_seconds(timeout, "a signal's timeout")
        if n <= 0:
            raise ValueError("Timeout must be positive")
        if n > _INT4_MAX:
            raise ValueError(f"a timeout of {n} seconds is out of range (integer)")
        limit = str(n)
    config = '{"signal_name":' + json_text(name) + ',"timeout_seconds":' + limit + "}"
    return Workflow("SIGNAL", query=config)


def wait_for_schedule(cron_expr: str) -> Workflow:
    """Wait for the next tick of a five-field cron schedule (``df.wait_for_schedule``; see
    docs/schedules.md). The expression is checked by ``df.start``."""
    return Workflow("WAIT_SCHEDULE", query='{"cron_expr":' + json_text(cron_expr) + "}")


def _headers_text(headers: Mapping[str, str] | None) -> str:
    if headers is None:
        return "null"
    items = []
    # Header names in byte order, as jsonb_each(…) ORDER BY key COLLATE "C" lists them.
    for key in sorted(headers, key=lambda k: k.encode("utf-8")):
        value = headers[key]
        if not isinstance(value, str):
            raise ValueError(
                f"HTTP header '{key}' has a {type(value).__name__} value; "
                "header values must be strings"
            )
        items.append(json_text(key) + ":" + json_text(value))
    return "{" + ",".join(items) + "}"


def _timeout_text(timeout_seconds: int | timedelta | None) -> str:
    if timeout_seconds is None:
        return "30"
    n = _whole_seconds(timeout_seconds, "an HTTP timeout")
    if n <= 0:
        raise ValueError("Timeout must be positive")
    return str(n)


def http(
    url: str,
    method: str | None = "POST",
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_seconds: int | timedelta | None = 30,
) -> Workflow:
    """An HTTP request (``df.http``; docs/http.md). The result holds the status, headers and
    body; a 5xx, a transport error or a request the egress policy blocks fails the step.

    ``method`` None means POST and ``timeout_seconds`` None means 30, as in SQL.
    """
    verb = (method or "POST").upper()
    if verb not in _HTTP_METHODS:
        raise ValueError(f"Invalid HTTP method: {verb}. Must be GET, POST, PUT, DELETE, or PATCH")
    config = (
        '{"url":' + json_text(url)
        + ',"method":' + json_text(verb)
        + ',"body":' + ("null" if body is None else json_text(body))
        + ',"headers":' + _headers_text(headers)
        + ',"timeout_seconds":' + _timeout_text(timeout_seconds)
        + "}"
    )  # fmt: skip
    return Workflow("HTTP", query=config)


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a multipart request: a form field ``name`` with the base64 of its content
    (or a whole reference such as ``"$report"`` or ``"{logo}"``, substituted when it runs)."""

    name: str
    data_b64: str
    filename: str | None = None
    content_type: str | None = None

    @classmethod
    def from_bytes(
        cls,
        name: str,
        data: bytes,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> Part:
        """A part holding ``data``, base64-encoded."""
        return cls(name, base64.b64encode(data).decode("ascii"), filename, content_type)

    def to_json(self) -> str:
        """The part as ``df._http_config_text`` stores it."""
        text = '{"name":' + json_text(self.name) + ',"data_b64":' + json_text(self.data_b64)
        if self.filename is not None:
            text += ',"filename":' + json_text(self.filename)
        if self.content_type is not None:
            text += ',"content_type":' + json_text(self.content_type)
        return text + "}"


def http_multipart(
    url: str,
    method: str | None = "POST",
    parts: Sequence[Part] = (),
    headers: Mapping[str, str] | None = None,
    timeout_seconds: int | timedelta | None = 30,
) -> Workflow:
    """A multipart/form-data request (``df.http_multipart``; docs/http.md): POST, PUT or
    PATCH with at least one :class:`Part`."""
    verb = (method or "POST").upper()
    if verb not in _MULTIPART_METHODS:
        raise ValueError(f"Invalid HTTP method for multipart: {verb}. Must be POST, PUT, or PATCH")
    if not parts:
        raise ValueError("parts must contain at least one part")
    config = (
        '{"url":' + json_text(url)
        + ',"method":' + json_text(verb)
        + ',"parts":[' + ",".join(p.to_json() for p in parts) + "]"
        + ',"headers":' + _headers_text(headers)
        + ',"timeout_seconds":' + _timeout_text(timeout_seconds)
        + "}"
    )  # fmt: skip
    return Workflow("HTTP_MULTIPART", query=config)


def _float8_text(value: float) -> str:
    """``value`` as PostgreSQL writes a float8 (``to_json``, default extra_float_digits): the
    fewest digits that read back as the same double, fixed notation for decimal exponents from
    -4 to 14 and ``1.5e+15`` beyond. PostgreSQL's shortest digits (Ryu) must lie strictly
    between the double's neighbours' midpoints, so where Python's ``repr`` takes a midpoint
    (``1e+23``) it writes more digits (``9.999999999999999e+22``)."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, exponent = _shortest_digits(abs(value))
    while len(digits) > 1 and digits.endswith("0"):
        digits = digits[:-1]
        exponent += 1
    minus = "-" if value < 0 else ""
    magnitude = len(digits) - 1 + exponent
    if not -4 <= magnitude < 15:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'-' if magnitude < 0 else '+'}{abs(magnitude):02d}"
    if exponent >= 0:
        return minus + digits + "0" * exponent
    point = len(digits) + exponent
    if point > 0:
        return minus + digits[:point] + "." + digits[point:]
    return minus + "0." + "0" * -point + digits


def _shortest_digits(value: float) -> tuple[str, int]:
    """The digits d and exponent e of the shortest d·10^e strictly inside ``value``'s rounding
    interval (the nearest such one), by exact arithmetic on the double's bits."""
    bits = struct.unpack("<Q", struct.pack("<d", value))[0]
    biased, fraction = (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    mantissa, power = (fraction, -1074) if biased == 0 else (fraction | 1 << 52, biased - 1075)
    exact = Fraction(mantissa) * Fraction(2) ** power
    ulp = Fraction(2) ** power
    # Just above a power of two, the double below is half as far as the one above.
    below = ulp / 2 if fraction == 0 and biased > 1 else ulp
    low, high = exact - below / 2, exact + ulp / 2
    magnitude = math.floor(math.log10(value))
    for count in range(1, 18):
        found: list[tuple[Fraction, int, int]] = []
        for shift in range(magnitude - count, magnitude - count + 3):
            step = Fraction(10) ** shift
            nearest = round(exact / step)
            for candidate in (nearest - 1, nearest, nearest + 1):
                if 0 < candidate < 10**count and low < candidate * step < high:
                    found.append((abs(candidate * step - exact), candidate, shift))
        if found:
            _, candidate, shift = min(found)
            return str(candidate), shift
    raise AssertionError(f"no 17-digit representation of {value!r}")  # (there always is)


def _number(value: float) -> str:
    # As df.retry's messages print it: a float8 cast to numeric keeps 15 significant digits.
    if math.isnan(value):
        return "NaN"
    return format(Decimal(format(value, ".15g")), "f")


def retry(
    node: Step,
    max_attempts: int,
    backoff_seconds: float = 1.0,
    backoff_factor: float = 2.0,
) -> Workflow:
    """Run ``node`` again from its start when it fails, up to ``max_attempts`` times in all,
    waiting ``backoff_seconds`` after the first failure and ``backoff_factor`` times longer
    after each next one (``df.retry``; docs/reliability.md). ``max_attempts=1`` never retries.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise TypeError(f"max_attempts is an int, not {type(max_attempts).__name__}")
    if not 1 <= max_attempts <= _INT4_MAX:
        raise ValueError(f"df.retry: max_attempts must be at least 1 (got {max_attempts})")
    backoff, factor = float(backoff_seconds), float(backoff_factor)
    if not (0 <= backoff < 1e308):
        raise ValueError(
            "df.retry: backoff_seconds must be a number of seconds, 0 or more "
            f"(got {_number(backoff)})"
        )
    if not (1 <= factor < 1e308):
        raise ValueError(
            f"df.retry: backoff_factor must be a number, 1 or more (got {_number(factor)})"
        )
    config = (
        '{"max_attempts":' + str(max_attempts)
        + ',"backoff_seconds":' + _float8_text(backoff)
        + ',"backoff_factor":' + _float8_text(factor)
        + "}"
    )  # fmt: skip
    return Workflow("RETRY", left=as_step(node), query=config)


def timeout(node: Step, seconds: int | timedelta) -> Workflow:
    """Fail ``node`` once it has run for ``seconds``, cancelling what of it still runs — its
    statement, its branches, its waits (``df.timeout``; docs/reliability.md)."""
    n = _whole_seconds(seconds, "a timeout")
    if not 1 <= n <= _INT4_MAX:
        raise ValueError(f"df.timeout: seconds must be positive (got {n})")
    return Workflow("TIMEOUT", left=as_step(node), query='{"seconds":' + str(n) + "}")
