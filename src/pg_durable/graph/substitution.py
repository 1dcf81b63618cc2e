"""Substituting ``{variables}`` and ``$named`` results into a step's text (SPEC §2.7).

Two passes. First ``{name}``: the start-time variable snapshot plus ``{sys_instance_id}`` and
``{sys_label}``, inserted raw (they may hold SQL fragments, by design) — and, unlike
pg_durable, also inside JSON text. Then ``$name`` forms on the result of the first pass:
``$name``, ``$name?``, ``$name.col``, ``$name.col?`` and ``$name.*``, formatted for SQL
(``mode="sql"``: strings quoted) or raw text (``mode="raw"``: HTTP URLs, bodies, break values).

Results are the original result texts, parsed with their key order kept, so "the first column"
is the first one the query selected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final, Literal

from pg_durable.errors import SubstitutionError

Mode = Literal["sql", "raw"]
MAX_ROWSET_ROWS: Final = 10_000

_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NULL: Final = "NULL"
#: The characters PostgreSQL operators are made of.
_OPERATOR: Final = frozenset("+-*/<>=~!@#%^&|`?")


class _Raw(str):
    """A JSON number as written in the result text."""


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its pairs, in text order."""

    def get(self, key: str) -> tuple[bool, object]:
        found, value = False, None
        for k, v in self:
            if k == key:
                found, value = True, v
        return found, value


class _NotJson:
    """The result text is not JSON."""


_NOT_JSON: Final = _NotJson()


def _reject_constant(name: str) -> object:
    # NaN and ±Infinity are not JSON (serde_json rejects them); Python's parser accepts them.
    raise ValueError(f"{name} is not JSON")


def _is_identifier_char(char: str) -> bool:
    """ASCII only, like the identifiers result names are made of (``[A-Za-z0-9_]``)."""
    return char.isascii() and (char.isalnum() or char == "_")


def substitute(
    text: str,
    *,
    variables: Mapping[str, str],
    results: Mapping[str, str],
    instance_id: str,
    label: str | None,
    mode: Mode,
) -> str:
    """``text`` with its ``{variables}`` and then its ``$results`` substituted.

    Raises:
        SubstitutionError: a reference cannot be resolved (no rows, NULL, missing field, a
            row set too large or not a row set); the message is the failed node's error.
    """
    system = {"sys_instance_id": instance_id, "sys_label": label or ""}

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in system:
            return system[name]
        return variables.get(name, match.group(0))

    if "{" in text:
        text = _VARIABLE.sub(variable, text)
    if "$" in text and results:
        try:
            text = _Results(results, mode).expand(text)
        except RecursionError:
            # (A result nested deeper than Python reads: fail the node, not the worker.)
            raise SubstitutionError(
                "a result referenced here is JSON nested too deeply to substitute"
            ) from None
    return text


