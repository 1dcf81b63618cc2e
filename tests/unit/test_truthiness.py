"""Truthiness of IF / while conditions (SPEC §2.8) and ``df.break`` values (§2.4, §2.10)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pg_durable.graph.truthiness import break_value_json, is_truthy


def rows(*records: dict[str, object]) -> str:
    return json.dumps({"rows": list(records), "row_count": len(records)}, separators=(",", ":"))


# -- SQL results ------------------------------------------------------------------------------
def test_no_rows_is_false() -> None:
    assert is_truthy(rows()) is False
    assert is_truthy('{"rows": [], "row_count": 0}') is False


def test_first_column_of_the_first_row_in_select_order() -> None:
    # The result text keeps the SELECT order: "b" is the first column, not "a".
    assert is_truthy('{"rows":[{"b":0,"a":1}],"row_count":1}') is False
    assert is_truthy('{"rows":[{"b":1,"a":0}],"row_count":1}') is True
    assert is_truthy('{"row_count":1,"rows":[{"z":true,"a":false}]}') is True


def test_only_the_first_row_counts() -> None:
    assert is_truthy(rows({"v": False}, {"v": True})) is False
    assert is_truthy(rows({"v": True}, {"v": False})) is True


@pytest.mark.parametrize(
    ("cell", "truth"),
    [
        (True, True),
        (False, False),
        (None, False),
        (1, True),
        (0, False),
        (-1, True),
        (0.0, False),
        (1e-9, True),
        ("0.00", False),  # numeric columns arrive as strings
        ("123.45", True),
        ("-0", False),
        ("t", True),
        ("f", False),
        ("yes", True),
        ("no", False),
        ("off", True),
        ("n", True),
        ("", False),
        ([], False),
        ([0], True),
        ({}, False),
        ({"a": 0}, True),
    ],
)
def test_first_cell_follows_the_value_rules(cell: object, truth: bool) -> None:
    assert is_truthy(rows({"v": cell, "w": not truth})) is truth


def test_a_first_row_without_columns_falls_through_to_the_whole_value() -> None:
    # The whole result is then a non-empty object: true.
    assert is_truthy('{"rows":[{}],"row_count":1}') is True
    assert is_truthy('{"rows":[0],"row_count":1}') is True


def test_rows_that_are_not_an_array_make_an_ordinary_object() -> None:
    assert is_truthy('{"rows":5}') is True
    assert is_truthy('{"rows":null,"row_count":0}') is True


def test_duplicate_rows_keys_read_the_last() -> None:
    assert is_truthy('{"rows":[{"v":true}],"rows":[]}') is False
    assert is_truthy('{"rows":[],"rows":[{"v":true}]}') is True


# -- other JSON results and non-JSON text -----------------------------------------------------
@pytest.mark.parametrize(
    ("text", "truth"),
    [
        ("true", True),
        ("false", False),
        ("null", False),
        ("1", True),
        ("0", False),
        ("-0.0", False),
        ("0e10", False),
        ("2.5", True),
        ("1e400", True),
        ("[]", False),
        ("[false]", True),
        ("{}", False),
        ('{"a":null}', True),
        ('""', False),
        ('"  "', False),
        ('"false"', False),
        ('"FALSE"', False),
        ('"off"', True),
        ('"0"', False),
        ('"0.0"', False),
        ('"yes"', True),
        ('{"signal_name":"go","timed_out":true,"data":null}', True),
        ('{"status":500,"ok":false}', True),
        ('[{"rows":[],"row_count":0}]', True),
    ],
)
def test_json_results_are_judged_as_a_whole(text: str, truth: bool) -> None:
    assert is_truthy(text) is truth


@pytest.mark.parametrize(
    ("text", "truth"),
    [
        ("", False),
        ("   ", False),
        ("\t\n", False),
        ("true ", True),
        (" True", True),
        ("TRUE", True),
        ("t", True),
        ("T", True),
        ("yes", True),
        ("YES", True),
        ("false", False),
        ("  FALSE  ", False),
        ("f", False),
        ("F", False),
        ("no", False),
        ("No", False),
        ("0", False),
        (" 0 ", False),
        ("00", False),
        ("0.0", False),
        ("+0", False),
        ("-0", False),
        ("0.", False),
        (".0", False),
        ("0e5", False),
        ("0E-3", False),
        ("1", True),
        ("0.5", True),
        ("1e3", True),
        ("-1", True),
        (".5", True),
        ("off", True),
        ("OFF", True),
        ("n", True),
        ("N", True),
        ("on", True),
        ("y", True),
        ("nope", True),
        ("hello world", True),
        ("NaN", True),
        ("nan", True),
        ("inf", True),
        ("Infinity", True),
        ("-Infinity", True),
        # Not floats to Rust's parser, so plain words — true:
        ("0_0", True),
        ("٠", True),  # ARABIC-INDIC DIGIT ZERO
        ("0x0", True),
        (".", True),
        ("1e", True),
        ("0 0", True),
        ("{", True),
        ("'false'", True),
    ],
)
def test_non_json_text_follows_the_string_rule(text: str, truth: bool) -> None:
    assert is_truthy(text) is truth


@given(st.text())
def test_conditions_never_raise(text: str) -> None:
    assert isinstance(is_truthy(text), bool)


@given(st.text())
def test_a_string_means_the_same_as_json_string_and_as_first_cell(text: str) -> None:
    truth = is_truthy(json.dumps(text))
    assert is_truthy(rows({"v": text})) is truth
    if text.strip() == text and text:
        try:
            json.loads(text)
        except ValueError:
            assert is_truthy(text) is truth


# -- break values -----------------------------------------------------------------------------
def test_break_without_value_is_null() -> None:
    assert break_value_json(None) == "null"


@pytest.mark.parametrize(
    "raw",
    [
        "42",
        "-1.5e3",
        "true",
        "false",
        "null",
        '"done"',
        '{"a": 1, "b": [1, 2]}',
        "[1,2]",
        '{"status":"ok"}',
        '"\\u00e9"',
    ],
)
def test_json_break_values_are_kept(raw: str) -> None:
    assert break_value_json(raw) == raw


def test_json_break_values_lose_surrounding_whitespace() -> None:
    assert break_value_json("  42\n") == "42"


@pytest.mark.parametrize(
    "raw",
    [
        "done",
        "",
        "   ",
        'it\'s "quoted"',
        "héllo",
        "NaN",
        "Infinity",
        "-Infinity",
        "{broken",
        "[1,",
        "'single'",
        "1 2",
        '"\\ud800"',  # a lone surrogate escape: not valid JSON for serde_json or jsonb
        "line\nbreak\ttab",
    ],
)
def test_other_break_values_become_json_strings(raw: str) -> None:
    out = break_value_json(raw)
    assert json.loads(out) == raw
    assert out == json.dumps(raw, ensure_ascii=False)


@given(st.one_of(st.none(), st.text()))
def test_break_values_are_always_strict_json(raw: str | None) -> None:
    out = break_value_json(raw)

    def reject(name: str) -> object:
        raise AssertionError(f"{name} in {out!r}")

    value = json.loads(out, parse_constant=reject)
    if raw is None:
        assert value is None
    elif out != raw.strip():
        assert value == raw


def test_json_nested_deeper_than_python_reads() -> None:
    deep = "[" * 5000 + "]" * 5000
    assert is_truthy(deep) is True
    assert break_value_json(deep) == json.dumps(deep)
