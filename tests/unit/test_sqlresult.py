"""The result of a SQL step (SPEC §2.5): ``{"rows":[…],"row_count":n}`` and the type mapping.

Tested at the worker's boundary: the column names and type OIDs a Describe reports, and each
row as the text ``row_to_json`` prints in a session with ``TimeZone=UTC``.
"""

from __future__ import annotations

import json

import pytest

from pg_durable.errors import StepError
from pg_durable.graph import sqlresult as sr
from pg_durable.graph.sqlresult import Column, build_result, check_columns, display_type_name

SUPPORTED = (
    "Supported types: bool, int2, int4, int8, float4, float8, text, varchar, numeric, uuid, "
    "timestamptz, timestamp, date, jsonb, json, void."
)
# A few pg_type rows the worker learns for OIDs outside the supported set.
PG_TYPES = {
    17: "bytea",
    18: "char",
    26: "oid",
    142: "xml",
    1007: "_int4",
    1009: "_text",
    1014: "_bpchar",
    1083: "time",
    1186: "interval",
    2205: "regclass",
    2249: "record",
    3614: "tsvector",
    3904: "int4range",
    16384: "mood",
}


def one(type_oid: int, printed: str) -> object:
    """The value a single column of type ``type_oid`` maps to, from its row_to_json text."""
    result = json.loads(build_result([Column("v", type_oid)], ['{"v":' + printed + "}"]))
    assert result["row_count"] == 1
    return result["rows"][0]["v"]


# -- shape ------------------------------------------------------------------------------------
def test_shape_is_compact_with_keys_in_column_order() -> None:
    columns = [Column("z", sr.INT4), Column("a", sr.TEXT), Column("m", sr.BOOL)]
    text = build_result(columns, ['{"z":1,"a":"x","m":true}', '{"z":2,"a":"y","m":false}'])
    assert text == ('{"rows":[{"z":1,"a":"x","m":true},{"z":2,"a":"y","m":false}],"row_count":2}')


def test_no_rows() -> None:
    assert build_result([Column("a", sr.INT4)], []) == '{"rows":[],"row_count":0}'
    assert build_result([], []) == '{"rows":[],"row_count":0}'


def test_duplicate_column_names_collapse_to_the_last_value() -> None:
    columns = [Column("a", sr.INT4), Column("b", sr.INT4), Column("a", sr.TEXT)]
    assert build_result(columns, ['{"a":1,"b":2,"a":"x"}']) == (
        '{"rows":[{"a":"x","b":2}],"row_count":1}'
    )


def test_values_are_taken_by_position_under_the_described_names() -> None:
    columns = [Column("?column?", sr.INT4), Column("Mixed Case", sr.TEXT)]
    text = build_result(columns, ['{"?column?":1,"Mixed Case":"é \\"q\\""}'])
    assert text == '{"rows":[{"?column?":1,"Mixed Case":"é \\"q\\""}],"row_count":1}'


def test_a_row_that_does_not_match_the_description_fails_the_step() -> None:
    # Taken as printed (plain types only), and rebuilt (a numeric column).
    with pytest.raises(StepError, match="2 columns where 1 were described"):
        build_result([Column("a", sr.INT4)], ['{"a":1,"b":2}'])
    with pytest.raises(StepError, match="1 columns where 2 were described"):
        build_result([Column("a", sr.INT4), Column("n", sr.NUMERIC)], ['{"a":1}'])


# -- type mapping -----------------------------------------------------------------------------
def test_bool() -> None:
    assert one(sr.BOOL, "true") is True
    assert one(sr.BOOL, "false") is False


@pytest.mark.parametrize("oid", [sr.INT2, sr.INT4, sr.INT8])
def test_integers(oid: int) -> None:
    assert one(oid, "-32768") == -32768
    assert one(oid, "0") == 0


def test_int8_keeps_every_digit() -> None:
    text = build_result([Column("v", sr.INT8)], ['{"v":9223372036854775807}'])
    assert text == '{"rows":[{"v":9223372036854775807}],"row_count":1}'


