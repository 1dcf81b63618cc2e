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


def is_statement(text: str) -> bool:
    """Whether ``text`` reads as an SQL statement rather than a bare expression."""
    pos = _skip_space_and_comments(text, 0)
    if text.startswith("(", pos):
        # "(SELECT 1)" is a statement; "(1 > 0)" is an expression.
        inner = leading_keywords(text[pos + 1 :], 1)
        return bool(inner) and inner[0] in ("SELECT", "VALUES", "WITH", "TABLE")
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
