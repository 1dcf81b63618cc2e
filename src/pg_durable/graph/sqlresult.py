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
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from pg_durable.errors import StepError

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
_FLOATS: Final = frozenset({FLOAT4, FLOAT8})


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
                f"Unsupported column type '{type_name(column.type_oid).upper()}' for column "
                f"'{column.name}'. Supported types: {_SUPPORTED_NAMES}."
            )


def build_result(columns: Sequence[Column], rows: Sequence[str]) -> str:
    """The step's result text from its columns and its ``row_to_json`` rows.

    Values are taken by position (``row_to_json`` emits them in column order, and duplicate
    column names would make keys ambiguous). A duplicate column name keeps the position of its
    first occurrence and the value of its last, as inserting into a JSON map does.
    """
    out = []
    for text in rows:
        pairs: _Pairs = json.loads(text, object_pairs_hook=_Pairs, parse_float=_Raw, parse_int=_Raw)
        row: dict[str, object] = {}
        for column, (_key, value) in zip(columns, pairs, strict=True):
            row[column.name] = _value(column.type_oid, value)
        out.append(row)
    return _dumps({"rows": out, "row_count": len(out)})


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
    return value


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
