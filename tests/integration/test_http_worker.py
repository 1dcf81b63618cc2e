"""HTTP steps run by the worker against a local server: requests, responses, failures, the
egress policy and its SSRF rules, leases and idempotency keys."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pg_durable import __version__
from pg_durable.engine.http import HttpClient
from tests.fixtures.crash import spawn_worker
from tests.fixtures.engine import WorkerThread, run_workflow, wait_for
from tests.fixtures.http_server import HttpServer, Reply, self_signed
from tests.fixtures.roles import Roles
from tests.fixtures.sql import one
from tests.integration.test_engine import output_of, result_of

Conn = psycopg.Connection[Any]


@pytest.fixture
def allow_all(conn: Conn, db_name: str) -> None:
    """The allow-all policy, for the worker (its database) and for this session's DSL."""
    set_policy(conn, db_name, "allow-all")


def set_policy(conn: Conn, db_name: str, policy: str, hosts: str | None = None) -> None:
    for name, value in (("http_policy", policy), ("http_allowed_hosts", hosts)):
        setting = sql.Identifier("pg_durable", name)
        if value is None:
            conn.execute(
                sql.SQL("ALTER DATABASE {} RESET {}").format(sql.Identifier(db_name), setting)
            )
            conn.execute(sql.SQL("RESET {}").format(setting))
        else:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(db_name), setting, sql.Literal(value)
                )
            )
            conn.execute(sql.SQL("SET {} = {}").format(setting, sql.Literal(value)))


def client(worker: WorkerThread) -> HttpClient:
    assert worker.worker is not None
    return worker.worker.executor.http.client


def http(
    url: str,
    method: str = "GET",
    body: str | None = None,
    headers: Any = None,
    timeout: int | None = None,
) -> str:
    """A df.http(…) call as DSL text."""
    args = [sql_literal(url), sql_literal(method), sql_literal(body)]
    args.append("NULL" if headers is None else sql_literal(json.dumps(headers)) + "::jsonb")
    args.append("NULL" if timeout is None else str(timeout))
    return f"df.http({', '.join(args)})"


def sql_literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def envelope(conn: Conn, instance_id: str) -> dict[str, Any]:
    result = result_of(conn, instance_id)
    assert isinstance(result, dict), result
    return result


def failure(conn: Conn, instance_id: str) -> str:
    row = conn.execute(
        "SELECT result FROM df.nodes WHERE instance_id = %s AND node_type IN "
        "('HTTP', 'HTTP_MULTIPART')",
        (instance_id,),
    ).fetchone()
    assert row is not None
    return str(row[0])


# -- requests and responses ---------------------------------------------------------------------


