"""Standard 5-field cron (SPEC "Where we deliberately differ" 5, §1.3, §2.1, §2.4).

df._cron_parse, df._cron_next, df._cron_timezone and df.wait_for_schedule are pure SQL: no
worker is needed. The next-tick tests state instants in UTC; the property tests compare
df._cron_next with a minute-by-minute reference written here with zoneinfo.
"""

from __future__ import annotations

import functools
import json
import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

Conn = psycopg.Connection[Any]

FIELDS = "(minute hour day-of-month month day-of-week)"
UNKNOWN_MACRO = (
    "unknown macro (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
ALL_DAYS = list(range(1, 32))
ALL_MONTHS = list(range(1, 13))
ALL_WEEKDAYS = list(range(7))


# -- helpers ------------------------------------------------------------------------------------
def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def error_of(conn: Conn, query: str, params: Any = None) -> str:
    """The primary message of the error ``query`` raises."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(query, params)
    message = caught.value.diag.message_primary
    assert message is not None
    return message


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def parsed(conn: Conn, expr: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT s.minutes, s.hours, s.days, s.months, s.weekdays, s.days_star, s.weekdays_star "
        "FROM df._cron_parse(%s) AS s",
        (expr,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def next_tick(conn: Conn, expr: str, after: datetime | str, tz: str = "UTC") -> datetime:
    if isinstance(after, str):
        after = utc(after)
    got = one(conn, "SELECT df._cron_next(%s, %s, %s)", (expr, after, tz))
    assert isinstance(got, datetime)
    return got.astimezone(UTC)


def ticks(conn: Conn, expr: str, after: str, tz: str, count: int) -> list[str]:
    """``count`` successive ticks after ``after``, as compact UTC texts."""
    out: list[str] = []
    at = utc(after)
    for _ in range(count):
        at = next_tick(conn, expr, at, tz)
        out.append(at.strftime("%Y-%m-%d %H:%MZ"))
    return out


# -- syntax -------------------------------------------------------------------------------------
def R(n: int) -> list[int]:
    return list(range(n))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("* * * * *", (R(60), R(24), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True)),
        ("5 4 * * *", ([5], [4], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True)),
        ("05 09 01 01 00", ([5], [9], [1], [1], [0], False, False)),
        ("0-10 22-23 * * *", (R(11), [22, 23], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True)),
        (
            "1,2,30 0,12 1,15 * *",
            ([1, 2, 30], [0, 12], [1, 15], ALL_MONTHS, ALL_WEEKDAYS, False, True),
        ),
        (
            "*/15 */6 */10 */3 */2",
            (
                [0, 15, 30, 45],
                [0, 6, 12, 18],
                [1, 11, 21, 31],
                [1, 4, 7, 10],
                [0, 2, 4, 6],
                False,
                False,
            ),
        ),
        (
            "10-40/15 1-23/11 * * *",
            ([10, 25, 40], [1, 12, 23], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True),
        ),
        (
            "5/20 20/2 25/3 11/1 5/1",
            ([5, 25, 45], [20, 22], [25, 28, 31], [11, 12], [0, 5, 6], False, False),
        ),
        ("*/60 */24 */31 */12 */7", ([0], [0], [1], [1], [0], False, False)),
        ("59 23 31 12 6", ([59], [23], [31], [12], [6], False, False)),
        ("0 0 * JAN-MAR,oct *", ([0], [0], ALL_DAYS, [1, 2, 3, 10], ALL_WEEKDAYS, True, True)),
        ("0 0 * jan,Jun,DEC *", ([0], [0], ALL_DAYS, [1, 6, 12], ALL_WEEKDAYS, True, True)),
        ("0 0 * * MON-FRI", ([0], [0], ALL_DAYS, ALL_MONTHS, [1, 2, 3, 4, 5], True, False)),
        ("0 0 * * sun", ([0], [0], ALL_DAYS, ALL_MONTHS, [0], True, False)),
        ("0 0 * * 7", ([0], [0], ALL_DAYS, ALL_MONTHS, [0], True, False)),
        ("0 0 * * 0,7", ([0], [0], ALL_DAYS, ALL_MONTHS, [0], True, False)),
        ("0 0 * * 5-7", ([0], [0], ALL_DAYS, ALL_MONTHS, [0, 5, 6], True, False)),
        ("0 0 * * 0-7", ([0], [0], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, False)),
        ("0 0 * * MON-SUN", ([0], [0], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, False)),
        ("0 0 * * FRI-SUN", ([0], [0], ALL_DAYS, ALL_MONTHS, [0, 5, 6], True, False)),
        ("0 0 * * SUN-SAT", ([0], [0], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, False)),
        ("0 0 * * MON/2", ([0], [0], ALL_DAYS, ALL_MONTHS, [0, 1, 3, 5], True, False)),
        ("0 0 * FEB-DEC/5 *", ([0], [0], ALL_DAYS, [2, 7, 12], ALL_WEEKDAYS, True, True)),
        ("0,30,0 0 1,1 * *", ([0, 30], [0], [1], ALL_MONTHS, ALL_WEEKDAYS, False, True)),
        ("*,5 * * * *", (R(60), R(24), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True)),
        ("  0\t9  *\t*   1-5 \n", ([0], [9], ALL_DAYS, ALL_MONTHS, [1, 2, 3, 4, 5], True, False)),
        ("@yearly", ([0], [0], [1], [1], ALL_WEEKDAYS, False, True)),
        ("@annually", ([0], [0], [1], [1], ALL_WEEKDAYS, False, True)),
        ("@monthly", ([0], [0], [1], ALL_MONTHS, ALL_WEEKDAYS, False, True)),
        ("@weekly", ([0], [0], ALL_DAYS, ALL_MONTHS, [0], True, False)),
        ("@daily", ([0], [0], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True)),
        (" @Midnight ", ([0], [0], ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True)),
        ("@HOURLY", ([0], R(24), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, True, True)),
        ("0 0 31 1,3 *", ([0], [0], [31], [1, 3], ALL_WEEKDAYS, False, True)),
        ("0 0 29 2 *", ([0], [0], [29], [2], ALL_WEEKDAYS, False, True)),
        ("0 0 31 2 MON", ([0], [0], [31], [2], [1], False, False)),
    ],
)
def test_syntax(conn: Conn, expr: str, expected: tuple[Any, ...]) -> None:
    assert parsed(conn, expr) == expected
    assert one(conn, "SELECT df._cron_error(%s)", (expr,)) is None


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("", f"expected 5 fields {FIELDS}, got 0"),
        ("   \t ", f"expected 5 fields {FIELDS}, got 0"),
        ("* * * *", f"expected 5 fields {FIELDS}, got 4"),
        ("0 0 9 * * 1", f"expected 5 fields {FIELDS}, got 6"),
        ("0 0 9 * * 1 2024", f"expected 5 fields {FIELDS}, got 7"),
        ("60 * * * *", "minute value 60 is out of range 0-59"),
        ("* 24 * * *", "hour value 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month value 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month value 32 is out of range 1-31"),
        ("* * * 0 *", "month value 0 is out of range 1-12"),
        ("* * * 13 *", "month value 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week value 8 is out of range 0-7"),
        ("* * * * 1-8", "day-of-week value 8 is out of range 0-7"),
        ("99999999999999999999 * * * *", "minute value 99999999999999999999 is out of range 0-59"),
        ("30-10 * * * *", "minute range 30-10 is reversed"),
        ("* * * DEC-JAN *", "month range DEC-JAN is reversed"),
        ("* * * * FRI-MON", "day-of-week range FRI-MON is reversed"),
        ("* * * * 6-0", "day-of-week range 6-0 is reversed"),
        ("*/0 * * * *", "minute step 0 is out of range 1-60"),
        ("* 1-5/0 * * *", "hour step 0 is out of range 1-24"),
        ("*/61 * * * *", "minute step 61 is out of range 1-60"),
        ("* * * */13 *", "month step 13 is out of range 1-12"),
        ("* * * * */8", "day-of-week step 8 is out of range 1-7"),
        ("*/x * * * *", "minute step 'x' is not a number"),
        ("1,,2 * * * *", "minute list has an empty item"),
        ("1, * * * *", "minute list has an empty item"),
        (",1 * * * *", "minute list has an empty item"),
        ("* , * * *", "hour list has an empty item"),
        ("* * * FOO *", "month value 'FOO' is not a number or a month name (JAN-DEC)"),
        ("* * * January *", "month value 'January' is not a number or a month name (JAN-DEC)"),
        ("* * * * XYZ", "day-of-week value 'XYZ' is not a number or a day name (SUN-SAT)"),
        ("* * * * MONDAY", "day-of-week value 'MONDAY' is not a number or a day name (SUN-SAT)"),
        ("MON * * * *", "minute value 'MON' is not a number"),
        ("* * JAN * *", "day-of-month value 'JAN' is not a number"),
        ("* * L * *", "day-of-month value 'L' is not a number"),
        ("1-x * * * *", "minute value 'x' is not a number"),
        (
            "1-2-3 * * * *",
            "minute item '1-2-3' is malformed (expected *, N, N-M, */S, N-M/S or N/S)",
        ),
        ("*-5 * * * *", "minute item '*-5' is malformed (expected *, N, N-M, */S, N-M/S or N/S)"),
        ("5/ * * * *", "minute item '5/' is malformed (expected *, N, N-M, */S, N-M/S or N/S)"),
        (
            "*/5/2 * * * *",
            "minute item '*/5/2' is malformed (expected *, N, N-M, */S, N-M/S or N/S)",
        ),
        ("-1 * * * *", "minute item '-1' is malformed (expected *, N, N-M, */S, N-M/S or N/S)"),
        ("? * * * *", "minute item '?' is malformed (expected *, N, N-M, */S, N-M/S or N/S)"),
        (
            "* * * * 5#3",
            "day-of-week item '5#3' is malformed (expected *, N, N-M, */S, N-M/S or N/S)",
        ),
        ("* * 15W * *", "day-of-month value '15W' is not a number"),
        ("1.5 * * * *", "minute item '1.5' is malformed (expected *, N, N-M, */S, N-M/S or N/S)"),
        ("0 0 30 2 *", "day-of-month 30 never occurs in month 2"),
        ("0 0 30,31 FEB *", "day-of-month 30,31 never occurs in month FEB"),
        ("0 0 31 4,6,9,11 *", "day-of-month 31 never occurs in month 4,6,9,11"),
        ("@reboot", "@reboot is not supported (a schedule needs a time)"),
        ("@often", UNKNOWN_MACRO),
        ("@daily 5", UNKNOWN_MACRO),
    ],
)
def test_rejections(conn: Conn, expr: str, reason: str) -> None:
    message = f"Invalid cron expression '{expr}': {reason}"
    assert error_of(conn, "SELECT df._cron_parse(%s)", (expr,)) == message
    assert one(conn, "SELECT df._cron_error(%s)", (expr,)) == message
    assert error_of(conn, "SELECT df.wait_for_schedule(%s)", (expr,)) == message


def test_rejection_sqlstate_and_nulls(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT df._cron_parse('61 * * * *')")
    assert one(conn, "SELECT df._cron_parse(NULL) IS NULL")
    assert one(conn, "SELECT df._cron_error(NULL) IS NULL")
    assert one(conn, "SELECT df.wait_for_schedule(NULL) IS NULL")


# -- df.wait_for_schedule and df.start --------------------------------------------------------
def test_wait_for_schedule_envelope(conn: Conn) -> None:
    assert (
        one(conn, "SELECT df.wait_for_schedule('0 9 * * 1-5')")
        == '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"0 9 * * 1-5\\"}"}'
    )
    # Kept as written (not normalised); the query is compact JSON text.
    got = one(conn, "SELECT df.wait_for_schedule(%s)", ("0\t9 * * MON-fri",))
    assert got == (
        '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"0\\\\t9 * * MON-fri\\"}"}'
    )
    assert json.loads(json.loads(got)["query"]) == {"cron_expr": "0\t9 * * MON-fri"}
    assert one(conn, "SELECT df.wait_for_schedule('@daily')") == (
        '{"node_type":"WAIT_SCHEDULE","query":"{\\"cron_expr\\":\\"@daily\\"}"}'
    )


def test_start_stores_the_schedule(conn: Conn) -> None:
    inst = one(conn, "SELECT df.start(df.sql('SELECT 1') ~> df.wait_for_schedule('*/5 * * * *'))")
    assert (
        one(
            conn,
            "SELECT query FROM df.nodes WHERE instance_id = %s AND node_type = 'WAIT_SCHEDULE'",
            (inst,),
        )
        == '{"cron_expr":"*/5 * * * *"}'
    )


def _wait(query: str) -> str:
    return json.dumps({"node_type": "WAIT_SCHEDULE", "query": query})


@pytest.mark.parametrize(
    ("fut", "message"),
    [
        (
            _wait('{"cron_expr":"0 0 * * 8"}'),
            "Invalid durable function graph: root: Invalid cron expression '0 0 * * 8': "
            "day-of-week value 8 is out of range 0-7",
        ),
        (
            json.dumps(
                {
                    "node_type": "THEN",
                    "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                    "right_node": {
                        "node_type": "JOIN",
                        "left_node": {"node_type": "SQL", "query": "SELECT 2"},
                        "right_node": {"node_type": "SQL", "query": "SELECT 3"},
                        "extra_nodes": [
                            {"node_type": "WAIT_SCHEDULE", "query": '{"cron_expr":"0 0 0 * * *"}'}
                        ],
                    },
                }
            ),
            "Invalid durable function graph: root.right.extra_nodes[0]: Invalid cron expression "
            f"'0 0 0 * * *': expected 5 fields {FIELDS}, got 6",
        ),
        (
            json.dumps(
                {
                    "node_type": "LOOP",
                    "left_node": {
                        "node_type": "THEN",
                        "left_node": {"node_type": "SQL", "query": "SELECT 1"},
                        "right_node": {
                            "node_type": "WAIT_SCHEDULE",
                            "query": '{"cron_expr":"0 0 30 2 *"}',
                        },
                    },
                }
            ),
            "Invalid durable function graph: root.left.right: Invalid cron expression "
            "'0 0 30 2 *': day-of-month 30 never occurs in month 2",
        ),
        (
            _wait('{"cron_expr":5}'),
            "Invalid durable function graph: root: query in WAIT_SCHEDULE must be "
            '{"cron_expr":"<cron expression>"}',
        ),
        (
            _wait("{}"),
            "Invalid durable function graph: root: query in WAIT_SCHEDULE must be "
            '{"cron_expr":"<cron expression>"}',
        ),
        (
            _wait('"* * * * *"'),
            "Invalid durable function graph: root: "
            "query in WAIT_SCHEDULE must be a JSON config object",
        ),
    ],
)
def test_start_rejects_a_bad_hand_built_schedule(conn: Conn, fut: str, message: str) -> None:
    before = one(conn, "SELECT count(*) FROM df.instances")
    assert error_of(conn, "SELECT df.start(%s)", (fut,)) == message
    assert one(conn, "SELECT count(*) FROM df.instances") == before
    # A dry run validates the same way.
    assert one(conn, "SELECT df.explain(%s)", (fut,)) == message


def test_start_accepts_a_good_hand_built_schedule(conn: Conn) -> None:
    inst = one(conn, "SELECT df.start(%s)", (_wait('{"cron_expr": "@hourly", "extra": 1}'),))
    assert one(conn, "SELECT node_type FROM df.nodes WHERE instance_id = %s", (inst,)) == (
        "WAIT_SCHEDULE"
    )


# -- next tick (UTC) ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # every minute; strictly after, also exactly on a tick
        ("* * * * *", "2024-05-10 12:34:56.789Z", "2024-05-10 12:35Z"),
        ("* * * * *", "2024-05-10 12:34:00Z", "2024-05-10 12:35Z"),
        ("* * * * *", "2024-05-10 12:34:00.000001Z", "2024-05-10 12:35Z"),
        ("* * * * *", "2024-05-10 12:33:59.999999Z", "2024-05-10 12:34Z"),
        # */30, hourly
        ("*/30 * * * *", "2024-05-10 12:29:59Z", "2024-05-10 12:30Z"),
        ("*/30 * * * *", "2024-05-10 12:30:00Z", "2024-05-10 13:00Z"),
        ("0 * * * *", "2024-05-10 12:00:00Z", "2024-05-10 13:00Z"),
        ("@hourly", "2024-05-10 23:59:00Z", "2024-05-11 00:00Z"),
        # daily at a time
        ("30 9 * * *", "2024-05-10 09:29:59.999Z", "2024-05-10 09:30Z"),
        ("30 9 * * *", "2024-05-10 09:30:00Z", "2024-05-11 09:30Z"),
        ("30 9 * * *", "2024-05-10 23:00:00Z", "2024-05-11 09:30Z"),
        # weekdays; 2024-05-10 is a Friday
        ("0 9 * * 1-5", "2024-05-10 08:00Z", "2024-05-10 09:00Z"),
        ("0 9 * * 1-5", "2024-05-10 09:00Z", "2024-05-13 09:00Z"),
        ("0 9 * * MON-FRI", "2024-05-11 12:00Z", "2024-05-13 09:00Z"),
        ("0 9 * * 0", "2024-05-10 12:00Z", "2024-05-12 09:00Z"),
        ("0 9 * * 7", "2024-05-10 12:00Z", "2024-05-12 09:00Z"),
        ("0 9 * * SUN", "2024-05-10 12:00Z", "2024-05-12 09:00Z"),
        ("0 9 * * 6,0", "2024-05-10 12:00Z", "2024-05-11 09:00Z"),
        # names, lists, steps in ranges
        ("0 0 1 JAN *", "2024-05-10 12:00Z", "2025-01-01 00:00Z"),
        ("0 0 * jun *", "2024-05-10 12:00Z", "2024-06-01 00:00Z"),
        ("0 8,12,18 * * *", "2024-05-10 12:00Z", "2024-05-10 18:00Z"),
        ("0 8,12,18 * * *", "2024-05-10 18:00Z", "2024-05-11 08:00Z"),
        ("10-40/15 * * * *", "2024-05-10 12:26Z", "2024-05-10 12:40Z"),
        ("10-40/15 * * * *", "2024-05-10 12:40Z", "2024-05-10 13:10Z"),
        ("5/20 * * * *", "2024-05-10 12:45Z", "2024-05-10 13:05Z"),
        ("0 0 * 2-12/5 *", "2024-07-31 00:00Z", "2024-12-01 00:00Z"),
        # day-of-month OR day-of-week when both are restricted (13th or Friday)
        ("0 0 13 * 5", "2024-05-10 00:00Z", "2024-05-13 00:00Z"),
        ("0 0 13 * 5", "2024-05-13 00:00Z", "2024-05-17 00:00Z"),
        ("0 0 13 * *", "2024-05-10 00:00Z", "2024-05-13 00:00Z"),
        ("0 0 13 * *", "2024-05-13 00:00Z", "2024-06-13 00:00Z"),
        ("0 0 * * 5", "2024-05-10 00:00Z", "2024-05-17 00:00Z"),
        ("0 0 1-7 * 1", "2024-05-07 00:00Z", "2024-05-13 00:00Z"),
        # only a field written exactly * is unrestricted: odd days or Mondays
        ("0 0 */2 * MON", "2024-05-13 00:00Z", "2024-05-15 00:00Z"),
        ("0 0 31 2 MON", "2024-05-10 00:00Z", "2025-02-03 00:00Z"),
        # month ends
        ("0 0 31 * *", "2024-04-01 00:00Z", "2024-05-31 00:00Z"),
        ("0 0 31 * *", "2024-05-31 00:00Z", "2024-07-31 00:00Z"),
        ("0 0 31 * *", "2024-07-31 00:00Z", "2024-08-31 00:00Z"),
        ("0 0 30 * *", "2024-01-30 00:00Z", "2024-03-30 00:00Z"),
        ("0 0 29 * *", "2023-01-29 00:00Z", "2023-03-29 00:00Z"),
        ("0 0 29 * *", "2024-01-29 00:00Z", "2024-02-29 00:00Z"),
        ("0 0 29 2 *", "2024-02-29 00:00Z", "2028-02-29 00:00Z"),
        ("0 0 29 2 *", "2023-03-01 00:00Z", "2024-02-29 00:00Z"),
        ("0 0 29 2 *", "2096-02-29 00:00Z", "2104-02-29 00:00Z"),  # 2100 is no leap year
        ("0 0 29,30 2,4 *", "2024-03-01 00:00Z", "2024-04-29 00:00Z"),
        # year boundary
        ("0 0 * * *", "2024-12-31 23:59:30Z", "2025-01-01 00:00Z"),
        ("59 23 31 12 *", "2024-12-31 23:59Z", "2025-12-31 23:59Z"),
        ("@yearly", "2024-12-31 23:59:59.999999Z", "2025-01-01 00:00Z"),
        ("@monthly", "2024-12-15 00:00Z", "2025-01-01 00:00Z"),
        ("@weekly", "2024-05-10 00:00Z", "2024-05-12 00:00Z"),
    ],
)
def test_next_tick_utc(conn: Conn, expr: str, after: str, expected: str) -> None:
    assert next_tick(conn, expr, after) == utc(expected)


def test_next_tick_in_a_fixed_offset_zone(conn: Conn) -> None:
    # Asia/Kolkata is UTC+05:30 all year.
    assert next_tick(conn, "0 9 * * *", "2024-05-10 00:00Z", "Asia/Kolkata") == utc(
        "2024-05-10 03:30Z"
    )
    assert next_tick(conn, "0 0 1 1 *", "2024-12-31 18:29Z", "Asia/Kolkata") == utc(
        "2024-12-31 18:30Z"
    )


# -- daylight saving time -----------------------------------------------------------------------
# Europe/Berlin 2024: 31 March 02:00 CET -> 03:00 CEST (01:00Z); 27 October 03:00 CEST -> 02:00 CET
# (01:00Z). America/New_York 2024: 10 March 02:00 EST -> 03:00 EDT (07:00Z); 3 November
# 02:00 EDT -> 01:00 EST (06:00Z).
@pytest.mark.parametrize(
    ("tz", "expr", "after", "expected"),
    [
        # spring forward: 02:30 does not exist; it fires at the first instant after the gap
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2024-03-30 12:00Z",
            ["2024-03-31 01:00Z", "2024-04-01 00:30Z"],
        ),
        (
            "America/New_York",
            "30 2 * * *",
            "2024-03-09 12:00Z",
            ["2024-03-10 07:00Z", "2024-03-11 06:30Z"],
        ),
        # fall back: 02:30 (Berlin) / 01:30 (New York) occurs twice; it fires once, the first time
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2024-10-26 12:00Z",
            ["2024-10-27 00:30Z", "2024-10-28 01:30Z"],
        ),
        (
            "America/New_York",
            "30 1 * * *",
            "2024-11-02 12:00Z",
            ["2024-11-03 05:30Z", "2024-11-04 06:30Z"],
        ),
        # ... also when asked from between the two occurrences or from the second one
        ("Europe/Berlin", "30 2 * * *", "2024-10-27 00:45Z", ["2024-10-28 01:30Z"]),
        ("Europe/Berlin", "30 2 * * *", "2024-10-27 01:30Z", ["2024-10-28 01:30Z"]),
        # a time that exists once on the fall-back day
        ("America/New_York", "30 2 * * *", "2024-11-02 12:00Z", ["2024-11-03 07:30Z"]),
        # hourly across spring forward: 02:00 is skipped and fires with 03:00, once
        (
            "Europe/Berlin",
            "0 * * * *",
            "2024-03-30 23:30Z",
            ["2024-03-31 00:00Z", "2024-03-31 01:00Z", "2024-03-31 02:00Z"],
        ),
        (
            "America/New_York",
            "0 * * * *",
            "2024-03-10 05:30Z",
            ["2024-03-10 06:00Z", "2024-03-10 07:00Z", "2024-03-10 08:00Z"],
        ),
        # hourly across fall back: the repeated hour's minutes fired the first time round
        (
            "Europe/Berlin",
            "0 * * * *",
            "2024-10-26 22:30Z",
            ["2024-10-26 23:00Z", "2024-10-27 00:00Z", "2024-10-27 02:00Z", "2024-10-27 03:00Z"],
        ),
        (
            "America/New_York",
            "0 * * * *",
            "2024-11-03 03:30Z",
            ["2024-11-03 04:00Z", "2024-11-03 05:00Z", "2024-11-03 07:00Z", "2024-11-03 08:00Z"],
        ),
        # several skipped minutes collapse into one tick at the end of the gap
        (
            "Europe/Berlin",
            "*/30 * * * *",
            "2024-03-31 00:45Z",
            ["2024-03-31 01:00Z", "2024-03-31 01:30Z"],
        ),
        (
            "Europe/Berlin",
            "* * * * *",
            "2024-03-31 00:59Z",
            ["2024-03-31 01:00Z", "2024-03-31 01:01Z"],
        ),
        # every minute: after 01:59 EDT the next unfired minute is 02:00 EST
        ("America/New_York", "* * * * *", "2024-11-03 05:59Z", ["2024-11-03 07:00Z"]),
        ("America/New_York", "* * * * *", "2024-11-03 06:30Z", ["2024-11-03 07:00Z"]),
        # a daily schedule keeps its wall-clock time across the change
        (
            "Europe/Berlin",
            "0 9 * * *",
            "2024-03-30 00:00Z",
            ["2024-03-30 08:00Z", "2024-03-31 07:00Z", "2024-04-01 07:00Z"],
        ),
    ],
)
def test_daylight_saving_time(
    conn: Conn, tz: str, expr: str, after: str, expected: list[str]
) -> None:
    assert ticks(conn, expr, after, tz, len(expected)) == expected


# -- time zones ---------------------------------------------------------------------------------
def test_unknown_time_zone(conn: Conn) -> None:
    hint = "(expected a time zone name such as UTC or Europe/Berlin)"
    for tz in ("Mars/Olympus", "", "+05", "5", "UTC+5", "ABC5DEF", "<+03>-3", "Europe/Berlin "):
        assert (
            error_of(conn, "SELECT df._cron_next('* * * * *', now(), %s)", (tz,))
            == f"unknown time zone '{tz}' {hint}"
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT df._cron_next('* * * * *', now(), 'Nowhere')")
    # Names are case-insensitive, as in PostgreSQL; the tz database's names with digits work.
    after = "2024-01-10 00:00Z"
    for tz, expected in [
        ("europe/berlin", "2024-01-10 08:00Z"),
        ("America/Port-au-Prince", "2024-01-10 14:00Z"),
        ("Etc/GMT+5", "2024-01-10 14:00Z"),
        ("EST5EDT", "2024-01-10 14:00Z"),
        ("GMT0", "2024-01-10 09:00Z"),
    ]:
        assert next_tick(conn, "0 9 * * *", after, tz) == utc(expected), tz


def test_cron_next_bad_arguments(conn: Conn) -> None:
    assert (
        error_of(conn, "SELECT df._cron_next('61 * * * *', now(), 'UTC')")
        == "Invalid cron expression '61 * * * *': minute value 61 is out of range 0-59"
    )
    for args in ("NULL, now(), 'UTC'", "'* * * * *', NULL, 'UTC'", "'* * * * *', now(), NULL"):
        assert (
            error_of(conn, f"SELECT df._cron_next({args})")
            == "df._cron_next: expr, after and tz must not be NULL"
        )
    assert (
        error_of(conn, "SELECT df._cron_next('* * * * *', 'infinity', 'UTC')")
        == "df._cron_next: after must be a finite time, not infinity"
    )


def test_cron_timezone_setting(conn: Conn, dsn: str, db_name: str) -> None:
    assert one(conn, "SELECT df._cron_timezone()") == "UTC"
    conn.execute("SET pg_durable.cron_timezone = ''")
    assert one(conn, "SELECT df._cron_timezone()") == "UTC"
    conn.execute("SET pg_durable.cron_timezone = 'America/New_York'")
    assert one(conn, "SELECT df._cron_timezone()") == "America/New_York"
    # What the worker runs.
    assert one(
        conn, "SELECT df._cron_next('0 9 * * *', '2024-05-10 00:00Z', df._cron_timezone())"
    ) == utc("2024-05-10 13:00Z")
    conn.execute("SET pg_durable.cron_timezone = 'Mars/Olympus'")
    assert error_of(conn, "SELECT df._cron_timezone()") == (
        "pg_durable.cron_timezone: unknown time zone 'Mars/Olympus' "
        "(expected a time zone name such as UTC or Europe/Berlin)"
    )
    conn.execute("RESET pg_durable.cron_timezone")
    # As documented: per database, for the sessions that start afterwards.
    conn.execute(f"ALTER DATABASE \"{db_name}\" SET pg_durable.cron_timezone = 'Europe/Berlin'")
    with psycopg.connect(dsn) as other:
        assert one(other, "SELECT df._cron_timezone()") == "Europe/Berlin"


# -- speed --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expr",
    ["* * * * *", "*/15 9-17 * * MON-FRI", "30 2 * * *", "0 0 13 * 5", "0 0 31 * *", "0 0 29 2 *"],
)
def test_next_tick_is_fast(conn: Conn, expr: str) -> None:
    calls = 300
    query = (
        "SELECT count(df._cron_next(%s, timestamptz '2024-01-01 00:00Z'"
        " + i * interval '7 hours 13 minutes', 'Europe/Berlin')) FROM generate_series(1, %s) AS i"
    )
    one(conn, query, (expr, 10))  # warm the session's caches
    started = time.perf_counter()
    assert one(conn, query, (expr, calls)) == calls
    per_call = (time.perf_counter() - started) / calls
    assert per_call < 0.001, f"{expr}: {per_call * 1e6:.0f} µs per call"


# -- properties: a model of the syntax, and a minute-by-minute reference ------------------------
@dataclass(frozen=True)
class Cron:
    """An expression with the value sets it names, built independently of the parser."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_star: bool
    weekdays_star: bool

    def impossible(self) -> bool:
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}
        return (
            self.weekdays_star
            and not self.days_star
            and min(self.days) > max(longest.get(m, 31) for m in self.months)
        )

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        if self.days_star:
            return dow
        if self.weekdays_star:
            return dom
        return dom or dow


