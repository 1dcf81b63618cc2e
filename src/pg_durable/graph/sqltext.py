"""Looking at SQL text without a parser: its leading keywords.

Two decisions depend on them. A condition whose text after substitution is an expression
(``'$sig.timed_out'`` becomes ``false``) is run as ``SELECT <expression>``. And a statement that
PostgreSQL refuses inside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, …) may be run
in autocommit — but only when its leading keywords say it is one of those statements, because
outside the step's security-definer function nothing else stops a statement from changing role.
"""

from __future__ import annotations

import re
from typing import Final

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_$]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
#: Keywords a parenthesised query starts with, and what may follow it in a statement.
_QUERY_KEYWORDS: Final = frozenset({"SELECT", "VALUES", "WITH", "TABLE"})
_QUERY_CONTINUATIONS: Final = frozenset(
    {"UNION", "INTERSECT", "EXCEPT", "ORDER", "LIMIT", "OFFSET", "FETCH", "FOR"}
)

#: First keywords of SQL statements; anything else in a condition is an expression.
STATEMENT_KEYWORDS: Final = frozenset(
    [
        "ABORT",
        "ALTER",
        "ANALYZE",
        "ANALYSE",
        "BEGIN",
        "CALL",
        "CHECKPOINT",
        "CLOSE",
        "CLUSTER",
        "COMMENT",
        "COMMIT",
        "COPY",
        "CREATE",
        "DEALLOCATE",
        "DECLARE",
        "DELETE",
        "DISCARD",
        "DO",
        "DROP",
        "END",
        "EXECUTE",
        "EXPLAIN",
        "FETCH",
        "GRANT",
        "IMPORT",
        "INSERT",
        "LISTEN",
        "LOAD",
        "LOCK",
        "MERGE",
        "MOVE",
        "NOTIFY",
        "PREPARE",
        "REASSIGN",
        "REFRESH",
        "REINDEX",
        "RELEASE",
        "RESET",
        "REVOKE",
        "ROLLBACK",
        "SAVEPOINT",
        "SECURITY",
        "SELECT",
        "SET",
        "SHOW",
        "START",
        "TABLE",
        "TRUNCATE",
        "UNLISTEN",
        "UPDATE",
        "VACUUM",
        "VALUES",
        "WITH",
    ]
)


def _skip_space_and_comments(text: str, pos: int) -> int:
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
        elif text.startswith("--", pos):
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end + 1
        elif text.startswith("/*", pos):
            # PostgreSQL block comments nest.
            depth, pos = 1, pos + 2
            while pos < len(text) and depth:
                if text.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif text.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
        else:
            break
    return pos


def leading_keywords(text: str, count: int = 4) -> list[str]:
    """The first ``count`` words of ``text`` (upper-cased), skipping whitespace and comments.

    Stops at the first token that is not a bare word, so ``(SELECT 1)`` yields ``[]``.
    """
    words: list[str] = []
    pos = 0
    while len(words) < count:
        pos = _skip_space_and_comments(text, pos)
        match = _WORD.match(text, pos)
        if match is None:
            break
        words.append(match.group(0).upper())
        pos = match.end()
    return words


def _skip_quoted(text: str, pos: int) -> int:
    """The position after the literal, quoted identifier or dollar-quoted string at ``pos``,
    or ``pos`` itself if none starts there."""
    char = text[pos]
    if char in "'\"":
        # 'it''s' and "a""b": a doubled quote stays inside. Backslash escapes (E'\'') are
        # not followed: at worst the text then reads as a statement, as it starts like one.
        end = pos + 1
        while True:
            end = text.find(char, end)
            if end < 0:
                return len(text)
            if not text.startswith(char, end + 1):
                return end + 1
            end += 2
    if char == "$":
        tag = _DOLLAR_TAG.match(text, pos)
        if tag is not None:
            end = text.find(tag.group(0), tag.end())
            return len(text) if end < 0 else end + len(tag.group(0))
    return pos


def _closing_paren(text: str, pos: int) -> int:
    """The position after the parenthesis matching the one at ``text[pos] == '('``."""
    depth = 0
    while pos < len(text):
        pos = _skip_space_and_comments(text, pos)
        if pos >= len(text):
            break
        char = text[pos]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos + 1
        else:
            # A whole word first: "a$b$" is an identifier, not the start of a dollar quote.
            word = _WORD_CHARS.match(text, pos)
            after = word.end() if word is not None else _skip_quoted(text, pos)
            if after != pos:
                pos = after
                continue
        pos += 1
    return len(text)


def is_statement(text: str) -> bool:
    """Whether ``text`` reads as an SQL statement rather than a bare expression."""
    pos = _skip_space_and_comments(text, 0)
    if text.startswith("(", pos):
        # "(SELECT 1)" and "(SELECT 1) UNION (SELECT 2)" are statements; "(1 > 0)" and
        # "(SELECT count(*) FROM t) > 5" are expressions.
        inner = _skip_space_and_comments(text, pos + 1)
        while text.startswith("(", inner):
            inner = _skip_space_and_comments(text, inner + 1)
        first = leading_keywords(text[inner:], 1)
        if not first or first[0] not in _QUERY_KEYWORDS:
            return False
        after = _skip_space_and_comments(text, _closing_paren(text, pos))
        if after >= len(text) or text.startswith(";", after):
            return True
        follow = leading_keywords(text[after:], 1)
        return bool(follow) and follow[0] in _QUERY_CONTINUATIONS
    words = leading_keywords(text, 1)
    return bool(words) and words[0] in STATEMENT_KEYWORDS


def as_condition_query(text: str) -> str:
    """The query to run for a condition: the text itself, or ``SELECT <text>``."""
    return text if is_statement(text) else f"SELECT {text}"


# Statements PostgreSQL refuses in a transaction block or function, and which run no user code
# except under PostgreSQL's own security-restricted context (index expressions run as the table
# owner with SET ROLE forbidden). Matched on leading keywords.
_AUTOCOMMIT_PREFIXES: Final = (
    ("VACUUM",),
    ("CLUSTER",),
    ("REINDEX",),
    ("CREATE", "INDEX", "CONCURRENTLY"),
    ("CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"),
    ("DROP", "INDEX", "CONCURRENTLY"),
    ("CREATE", "DATABASE"),
    ("DROP", "DATABASE"),
    ("ALTER", "DATABASE"),
    ("CREATE", "TABLESPACE"),
    ("DROP", "TABLESPACE"),
    ("ALTER", "SYSTEM"),
    ("CREATE", "SUBSCRIPTION"),
    ("ALTER", "SUBSCRIPTION"),
    ("DROP", "SUBSCRIPTION"),
)


def needs_autocommit(text: str) -> bool:
    """Whether ``text`` is one of the statements that may run outside a transaction block."""
    words = tuple(leading_keywords(text, 4))
    return any(words[: len(prefix)] == prefix for prefix in _AUTOCOMMIT_PREFIXES)