def test_get_returns_spec_envelope(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply(
        "/rates", body=b'{"eur": 1.08}', headers=[("Content-Type", "application/json")]
    )
    iid, status = run_workflow(conn, http(http_server.url("/rates?day=1")))
    assert status == "completed", output_of(conn, iid)
    result = envelope(conn, iid)
    assert list(result) == ["ok", "body", "status", "headers", "encoding", "duration_ms"]
    assert result["status"] == 200 and result["ok"] is True
    assert result["body"] == '{"eur": 1.08}' and result["encoding"] == "text"
    assert result["headers"]["content-type"] == "application/json"
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    (got,) = http_server.received
    assert (got.method, got.target, got.body) == ("GET", "/rates?day=1", b"")
    assert got.headers["user-agent"] == f"pg_durable/{__version__}"
    assert got.headers["host"] == f"127.0.0.1:{http_server.port}"
    node = conn.execute(
        "SELECT id FROM df.nodes WHERE instance_id = %s AND node_type = 'HTTP'", (iid,)
    ).fetchone()
    assert node is not None
    assert got.headers["idempotency-key"].startswith(f"{iid}-{node[0]}-")
    assert "content-length" not in got.headers


def test_a_request_followed_by_an_autocommit_step_is_sent_once(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    """The step after the request runs outside any transaction: the lease it takes drops the
    transaction that recorded the response, which must then be taken from the first send."""
    http_server.reply("/once", body=b"{}")
    conn.execute("CREATE TABLE t (n int)")
    iid, status = run_workflow(conn, f"{http(http_server.url('/once'))} ~> 'VACUUM t'")
    assert status == "completed", output_of(conn, iid)
    assert len(http_server.received) == 1


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_methods_bodies_and_headers(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer, method: str
) -> None:
    http_server.reply("/items", status=201, body=b"made")
    headers = {"Content-Type": "application/json", "X-Trace": "a\tb", "User-Agent": "mine/1"}
    iid, status = run_workflow(
        conn, http(http_server.url("/items"), method.lower(), '{"n": 1}', headers)
    )
    assert status == "completed", output_of(conn, iid)
    assert envelope(conn, iid)["status"] == 201
    (got,) = http_server.received
    assert (got.method, got.body) == (method, b'{"n": 1}')
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-trace"] == "a\tb"
    assert got.headers["user-agent"] == "mine/1"
    assert got.headers["content-length"] == "8"


def test_post_without_body_sends_an_empty_one(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/ping", status=204)
    iid, status = run_workflow(conn, http(http_server.url("/ping"), "POST"))
    assert status == "completed", output_of(conn, iid)
    assert envelope(conn, iid)["body"] == ""
    assert http_server.received[0].headers["content-length"] == "0"


def test_substitution_in_url_body_and_header_values(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/customers/42/", body=b"ok")
    conn.execute(
        "SELECT df.setvar('base', %s), df.setvar('token', 's3cret')", (http_server.url(""),)
    )
    dsl = "('SELECT 42 AS id, ''a b&c'' AS name' |=> 'c') ~> " + http(
        "{base}/customers/$c.id/?name=$c.name",  # ($c.id? is the null-safe form)
        "PUT",
        '{"id": $c.id, "label": "{sys_label}"}',
        {"Authorization": "Bearer {token}", "X-Id": "$c.id"},
    )
    iid = str(one(conn, f"SELECT df.start({dsl}, 'sync')"))
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    (got,) = http_server.received
    assert got.target == "/customers/42/?name=a%20b&c"
    assert got.body == b'{"id": 42, "label": "sync"}'
    assert got.headers["authorization"] == "Bearer s3cret"
    assert got.headers["x-id"] == "42"


def test_results_downstream_status_ok_and_body_as_jsonb(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply(
        "/user",
        body=b'{"name": "Ada", "langs": ["en"]}',
        headers=[("Content-Type", "application/json")],
    )
    dsl = (
        f"({http(http_server.url('/user'))} |=> 'resp') ~> "
        "'SELECT $resp.status AS status, $resp.ok AS ok, "
        "($resp.body::jsonb)->>''name'' AS name, $resp.encoding AS encoding'"
    )
    iid, status = run_workflow(conn, dsl)
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid)["rows"] == [
        {"status": 200, "ok": True, "name": "Ada", "encoding": "text"}
    ]


def test_an_http_condition_and_a_named_failure_downstream(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/missing", status=404, body=b"nope")
    dsl = (
        f"({http(http_server.url('/missing'))} |=> 'r') ~> "
        "df.if('SELECT $r.ok', 'SELECT ''found''', 'SELECT ''missing: '' || $r.status')"
    )
    iid, status = run_workflow(conn, dsl)
    assert status == "completed", output_of(conn, iid)
    assert result_of(conn, iid)["rows"] == [{"?column?": "missing: 404"}]


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (None, b"\x89PNG\r\n\x1a\n\x00\x00", "base64"),
        ("application/octet-stream", b"\xff\xfe\xfd", "base64"),
        ("application/octet-stream", b"plain utf-8 \xc3\xa9", "text"),  # sniffed
        ("text/plain; charset=latin-1", b"caf\xe9", "text"),
        ("application/problem+json", b'{"e": 1}', "text"),
        ("text/plain", b"a\x00b", "base64"),  # jsonb cannot store a NUL
    ],
)
def test_text_and_binary_bodies(
    conn: Conn,
    allow_all: None,
    worker: WorkerThread,
    http_server: HttpServer,
    content_type: str | None,
    body: bytes,
    expected: str,
) -> None:
    headers = [] if content_type is None else [("Content-Type", content_type)]
    http_server.reply("/blob", body=body, headers=headers)
    iid, status = run_workflow(conn, http(http_server.url("/blob")))
    assert status == "completed", output_of(conn, iid)
    result = envelope(conn, iid)
    assert result["encoding"] == expected
    if expected == "base64":
        assert base64.b64decode(result["body"]) == body
    elif content_type is not None and "latin-1" in content_type:
        assert result["body"] == "café"
    else:
        assert result["body"] == body.decode()


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_response_framings(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer, framing: str
) -> None:
    body = b"".join(b"line %d\n" % i for i in range(1000))
    http_server.reply("/long", body=body, framing=framing)
    iid, status = run_workflow(conn, http(http_server.url("/long")))
    assert status == "completed", output_of(conn, iid)
    assert envelope(conn, iid)["body"] == body.decode()


def test_multipart_parts_arrive_intact(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/upload", status=201)
    pdf = bytes(range(256)) * 40  # 10 KiB of every byte: encode() breaks its base64 lines
    conn.execute("CREATE TABLE files (id int, data bytea)")
    conn.execute("INSERT INTO files VALUES (7, %s)", (pdf,))
    conn.execute("SELECT df.setvar('logo', %s)", (base64.b64encode(b"GIF89a").decode(),))
    parts = [
        {
            "name": "invoice-$f.id",
            "data_b64": "$f.data",
            "filename": 'invoice "7".pdf',
            "content_type": "application/pdf",
        },
        {"name": "note", "data_b64": base64.b64encode("héllo".encode()).decode()},
        {"name": "logo", "data_b64": " {logo} ", "filename": "{sys_label}.gif"},
    ]
    dsl = (
        "('SELECT id, encode(data, ''base64'') AS data FROM files' |=> 'f') ~> "
        f"df.http_multipart({sql_literal(http_server.url('/upload'))}, 'post', "
        f'{sql_literal(json.dumps(parts))}::jsonb, \'{{"X-Batch": "1"}}\'::jsonb)'
    )
    iid = str(one(conn, f"SELECT df.start({dsl}, 'brand')"))
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    (got,) = http_server.received
    assert got.method == "POST" and got.headers["x-batch"] == "1"
    form = multipart(got.headers["content-type"], got.body)
    assert [p.get_param("name", header="content-disposition") for p in form] == [
        "invoice-7",
        "note",
        "logo",
    ]
    assert form[0].get_payload(decode=True) == pdf
    assert form[0].get_content_type() == "application/pdf"
    assert 'filename="invoice %227%22.pdf"' in form[0]["content-disposition"]
    assert form[1].get_payload(decode=True) == "héllo".encode()
    assert form[2].get_payload(decode=True) == b"GIF89a"
    assert form[2].get_param("filename", header="content-disposition") == "brand.gif"


def multipart(content_type: str, body: bytes) -> list[Message]:
    message = message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert message.is_multipart()
    parts = message.get_payload()
    assert isinstance(parts, list)
    return parts


# -- failures -----------------------------------------------------------------------------------


def test_timeout_fails_the_node(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/slow", delay=5)
    url = http_server.url("/slow")
    started = time.monotonic()
    iid, status = run_workflow(conn, http(url, timeout=1))
    assert status == "failed"
    assert time.monotonic() - started < 4.5
    assert failure(conn, iid) == f"HTTP timeout after 1s: {url}"


def test_redirects_are_returned_not_followed(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/old", status=302, headers=[("Location", http_server.url("/new"))])
    http_server.reply("/new", body=b"followed")
    iid, status = run_workflow(conn, http(http_server.url("/old")))
    assert status == "completed", output_of(conn, iid)
    result = envelope(conn, iid)
    assert (result["status"], result["ok"]) == (302, False)
    assert result["headers"]["location"] == http_server.url("/new")
    assert [r.target for r in http_server.received] == ["/old"]


def test_4xx_completes_with_ok_false(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/gone", status=410, body=b"gone for good")
    iid, status = run_workflow(conn, http(http_server.url("/gone")))
    assert status == "completed", output_of(conn, iid)
    result = envelope(conn, iid)
    assert (result["status"], result["ok"], result["body"]) == (410, False, "gone for good")


def test_5xx_fails_with_a_preview_of_the_body(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/down", status=503, body=b"x" * 600 + b"tail")
    url = http_server.url("/down")
    iid, status = run_workflow(conn, http(url, "POST", "{}"))
    assert status == "failed"
    assert failure(conn, iid) == f"HTTP POST {url} returned 503: " + "x" * 512
    assert output_of(conn, iid).endswith("x" * 512)


def test_connection_refused(conn: Conn, allow_all: None, worker: WorkerThread) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nothing listens there)
    url = f"http://127.0.0.1:{port}/x"
    iid, status = run_workflow(conn, http(url))
    assert status == "failed"
    assert failure(conn, iid) == (
        f"HTTP connection failed: error sending request for url ({url}): connection refused"
    )


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_oversize_response_fails(
    conn: Conn,
    allow_all: None,
    start_worker: Callable[..., WorkerThread],
    http_server: HttpServer,
    framing: str,
) -> None:
    start_worker(http_max_response_bytes=1000)
    http_server.reply("/small", body=b"s" * 1000, framing=framing)
    http_server.reply("/big", body=b"b" * 5000, framing=framing)
    iid, status = run_workflow(conn, http(http_server.url("/small")))
    assert status == "completed", output_of(conn, iid)
    url = http_server.url("/big")
    iid, status = run_workflow(conn, http(url))
    assert status == "failed"
    assert failure(conn, iid) == (
        f"HTTP GET {url}: the response is larger than 1000 bytes, the worker's limit "
        "(--http-max-response-bytes)"
    )


def test_limits_on_timeout_and_request_size_are_server_settings(
    conn: Conn, db_name: str, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/x")
    dsl = http(http_server.url("/x"), "POST", "y" * 100, timeout=60)
    iid = str(one(conn, f"SELECT df.start({dsl})"))  # built under the defaults
    wait_for(conn, iid)
    conn.execute(f'ALTER DATABASE "{db_name}" SET pg_durable.http_max_timeout_seconds = 30')
    iid, status = run_workflow(conn, json_literal(conn, dsl))
    assert status == "failed"
    assert failure(conn, iid) == (
        "Timeout of 60 seconds exceeds pg_durable.http_max_timeout_seconds (30); use a shorter "
        "timeout, or raise the setting"
    )
    conn.execute(f'ALTER DATABASE "{db_name}" RESET pg_durable.http_max_timeout_seconds')
    conn.execute(f'ALTER DATABASE "{db_name}" SET pg_durable.http_max_request_bytes = 99')
    iid, status = run_workflow(conn, json_literal(conn, dsl))
    assert status == "failed"
    assert failure(conn, iid) == (
        "HTTP request body is 100 bytes, more than pg_durable.http_max_request_bytes (99); "
        "send less data per request, or raise the setting"
    )
    assert len(http_server.received) == 1


def json_literal(conn: Conn, dsl: str) -> str:
    """The envelope ``dsl`` builds now, as a literal: started later, it is not built again."""
    return sql_literal(str(one(conn, f"SELECT {dsl}")))


def test_the_seed_articles_scheduled_sync(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply(
        "/v1/rates", body=b'{"eur": 1.08}', headers=[("Content-Type", "application/json")]
    )
    conn.execute("CREATE TABLE external_data (id serial, payload jsonb)")
    url = sql_literal(http_server.url("/v1/rates"))
    iid = str(
        one(
            conn,
            f"SELECT df.start(@> ((df.http({url}, 'GET') |=> 'response')"
            " ~> 'INSERT INTO external_data (payload) VALUES ($response::jsonb)'"
            " ~> df.wait_for_schedule('*/30 * * * *')), 'rates-sync')",
        )
    )
    deadline = time.monotonic() + 20
    while not one(conn, "SELECT count(*) FROM external_data"):
        assert time.monotonic() < deadline, output_of(conn, iid)
        time.sleep(0.05)
    payload = one(conn, "SELECT payload FROM external_data")
    assert payload["status"] == 200 and payload["ok"] is True
    assert json.loads(payload["body"]) == {"eur": 1.08}
    # The next iteration waits for the next half hour.
    assert one(conn, "SELECT df.status(%s)", (iid,)) == "running"
    conn.execute("SELECT df.cancel(%s)", (iid,))
    assert wait_for(conn, iid) == "cancelled"
    assert len(http_server.received) == 1


# -- the egress policy --------------------------------------------------------------------------


class FakeDns:
    """DNS answers of the tests' own (the client's resolver hook), counting the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


@pytest.fixture
def allow_list(conn: Conn, db_name: str) -> None:
    set_policy(conn, db_name, "allow-list", "api.example.test, .svc.example.test")


def fake_dns(worker: WorkerThread, answers: dict[str, list[str]], *, loopback: bool) -> FakeDns:
    dns = FakeDns(answers)
    client(worker).resolver = dns
    client(worker).allow_loopback = loopback
    return dns


def test_allow_list_host_resolving_to_a_public_address_is_reached(
    conn: Conn, allow_list: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    # (The tests' server listens on loopback: with the test-only allow_loopback hook,
    # 127.0.0.1 stands for a public address.)
    dns = fake_dns(worker, {"api.example.test": ["127.0.0.1"]}, loopback=True)
    http_server.reply("/v1", body=b"hello")
    url = http_server.url("/v1", host="API.Example.test")
    iid, status = run_workflow(conn, http(url))
    assert status == "completed", output_of(conn, iid)
    assert envelope(conn, iid)["body"] == "hello"
    assert dns.asked == ["api.example.test"]
    assert http_server.received[0].headers["host"] == f"api.example.test:{http_server.port}"
    # A suffix entry, one label or more before it.
    fake_dns(worker, {"a.b.svc.example.test": ["127.0.0.1"]}, loopback=True)
    iid, status = run_workflow(conn, http(http_server.url("/v1", host="a.b.svc.example.test")))
    assert status == "completed", output_of(conn, iid)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6 (unique local)
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
    ],
)
def test_dns_answers_in_restricted_ranges_are_blocked(
    conn: Conn, allow_list: None, worker: WorkerThread, http_server: HttpServer, address: str
) -> None:
    fake_dns(worker, {"api.example.test": [address]}, loopback=False)
    iid, status = run_workflow(conn, http(f"http://api.example.test:{http_server.port}/"))
    assert status == "failed"
    assert failure(conn, iid) == (
        "Blocked: the resolved IP address for 'api.example.test' is in a restricted range. "
        "df.http() cannot access private or internal network addresses."
    )
    assert http_server.received == []


def test_only_the_checked_addresses_are_connected_to_and_dns_is_asked_once(
    conn: Conn, allow_list: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/", body=b"pinned")
    # Private answers are dropped and the public one is used; a name that does not really
    # resolve shows that the client connects to the address it checked, not to the name.
    dns = fake_dns(
        worker, {"api.example.test": ["10.0.0.7", "169.254.169.254", "127.0.0.1"]}, loopback=True
    )
    iid, status = run_workflow(conn, http(http_server.url("/", host="api.example.test")))
    assert status == "completed", output_of(conn, iid)
    assert dns.asked == ["api.example.test"]

    class Rebinding(FakeDns):
        """Public for the first answer, internal for every later one."""

        async def __call__(self, host: str, port: int) -> list[str]:
            self.asked.append(host)
            return ["127.0.0.1"] if len(self.asked) == 1 else ["10.0.0.1"]

    rebinding = Rebinding({})
    client(worker).resolver = rebinding
    iid, status = run_workflow(conn, http(http_server.url("/", host="api.example.test")))
    assert status == "completed", output_of(conn, iid)
    assert rebinding.asked == ["api.example.test"]


def not_listed(host: str) -> str:
    return (
        f"Blocked: '{host}' is not in the allowed endpoint list. Only requests to the hosts "
        "listed in pg_durable.http_allowed_hosts are permitted."
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://evil.example.test/",
            not_listed("evil.example.test"),
        ),
        (
            "http://svc.example.test/",  # the apex of a suffix
            not_listed("svc.example.test"),
        ),
        (
            "http://api.example.test@evil.example.test/",
            not_listed("evil.example.test"),
        ),
        (
            "http://127.0.0.1/",
            "Blocked: requests to bare IP addresses are not permitted. Use a host name listed in "
            "pg_durable.http_allowed_hosts instead.",
        ),
        (
            "http://[::1]:8080/",
            "Blocked: requests to bare IP addresses are not permitted. Use a host name listed in "
            "pg_durable.http_allowed_hosts instead.",
        ),
        (
            "http://2130706433/",
            "Blocked: requests to bare IP addresses are not permitted. Use a host name listed in "
            "pg_durable.http_allowed_hosts instead.",
        ),
    ],
)
def test_hosts_outside_the_allow_list_are_blocked_before_dns(
    conn: Conn, allow_list: None, worker: WorkerThread, url: str, message: str
) -> None:
    dns = fake_dns(worker, {}, loopback=True)
    iid, status = run_workflow(conn, http(url))
    assert status == "failed"
    assert failure(conn, iid) == message
    assert dns.asked == []


def test_scheme_is_checked_after_substitution(
    conn: Conn, allow_all: None, worker: WorkerThread
) -> None:
    conn.execute("SELECT df.setvar('target', 'file:///etc/passwd')")
    iid, status = run_workflow(conn, http("{target}"))
    assert status == "failed"
    assert failure(conn, iid) == (
        "Blocked: unsupported URL scheme 'file'. Only http and https are allowed."
    )


def test_allow_all_reaches_loopback_and_bare_ips(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/", body=b"inside")
    assert not client(worker).allow_loopback
    iid, status = run_workflow(conn, http(http_server.url("/")))
    assert status == "completed", output_of(conn, iid)


def test_policy_changes_reach_a_running_worker(
    conn: Conn, db_name: str, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/", body=b"on")
    set_policy(conn, db_name, "allow-all")  # (this session: to build the step)
    envelope_text = json_literal(conn, http(http_server.url("/")))
    conn.execute(f"ALTER DATABASE \"{db_name}\" SET pg_durable.http_policy = 'off'")
    iid, status = run_workflow(conn, envelope_text)
    assert status == "failed"
    assert failure(conn, iid) == (
        "Blocked: outbound HTTP requests are disabled. Set pg_durable.http_policy to "
        "'allow-list' (with pg_durable.http_allowed_hosts) or 'allow-all' to enable them."
    )
    # ALTER DATABASE … SET reaches only new sessions: the worker asks the policy on a session
    # it opens again when the database's settings change.
    conn.execute(f"ALTER DATABASE \"{db_name}\" SET pg_durable.http_policy = 'allow-all'")
    iid, status = run_workflow(conn, envelope_text)
    assert status == "completed", output_of(conn, iid)
    conn.execute(f'ALTER DATABASE "{db_name}" RESET pg_durable.http_policy')
    iid, status = run_workflow(conn, envelope_text)
    assert status == "failed"
    assert failure(conn, iid).startswith("Blocked: outbound HTTP requests are disabled.")
    assert len(http_server.received) == 1


def test_alter_system_reaches_a_running_worker(
    conn: Conn, db_name: str, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/", body=b"on")
    set_policy(conn, db_name, "allow-all")
    envelope_text = json_literal(conn, http(http_server.url("/")))
    set_policy(conn, db_name, "off")
    iid, status = run_workflow(conn, envelope_text)
    assert status == "failed"
    conn.execute(f'ALTER DATABASE "{db_name}" RESET pg_durable.http_policy')
    try:
        conn.execute("ALTER SYSTEM SET pg_durable.http_policy = 'allow-all'")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # (sessions take the new configuration when the signal reaches them)
        iid, status = run_workflow(conn, envelope_text)
        assert status == "completed", output_of(conn, iid)
    finally:
        conn.execute("ALTER SYSTEM RESET pg_durable.http_policy")
        conn.execute("SELECT pg_reload_conf()")


def test_privilege_revoked_after_start_blocks_the_request(
    conn: Conn,
    allow_all: None,
    roles: Roles,
    start_worker: Callable[..., WorkerThread],
    http_server: HttpServer,
) -> None:
    http_server.reply("/", body=b"ok")
    user = roles.create("caller", grant=True)
    conn.execute("SELECT df.grant_usage(%s, include_http => true)", (user,))
    as_user = roles.connect(user)
    as_user.execute("SET pg_durable.http_policy = 'allow-all'")
    url = sql_literal(http_server.url("/"))
    plain = str(one(as_user, f"SELECT df.start(df.http({url}, 'GET'))"))
    parts = '\'[{"name": "a", "data_b64": "YQ=="}]\''
    multi = str(one(as_user, f"SELECT df.start(df.http_multipart({url}, 'POST', {parts}))"))
    ident = sql.Identifier(user)
    for function in (
        "http(text,text,text,jsonb,integer)",
        "http_multipart(text,text,jsonb,jsonb,integer)",
    ):
        conn.execute(
            sql.SQL("REVOKE EXECUTE ON FUNCTION df.{} FROM {}").format(sql.SQL(function), ident)
        )
    start_worker()
    assert wait_for(conn, plain) == "failed"
    assert failure(conn, plain) == (
        f"Blocked: role '{user}' does not have EXECUTE privilege on df.http(). Grant EXECUTE ON "
        f"FUNCTION df.http(text,text,text,jsonb,integer) TO {user} to allow HTTP requests."
    )
    assert wait_for(conn, multi) == "failed"
    assert failure(conn, multi) == (
        f"Blocked: role '{user}' does not have EXECUTE privilege on df.http_multipart(). Grant "
        f"EXECUTE ON FUNCTION df.http_multipart(text,text,jsonb,jsonb,integer) TO {user} to "
        "allow HTTP requests."
    )
    assert http_server.received == []
    conn.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION df.http(text,text,text,jsonb,integer) TO {}").format(
            ident
        )
    )
    again = str(one(as_user, f"SELECT df.start(df.http({url}, 'GET'))"))
    assert wait_for(conn, again) == "completed", output_of(conn, again)


# -- leases and idempotency ---------------------------------------------------------------------


def test_no_transaction_is_open_while_a_request_waits(
    conn: Conn, db_name: str, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    release = threading.Event()
    http_server.reply("/slow", hold=release, body=b"late")
    iid = str(one(conn, f"SELECT df.start({http(http_server.url('/slow'), timeout=20)})"))
    http_server.wait_for(1)
    time.sleep(1.0)  # (longer than any transaction of the worker's own)
    try:
        old = conn.execute(
            "SELECT application_name, state, now() - xact_start FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE 'pg_durable:worker:%%' "
            "AND xact_start < now() - interval '0.5 s'",
            (db_name,),
        ).fetchall()
        assert old == []
        # The fiber is leased for the request's timeout and a margin (30 s), not for an hour.
        lease = one(
            conn,
            "SELECT extract(epoch FROM run_at - now()) FROM df._fibers WHERE instance_id = %s",
            (iid,),
        )
        assert 40 < lease < 50
    finally:
        release.set()
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    assert envelope(conn, iid)["body"] == "late"
    state = one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,))
    assert state == 0


def test_a_request_sent_again_after_its_lease_ran_out_has_the_same_key(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    release = threading.Event()
    http_server.reply("/pay", hold=release, status=201, body=b"paid")
    iid = str(one(conn, f"SELECT df.start({http(http_server.url('/pay'), 'POST', '{}')})"))
    http_server.wait_for(1)
    # As if the worker sending it had died: its lease runs out, another slot takes the step.
    conn.execute("UPDATE df._fibers SET run_at = now() WHERE instance_id = %s", (iid,))
    first, second = http_server.wait_for(2)
    release.set()
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    key = first.headers["idempotency-key"]
    assert second.headers["idempotency-key"] == key
    node = one(
        conn, "SELECT id FROM df.nodes WHERE instance_id = %s AND node_type = 'HTTP'", (iid,)
    )
    assert key.startswith(f"{iid}-{node}-")
    # The first attempt's response came too late for its lease: one outcome is recorded.
    assert envelope(conn, iid)["status"] == 201
    assert len(http_server.received) == 2


def test_a_worker_killed_mid_request_leaves_it_to_another_after_the_lease(
    conn: Conn,
    dsn: str,
    allow_all: None,
    start_worker: Callable[..., WorkerThread],
    http_server: HttpServer,
) -> None:
    hold = threading.Event()
    http_server.replies("/charge", Reply(hold=hold), Reply(201, b"charged"))
    doomed = spawn_worker(dsn)
    try:
        iid = str(
            one(conn, f"SELECT df.start({http(http_server.url('/charge'), 'POST', '{}', None, 2)})")
        )
        (first,) = http_server.wait_for(1)
        started = time.monotonic()
        doomed.kill()
        doomed.wait()
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    start_worker()
    time.sleep(3)
    assert len(http_server.received) == 1  # leased: not sent again before 2 s + 30 s
    second = http_server.wait_for(2, timeout=45)[1]
    assert 30 < time.monotonic() - started < 40
    assert wait_for(conn, iid) == "completed", output_of(conn, iid)
    assert envelope(conn, iid)["status"] == 201
    assert second.headers["idempotency-key"] == first.headers["idempotency-key"]
    hold.set()


def test_a_retried_request_keeps_its_key(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.replies("/flaky", Reply(503, b"busy"), Reply(200, b"done"))
    dsl = f"df.retry({http(http_server.url('/flaky'), 'POST', '{}')}, 3, 0.1)"
    iid, status = run_workflow(conn, f"{dsl} ~> {http(http_server.url('/flaky'))}")
    assert status == "completed", output_of(conn, iid)
    first, second, other = http_server.received
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert other.headers["idempotency-key"] != first.headers["idempotency-key"]


def test_cancelled_while_a_request_waits(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    release = threading.Event()
    http_server.reply("/slow", hold=release)
    conn.execute("CREATE TABLE after_http (x int)")
    dsl = f"{http(http_server.url('/slow'))} ~> 'INSERT INTO after_http VALUES (1)'"
    iid = str(one(conn, f"SELECT df.start({dsl})"))
    http_server.wait_for(1)
    conn.execute("SELECT df.cancel(%s)", (iid,))
    release.set()
    assert wait_for(conn, iid) == "cancelled"
    time.sleep(0.5)
    assert one(conn, "SELECT count(*) FROM after_http") == 0
    assert one(conn, "SELECT count(*) FROM df._fibers WHERE instance_id = %s", (iid,)) == 0


def test_requests_of_join_branches_and_of_many_instances_run_at_once(
    conn: Conn, allow_all: None, worker: WorkerThread, http_server: HttpServer
) -> None:
    http_server.reply("/slow", delay=1.5, body=b"s")
    slow = http(http_server.url("/slow"))
    started = time.monotonic()
    iid, status = run_workflow(conn, f"df.join({slow}, {slow})")
    assert status == "completed", output_of(conn, iid)
    assert time.monotonic() - started < 2.8  # (the worker has 4 slots)
    assert [r["status"] for r in result_of(conn, iid)] == [200, 200]
    http_server.reply("/quick", body=b"q")
    ids = [str(one(conn, f"SELECT df.start({http(http_server.url('/quick'))})")) for _ in range(12)]
    assert {wait_for(conn, i) for i in ids} == {"completed"}
    assert len(http_server.received) == 2 + 12


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Any:
    pem = self_signed(tmp_path, "api.example.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server = HttpServer(tls=context).start()
    trusted = ssl.create_default_context(cafile=str(tmp_path / "api.example.test.crt"))
    try:
        yield server, trusted
    finally:
        server.stop()


def test_tls_is_verified_for_the_host_of_the_url(
    conn: Conn, allow_list: None, worker: WorkerThread, tls_server: Any
) -> None:
    server, trusted = tls_server
    server.reply("/secure", body=b"over tls")
    client(worker).ssl_context = trusted
    # Both names resolve to the server; its certificate is for api.example.test only.
    fake_dns(
        worker,
        {"api.example.test": ["127.0.0.1"], "x.svc.example.test": ["127.0.0.1"]},
        loopback=True,
    )
    iid, status = run_workflow(conn, http(server.url("/secure", host="api.example.test")))
    assert status == "completed", output_of(conn, iid)
    assert envelope(conn, iid)["body"] == "over tls"
    url = server.url("/secure", host="x.svc.example.test")
    iid, status = run_workflow(conn, http(url))
    assert status == "failed"
    assert failure(conn, iid).startswith(
        f"HTTP connection failed: error sending request for url ({url}): TLS certificate "
        "verification failed: Hostname mismatch"
    )
    assert len(server.received) == 1
