"""``{variables}`` and ``$named`` results substituted into a step's text (SPEC §2.7).

SQL mode quotes what it inserts from results; raw mode (HTTP URLs, bodies, break values) inserts
the text itself. ``{var}`` placeholders are raw in both modes and — deliberately unlike
pg_durable — are substituted inside JSON text too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pg_durable.errors import PgDurableError, SubstitutionError
from pg_durable.graph.substitution import MAX_ROWSET_ROWS, Mode, substitute

MODES: tuple[Mode, ...] = ("sql", "raw")
IID = "ab12cd34"


def sub(
    text: str,
    *,
    results: Mapping[str, str] | None = None,
    variables: Mapping[str, str] | None = None,
    mode: Mode = "sql",
    label: str | None = None,
) -> str:
    return substitute(
        text,
        variables=variables or {},
        results=results or {},
        instance_id=IID,
        label=label,
        mode=mode,
    )


def rows(*records: Mapping[str, object]) -> str:
    """A SQL result text, compact and in key order, as the worker stores it."""
    body = {"rows": list(records), "row_count": len(records)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


EMPTY = rows()
SIGNAL = '{"signal_name":"go","timed_out":false,"data":{"approved":true,"note":"it\'s ok"}}'
HTTP = (
    '{"status":200,"body":"{\\"id\\":7}","encoding":"text",'
    '"headers":{"content-type":"application/json"},"ok":false,"duration_ms":12}'
)


# -- {variables} ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_variable_is_inserted_raw_without_quoting(mode: Mode) -> None:
    variables = {"tbl": "orders o", "cond": "o.total > 10 AND o.name = 'x'"}
    text = "SELECT * FROM {tbl} WHERE {cond}"
    assert sub(text, variables=variables, mode=mode) == (
        "SELECT * FROM orders o WHERE o.total > 10 AND o.name = 'x'"
    )


@pytest.mark.parametrize("mode", MODES)
def test_system_variables(mode: Mode) -> None:
    text = "{sys_instance_id}/{sys_label}"
    assert sub(text, label="nightly", mode=mode) == "ab12cd34/nightly"
    assert sub(text, label=None, mode=mode) == "ab12cd34/"


def test_system_variables_win_over_user_variables_of_the_same_name() -> None:
    variables = {"sys_label": "mine", "sys_instance_id": "ffffffff", "other": "o"}
    text = "{sys_label} {sys_instance_id} {other}"
    assert sub(text, variables=variables, label="real") == "real ab12cd34 o"
    assert sub(text, variables=variables, label=None) == " ab12cd34 o"


@pytest.mark.parametrize(
    "text",
    [
        "{unknown}",
        "{1abc}",
        "{a-b}",
        "{ a }",
        "{a b}",
        "{}",
        "{",
        "}",
        "{a",
        "a}",
        "{é}",
        "{a.b}",
        '{"k": 1}',
        "SELECT '{}'::jsonb",
    ],
)
def test_unknown_names_and_non_identifiers_are_left_alone(text: str) -> None:
    assert sub(text, variables={"a": "A", "b": "B"}) == text


def test_variables_are_one_left_to_right_pass_without_rescan() -> None:
    variables = {"a": "{b}", "b": "x", "c": "{sys_label}", "d": "{", "e": "a}"}
    assert sub("{a}{b}", variables=variables) == "{b}x"
    assert sub("{c}", variables=variables, label="L") == "{sys_label}"
    # "{d}" inserts "{" and "{e}" inserts "a}": together they read "{a}", not rescanned.
    assert sub("{d}{e}", variables=variables) == "{a}"


def test_variables_are_substituted_inside_json_text() -> None:
    # Deliberately unlike pg_durable, whose scanner lets the first "{" swallow "{uid}".
    variables = {"uid": "42", "name": "ann"}
    assert sub('{"user_id": "{uid}"}', variables=variables, mode="raw") == '{"user_id": "42"}'
    assert (
        sub('SELECT \'{"user_id": "{uid}", "p": {"n": "{name}"}}\'::jsonb', variables=variables)
        == 'SELECT \'{"user_id": "42", "p": {"n": "ann"}}\'::jsonb'
    )
    assert sub("{{uid}}", variables=variables) == "{42}"
    assert sub('{"id": {uid}}', variables=variables, mode="raw") == '{"id": 42}'


def test_standalone_placeholders_in_urls_and_headers() -> None:
    variables = {"api_base": "https://x.example", "key": "s3cr3t"}
    assert sub("{api_base}/get", variables=variables, mode="raw") == "https://x.example/get"
    assert sub("Bearer {key}", variables=variables, mode="raw") == "Bearer s3cr3t"


def test_variable_value_containing_a_result_reference_is_expanded() -> None:
    variables = {"filter": "id = $r.id", "whole": "$r"}
    results = {"r": rows({"id": 7})}
    assert sub("SELECT 1 WHERE {filter}", variables=variables, results=results) == (
        "SELECT 1 WHERE id = 7"
    )
    assert sub("{whole}", variables=variables, results=results, mode="raw") == "7"


def test_result_values_are_not_rescanned_for_variables_or_results() -> None:
    variables = {"v": "VAR"}
    results = {"a": rows({"x": "{v} and $b"}), "b": rows({"y": 1})}
    assert sub("SELECT $a", variables=variables, results=results) == "SELECT '{v} and $b'"
    assert sub("$a", variables=variables, results=results, mode="raw") == "{v} and $b"


def test_text_without_references_is_returned_as_is() -> None:
    text = "SELECT 1 -- no braces, no dollars"
    assert sub(text, results={"r": EMPTY}, variables={"a": "b"}) == text


# -- $name scalars ----------------------------------------------------------------------------
def test_scalar_is_the_first_column_of_the_first_row_in_select_order() -> None:
    results = {"r": '{"rows":[{"b":2,"a":1},{"b":3,"a":4}],"row_count":2}'}
    assert sub("SELECT $r", results=results) == "SELECT 2"


@pytest.mark.parametrize(
    ("cell", "sql", "raw"),
    [
        (42, "42", "42"),
        (-3, "-3", "-3"),
        (2.5, "2.5", "2.5"),
        (True, "true", "true"),
        (False, "false", "false"),
        ("hello", "'hello'", "hello"),
        ("it's", "'it''s'", "it's"),
        ("", "''", ""),
        ("123.4500", "'123.4500'", "123.4500"),  # numeric columns arrive as strings
        ({"k": [1, 2], "z": None}, '\'{"k":[1,2],"z":null}\'', '{"k":[1,2],"z":null}'),
        ([1, "a"], "'[1,\"a\"]'", '[1,"a"]'),
        ({"q": "it's"}, "'{\"q\":\"it''s\"}'", '{"q":"it\'s"}'),
    ],
)
def test_scalar_formatting(cell: object, sql: str, raw: str) -> None:
    results = {"r": rows({"v": cell})}
    assert sub("$r", results=results) == sql
    assert sub("$r", results=results, mode="raw") == raw
    assert sub("$r?", results=results) == sql
    assert sub("$r?", results=results, mode="raw") == raw


@pytest.mark.parametrize(
    "number", ["1.50", "1e5", "-0.0", "123456789012345678901234567890", "1E-7"]
)
def test_numbers_are_inserted_as_written_in_the_result(number: str) -> None:
    results = {"r": '{"rows":[{"n":' + number + '}],"row_count":1}'}
    assert sub("SELECT $r", results=results) == f"SELECT {number}"
    assert sub("$r.n", results=results, mode="raw") == number


@pytest.mark.parametrize("mode", MODES)
def test_scalar_of_no_rows(mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT $r", results={"r": EMPTY}, mode=mode)
    assert str(err.value) == "$r has no rows — query returned zero results"
    assert sub("SELECT $r?", results={"r": EMPTY}, mode=mode) == "SELECT NULL"


@pytest.mark.parametrize("mode", MODES)
def test_scalar_null(mode: Mode) -> None:
    results = {"r": rows({"v": None, "w": 1})}
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT $r", results=results, mode=mode)
    assert str(err.value) == "$r is NULL — first column of first row is NULL"
    assert sub("SELECT $r?", results=results, mode=mode) == "SELECT NULL"


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        (SIGNAL, "'" + SIGNAL.replace("'", "''") + "'"),
        ("[1,2]", "'[1,2]'"),
        ('[{"rows":[],"row_count":0},{"a":1}]', '\'[{"rows":[],"row_count":0},{"a":1}]\''),
        ('"done"', "'\"done\"'"),
        ("42", "'42'"),
        ("null", "'null'"),
        ("true", "'true'"),
        ("not json at all", "'not json at all'"),
        ("it's", "'it''s'"),
        ('{"rows":"not an array"}', '\'{"rows":"not an array"}\''),
        ("NaN", "'NaN'"),
    ],
)
def test_scalar_of_a_result_without_rows_is_the_whole_text(text: str, sql: str) -> None:
    results = {"x": text}
    assert sub("SELECT $x::jsonb", results=results) == f"SELECT {sql}::jsonb"
    assert sub("$x?", results=results) == sql
    assert sub("$x", results=results, mode="raw") == text
    assert sub("$x?", results=results, mode="raw") == text


def test_whole_text_patterns_from_the_docs() -> None:
    results = {"sig": SIGNAL, "pair": "[1,2]", "loop_result": '{"status":"done"}'}
    assert sub("SELECT $loop_result::jsonb->>'status'", results=results) == (
        "SELECT '{\"status\":\"done\"}'::jsonb->>'status'"
    )
    assert sub("SELECT $pair", results=results) == "SELECT '[1,2]'"


# -- names: longest first, identifier boundary, unknown names ---------------------------------
def test_longest_name_wins() -> None:
    results = {"order": rows({"v": "O"}), "order_id": rows({"v": 7})}
    assert sub("$order_id, $order", results=results) == "7, 'O'"
    assert sub("$order.v $order_id.v", results=results) == "'O' 7"
    # Same answer whatever the mapping's order.
    reverse = dict(reversed(list(results.items())))
    assert sub("$order_id, $order", results=reverse) == "7, 'O'"


def test_identifier_boundary_tries_shorter_names_then_leaves_the_dollar() -> None:
    results = {"order": rows({"v": 1}), "order_id": rows({"v": 2})}
    # "$order_idx" is neither $order_id nor $order.
    assert sub("SELECT $order_idx", results=results) == "SELECT $order_idx"
    assert sub("SELECT $order_", results=results) == "SELECT $order_"
    assert sub("SELECT $order1", results=results) == "SELECT $order1"
    assert sub("SELECT $order_id1, $order", results=results) == "SELECT $order_id1, 1"


@pytest.mark.parametrize("after", [")", ",", "::int", ";", " ", "", "+1", "-", "]", "'", "é"])
def test_a_non_identifier_character_ends_the_name(after: str) -> None:
    # Identifier characters are ASCII [A-Za-z0-9_], like result names.
    assert sub("($r" + after, results={"r": rows({"v": 5})}) == "(5" + after


@pytest.mark.parametrize(
    "text",
    ["SELECT $foo", "SELECT $1", "SELECT $", "SELECT $$x$$", "DO $$ BEGIN NULL; END $$", "$.x"],
)
@pytest.mark.parametrize("mode", MODES)
def test_unknown_references_are_left_literally(text: str, mode: Mode) -> None:
    assert sub(text, results={"r": rows({"v": 1})}, mode=mode) == text
    assert sub(text, results={}, mode=mode) == text


def test_several_references_in_one_text() -> None:
    results = {"a": rows({"v": "x"}), "b": rows({"v": 2})}
    assert sub("$a$b $a.v||$b.v $a?$b?", results=results) == "'x'2 'x'||2 'x'2"


def test_substitution_is_textual_inside_literals_and_comments() -> None:
    results = {"r": rows({"v": 5})}
    assert sub("SELECT 'n=$r' -- $r", results=results) == "SELECT 'n=5' -- 5"


# -- $name.col and $name.col? -----------------------------------------------------------------
R = rows({"id": 7, "name": "ann", "ok": True, "gone": None}, {"id": 8, "name": "bob"})


@pytest.mark.parametrize(
    ("ref", "sql", "raw"),
    [
        ("$r.id", "7", "7"),
        ("$r.name", "'ann'", "ann"),
        ("$r.ok", "true", "true"),
        ("$r.id?", "7", "7"),
        ("$r.name?", "'ann'", "ann"),
    ],
)
def test_field_of_the_first_row(ref: str, sql: str, raw: str) -> None:
    assert sub(f"SELECT {ref} FROM t", results={"r": R}) == f"SELECT {sql} FROM t"
    assert sub(f"/{ref}/", results={"r": R}, mode="raw") == f"/{raw}/"


def test_field_name_may_hold_digits_and_underscores() -> None:
    results = {"r": rows({"col_2": 1, "col": 2})}
    assert sub("$r.col_2 $r.col", results=results) == "1 2"


def test_field_of_a_json_object_result() -> None:
    results = {"h": HTTP, "sig": SIGNAL}
    assert sub("SELECT $h.status, $h.ok", results=results) == "SELECT 200, false"
    assert sub("SELECT $h.body", results=results) == "SELECT '{\"id\":7}'"
    assert sub("SELECT $h.headers", results=results) == (
        'SELECT \'{"content-type":"application/json"}\''
    )
    assert sub("SELECT $sig.timed_out", results=results) == "SELECT false"
    assert sub("SELECT $sig.data::jsonb", results=results) == (
        'SELECT \'{"approved":true,"note":"it\'\'s ok"}\'::jsonb'
    )
    assert sub("id=$h.body", results=results, mode="raw") == 'id={"id":7}'
    assert sub("$sig.data", results=results, mode="raw") == '{"approved":true,"note":"it\'s ok"}'


@pytest.mark.parametrize("mode", MODES)
def test_field_of_no_rows(mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT $r.id", results={"r": EMPTY}, mode=mode)
    assert str(err.value) == "$r has no rows — query returned zero results"
    assert sub("SELECT $r.id?", results={"r": EMPTY}, mode=mode) == "SELECT NULL"


@pytest.mark.parametrize("mode", MODES)
def test_null_field(mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT $r.gone", results={"r": R}, mode=mode)
    assert str(err.value) == "$r.gone is NULL"
    assert sub("SELECT $r.gone?", results={"r": R}, mode=mode) == "SELECT NULL"
    obj = {"o": '{"a":null}'}
    with pytest.raises(SubstitutionError, match=r"^\$o\.a is NULL$"):
        sub("$o.a", results=obj, mode=mode)
    assert sub("$o.a?", results=obj, mode=mode) == "NULL"


def test_missing_field_in_sql_mode_is_left_verbatim() -> None:
    assert sub("SELECT $r.missing", results={"r": R}) == "SELECT $r.missing"
    assert sub("SELECT $r.missing?", results={"r": R}) == "SELECT $r.missing?"
    assert sub("SELECT $h.nope, $h.status", results={"h": HTTP}) == "SELECT $h.nope, 200"


def test_missing_field_in_raw_mode() -> None:
    with pytest.raises(SubstitutionError) as err:
        sub("/$r.missing", results={"r": R}, mode="raw")
    assert (
        str(err.value)
        == "$r.missing: result has no field 'missing' (available: id, name, ok, gone)"
    )
    with pytest.raises(SubstitutionError) as err:
        sub("$h.nope", results={"h": '{"status":200,"ok":true}'}, mode="raw")
    assert str(err.value) == "$h.nope: result has no field 'nope' (available: status, ok)"
    assert sub("/$r.missing?/", results={"r": R}, mode="raw") == "/$r.missing?/"


@pytest.mark.parametrize("text", ["[1,2]", '"a string"', "42", "true", "null"])
@pytest.mark.parametrize("mode", MODES)
def test_field_of_a_result_neither_rows_nor_object(text: str, mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT $x.a", results={"x": text}, mode=mode)
    assert str(err.value) == "$x.a: result is neither a row set nor a JSON object"


@pytest.mark.parametrize("text", ["not json", "{broken", "NaN", "Infinity", ""])
@pytest.mark.parametrize("mode", MODES)
def test_field_of_a_non_json_result(text: str, mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT $x.a?", results={"x": text}, mode=mode)
    assert str(err.value) == "$x.a: result is not valid JSON"


def test_duplicate_keys_read_the_last() -> None:
    results = {"r": '{"rows":[{"a":1,"a":2}],"row_count":1}', "o": '{"k":1,"k":3}'}
    assert sub("$r.a $o.k", results=results) == "2 3"


def test_dot_without_identifier_is_a_scalar_followed_by_text() -> None:
    results = {"r": rows({"v": 5})}
    assert sub("$r.5 $r. $r.é", results=results) == "5.5 5. 5.é"


# -- $name.* ----------------------------------------------------------------------------------
def test_rowset_values_literals_per_type() -> None:
    record = {
        "id": 1,
        "name": "it's",
        "ok": True,
        "no": False,
        "n": None,
        "j": {"k": 1},
        "arr": [1, "x"],
        "num": "1.50",
        "neg": -5,
        "f": 2.5,
    }
    assert sub("SELECT * FROM $r.*", results={"r": rows(record)}) == (
        "SELECT * FROM (VALUES (1, 'it''s'::text, true, false, NULL, '{\"k\":1}'::text, "
        "'[1,\"x\"]'::text, '1.50'::text, -5, 2.5)) "
        'AS "r"("id", "name", "ok", "no", "n", "j", "arr", "num", "neg", "f")'
    )


def test_rowset_columns_come_from_the_first_row() -> None:
    text = rows({"b": 1, "a": "x"}, {"a": "y", "b": 2, "extra": 9}, {"b": 3})
    assert sub("$r.*", results={"r": text}) == (
        '(VALUES (1, \'x\'::text), (2, \'y\'::text), (3, NULL)) AS "r"("b", "a")'
    )


def test_rowset_quotes_identifiers() -> None:
    text = rows({'a"b': 1, "Mixed Case": 2})
    assert sub("$my_rows.*", results={"my_rows": text}) == (
        '(VALUES (1, 2)) AS "my_rows"("a""b", "Mixed Case")'
    )


def test_rowset_of_no_rows_has_no_column_list() -> None:
    assert sub("SELECT count(*) FROM $r.*", results={"r": EMPTY}) == (
        'SELECT count(*) FROM (SELECT NULL WHERE false) AS "r"'
    )


def test_rowset_in_raw_mode_is_a_json_array_of_rows() -> None:
    text = rows({"id": 1, "n": "a"}, {"id": 2, "n": None})
    assert sub("$r.*", results={"r": text}, mode="raw") == '[{"id":1,"n":"a"},{"id":2,"n":null}]'
    assert sub("$r.*", results={"r": EMPTY}, mode="raw") == "[]"


@pytest.mark.parametrize("mode", MODES)
def test_rowset_limit(mode: Mode) -> None:
    at_limit = rows(*({"i": i} for i in range(MAX_ROWSET_ROWS)))
    expanded = sub("$r.*", results={"r": at_limit}, mode=mode)
    if mode == "sql":
        assert expanded.startswith("(VALUES (0), (1), ")
        assert expanded.endswith(', (9999)) AS "r"("i")')
    else:
        assert len(json.loads(expanded)) == MAX_ROWSET_ROWS
    over = rows(*({"i": i} for i in range(MAX_ROWSET_ROWS + 1)))
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT * FROM $r.*", results={"r": over}, mode=mode)
    assert str(err.value).startswith(
        "$r.* — result has 10001 rows, exceeding the maximum of 10000 for row-set expansion. "
    )


@pytest.mark.parametrize("text", [SIGNAL, "[1,2]", "not json", '{"rows":5}', "42", "NaN"])
@pytest.mark.parametrize("mode", MODES)
def test_rowset_of_something_else(text: str, mode: Mode) -> None:
    with pytest.raises(SubstitutionError) as err:
        sub("SELECT * FROM $x.*", results={"x": text}, mode=mode)
    assert str(err.value) == "$x.* — invalid result format"


# -- quoting and hostile values ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("'; DROP TABLE x; --", "'''; DROP TABLE x; --'"),
        ("O'Reilly", "'O''Reilly'"),
        ("''", "''''''"),
        # With a backslash: E'…', safe also where standard_conforming_strings is off.
        ("a\\b\\'", "E'a\\\\b\\\\'''"),
        ("$$; DROP TABLE x; $$", "'$$; DROP TABLE x; $$'"),
        ("$r $r.v {v}", "'$r $r.v {v}'"),
        ("x\n-- comment\n'; SELECT 1", "'x\n-- comment\n''; SELECT 1'"),
        ('/* */ ) ; "', "'/* */ ) ; \"'"),
    ],
)
def test_hostile_values_become_one_literal(value: str, literal: str) -> None:
    results = {"r": rows({"v": value})}
    assert sub("SELECT $r", results=results, variables={"v": "V"}) == f"SELECT {literal}"
    assert sub("SELECT $r.v", results=results) == f"SELECT {literal}"
    assert sub("SELECT $x", results={"x": value}) == f"SELECT {literal}"  # non-JSON: whole text
    assert sub("$r", results=results, mode="raw") == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("WHERE 1 = 1-$r.v OR false", "WHERE 1 = 1- -1 OR false"),
        ("SELECT @$r", "SELECT @ -1"),
        ("SELECT $r, ($r), -$r.w", "SELECT -1, (-1), -2.5"),
        ("SELECT 1-$r.w", "SELECT 1-2.5"),
    ],
)
def test_a_negative_number_never_joins_the_operator_before_it(text: str, expected: str) -> None:
    # "--" would start a comment that swallows the rest of the line.
    results = {"r": '{"rows":[{"v":-1,"w":2.5}],"row_count":1}'}
    assert sub(text, results=results) == expected


def test_errors_are_pg_durable_errors() -> None:
    assert issubclass(SubstitutionError, PgDurableError)


def parse_literal(text: str) -> str:
    """The value of exactly one SQL string literal spanning all of ``text``: a standard one,
    or E'…' with every backslash doubled (only for a value with a backslash)."""
    if text.startswith("E'"):
        assert "\\" in text, text
        return parse_literal(text[1:]).replace("\\\\", "\\")
    assert text.startswith("'"), text
    out: list[str] = []
    pos = 1
    while True:
        end = text.index("'", pos)
        out.append(text[pos:end])
        if text.startswith("''", end):
            out.append("'")
            pos = end + 2
            continue
        assert end == len(text) - 1, f"text continues after the literal: {text!r}"
        return "".join(out)


@given(st.text())
def test_any_string_value_is_exactly_one_literal_that_round_trips(value: str) -> None:
    results = {"x": rows({"v": value}), "o": json.dumps({"v": value})}
    out = sub("SELECT $x", results=results)
    assert out.startswith("SELECT ")
    assert parse_literal(out.removeprefix("SELECT ")) == value
    assert parse_literal(sub("$o.v", results=results)) == value
    assert sub("$x", results=results, mode="raw") == value


@given(st.text())
def test_any_whole_text_result_is_exactly_one_literal(value: str) -> None:
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "rows" in parsed:
        return
    assert parse_literal(sub("$x", results={"x": value})) == value


def test_a_result_nested_deeper_than_python_reads_fails_the_node() -> None:
    deep = '{"rows":[{"v":' + "[" * 5000 + "]" * 5000 + '}],"row_count":1}'
    with pytest.raises(SubstitutionError, match="nested too deeply"):
        sub("SELECT $r.v", results={"r": deep})
