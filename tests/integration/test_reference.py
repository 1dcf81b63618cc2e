"""docs/reference.md is generated from the catalog of a fresh install (pg_durable.reference)
and must match it: a function added, changed or described anew without regenerating the file
fails here, with the diff and the command that fixes it."""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_durable import reference
from tests.fixtures.sql import one

Conn = psycopg.Connection[Any]

DOCS = Path(__file__).resolve().parents[2] / "docs"
REFERENCE = DOCS / "reference.md"
REGENERATE = "python -m pg_durable.reference --output docs/reference.md"


def test_reference_matches_the_catalog(dsn: str) -> None:
    generated = reference.generate(dsn)
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    if generated != current:
        diff = "".join(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                generated.splitlines(keepends=True),
                "docs/reference.md",
                "catalog",
            )
        )
        pytest.fail(
            f"docs/reference.md is stale; regenerate it:\n    {REGENERATE}\n\n{diff[:6000]}"
        )


def test_every_public_object_is_described_and_placed(conn: Conn) -> None:
    missing = reference.undescribed(reference.read_catalog(conn))
    assert missing == [], (
        "add a COMMENT in src/pg_durable/sql/schema/90_comments.sql (and, for a function, "
        "its place in pg_durable.reference.SECTIONS): " + "; ".join(missing)
    )


def test_every_description_names_an_existing_object(conn: Conn) -> None:
    # 90_comments.sql skips an entry whose object does not exist rather than failing the
    # install; this is where such an entry (a signature changed elsewhere) comes to light.
    text = (resources.files("pg_durable") / "sql" / "schema" / "90_comments.sql").read_text(
        encoding="utf-8"
    )
    signatures = re.findall(r"^\s*\('(df\.\w+\([^']*\))',$", text, re.MULTILINE)
    relations = re.findall(r"^\s*\('(df\.\w+)', '(?:TABLE|VIEW)',$", text, re.MULTILINE)
    columns = re.findall(r"^\s*\('(df\.\w+)', '(\w+)', '", text, re.MULTILINE)
    operators = re.findall(r"^\s*\('([^']+)', '(df\.\w+)', '", text, re.MULTILINE)
    assert len(signatures) >= 40 and len(relations) == 4 and columns and len(operators) == 7
    for signature in signatures:
        assert one(conn, "SELECT to_regprocedure(%s) IS NOT NULL", (signature,)), signature
    for (relation,) in ((r,) for r in relations):
        assert one(conn, "SELECT to_regclass(%s) IS NOT NULL", (relation,)), relation
    for relation, column in columns:
        assert one(
            conn,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attname = %s AND NOT attisdropped",
            (relation, column),
        ), f"{relation}.{column}"
    for name, function in operators:
        assert one(
            conn,
            "SELECT count(*) FROM pg_operator WHERE oprname = %s AND oprcode = to_regproc(%s)",
            (name, function),
        ), f"operator {name}"


def test_the_probe_roles_are_rolled_back(conn: Conn) -> None:
    catalog = reference.read_catalog(conn)
    assert catalog.functions and catalog.operators and catalog.relations
    assert one(conn, r"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'df\_reference\_%'") == 0


def test_privileges_are_observed_not_assumed(conn: Conn) -> None:
    functions = {f.identity: f for f in reference.read_catalog(conn).functions}
    start = functions["df.start(text,text,text,text)"]
    assert start.public and start.granted
    http = functions["df.http(text,text,text,jsonb,integer)"]
    assert (http.public, http.granted, http.http, http.admin) == (False, False, True, False)
    metrics = functions["df.metrics()"]
    assert (metrics.public, metrics.granted, metrics.http, metrics.admin) == (
        False,
        False,
        False,
        True,
    )
    enable = functions["df.enable_new_transaction_mode(text,integer)"]
    assert not (enable.public or enable.granted or enable.http or enable.admin)


def test_check_mode(dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reference.md"
    assert reference.main(["--dsn", dsn, "--output", str(out)]) == 0
    assert reference.main(["--dsn", dsn, "--output", str(out), "--check"]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("### df.sleep", "### df.nap"))
    capsys.readouterr()
    assert reference.main(["--dsn", dsn, "--output", str(out), "--check"]) == 1
    printed = capsys.readouterr().out
    assert "-### df.nap\n+### df.sleep\n" in printed
    assert printed.rstrip().endswith(
        "is stale: run python -m pg_durable.reference --output " + str(out)
    )


def test_by_default_it_describes_a_fresh_install_in_a_private_server() -> None:
    # The command a developer runs; it must agree with what the test database shows.
    assert reference.main(["--output", str(REFERENCE), "--check"]) == 0


def test_without_the_schema(pg_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main(["--dsn", pg_server.dsn("postgres")]) == 2
    assert "no df schema in this database" in capsys.readouterr().err


def test_links_point_to_pages_that_exist() -> None:
    pages = set(
        re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]+)?\)", REFERENCE.read_text(encoding="utf-8"))
    )
    assert pages and all((DOCS / page).exists() for page in pages), pages


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text."""
    found: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (heading := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in found:
                n += 1
                anchor = f"{slug}-{n}"
            found.add(anchor)
    return found


@pytest.mark.parametrize("page", ["docs/guide.md", "docs/reference.md", "examples/README.md"])
def test_relative_links_resolve(page: str) -> None:
    source = DOCS.parent / page
    text = source.read_text(encoding="utf-8")
    text_outside_code = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text_outside_code):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        assert resolved.exists(), f"{page}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved.read_text(encoding="utf-8")), f"{page}: {target}"