def test_float8() -> None:
    assert one(sr.FLOAT8, "1.5") == 1.5
    text = build_result([Column("v", sr.FLOAT8)], ['{"v":0.1}'])
    assert text == '{"rows":[{"v":0.1}],"row_count":1}'


def test_float4_is_widened_to_double() -> None:
    text = build_result([Column("f", sr.FLOAT4)], ['{"f":3.14}'])
    assert text == '{"rows":[{"f":3.140000104904175}],"row_count":1}'
    assert one(sr.FLOAT4, "0.5") == 0.5


@pytest.mark.parametrize("oid", [sr.FLOAT4, sr.FLOAT8])
@pytest.mark.parametrize("printed", ['"NaN"', '"Infinity"', '"-Infinity"'])
def test_nan_and_infinities_become_null(oid: int, printed: str) -> None:
    assert one(oid, printed) is None


@pytest.mark.parametrize(
    ("oid", "value"),
    [
        (sr.TEXT, 'it\'s "x" \\ é 😀'),
        (sr.VARCHAR, "v"),
        (sr.BPCHAR, "ab  "),  # padding kept
        (sr.NAME, "pg_class"),
        (sr.UNKNOWN, "lit"),
        (sr.UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (sr.DATE, "2024-06-15"),
        (sr.TEXT, ""),
    ],
)
def test_strings(oid: int, value: str) -> None:
    assert one(oid, json.dumps(value)) == value


@pytest.mark.parametrize("printed", ["123456.78900000", "-0.10", "0", "1e+5", "42"])
def test_numeric_is_a_string_preserving_scale(printed: str) -> None:
    text = build_result([Column("n", sr.NUMERIC)], ['{"n":' + printed + "}"])
    assert text == '{"rows":[{"n":"' + printed + '"}],"row_count":1}'


def test_numeric_nan_stays_a_string() -> None:
    assert one(sr.NUMERIC, '"NaN"') == "NaN"


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("2024-06-15T12:30:00+00:00", "2024-06-15T12:30:00+00:00"),
        # Fractional seconds only when not zero, as chrono's RFC 3339 prints them.
        ("2024-06-15T12:30:00.5+00:00", "2024-06-15T12:30:00.500+00:00"),
        ("2024-06-15T12:30:00.12+00:00", "2024-06-15T12:30:00.120+00:00"),
        ("2024-06-15T12:30:00.123+00:00", "2024-06-15T12:30:00.123+00:00"),
        ("2024-06-15T12:30:00.1234+00:00", "2024-06-15T12:30:00.123400+00:00"),
        ("2024-06-15T12:30:00.123456+00:00", "2024-06-15T12:30:00.123456+00:00"),
        ("2024-06-15T12:30:00.000001+00:00", "2024-06-15T12:30:00.000001+00:00"),
        # Whatever the session's time zone, the instant in UTC.
        ("2024-06-15T14:30:00+02:00", "2024-06-15T12:30:00+00:00"),
        ("2024-06-15T00:30:00.25-05:30", "2024-06-15T06:00:00.250+00:00"),
        ("2024-01-01T00:30:00+01", "2023-12-31T23:30:00+00:00"),
        ("1900-01-01T00:00:00+00:09:21", "1899-12-31T23:50:39+00:00"),
        # Not an instant chrono could print: kept as PostgreSQL printed it.
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("0044-03-15T12:00:00+00:00 BC", "0044-03-15T12:00:00+00:00 BC"),
    ],
)
def test_timestamptz_is_rfc3339_in_utc(printed: str, expected: str) -> None:
    assert one(sr.TIMESTAMPTZ, json.dumps(printed)) == expected


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("2024-06-15T12:30:00", "2024-06-15T12:30:00"),
        ("2024-06-15T12:30:00.5", "2024-06-15T12:30:00.500"),
        ("2024-06-15T12:30:00.654321", "2024-06-15T12:30:00.654321"),
        ("2024-06-15T12:30:00.0001", "2024-06-15T12:30:00.000100"),
        ("infinity", "infinity"),
    ],
)
def test_timestamp(printed: str, expected: str) -> None:
    assert one(sr.TIMESTAMP, json.dumps(printed)) == expected


