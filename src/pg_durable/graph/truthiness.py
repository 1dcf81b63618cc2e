"""When a condition's result counts as true, and what a ``df.break`` value becomes.

Both follow pg_durable (SPEC §2.8, §2.4 BREAK). Conditions never raise: any text has a truth
value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Final

_TRUE_WORDS: Final = frozenset({"true", "t", "yes"})
_FALSE_WORDS: Final = frozenset({"false", "f", "no"})
# What Rust's ``str::parse::<f64>`` accepts: ASCII digits, no underscores, no whitespace
# (Python's float() also takes "1_0" and non-ASCII digits).
_FLOAT: Final = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)",
    re.IGNORECASE | re.ASCII,
)


class _Pairs(list[tuple[str, object]]):
    """A JSON object as its pairs, so "the first column" is the first key in the text."""


def _reject_constant(name: str) -> object:
    # NaN and ±Infinity are not JSON (serde_json rejects them); Python's parser accepts them.
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str) -> object:
    """``text`` parsed as strict JSON; raises ValueError if it is not JSON."""
    return json.loads(text, object_pairs_hook=_Pairs, parse_constant=_reject_constant)


def is_truthy(result: str) -> bool:
    """The truth of a condition node's result text.

    A SQL result (``{"rows": …}``) is false without rows, else the truth of its first row's
    first column; any other JSON value, or non-JSON text, is judged by itself.
    """
    try:
        value = _parse_json(result)
    except ValueError:
        return _string_truth(result)
    except RecursionError:
        # JSON nested deeper than Python parses: not a SQL result, a non-empty value.
        return True
    if isinstance(value, _Pairs):
        rows = dict(value).get("rows")
        if isinstance(rows, list):
            if not rows:
                return False
            first = rows[0]
            if isinstance(first, _Pairs) and first:
                return _value_truth(first[0][1])
    return _value_truth(value)


def _value_truth(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return _string_truth(value)
    if isinstance(value, list):
        return len(value) > 0
    return True


def _string_truth(text: str) -> bool:
    word = text.strip()
    if not word:
        return False
    lowered = word.lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    if _FLOAT.fullmatch(word) is None:
        # Any other word is true — also 'off' and 'n', as in pg_durable.
        return True
    number = float(word)
    return math.isnan(number) or number != 0


def break_value_json(raw: str | None) -> str:
    """The JSON text a ``df.break`` carries: ``null`` without a value, the value itself when
    it is JSON (kept as written), else the value as a JSON string."""
    if raw is None:
        return "null"
    try:
        value = _parse_json(raw)
        # A lone surrogate escape ("\ud800") parses here but is not valid JSON elsewhere
        # (serde_json and PostgreSQL's jsonb reject it).
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError):
        # (Nested deeper than Python parses, it cannot be checked: it is kept as a string.)
        return json.dumps(raw, ensure_ascii=False)
    return raw.strip()
