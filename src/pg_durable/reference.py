"""The SQL reference, docs/reference.md, generated from the catalog of an installed df schema.

    python -m pg_durable.reference --output docs/reference.md          # regenerate it
    python -m pg_durable.reference --output docs/reference.md --check  # is it up to date?
    python -m pg_durable.reference --dsn URL                           # print another's

It reads every public function (pg_proc), DSL operator (pg_operator) and table or view
(pg_class) of schema ``df`` — public meaning not named with a leading ``_`` — with its exact
signature, defaults, return type, volatility, security and description (its ``COMMENT``,
installed by ``sql/schema/90_comments.sql``). Who may execute a function is not read from the
ACLs but observed: in a transaction that is rolled back, three probe roles are given usage with
``df.grant_usage`` (plain, ``include_http``, ``with_grant``) and asked what they may do. So the
role running it must be able to create roles and grant df usage: the schema owner with
CREATEROLE, or a superuser. Without ``--dsn`` it installs the schema in a private embedded
PostgreSQL started for the purpose (the one the tests use), so what it describes is a fresh
install of this checkout.

``--check`` compares with the file instead of writing it (exit status 1 and a diff when they
differ); tests/integration/test_reference.py does the same, so the file never goes stale.
"""

from __future__ import annotations

import argparse
import difflib
import re
import secrets
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from pg_durable import schema
from pg_durable.embedded import EmbeddedPostgres
from pg_durable.errors import EmbeddedServerError, SchemaError

_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
#: Signatures longer than this are written one argument per line.
_WIDTH = 96


@dataclass(frozen=True, slots=True)
class Section:
    """A group of functions in the reference, in the order given, each with its docs page."""

    title: str
    intro: str
    functions: tuple[tuple[str, str], ...]


#: Where each function goes and which page explains it. A function missing here still gets
#: into the reference, under "Other functions"; the test asks for it to be placed.
SECTIONS: tuple[Section, ...] = (
    Section(
        "Building workflows",
        "The constructors return a JSON envelope (`text`) describing a tree of nodes; nothing "
        "runs until `df.start`. Composers take envelopes or plain SQL text (auto-wrap).",
        (
            ("sql", "dsl.md"),
            ("seq", "dsl.md"),
            ("as", "dsl.md"),
            ("sleep", "dsl.md"),
            ("loop", "dsl.md"),
            ("break", "dsl.md"),
            ("if", "dsl.md"),
            ("if_rows", "dsl.md"),
            ("join", "dsl.md"),
            ("join3", "dsl.md"),
            ("race", "dsl.md"),
            ("wait_for_signal", "signals.md"),
            ("wait_for_schedule", "schedules.md"),
            ("http", "http.md"),
            ("http_multipart", "http.md"),
            ("retry", "reliability.md"),
            ("timeout", "reliability.md"),
        ),
    ),
    Section(
        "Operator functions",
        "The functions behind the [operators](#operators); call the constructors instead.",
        (
            ("as_op", "dsl.md"),
            ("if_then_op", "dsl.md"),
            ("if_else_op", "dsl.md"),
            ("loop_prefix_op", "dsl.md"),
        ),
    ),
    Section(
        "Starting and steering instances",
        "",
        (
            ("start", "dsl.md"),
            ("signal", "signals.md"),
            ("cancel", "monitoring.md"),
            ("await_instance", "monitoring.md"),
            ("wait_for_completion", "monitoring.md"),
            ("run", "monitoring.md"),
        ),
    ),
    Section(
        "Monitoring",
        "Each role sees its own instances only (row-level security): another role's instance "
        "reads as unknown.",
        (
            ("status", "monitoring.md"),
            ("result", "monitoring.md"),
            ("list_instances", "monitoring.md"),
            ("instance_info", "monitoring.md"),
            ("instance_executions", "monitoring.md"),
            ("instance_nodes", "monitoring.md"),
            ("metrics", "monitoring.md"),
            ("explain", "explain.md"),
        ),
    ),
    Section(
        "Variables",
        "Per-role variables, substituted as `{name}` in the steps of instances started "
        "afterwards. Setup helpers: not workflow steps.",
        (
            ("setvar", "admin.md"),
            ("getvar", "admin.md"),
            ("unsetvar", "admin.md"),
            ("clearvars", "admin.md"),
        ),
    ),
    Section(
        "Administration",
        "",
        (
            ("grant_usage", "admin.md"),
            ("revoke_usage", "admin.md"),
            ("version", "admin.md"),
            ("target_database", "admin.md"),
            ("enable_new_transaction_mode", "admin.md"),
            ("disable_new_transaction_mode", "admin.md"),
        ),
    ),
)