class _Results:
    def __init__(self, results: Mapping[str, str], mode: Mode) -> None:
        self.results = results
        self.mode = mode
        # Longest first, so $order_id wins over $order.
        self.names = sorted(results, key=len, reverse=True)
        self._parsed: dict[str, object] = {}

    def expand(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        while True:
            at = text.find("$", pos)
            if at < 0:
                out.append(text[pos:])
                return "".join(out)
            out.append(text[pos:at])
            replaced = self._reference(text, at)
            if replaced is None:
                out.append("$")
                pos = at + 1
            else:
                value, pos = replaced
                if self.mode == "sql" and value.startswith("-") and text[at - 1 : at] in _OPERATOR:
                    # 1-$x with x = -1 must not read 1--1: "--" starts a comment that would
                    # swallow the rest of the line (… OR v = 'nope'), and "@-" is one operator.
                    value = " " + value
                out.append(value)

    def _reference(self, text: str, at: int) -> tuple[str, int] | None:
        """The substitution of the reference starting at ``text[at] == '$'`` and where the
        text after it resumes, or None if no known name starts there."""
        for name in self.names:
            start = at + 1
            end = start + len(name)
            if not text.startswith(name, start):
                continue
            rest = text[end:]
            if rest.startswith(".*"):
                return self._rowset(name), end + 2
            if rest.startswith("."):
                column = _IDENTIFIER.match(rest, 1)
                if column is not None:
                    null_safe = rest.startswith("?", column.end())
                    after = end + column.end() + (1 if null_safe else 0)
                    value = self._field(name, column.group(0), null_safe)
                    return (text[at:after] if value is None else value), after
            if rest.startswith("?"):
                return self._scalar(name, null_safe=True), end + 1
            if rest and _is_identifier_char(rest[0]):
                continue  # $order_idx is not $order_id: try a shorter name
            return self._scalar(name, null_safe=False), end
        return None

    # -- the forms --------------------------------------------------------------------------
    def _scalar(self, name: str, *, null_safe: bool) -> str:
        value = self._json(name)
        rows = _rows_of(value)
        if rows is None:
            # HTTP/SIGNAL envelopes, JOIN arrays, loop and break values: the whole text.
            whole = self.results[name]
            return _quote(whole) if self.mode == "sql" else whole
        if not rows:
            if null_safe:
                return _NULL
            raise SubstitutionError(f"${name} has no rows — query returned zero results")
        first = rows[0]
        cell = first[0][1] if isinstance(first, _Pairs) and first else None
        if cell is None:
            if null_safe:
                return _NULL
            raise SubstitutionError(f"${name} is NULL — first column of first row is NULL")
        return self._format(cell)

    def _field(self, name: str, column: str, null_safe: bool) -> str | None:
        """The field's text, or None to leave the reference in the text as it is."""
        value = self._json(name)
        ref = f"${name}.{column}"
        if isinstance(value, _NotJson):
            raise SubstitutionError(f"{ref}: result is not valid JSON")
        rows = _rows_of(value)
        if rows is not None:
            if not rows:
                if null_safe:
                    return _NULL
                raise SubstitutionError(f"${name} has no rows — query returned zero results")
            record = rows[0]
        elif isinstance(value, _Pairs):
            record = value
        else:
            raise SubstitutionError(f"{ref}: result is neither a row set nor a JSON object")
        found, cell = record.get(column) if isinstance(record, _Pairs) else (False, None)
        if not found:
            if self.mode == "sql" or null_safe:
                return None
            available = ", ".join(k for k, _ in record) if isinstance(record, _Pairs) else ""
            raise SubstitutionError(
                f"{ref}: result has no field '{column}' (available: {available})"
            )
        if cell is None:
            if null_safe:
                return _NULL
            raise SubstitutionError(f"{ref} is NULL")
        return self._format(cell)

    def _rowset(self, name: str) -> str:
        rows = _rows_of(self._json(name))
        if rows is None:
            raise SubstitutionError(f"${name}.* — invalid result format")
        if len(rows) > MAX_ROWSET_ROWS:
            raise SubstitutionError(
                f"${name}.* — result has {len(rows)} rows, exceeding the maximum of "
                f"{MAX_ROWSET_ROWS} for row-set expansion. Filter or aggregate the rows in "
                "the query that produces it, or process them in batches."
            )
        if self.mode == "raw":
            return _dumps([_plain(r) for r in rows])
        if not rows:
            return f"(SELECT NULL WHERE false) AS {_ident(name)}"
        first = rows[0]
        columns = [k for k, _ in first] if isinstance(first, _Pairs) else []
        tuples = []
        for row in rows:
            cells = []
            for column in columns:
                _found, cell = row.get(column) if isinstance(row, _Pairs) else (False, None)
                cells.append(_rowset_literal(cell))
            tuples.append("(" + ", ".join(cells) + ")")
        column_list = ", ".join(_ident(c) for c in columns)
        return f"(VALUES {', '.join(tuples)}) AS {_ident(name)}({column_list})"

    # -- values -----------------------------------------------------------------------------
    def _json(self, name: str) -> object:
        if name not in self._parsed:
            try:
                self._parsed[name] = json.loads(
                    self.results[name],
                    object_pairs_hook=_Pairs,
                    parse_float=_Raw,
                    parse_int=_Raw,
                    parse_constant=_reject_constant,
                )
            except ValueError:
                self._parsed[name] = _NOT_JSON
        return self._parsed[name]

    def _format(self, value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, _Raw):
            return str(value)
        if isinstance(value, str):
            return _quote(value) if self.mode == "sql" else value
        text = _dumps(_plain(value))
        return _quote(text) if self.mode == "sql" else text


def _rows_of(value: object) -> list[object] | None:
    """The ``rows`` array of a SQL result, or None if ``value`` is not one."""
    if isinstance(value, _Pairs):
        found, rows = value.get("rows")
        if found and isinstance(rows, list) and not isinstance(rows, _Pairs):
            return rows
    return None


def _rowset_literal(value: object) -> str:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, str):
        return _quote(value) + "::text"
    return _quote(_dumps(_plain(value))) + "::text"


def _plain(value: object) -> object:
    if isinstance(value, _Raw):
        return _number(value)
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _number(text: str) -> int | float:
    # Inside an embedded object or array a number is re-serialised like serde_json would.
    try:
        return int(text)
    except ValueError:
        return float(text)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _quote(text: str) -> str:
    """A SQL string literal whatever standard_conforming_strings says. A role's own settings
    apply to its steps, and with it off a backslash inside '…' escapes the quote after it
    (the value \\' OR true -- would end its literal): a text with a backslash is written
    E'…' with its backslashes doubled, as quote_literal() does."""
    literal = "'" + text.replace("'", "''") + "'"
    if "\\" in text:
        return "E" + literal.replace("\\", "\\\\")
    return literal


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