# name, low, high, largest step, names
_FIELD_SPECS: list[tuple[str, int, int, int, tuple[str, ...]]] = [
    ("minute", 0, 59, 60, ()),
    ("hour", 0, 23, 24, ()),
    ("day-of-month", 1, 31, 31, ()),
    ("month", 1, 12, 12, MONTHS),
    ("day-of-week", 0, 7, 7, DAYS),
]


@st.composite
def _item(
    draw: st.DrawFn, spec: tuple[str, int, int, int, tuple[str, ...]]
) -> tuple[str, set[int]]:
    field, lo, hi, step_max, names = spec

    def token(value: int, *, is_end: bool = False) -> tuple[str, int]:
        if names and value - lo < len(names) and draw(st.booleans()):
            name = names[value - lo]
            name = draw(st.sampled_from([name, name.lower(), name.title()]))
            # A range that ends in SUN means Sunday as 7.
            return name, 7 if (field == "day-of-week" and is_end and value == 0) else value
        return draw(st.sampled_from([str(value), f"0{value}"])), value

    kind = draw(st.sampled_from(["*", "N", "N-M", "*/S", "N-M/S", "N/S"]))
    step = draw(st.integers(1, step_max))
    a = draw(st.integers(lo, hi))
    b = draw(st.integers(a, hi))
    if kind == "*":
        return "*", set(range(lo, hi + 1))
    if kind == "*/S":
        return f"*/{step}", set(range(lo, hi + 1, step))
    ta, a = token(a)
    if kind == "N":
        return ta, {a}
    if kind == "N/S":
        return f"{ta}/{step}", set(range(a, hi + 1, step))
    tb, b = token(b, is_end=True)
    if kind == "N-M":
        return f"{ta}-{tb}", set(range(a, b + 1))
    return f"{ta}-{tb}/{step}", set(range(a, b + 1, step))