#: The operators in the order the DSL documentation gives them.
OPERATOR_ORDER = ("~>", "|=>", "&", "|", "?>", "!>", "@>")
#: The page that explains each public table or view.
RELATION_DOCS = {
    "instances": "monitoring.md",
    "nodes": "monitoring.md",
    "vars": "admin.md",
    "workers": "operations.md",
}

_VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}
_KIND = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}
_RELKIND = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "f": "table"}


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    identity: str
    arguments: str
    result: str
    kind: str
    volatility: str
    strict: bool
    security_definer: bool
    description: str | None
    #: EXECUTE held by PUBLIC, by a role granted usage, with include_http, with with_grant.
    public: bool
    granted: bool
    http: bool
    admin: bool


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    left: str | None
    right: str
    result: str
    function: str
    description: str | None


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    description: str | None


@dataclass(frozen=True, slots=True)
class Relation:
    name: str
    kind: str
    row_security: bool
    description: str | None
    columns: tuple[Column, ...]
    #: What a role granted df usage may do: (privilege, columns or () for all of them).
    granted: tuple[tuple[str, tuple[str, ...]], ...]
    public: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Catalog:
    functions: tuple[Function, ...]
    operators: tuple[Operator, ...]
    relations: tuple[Relation, ...]


@cache
def _queries() -> dict[str, LiteralString]:
    text = (resources.files("pg_durable") / "sql" / "reference.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    found: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        # Package data, never input: a literal.
        found[name] = "\n".join(lines).strip()
    return found


# -- reading the catalog --------------------------------------------------------------------
def read_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    """Read the public df API from the connected database (rolling back what the probe did)."""
    row = conn.execute(_queries()["installed"]).fetchone()
    if row is None or not row[0]:
        raise SchemaError("no df schema in this database: install it first (pg-durable install)")
    with conn.transaction(force_rollback=True):
        # Role names are cluster-wide: random ones, gone again with the rollback.
        tag = secrets.token_hex(4)
        probes = {k: f"df_reference_{k}_{tag}" for k in ("granted", "http", "admin")}
        conn.execute("SET LOCAL client_min_messages = warning")
        for role in probes.values():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute("SELECT df.grant_usage(%s)", (probes["granted"],))
        conn.execute("SELECT df.grant_usage(%s, include_http => true)", (probes["http"],))
        conn.execute("SELECT df.grant_usage(%s, with_grant => true)", (probes["admin"],))
        functions = tuple(
            Function(*r) for r in conn.execute(_queries()["functions"], probes).fetchall()
        )
        granted: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        public: dict[str, list[str]] = {}
        for rel, privilege, whole, on_columns, by_public in conn.execute(
            _queries()["relation_privileges"], probes
        ).fetchall():
            if whole:
                granted.setdefault(rel, []).append((privilege, ()))
            elif on_columns:
                granted.setdefault(rel, []).append((privilege, tuple(on_columns)))
            if by_public:
                public.setdefault(rel, []).append(privilege)
    operators = tuple(Operator(*r) for r in conn.execute(_queries()["operators"]).fetchall())
    columns: dict[str, list[Column]] = {}
    for rel, name, type_, description in conn.execute(_queries()["columns"]).fetchall():
        columns.setdefault(rel, []).append(Column(name, type_, description))
    relations = tuple(
        Relation(
            name,
            kind,
            row_security,
            description,
            tuple(columns.get(name, ())),
            tuple(granted.get(name, ())),
            tuple(public.get(name, ())),
        )
        for name, kind, row_security, description in conn.execute(
            _queries()["relations"]
        ).fetchall()
    )
    return Catalog(functions, operators, relations)


def undescribed(catalog: Catalog) -> list[str]:
    """The public objects without a description, and the functions without a section."""
    placed = {name for section in SECTIONS for name, _ in section.functions}
    missing = [
        f"function {f.identity} (no COMMENT)" for f in catalog.functions if not f.description
    ]
    missing += [
        f"function df.{f.name} (not in reference.SECTIONS)"
        for f in catalog.functions
        if f.name not in placed
    ]
    missing += [f"operator {o.name} (no COMMENT)" for o in catalog.operators if not o.description]
    missing += [
        f"{_RELKIND[r.kind]} df.{r.name} (no COMMENT)"
        for r in catalog.relations
        if not r.description
    ]
    return missing


# -- rendering (no I/O) ---------------------------------------------------------------------
def _split(text: str) -> list[str]:
    """Split a list at its top-level commas (not inside quotes or parentheses)."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _block(items: list[str]) -> str:
    return "\n" + "".join(f"    {item},\n" for item in items[:-1]) + f"    {items[-1]}\n"


def signature(f: Function) -> str:
    """``df.name(arguments) RETURNS result``, one argument per line when it is long."""
    returns = f"RETURNS {f.result}" if f.kind != "p" else ""
    one_line = f"df.{f.name}({f.arguments}) {returns}".rstrip()
    if len(one_line) <= _WIDTH:
        return one_line
    head = f"df.{f.name}({f.arguments})"
    if len(head) > _WIDTH // 2:
        head = f"df.{f.name}({_block(_split(f.arguments))})"
    last_line = head.rsplit("\n", 1)[-1]
    if f.result.startswith("TABLE(") and len(f"{last_line} {returns}") > _WIDTH:
        returns = "RETURNS TABLE(" + _block(_split(f.result[len("TABLE(") : -1])) + ")"
    return f"{head} {returns}".rstrip()


def _execute(f: Function) -> str:
    if f.public:
        return "PUBLIC — every role granted df usage"
    if f.granted:
        return "not PUBLIC; every role granted df usage"
    if f.http:
        return "not PUBLIC; roles granted df usage with `include_http => true`"
    if f.admin:
        return "not PUBLIC; delegated admins (`df.grant_usage(role, with_grant => true)`)"
    return "not PUBLIC; the schema owner and superusers only"


def _properties(f: Function) -> str:
    words = [_VOLATILITY.get(f.volatility, f.volatility)]
    if f.strict:
        words.append("strict")
    words.append("security definer" if f.security_definer else "security invoker")
    if f.kind != "f":
        words.insert(0, _KIND.get(f.kind, f.kind))
    return ", ".join(words).capitalize()


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _function_entry(overloads: list[Function], doc: str | None) -> list[str]:
    out = [f"### df.{overloads[0].name}", ""]
    for f in overloads:
        see = f" See [{doc}]({doc})." if doc else ""
        out += [
            "```sql",
            signature(f),
            "```",
            "",
            f.description or "*No description.*",
            "",
            f"{_properties(f)}. Execute: {_execute(f)}.{see}",
            "",
        ]
    return out


def _relation_entry(r: Relation) -> list[str]:
    kind = _RELKIND.get(r.kind, r.kind)
    doc = RELATION_DOCS.get(r.name)
    out = [f"### df.{r.name} ({kind})", "", r.description or "*No description.*", ""]
    facts = []
    if r.row_security:
        facts.append("Row-level security: each role sees its own rows.")
    if r.granted:
        rights = [p if not cols else f"{p} ({', '.join(cols)})" for p, cols in r.granted]
        facts.append(f"A role granted df usage may: {'; '.join(rights)}.")
    else:
        facts.append("A role granted df usage has no privilege on it.")
    facts.append(f"PUBLIC: {', '.join(r.public)}." if r.public else "PUBLIC: no privilege.")
    if doc:
        facts.append(f"See [{doc}]({doc}).")
    out += [" ".join(facts), "", "| column | type | description |", "|---|---|---|"]
    out += [f"| `{c.name}` | `{c.type}` | {_cell(c.description)} |" for c in r.columns]
    return [*out, ""]


def render(catalog: Catalog) -> str:
    """The Markdown text of docs/reference.md."""
    by_name: dict[str, list[Function]] = {}
    for f in catalog.functions:
        by_name.setdefault(f.name, []).append(f)
    sections = [*SECTIONS]
    placed = {name for section in SECTIONS for name, _ in section.functions}
    others = tuple((name, "") for name in sorted(by_name) if name not in placed)
    if others:
        sections.append(Section("Other functions", "", others))

    out = [
        "# SQL reference",
        "",
        "<!-- Generated by `python -m pg_durable.reference` from the catalog of a fresh install."
        " Do not edit: tests/integration/test_reference.py fails when this file and the"
        " catalog differ. -->",
        "",
        "Every public object of schema `df` — functions, the DSL operators, the tables and views "
        "a role reads — as the catalog of a fresh install describes it. The descriptions are the "
        "objects' `COMMENT`s, which psql shows too (`\\df+ df.*`, `\\do+`, `\\d+ df.instances`); "
        "the page linked from each entry explains behaviour, errors and examples. Objects whose "
        "names start with `_` are the engine's own and are left out. The "
        "[guide](guide.md) shows how the pieces fit together.",
        "",
        "**Execute** says who may call a function. Nothing in schema `df` is usable without "
        "`USAGE` on it, which `df.grant_usage(role)` gives along with what a role needs "
        "([admin.md](admin.md)); *PUBLIC* functions are then callable by every such role, the "
        "others only as stated.",
        "",
        "## Contents",
        "",
    ]
    for section in sections:
        names = [n for n, _ in section.functions if n in by_name]
        links = ", ".join(f"[`df.{n}`](#df{n})" for n in names)
        out.append(f"* **{section.title}**: {links}")
    out += ["* **[Operators](#operators)**", "* **[Tables and views](#tables-and-views)**", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        if section.intro:
            out += [section.intro, ""]
        for name, doc in section.functions:
            if name in by_name:
                out += _function_entry(by_name[name], doc or None)
    out += [
        "## Operators",
        "",
        "All share one precedence and group from left to right: parenthesise "
        "([dsl.md](dsl.md#operators-and-their-precedence)). A superuser's install creates them "
        "in `pg_catalog`, so they work whatever the `search_path`.",
        "",
        "| operator | left | right | result | function | description |",
        "|---|---|---|---|---|---|",
    ]
    rank = {name: i for i, name in enumerate(OPERATOR_ORDER)}
    for o in sorted(catalog.operators, key=lambda o: (rank.get(o.name, len(rank)), o.name)):
        out.append(
            f"| `{_cell(o.name)}` | {f'`{o.left}`' if o.left else '—'} | `{o.right}` "
            f"| `{o.result}` | `df.{o.function}` | {_cell(o.description)} |"
        )
    out += ["", "## Tables and views", ""]
    for r in catalog.relations:
        out += _relation_entry(r)
    return "\n".join(out).rstrip() + "\n"


# -- command line ---------------------------------------------------------------------------
def generate(dsn: str) -> str:
    """The reference for the database at ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return render(read_catalog(conn))


def generate_fresh() -> str:
    """The reference for a fresh install, in a private PostgreSQL started for the purpose."""
    with tempfile.TemporaryDirectory(prefix="pg-durable-reference-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # (when run as root, the server runs as another user)
        server = EmbeddedPostgres(folder / "data", extra_settings={"fsync": "off"})
        server.start()
        try:
            schema.install(server.dsn())
            return generate(server.dsn())
        finally:
            server.stop("immediate")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pg_durable.reference``: print, write or check the SQL reference."""
    parser = argparse.ArgumentParser(
        prog="python -m pg_durable.reference",
        description="Generate docs/reference.md from the catalog of an installed df schema.",
    )
    parser.add_argument(
        "--dsn",
        help="describe this database's df schema, as a role that may create roles "
        "(default: a fresh install in a private PostgreSQL started for the purpose)",
    )
    parser.add_argument("--output", type=Path, help="write here instead of printing")
    parser.add_argument(
        "--check", action="store_true", help="compare with --output instead of writing it"
    )
    args = parser.parse_args(argv)
    if args.check and args.output is None:
        parser.error("--check needs --output")
    try:
        text = generate(args.dsn) if args.dsn else generate_fresh()
    except (psycopg.Error, SchemaError, EmbeddedServerError) as exc:
        print(f"pg_durable.reference: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current == text:
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                str(args.output),
                "catalog",
            )
        )
        print(f"{args.output} is stale: run python -m pg_durable.reference --output {args.output}")
        return 1
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