@pytest.mark.parametrize("oid", [sr.JSON, sr.JSONB])
def test_json_is_embedded(oid: int) -> None:
    text = build_result([Column("j", oid)], ['{"j":{"b": 1, "a": [1, 2.5, "x", null, true]}}'])
    # Embedded as a value, compact, its own key order kept.
    assert text == '{"rows":[{"j":{"b":1,"a":[1,2.5,"x",null,true]}}],"row_count":1}'
    assert one(oid, '"s"') == "s"
    assert one(oid, "[]") == []
    assert one(oid, "null") is None  # JSON null and SQL NULL read the same


def test_void_is_null() -> None:
    assert one(sr.VOID, '""') is None


@pytest.mark.parametrize(
    "oid",
    [
        sr.BOOL,
        sr.INT2,
        sr.INT4,
        sr.INT8,
        sr.FLOAT4,
        sr.FLOAT8,
        sr.TEXT,
        sr.VARCHAR,
        sr.BPCHAR,
        sr.NAME,
        sr.NUMERIC,
        sr.UUID,
        sr.TIMESTAMPTZ,
        sr.TIMESTAMP,
        sr.DATE,
        sr.JSON,
        sr.JSONB,
        sr.VOID,
    ],
)
def test_sql_null_is_null(oid: int) -> None:
    assert one(oid, "null") is None


# -- unsupported types ------------------------------------------------------------------------
def test_supported_types_pass_the_check() -> None:
    columns = [Column(f"c{oid}", oid) for oid in sorted(sr.SUPPORTED_TYPE_OIDS)]
    check_columns(columns, lambda oid: pytest.fail(f"asked for the name of {oid}"))


@pytest.mark.parametrize(
    ("oid", "shown"),
    [
        (1186, "INTERVAL"),
        (17, "BYTEA"),
        (26, "OID"),
        (1083, "TIME"),
        (2249, "RECORD"),
        (3904, "INT4RANGE"),
        (18, '"CHAR"'),
        (1007, "INT4[]"),
        (1009, "TEXT[]"),
        (1014, "CHAR[]"),
        (2205, "regclass"),
        (142, "xml"),
        (3614, "tsvector"),
        (16384, "mood"),
    ],
)
def test_unsupported_type_error_text(oid: int, shown: str) -> None:
    with pytest.raises(StepError) as err:
        check_columns([Column("ok", sr.INT4), Column("i", oid)], PG_TYPES.__getitem__)
    assert str(err.value) == f"Unsupported column type '{shown}' for column 'i'. {SUPPORTED}"


def test_the_first_unsupported_column_is_reported() -> None:
    columns = [Column("a", sr.TEXT), Column("b", 17), Column("c", 1186)]
    with pytest.raises(StepError, match=r"^Unsupported column type 'BYTEA' for column 'b'\. "):
        check_columns(columns, PG_TYPES.__getitem__)


@pytest.mark.parametrize(
    ("typname", "shown"),
    [
        ("interval", "INTERVAL"),
        ("_interval", "INTERVAL[]"),
        ("_jsonb", "JSONB[]"),
        ("_char", '"CHAR"[]'),
        ("bpchar", "CHAR"),
        ("money", "MONEY"),
        ("_mood", "_mood"),
        ("12345", "12345"),  # the worker's fallback when it could not learn the name
        ("", ""),
    ],
)
def test_display_type_name(typname: str, shown: str) -> None:
    assert display_type_name(typname) == shown


def test_a_json_value_nested_deeper_than_python_reads_fails_the_step() -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(StepError, match="nested too deeply"):
        build_result([Column("v", sr.JSONB)], ['{"v":' + deep + "}"])