@st.composite
def crons(draw: st.DrawFn, *, dense: bool = False) -> Cron:
    """Random expressions; ``dense`` ones restrict the minute only, so that they have ticks in
    and around every daylight-saving transition."""
    texts: list[str] = []
    sets: list[frozenset[int]] = []
    for spec in _FIELD_SPECS:
        if dense and spec[0] != "minute":
            items = [("*", set(range(spec[1], spec[2] + 1)))]
        else:
            items = draw(st.lists(_item(spec), min_size=1, max_size=3))
        texts.append(",".join(t for t, _ in items))
        values = set().union(*(v for _, v in items))
        if spec[0] == "day-of-week" and 7 in values:
            values = (values - {7}) | {0}
        sets.append(frozenset(values))
    blanks = st.sampled_from([" ", "  ", "\t", " \t "])
    text = draw(st.sampled_from(["", " "])) + "".join(
        t + (draw(blanks) if i < 4 else "") for i, t in enumerate(texts)
    )
    minutes, hours, days, months, weekdays = sets
    return Cron(text, minutes, hours, days, months, weekdays, texts[2] == "*", texts[4] == "*")


def _has_tzdata() -> bool:
    try:
        zoneinfo.ZoneInfo("Europe/Berlin")
    except zoneinfo.ZoneInfoNotFoundError:
        return False
    return True


