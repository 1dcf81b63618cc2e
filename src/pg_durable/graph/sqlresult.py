"""The result of a SQL step as pg_durable shapes it: ``{"rows":[…],"row_count":n}``.

A step runs through the submitter's step function, which returns every row as
``row_to_json(r)::text`` in a session with ``TimeZone=UTC`` and ``DateStyle=ISO``; the column
names and types come from a protocol-level Describe. This module checks the types against
pg_durable's mapping and rebuilds each row with pg_durable's value conventions.

The text is compact, like Rust's serde_json, and keeps the SELECT column order: it is the
original result text that substitution and conditions read ("first column" semantics).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

import orjson

from pg_durable.errors import ResultShapeChanged, StepError

BOOL: Final = 16
NAME: Final = 19
INT8: Final = 20
INT2: Final = 21
INT4: Final = 23
TEXT: Final = 25
JSON: Final = 114
FLOAT4: Final = 700
FLOAT8: Final = 701
UNKNOWN: Final = 705
BPCHAR: Final = 1042
VARCHAR: Final = 1043
DATE: Final = 1082
TIMESTAMP: Final = 1114
TIMESTAMPTZ: Final = 1184
NUMERIC: Final = 1700
VOID: Final = 2278
UUID: Final = 2950
JSONB: Final = 3802

SUPPORTED_TYPE_OIDS: Final = frozenset(
    {BOOL, NAME, INT8, INT2, INT4, TEXT, JSON, FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR, DATE,
     TIMESTAMP, TIMESTAMPTZ, NUMERIC, VOID, UUID, JSONB}
)  # fmt: skip
_SUPPORTED_NAMES: Final = (
    "bool, int2, int4, int8, float4, float8, text, varchar, numeric, uuid, timestamptz, "
    "timestamp, date, jsonb, json, void"
)
_INTEGERS: Final = frozenset({INT2, INT4, INT8})
#: Types whose values row_to_json prints exactly as pg_durable's result holds them (and with
#: the same escapes as Python's encoder): rows of only these are taken as they are.
_VERBATIM: Final = frozenset(
    {BOOL, INT2, INT4, INT8, TEXT, VARCHAR, BPCHAR, NAME, UUID, DATE, UNKNOWN}
)
_FLOATS: Final = frozenset({FLOAT4, FLOAT8})
#: PostgreSQL type names that pg_durable's driver (sqlx) knows and reports upper-cased, arrays
#: of them as ``NAME[]``; any other type is reported by its pg_type name as it is.
_KNOWN_TYPE_NAMES: Final = frozenset(
    {"bool", "bytea", "name", "int8", "int2", "int4", "text", "oid", "json", "point", "lseg",
     "path", "box", "polygon", "line", "cidr", "float4", "float8", "unknown", "circle",
     "macaddr8", "macaddr", "inet", "varchar", "date", "time", "timestamp", "timestamptz",
     "interval", "timetz", "bit", "varbit", "numeric", "record", "uuid", "jsonb", "int4range",
     "numrange", "tsrange", "tstzrange", "daterange", "int8range", "jsonpath", "money", "void"}
)  # fmt: skip
#: sqlx spells these differently from pg_type.
_SPECIAL_TYPE_NAMES: Final = {"char": '"CHAR"', "bpchar": "CHAR"}
# How row_to_json prints timestamps (XSD style): fractional seconds trimmed, offset in the
# session time zone. Anything else (infinity, BC dates, years past 9999) is kept as printed.
_TIMESTAMP: Final = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?"
    r"(?:([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)?",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class Column:
    """One result column as the Describe reported it."""

    name: str
    type_oid: int


class _Raw(str):
    """A JSON number kept exactly as PostgreSQL printed it."""


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its (key, value) pairs, in text order, duplicates kept."""


def check_columns(columns: Sequence[Column], type_name: Callable[[int], str]) -> None:
    """Raise :class:`StepError` for the first column whose type pg_durable cannot map."""
    for column in columns:
        if column.type_oid not in SUPPORTED_TYPE_OIDS:
            raise StepError(
                f"Unsupported column type '{display_type_name(type_name(column.type_oid))}' "
                f"for column '{column.name}'. Supported types: {_SUPPORTED_NAMES}."
            )


def display_type_name(typname: str) -> str:
    """A pg_type name as pg_durable's error reports it: ``INTERVAL``, ``INT4[]``, ``"CHAR"``,
    and other types (``regclass``, enums, composites) by their own name."""
    if typname in _SPECIAL_TYPE_NAMES:
        return _SPECIAL_TYPE_NAMES[typname]
    if typname in _KNOWN_TYPE_NAMES:
        return typname.upper()
    element = typname[1:] if typname.startswith("_") else ""
    if element in _SPECIAL_TYPE_NAMES or element in _KNOWN_TYPE_NAMES:
        return display_type_name(element) + "[]"
    return typname


