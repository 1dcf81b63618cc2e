"""Statement or expression, and statements that must run outside a transaction block."""

from __future__ import annotations

import pytest

from pg_durable.graph.sqltext import (
    as_condition_query,
    is_statement,
    leading_keywords,
    needs_autocommit,
)
from pg_durable.graph.substitution import substitute


# -- statements and expressions ---------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "select true",
        "  \n\tSELECT 1",
        "SELECT(1)",
        "-- a comment\nSELECT 1",
        "/* a comment */ SELECT 1",
        "/* nested /* comments */ still comment */ SELECT 1",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "VALUES (true)",
        "TABLE flags",
        "INSERT INTO t VALUES (1) RETURNING true",
        "UPDATE t SET a = 1 RETURNING a > 0",
        "DELETE FROM t RETURNING 1",
        "CALL p()",
        "DO $$ BEGIN NULL; END $$",
        "EXPLAIN SELECT 1",
        "SHOW work_mem",
        "VACUUM",
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        "SELECT 1;",
        "(SELECT 1)",
        "((SELECT 1))",
        "( SELECT true )",
        "(VALUES (1))",
        "(TABLE t)",
        "(WITH x AS (SELECT 1) SELECT * FROM x)",
        "(SELECT 1) UNION (SELECT 2)",
        "(SELECT 1) union all SELECT 2",
        "(SELECT 1) INTERSECT (SELECT 1)",
        "(SELECT 1) EXCEPT (SELECT 2)",
        "(SELECT a FROM t) ORDER BY 1",
        "(SELECT a FROM t) LIMIT 1",
        "(SELECT 1);",
        "(SELECT 1) -- trailing comment",
        "((SELECT 1) UNION SELECT 2) ORDER BY 1",
    ],
)
def test_statements(text: str) -> None:
    assert is_statement(text)
    assert as_condition_query(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "true",
        "false",
        "TRUE",
        "NULL",
        "NOT true",
        "1 > 0",
        "'abc'",
        "'SELECT'",
        "'t'",
        "42",
        "(1 > 0)",
        "((1))",
        "(SELECT count(*) FROM t) > 5",
        "(SELECT 1) = 1",
        "((SELECT 1)) = 1",
        "(SELECT true) AND true",
        "(SELECT ')') = ')'",
        "(SELECT $$)$$) = ')'",
        "(SELECT $q$ ) $q$) = ')'",
        '(SELECT "a)" FROM t) IS NULL',
        "(SELECT a$b$c FROM t) > 1",
        "( /* ) */ SELECT 1) + 1",
        "(SELECT 1 -- )\n) + 1",
        "EXISTS (SELECT 1)",
        "NOT EXISTS (SELECT 1 FROM t)",
        "CASE WHEN true THEN 1 ELSE 0 END",
        "selected > 1",
        "current_user = 'x'",
        "'x' = 'x'",
        "-- a comment\ntrue",
        "/* SELECT */ false",
        "",
        "   ",
        "-- only a comment",
    ],
)
def test_expressions(text: str) -> None:
    assert not is_statement(text)
    assert as_condition_query(text) == f"SELECT {text}"


def test_a_comment_before_an_expression_still_ends_at_its_line() -> None:
    assert as_condition_query("-- note\ntrue") == "SELECT -- note\ntrue"


def test_a_signal_field_after_substitution_is_an_expression() -> None:
    envelope = '{"signal_name":"go","timed_out":false,"data":null}'
    text = substitute(
        "$sig.timed_out",
        variables={},
        results={"sig": envelope},
        instance_id="ab12cd34",
        label=None,
        mode="sql",
    )
    assert text == "false"
    assert as_condition_query(text) == "SELECT false"
    done = substitute(
        "$batch.done",
        variables={},
        results={"batch": '{"rows":[{"done":true}],"row_count":1}'},
        instance_id="ab12cd34",
        label=None,
        mode="sql",
    )
    assert as_condition_query(done) == "SELECT true"


# -- leading keywords -------------------------------------------------------------------------
def test_leading_keywords() -> None:
    assert leading_keywords("create  unique\n index concurrently i ON t (a)") == [
        "CREATE",
        "UNIQUE",
        "INDEX",
        "CONCURRENTLY",
    ]
    assert leading_keywords("VACUUM /* c */ -- d\n ANALYZE t", 2) == ["VACUUM", "ANALYZE"]
    assert leading_keywords("(SELECT 1)") == []
    assert leading_keywords('"VACUUM" t') == []
    assert leading_keywords('CREATE INDEX "CONCURRENTLY" ON t (a)') == ["CREATE", "INDEX"]
    assert leading_keywords("") == []
    assert leading_keywords("/* unterminated") == []


# -- autocommit statements --------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "VACUUM",
        "vacuum analyze t",
        "VACUUM (VERBOSE, ANALYZE) t",
        "  VACUUM FULL t",
        "/* nightly maintenance */ VACUUM t",
        "-- nightly\nVACUUM t",
        "CLUSTER",
        "CLUSTER t USING t_pkey",
        "REINDEX INDEX CONCURRENTLY i",
        "REINDEX DATABASE d",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "create index concurrently if not exists i on t (a)",
        "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
        "DROP INDEX CONCURRENTLY i",
        "DROP INDEX CONCURRENTLY IF EXISTS i",
        "CREATE DATABASE d",
        "DROP DATABASE d",
        "ALTER DATABASE d SET TABLESPACE ts",
        "CREATE TABLESPACE ts LOCATION '/x'",
        "DROP TABLESPACE ts",
        "ALTER SYSTEM SET work_mem = '8MB'",
        "CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p",
        "ALTER SUBSCRIPTION s REFRESH PUBLICATION",
        "DROP SUBSCRIPTION s",
    ],
)
def test_needs_autocommit(text: str) -> None:
    assert needs_autocommit(text)


@pytest.mark.parametrize(
    "text",
    [
        "CREATE INDEX i ON t (a)",
        "CREATE UNIQUE INDEX i ON t (a)",
        'CREATE INDEX "CONCURRENTLY" ON t (a)',
        "CREATE INDEX CONCURRENTLYX ON t (a)",
        "CREATE INDEX i ON t (a) -- CONCURRENTLY",
        "DROP INDEX i",
        "CREATE TABLE concurrently (a int)",
        "ANALYZE t",
        "SELECT 'VACUUM'",
        "SELECT 1 -- VACUUM",
        "-- VACUUM\nSELECT 1",
        "/* VACUUM */ SELECT 1",
        '"VACUUM"',
        "INSERT INTO vacuum VALUES (1)",
        "DO $$ BEGIN VACUUM; END $$",
        "CALL vacuum()",
        "(VACUUM)",
        "SET ROLE postgres",
        "RESET ROLE",
        "DISCARD ALL",
        "COMMIT PREPARED 'x'",
        "",
    ],
)
def test_does_not_need_autocommit(text: str) -> None:
    assert not needs_autocommit(text)