# UTC, two ordinary DST zones, half-hour DST (Lord Howe), a -03:30/-02:30 zone, +05:30 without
# DST, +12:45/+13:45, a two-hour DST jump (Troll) and Dublin's "negative" DST.
ZONES = (
    [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "America/St_Johns",
        "Asia/Kolkata",
        "Pacific/Chatham",
        "Antarctica/Troll",
        "Europe/Dublin",
    ]
    if _has_tzdata()
    else ["UTC"]
)


@functools.cache
def _transitions(tz: str) -> list[datetime]:
    """The zone's UTC offset changes in 2023-2026, to the minute."""
    zone = zoneinfo.ZoneInfo(tz)
    found: list[datetime] = []
    at = datetime(2023, 1, 1, tzinfo=UTC)
    while at.year < 2027:
        nxt = at + timedelta(hours=1)
        if at.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            t = at
            while t.astimezone(zone).utcoffset() == at.astimezone(zone).utcoffset():
                t += timedelta(minutes=1)
            found.append(t)
        at = nxt
    return found


def _wall(at: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    return at.astimezone(zone).replace(tzinfo=None)


def _fire(wall: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    """The first instant whose wall-clock time in ``zone`` is ``wall`` or later."""
    candidates = [wall.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)]
    exact = [c for c in candidates if _wall(c, zone) == wall]
    if exact:
        return min(exact)
    at = min(candidates).replace(second=0, microsecond=0)  # before the gap
    while _wall(at, zone) < wall:
        at += timedelta(minutes=1)
    return at


def reference_next(cron: Cron, after: datetime, tz: str) -> datetime:
    """Minute by minute through the matching hours of the matching days (skipping whole days
    and hours that do not match), from three hours of wall-clock time before ``after``: the
    first matching minute whose instant is strictly after ``after``."""
    zone = zoneinfo.ZoneInfo(tz)
    start = (_wall(after, zone) - timedelta(hours=3)).replace(second=0, microsecond=0)
    day = start.date()
    while day.year <= after.year + 9:
        if cron.day_matches(day):
            for hour in range(24):
                if hour not in cron.hours:
                    continue
                wall = datetime(day.year, day.month, day.day, hour)
                for _ in range(60):
                    if (
                        wall >= start
                        and wall.minute in cron.minutes
                        and (fired := _fire(wall, zone)) > after
                    ):
                        return fired
                    wall += timedelta(minutes=1)
        day += timedelta(days=1)
    raise AssertionError(f"no tick for {cron.text!r} after {after}")


@st.composite
def instants(draw: st.DrawFn, tz: str) -> datetime:
    kind = draw(st.sampled_from(["any", "minute", "transition", "transition"]))
    if kind == "transition" and _transitions(tz):
        base = draw(st.sampled_from(_transitions(tz)))
        reach = draw(st.sampled_from([75 * 60, 4 * 3600]))
        at = base + timedelta(seconds=draw(st.integers(-reach, reach)))
        return draw(st.sampled_from([at, at.replace(second=0)]))
    at = draw(
        st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2055, 12, 31))
    ).replace(tzinfo=UTC)
    return at.replace(second=0, microsecond=0) if kind == "minute" else at