def build_result(columns: Sequence[Column], rows: Sequence[str]) -> str:
    """The step's result text from its columns and its ``row_to_json`` rows.

    Values are taken by position (``row_to_json`` emits them in column order, and duplicate
    column names would make keys ambiguous). A duplicate column name keeps the position of its
    first occurrence and the value of its last, as inserting into a JSON map does.
    """
    try:
        return _build(columns, rows)
    except RecursionError:
        # A json/jsonb value nested deeper than Python reads (PostgreSQL allows thousands of
        # levels): the step fails, rather than the worker each time it runs the step again.
        raise StepError(
            "The result of the statement holds a JSON value nested too deeply to be a step result."
        ) from None


def _build(columns: Sequence[Column], rows: Sequence[str]) -> str:
    if verbatim(columns):
        # (df._step_ahead makes this same text, with this same check, on the server, for a
        # step sent with its checkpoint: a change here is a change there.)
        for text in rows:
            got = orjson.loads(text)  # (one key per column: the names are distinct)
            if len(got) != len(columns):
                raise _shape_changed(len(got), len(columns))
        return '{"rows":[' + ",".join(rows) + '],"row_count":' + str(len(rows)) + "}"
    out = []
    for text in rows:
        pairs: _Pairs = json.loads(text, object_pairs_hook=_Pairs, parse_float=_Raw, parse_int=_Raw)
        if len(pairs) != len(columns):
            raise _shape_changed(len(pairs), len(columns))
        row: dict[str, object] = {}
        for column, (_key, value) in zip(columns, pairs, strict=True):
            row[column.name] = _value(column.type_oid, value)
        out.append(row)
    return _dumps({"rows": out, "row_count": len(out)})


def verbatim(columns: Sequence[Column]) -> bool:
    """Whether rows of ``columns`` are their own result text: each of a type in _VERBATIM,
    and no name twice (a duplicate keeps its first position and its last value)."""
    names = {c.name for c in columns}
    return len(names) == len(columns) and all(c.type_oid in _VERBATIM for c in columns)


def _shape_changed(got: int, described: int) -> ResultShapeChanged:
    """The statement's shape changed between its Describe and its execution."""
    return ResultShapeChanged(
        f"The result of the statement has {got} columns where {described} were described; "
        "the statement's result shape changed while it ran. Retry it."
    )


def _value(type_oid: int, value: object) -> object:
    if value is None or type_oid == VOID:
        return None
    if type_oid in _INTEGERS and isinstance(value, _Raw):
        return int(value)
    if type_oid in _FLOATS:
        return _float(type_oid, value)
    if type_oid == NUMERIC and isinstance(value, _Raw):
        # pg_durable hands numerics over as strings so no digit or scale is lost.
        return str(value)
    if type_oid in (JSON, JSONB):
        return _plain(value)
    if type_oid in (TIMESTAMPTZ, TIMESTAMP) and isinstance(value, str):
        return _timestamp(value, utc=type_oid == TIMESTAMPTZ)
    return value


def _timestamp(text: str, *, utc: bool) -> str:
    """A timestamp as pg_durable prints it (Rust chrono): ``2024-06-15T12:30:00`` plus
    ``.fff`` or ``.ffffff`` when the fraction is not zero, and for timestamptz the instant in
    UTC with ``+00:00`` (RFC 3339) whatever the session's time zone."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None or (match.group(3) is None) == utc:
        return text
    base, fraction, sign, hours, minutes, seconds = match.groups()
    micros = int((fraction or "").ljust(6, "0"))
    if utc and (hours, minutes or "00", seconds or "00") != ("00", "00", "00"):
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
        try:
            local = datetime.fromisoformat(base).replace(
                microsecond=micros, tzinfo=timezone(-offset if sign == "-" else offset)
            )
        except ValueError:
            return text  # an offset of a day or more: not something PostgreSQL prints
        try:
            instant = local.astimezone(UTC)
        except OverflowError:
            return text
        micros = instant.microsecond
        base = instant.replace(microsecond=0, tzinfo=None).isoformat()
    if micros == 0:
        digits = ""
    elif micros % 1000 == 0:
        digits = f".{micros // 1000:03d}"
    else:
        digits = f".{micros:06d}"
    return base + digits + ("+00:00" if utc else "")


def _float(type_oid: int, value: object) -> float | None:
    # row_to_json spells NaN and the infinities as strings; JSON has no such numbers.
    if not isinstance(value, _Raw):
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    if type_oid == FLOAT4:
        # A float4 widened to double, as pg_durable reads it: 3.14 becomes 3.140000104904175.
        number = float(struct.unpack("f", struct.pack("f", number))[0])
    return number


def _plain(value: object) -> object:
    """Turn parsed JSON (pairs lists, raw numbers) back into ordered dicts and numbers."""
    if isinstance(value, _Raw):
        return _number(value)
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _number(raw: str) -> int | float:
    try:
        return int(raw)
    except ValueError:
        return float(raw)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