PROPERTY = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(cron=crons())
def test_parse_matches_the_model(conn: Conn, cron: Cron) -> None:
    if cron.impossible():
        assert one(conn, "SELECT df._cron_error(%s)", (cron.text,)).startswith(
            f"Invalid cron expression '{cron.text}': day-of-month "
        )
        return
    assert parsed(conn, cron.text) == (
        sorted(cron.minutes),
        sorted(cron.hours),
        sorted(cron.days),
        sorted(cron.months),
        sorted(cron.weekdays),
        cron.days_star,
        cron.weekdays_star,
    )


@PROPERTY
@given(cron=st.one_of(crons(), crons(dense=True)), data=st.data())
def test_next_tick_matches_the_reference(conn: Conn, cron: Cron, data: st.DataObject) -> None:
    assume(not cron.impossible())
    tz = data.draw(st.sampled_from(ZONES), label="tz")
    after = data.draw(instants(tz), label="after")
    assert next_tick(conn, cron.text, after, tz) == reference_next(cron, after, tz)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=" \t0123456789*/-,@JANMOSUjanmosu?#Lx", max_size=30))
def test_hostile_input_is_rejected_cleanly(conn: Conn, text: str) -> None:
    """Anything either parses or fails with the one message shape, never another error."""
    error = one(conn, "SELECT df._cron_error(%s)", (text,))
    if error is None:
        assert parsed(conn, text) is not None
    else:
        assert error.startswith(f"Invalid cron expression '{text}': ")
        assert error_of(conn, "SELECT df._cron_parse(%s)", (text,)) == error
