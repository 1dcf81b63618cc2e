"""HTTP steps, the SQL side (SPEC §1.3, §2.1, §3.3; docs/http.md): df.http and
df.http_multipart, the policy settings, the build-time checks that df.start repeats for
hand-built nodes, the allow-list rule, privileges and df.explain.

No worker and no network: building a step and df.start only compute and write rows.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.fixtures.roles import Roles
from tests.fixtures.sql import one, raises_exactly

Conn = psycopg.Connection[Any]

GRAPH = "Invalid durable function graph: "
DISABLED = (
    "df.http() is disabled. Set pg_durable.http_policy to 'allow-list' (with "
    "pg_durable.http_allowed_hosts) or 'allow-all' to enable outbound HTTP requests."
)
BLOCKED_OFF = (
    "Blocked: outbound HTTP requests are disabled. Set pg_durable.http_policy to "
    "'allow-list' (with pg_durable.http_allowed_hosts) or 'allow-all' to enable them."
)
BARE_IP = (
    "Blocked: requests to bare IP addresses are not permitted. Use a host name listed in "
    "pg_durable.http_allowed_hosts instead."
)
HTTP_SIG = "df.http(text,text,text,jsonb,integer)"
MULTIPART_SIG = "df.http_multipart(text,text,jsonb,jsonb,integer)"
FORBIDDEN = (
    "the HTTP client sets it itself. Headers that cannot be set: Host, Content-Length, "
    "Transfer-Encoding, Connection, Keep-Alive, Upgrade, TE, Trailer, Expect and Proxy-*"
)


def not_listed(host: str) -> str:
    return (
        f"Blocked: '{host}' is not in the allowed endpoint list. Only requests to the hosts "
        "listed in pg_durable.http_allowed_hosts are permitted."
    )


def set_policy(c: Conn, policy: str, hosts: str | None = None) -> None:
    c.execute("SELECT set_config('pg_durable.http_policy', %s, false)", (policy,))
    if hosts is not None:
        c.execute("SELECT set_config('pg_durable.http_allowed_hosts', %s, false)", (hosts,))


@pytest.fixture
def http_on(conn: Conn) -> Conn:
    """The superuser connection, with HTTP steps allowed anywhere in its session."""
    set_policy(conn, "allow-all")
    return conn


def envelope(kind: str, config: dict[str, Any]) -> str:
    return json.dumps({"node_type": kind, "query": json.dumps(config)})


def config_of(envelope_text: str) -> dict[str, Any]:
    """The config of a built step, parsed (keys in their stored order)."""
    query = json.loads(envelope_text)["query"]
    assert isinstance(query, str)
    parsed = json.loads(query)
    assert isinstance(parsed, dict)
    return parsed


def stored_queries(conn: Conn, instance_id: str) -> list[tuple[str, str | None]]:
    return conn.execute(
        "SELECT node_type, query FROM df.nodes WHERE instance_id = %s ORDER BY ctid",
        (instance_id,),
    ).fetchall()


# -- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [None, "off", "", " OFF "])
def test_off_by_default_and_when_off(conn: Conn, policy: str | None) -> None:
    if policy is not None:
        set_policy(conn, policy)
    assert one(conn, "SELECT df._http_policy()") == "off"
    with raises_exactly(errors.RaiseException, DISABLED):
        conn.execute("SELECT df.http('https://api.example.com')")
    # (SPEC: both constructors say df.http() is disabled.)
    with raises_exactly(errors.RaiseException, DISABLED):
        conn.execute(
            "SELECT df.http_multipart('https://api.example.com', 'POST', "
            """'[{"name": "f", "data_b64": "eA=="}]')"""
        )


def test_the_policy_comes_first(conn: Conn) -> None:
    """Off, every call is refused the same way, whatever is wrong with its arguments."""
    with raises_exactly(errors.RaiseException, DISABLED):
        conn.execute("SELECT df.http('ftp://x', 'HEAD', timeout_seconds => -1)")
    with raises_exactly(errors.RaiseException, DISABLED):
        conn.execute("SELECT df.http_multipart(NULL)")


@pytest.mark.parametrize(
    ("value", "policy"),
    [("allow-list", "allow-list"), ("ALLOW-ALL", "allow-all"), (" allow-all\n", "allow-all")],
)
def test_policy_values(conn: Conn, value: str, policy: str) -> None:
    set_policy(conn, value)
    assert one(conn, "SELECT df._http_policy()") == policy
    assert one(conn, "SELECT df.http('https://api.example.com')").startswith('{"node_type":"HTTP"')


@pytest.mark.parametrize("value", ["on", "true", "allow_all", "allowlist", "all"])
def test_an_invalid_policy_names_the_setting(conn: Conn, value: str) -> None:
    set_policy(conn, value)
    message = (
        f'invalid value for parameter "pg_durable.http_policy": "{value}". '
        "Valid values are off, allow-list and allow-all."
    )
    for query in (
        "SELECT df._http_policy()",
        "SELECT df.http('https://api.example.com')",
        "SELECT df._http_request_error('HTTP', 'postgres', 'https://api.example.com')",
    ):
        with raises_exactly(errors.InvalidParameterValue, message):
            conn.execute(query)


def test_allow_list_mode_builds_for_any_host_and_checks_its_list(conn: Conn) -> None:
    """Where a request may go is decided when it is sent; a list that cannot be read is
    reported as soon as a step is built."""
    set_policy(conn, "allow-list", "api.example.com")
    assert one(conn, "SELECT df.http('https://elsewhere.example.org/')")
    set_policy(conn, "allow-list", "api.example.com, https://bad.example.com/")
    with raises_exactly(
        errors.InvalidParameterValue,
        'invalid entry "https://bad.example.com/" in pg_durable.http_allowed_hosts: expected a '
        "host name (api.example.com) or a suffix starting with a dot (.example.com); IP "
        "addresses are never allowed",
    ):
        conn.execute("SELECT df.http('https://api.example.com/')")
    # allow-all does not read the list.
    set_policy(conn, "allow-all")
    assert one(conn, "SELECT df.http('https://api.example.com/')")


@pytest.mark.parametrize(
    "entry", ["10.0.0.5", "*.example.com", "example.com:443", "[::1]", "exa mple.com", ".", "a..b"]
)
def test_invalid_allowed_hosts_entries(conn: Conn, entry: str) -> None:
    set_policy(conn, "allow-list", f"ok.example.com,{entry}")
    with pytest.raises(errors.InvalidParameterValue) as caught:
        conn.execute("SELECT df._http_allowed_hosts()")
    assert caught.value.diag.message_primary == (
        f'invalid entry "{entry.strip().lower()}" in pg_durable.http_allowed_hosts: expected a '
        "host name (api.example.com) or a suffix starting with a dot (.example.com); IP "
        "addresses are never allowed"
    )


def test_allowed_hosts_list(conn: Conn) -> None:
    set_policy(conn, "allow-list", " API.Example.com ,, .Blob.Core.Windows.NET ,")
    assert one(conn, "SELECT df._http_allowed_hosts()") == [
        "api.example.com",
        ".blob.core.windows.net",
    ]
    set_policy(conn, "allow-list", "")
    assert one(conn, "SELECT df._http_allowed_hosts()") == []


# -- envelopes ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("http_on")
def test_http_envelopes_exactly(conn: Conn) -> None:
    assert one(conn, "SELECT df.http('https://api.example.com/v1/ping')") == (
        '{"node_type":"HTTP","query":"{\\"url\\":\\"https://api.example.com/v1/ping\\",'
        '\\"method\\":\\"POST\\",\\"body\\":null,\\"headers\\":null,\\"timeout_seconds\\":30}"}'
    )
    built = one(
        conn,
        "SELECT df.http('https://api.example.com/v1/x', 'put', %s, %s, 10)",
        ('{"a": 1}', '{"X-B": "2", "Authorization": "Bearer {key}", "Accept": "*/*"}'),
    )
    assert json.loads(built)["node_type"] == "HTTP"
    assert json.loads(built)["query"] == (
        '{"url":"https://api.example.com/v1/x","method":"PUT","body":"{\\"a\\": 1}",'
        '"headers":{"Accept":"*/*","Authorization":"Bearer {key}","X-B":"2"},'
        '"timeout_seconds":10}'
    )
    # Identical calls, identical text; NULL method and timeout are their defaults.
    assert one(conn, "SELECT df.http('https://a.example.com', NULL, NULL, NULL, NULL)") == one(
        conn, "SELECT df.http('https://a.example.com')"
    )
    assert config_of(one(conn, "SELECT df.http('https://a.example.com', 'Get')"))["method"] == (
        "GET"
    )
    assert (
        config_of(one(conn, "SELECT df.http('https://a.example.com', headers => '{}')"))["headers"]
        == {}
    )


@pytest.mark.usefixtures("http_on")
def test_http_multipart_envelopes_exactly(conn: Conn) -> None:
    parts = [
        {
            "content_type": "text/plain",
            "extra": 1,
            "filename": "a.txt",
            "data_b64": "aGVsbG8=",
            "name": "file",
        },
        {"name": "ref", "data_b64": "$report.pdf", "filename": None},
        {"name": "var", "data_b64": " {logo}\n"},
    ]
    built = one(
        conn,
        "SELECT df.http_multipart('https://up.example.com/u', 'patch', %s, %s)",
        (json.dumps(parts), '{"X-Id": "{sys_instance_id}"}'),
    )
    assert json.loads(built)["node_type"] == "HTTP_MULTIPART"
    assert json.loads(built)["query"] == (
        '{"url":"https://up.example.com/u","method":"PATCH","parts":['
        '{"name":"file","data_b64":"aGVsbG8=","filename":"a.txt","content_type":"text/plain"},'
        '{"name":"ref","data_b64":"$report.pdf"},'
        '{"name":"var","data_b64":" {logo}\\n"}],'
        '"headers":{"X-Id":"{sys_instance_id}"},"timeout_seconds":30}'
    )
    # PostgreSQL's own base64, with its line breaks every 76 characters.
    data = base64.b64encode(bytes(range(256)) * 2).decode()
    wrapped = one(conn, "SELECT encode(%s::bytea, 'base64')", (bytes(range(256)) * 2,))
    assert "\n" in wrapped and wrapped.replace("\n", "") == data
    built = one(
        conn,
        "SELECT df.http_multipart('https://up.example.com/u', parts => %s)",
        (json.dumps([{"name": "blob", "data_b64": wrapped}]),),
    )
    assert config_of(built)["parts"] == [{"name": "blob", "data_b64": wrapped}]


@pytest.mark.usefixtures("http_on")
def test_steps_compose_and_start(conn: Conn) -> None:
    """The seed article's scheduled sync, verbatim."""
    conn.execute("CREATE TABLE external_data (payload jsonb)")
    iid = one(
        conn,
        "SELECT df.start(@> ((df.http('https://api.example.com/data', 'GET') |=> 'response') "
        "~> 'INSERT INTO external_data (payload) VALUES ($response::jsonb)' "
        "~> df.wait_for_schedule('*/30 * * * *')))",
    )
    rows = stored_queries(conn, iid)
    assert [t for t, _ in rows] == ["LOOP", "THEN", "THEN", "HTTP", "SQL", "WAIT_SCHEDULE"]
    assert rows[3][1] == (
        '{"url":"https://api.example.com/data","method":"GET","body":null,"headers":null,'
        '"timeout_seconds":30}'
    )
    assert one(conn, "SELECT result_name FROM df.nodes WHERE node_type = 'HTTP'") == "response"


# -- build-time checks -------------------------------------------------------------------------

#: (constructor call, error). The same texts come from df.start for a hand-built node.
BUILD_ERRORS: list[tuple[str, str]] = [
    ("df.http(NULL)", "url is required and cannot be NULL or empty"),
    ("df.http('')", "url is required and cannot be NULL or empty"),
    (
        "df.http('ftp://files.example.com/x')",
        "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed.",
    ),
    (
        "df.http('FILE:///etc/passwd')",
        "Blocked: unsupported URL scheme 'file'. Only http and https are allowed.",
    ),
    (
        "df.http('gopher://x/{path}')",
        "Blocked: unsupported URL scheme 'gopher'. Only http and https are allowed.",
    ),
    (
        "df.http('api.example.com/x')",
        "Invalid URL 'api.example.com/x': it must start with http:// or https://",
    ),
    (
        "df.http('https://api.example.com/a' || chr(13) || chr(10) || 'X-Evil: 1')",
        "url must not contain control characters (CR, LF, TAB, ...)",
    ),
    (
        "df.http('https://x.example.com', 'HEAD')",
        "Invalid HTTP method: HEAD. Must be GET, POST, PUT, DELETE, or PATCH",
    ),
    (
        "df.http('https://x.example.com', 'options')",
        "Invalid HTTP method: OPTIONS. Must be GET, POST, PUT, DELETE, or PATCH",
    ),
    ("df.http('https://x.example.com', timeout_seconds => 0)", "Timeout must be positive"),
    ("df.http('https://x.example.com', timeout_seconds => -5)", "Timeout must be positive"),
    (
        "df.http('https://x.example.com', timeout_seconds => 301)",
        "Timeout of 301 seconds exceeds pg_durable.http_max_timeout_seconds (300); use a "
        "shorter timeout, or raise the setting",
    ),
    (
        "df.http('https://x.example.com', headers => '[\"a\"]')",
        "headers must be a JSON object of header names and string values",
    ),
    (
        "df.http('https://x.example.com', headers => '\"Authorization: x\"')",
        "headers must be a JSON object of header names and string values",
    ),
    (
        "df.http('https://x.example.com', headers => '{\"Authorization\": 12345}')",
        "HTTP header 'Authorization' has a number value; header values must be JSON strings",
    ),
    (
        "df.http('https://x.example.com', headers => '{\"X-Flag\": true}')",
        "HTTP header 'X-Flag' has a boolean value; header values must be JSON strings",
    ),
    (
        "df.http('https://x.example.com', headers => '{\"X-None\": null}')",
        "HTTP header 'X-None' has a null value; header values must be JSON strings",
    ),
    (
        'df.http(\'https://x.example.com\', headers => \'{"X-Obj": {"a": "b"}}\')',
        "HTTP header 'X-Obj' has a object value; header values must be JSON strings",
    ),
    *[
        (
            f"df.http('https://x.example.com', headers => '{{\"{name}\": \"v\"}}')",
            f"HTTP header '{name}' cannot be set: {FORBIDDEN}",
        )
        for name in (
            "Host",
            "host",
            "Content-Length",
            "TRANSFER-ENCODING",
            "Connection",
            "Keep-Alive",
            "Upgrade",
            "TE",
            "Trailer",
            "Expect",
            "Proxy-Authorization",
            "proxy-connection",
        )
    ],
    *[
        (
            f"df.http('https://x.example.com', headers => '{{\"{name}\": \"v\"}}')",
            f"Invalid HTTP header name '{name}': a header name is one or more letters, digits "
            "and !#$%&'*+-.^_`|~",
        )
        for name in ("X Space", "X:Colon", "", "X(1)", "Ünicode")
    ],
    (
        "df.http('https://x.example.com', headers => '{\"X-A\": \"a\\r\\nHost: evil\"}')",
        "HTTP header 'X-A': the value must not contain CR or LF characters",
    ),
    (
        "df.http('https://x.example.com', headers => '{\"X-A\": \"a\\nb\"}')",
        "HTTP header 'X-A': the value must not contain CR or LF characters",
    ),
    (
        'df.http(\'https://x.example.com\', headers => \'{"Accept": "a", "accept": "b"}\')',
        "HTTP header 'accept' is given twice (header names are case-insensitive)",
    ),
    (
        "df.http('https://x.example.com', 'POST', repeat('x', 10485761))",
        "HTTP request body is 10485761 bytes, more than pg_durable.http_max_request_bytes "
        "(10485760); send less data per request, or raise the setting",
    ),
    (
        "df.http_multipart('https://x.example.com')",
        "parts is required and cannot be NULL",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', 'null')",
        "parts is required and cannot be NULL",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '{\"name\": \"f\"}')",
        "parts must be a JSON array of part objects",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[]')",
        "parts must contain at least one part",
    ),
    (
        "df.http_multipart('https://x.example.com', 'GET', '[{\"name\": \"f\", "
        '"data_b64": ""}]\')',
        "Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH",
    ),
    (
        "df.http_multipart('https://x.example.com', 'delete', '[{\"name\": \"f\", "
        '"data_b64": ""}]\')',
        "Invalid HTTP method for multipart: DELETE. Must be POST, PUT, or PATCH",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": ""}, "oops"]\')',
        'parts[1] must be a JSON object {"name": …, "data_b64": …}',
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"data_b64\": \"eA==\"}]')",
        "parts[0]: name is required and must be a non-empty string",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"\", "
        '"data_b64": "eA=="}]\')',
        "parts[0]: name is required and must be a non-empty string",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": 7, "
        '"data_b64": "eA=="}]\')',
        "parts[0]: name is required and must be a non-empty string",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"a\\r\\nb\", "
        '"data_b64": "eA=="}]\')',
        "parts[0]: name must not contain CR or LF characters",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\"}]')",
        "parts[0] ('f'): data_b64 is required and must be a string of base64",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": [1]}]\')',
        "parts[0] ('f'): data_b64 is required and must be a string of base64",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "eA==", "filename": 5}]\')',
        "parts[0] ('f'): filename must be a string",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "eA==", "filename": "a.txt\\r\\nContent-Type: text/html"}]\')',
        "parts[0] ('f'): filename must not contain CR or LF characters",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "eA==", "content_type": false}]\')',
        "parts[0] ('f'): content_type must be a string",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "eA==", "content_type": "pdf"}]\')',
        "parts[0] ('f'): invalid content_type 'pdf': expected type/subtype, such as "
        "application/pdf",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "eA==", "content_type": "text/plain\\nX: y"}]\')',
        "parts[0] ('f'): invalid content_type 'text/plain\nX: y': expected type/subtype, such "
        "as application/pdf",
    ),
    *[
        (
            "df.http_multipart('https://x.example.com', 'POST', "
            f'\'[{{"name": "f", "data_b64": "{value}"}}]\')',
            "data_b64 for part 'f' mixes a variable reference with other text. Only a "
            "whole-value reference is supported (e.g. data_b64 => '$result' or '{myvar}'), "
            "because splicing into base64 would corrupt the payload.",
        )
        for value in ("eA==$r", "$r.*", "{a}{b}", "$r $s", "{not a var}", "$1", "$r.c.d")
    ],
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "not base64!"}]\')',
        "Invalid base64 in part 'f': invalid symbol \"!\" found while decoding base64 sequence",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "eA"}]\')',
        "Invalid base64 in part 'f': invalid base64 end sequence",
    ),
    (
        "df.http_multipart('https://x.example.com', 'POST', '[{\"name\": \"f\", "
        '"data_b64": "eA=="}]\', \'{"content-type": "multipart/form-data"}\')',
        "HTTP header 'content-type' cannot be set on a multipart request: the HTTP client sets "
        "it, with the boundary between the parts",
    ),
]


@pytest.mark.usefixtures("http_on")
@pytest.mark.parametrize(("call", "message"), BUILD_ERRORS)
def test_build_errors(conn: Conn, call: str, message: str) -> None:
    with raises_exactly(errors.RaiseException, message):
        conn.execute(f"SELECT {call}")


@pytest.mark.usefixtures("http_on")
def test_what_builds(conn: Conn) -> None:
    for call in (
        # The scheme is not checked when a reference gives it (the worker checks it after
        # substitution); case does not matter.
        "df.http('{api_base}/v1/x')",
        "df.http('$next_url')",
        "df.http('$r.url?')",
        "df.http('HTTPS://API.EXAMPLE.COM')",
        "df.http('http://api.example.com:8080/x?q={q}#frag')",
        "df.http('https://x.example.com', 'delete', NULL, '{\"X-Rate\": \"1\"}', 300)",
        "df.http('https://x.example.com', 'POST', repeat('x', 10485760))",
        "df.http('https://x.example.com', headers => '{\"Content-Type\": \"application/json\"}')",
        'df.http(\'https://x.example.com\', headers => \'{"X-Key": "{key}", "X-R": "$r.a"}\')',
        "df.http_multipart('https://x.example.com', 'put', "
        '\'[{"name": "f", "data_b64": "", "content_type": "text/plain; charset=utf-8"}]\')',
        "df.http_multipart('https://x.example.com', 'POST', "
        '\'[{"name": "f", "data_b64": "$r?"}, {"name": "g", "data_b64": "$r.c?"}]\')',
    ):
        assert one(conn, f"SELECT {call}"), call


@pytest.mark.usefixtures("http_on")
def test_limits_are_settings(conn: Conn) -> None:
    conn.execute("SET pg_durable.http_max_timeout_seconds = 3600")
    assert (
        config_of(one(conn, "SELECT df.http('https://x.example.com', timeout_seconds => 3600)"))[
            "timeout_seconds"
        ]
        == 3600
    )
    conn.execute("SET pg_durable.http_max_request_bytes = '1kB'")
    assert one(conn, "SELECT df.http('https://x.example.com', 'POST', repeat('é', 512))")
    with raises_exactly(
        errors.RaiseException,
        "HTTP request body is 1026 bytes, more than pg_durable.http_max_request_bytes (1024); "
        "send less data per request, or raise the setting",
    ):
        conn.execute("SELECT df.http('https://x.example.com', 'POST', repeat('é', 512) || 'xx')")
    # Multipart counts the decoded parts, together; references count nothing here.
    part = base64.b64encode(b"x" * 600).decode()
    parts = json.dumps([{"name": "a", "data_b64": part}, {"name": "b", "data_b64": "$r"}])
    assert one(conn, "SELECT df.http_multipart('https://x.example.com', 'POST', %s)", (parts,))
    parts = json.dumps([{"name": "a", "data_b64": part}, {"name": "b", "data_b64": part}])
    with raises_exactly(
        errors.RaiseException,
        "HTTP request body is 1200 bytes, more than pg_durable.http_max_request_bytes (1024); "
        "send less data per request, or raise the setting",
    ):
        conn.execute("SELECT df.http_multipart('https://x.example.com', 'POST', %s)", (parts,))
    conn.execute("SET pg_durable.http_max_request_bytes = '2048'")
    assert one(conn, "SELECT df.http_multipart('https://x.example.com', 'POST', %s)", (parts,))


@pytest.mark.usefixtures("http_on")
@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "pg_durable.http_max_timeout_seconds",
            "5min",
            'invalid value for parameter "pg_durable.http_max_timeout_seconds": "5min". '
            "Expected a positive whole number, default 300.",
        ),
        (
            "pg_durable.http_max_timeout_seconds",
            "0",
            'invalid value for parameter "pg_durable.http_max_timeout_seconds": "0". '
            "Expected a positive whole number, default 300.",
        ),
        (
            "pg_durable.http_max_request_bytes",
            "lots",
            'invalid value for parameter "pg_durable.http_max_request_bytes": "lots". '
            "Expected a positive whole number of bytes (or a size such as 10MB), default "
            "10485760.",
        ),
        (
            "pg_durable.http_max_request_bytes",
            "-1MB",
            'invalid value for parameter "pg_durable.http_max_request_bytes": "-1MB". '
            "Expected a positive whole number of bytes (or a size such as 10MB), default "
            "10485760.",
        ),
    ],
)
def test_invalid_limits_name_the_setting(
    conn: Conn, setting: str, value: str, message: str
) -> None:
    conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
    with raises_exactly(errors.InvalidParameterValue, message):
        conn.execute("SELECT df.http('https://x.example.com', timeout_seconds => 5)")


# -- hand-built nodes through df.start ---------------------------------------------------------

#: (node type, config, the message after "Invalid durable function graph: <path>: ").
HAND_BUILT_ERRORS: list[tuple[str, Any, str]] = [
    ("HTTP", {}, "url is required and cannot be NULL or empty"),
    ("HTTP", {"url": None}, "url is required and cannot be NULL or empty"),
    ("HTTP", {"url": 5}, "url must be a JSON string"),
    (
        "HTTP",
        {"url": "gopher://x"},
        "Blocked: unsupported URL scheme 'gopher'. Only http and https are allowed.",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "method": "head"},
        "Invalid HTTP method: HEAD. Must be GET, POST, PUT, DELETE, or PATCH",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "method": 1},
        "Invalid HTTP method: 1. Must be GET, POST, PUT, DELETE, or PATCH",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "timeout_seconds": 0},
        "Timeout must be positive",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "timeout_seconds": "30"},
        "timeout_seconds must be a whole number of seconds",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "timeout_seconds": 1.5},
        "timeout_seconds must be a whole number of seconds",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "timeout_seconds": 10**30},
        f"Timeout of {10**30} seconds exceeds pg_durable.http_max_timeout_seconds (300); use a "
        "shorter timeout, or raise the setting",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "body": {"a": 1}},
        "body must be a JSON string or null",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "headers": {"Authorization": 5}},
        "HTTP header 'Authorization' has a number value; header values must be JSON strings",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "headers": {"Transfer-Encoding": "chunked"}},
        f"HTTP header 'Transfer-Encoding' cannot be set: {FORBIDDEN}",
    ),
    (
        "HTTP",
        {"url": "https://x.example.com", "headers": ["Host: x"]},
        "headers must be a JSON object of header names and string values",
    ),
    (
        "HTTP_MULTIPART",
        {"url": "https://x.example.com"},
        "parts is required and cannot be NULL",
    ),
    (
        "HTTP_MULTIPART",
        {"url": "https://x.example.com", "parts": []},
        "parts must contain at least one part",
    ),
    (
        "HTTP_MULTIPART",
        {"url": "https://x.example.com", "method": "GET", "parts": [{"name": "f"}]},
        "Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH",
    ),
    (
        "HTTP_MULTIPART",
        {"url": "https://x.example.com", "parts": [{"name": "f", "data_b64": "%%%"}]},
        "Invalid base64 in part 'f': invalid symbol \"%\" found while decoding base64 sequence",
    ),
    (
        "HTTP_MULTIPART",
        {
            "url": "https://x.example.com",
            "parts": [{"name": "f", "data_b64": "", "filename": "x\ny"}],
        },
        "parts[0] ('f'): filename must not contain CR or LF characters",
    ),
]


@pytest.mark.parametrize(("kind", "config", "message"), HAND_BUILT_ERRORS)
def test_df_start_rejects_hand_built_configs_with_the_same_messages(
    conn: Conn, kind: str, config: Any, message: str
) -> None:
    """Also with the policy off: df.start checks the config, not the policy."""
    with raises_exactly(errors.RaiseException, f"{GRAPH}root: {message}"):
        conn.execute("SELECT df.start(%s)", (envelope(kind, config),))
    nested = json.dumps(
        {
            "node_type": "THEN",
            "left_node": {"node_type": "SQL", "query": "SELECT 1"},
            "right_node": json.loads(envelope(kind, config)),
        }
    )
    with raises_exactly(errors.RaiseException, f"{GRAPH}root.right: {message}"):
        conn.execute("SELECT df.start(%s)", (nested,))
    assert one(conn, "SELECT count(*) FROM df.nodes") == 0


@pytest.fixture
def recorders(conn: Conn) -> None:
    """Functions with the constructors' signatures that return the config the constructor
    would check (jsonb), so a test can give df.start exactly what a constructor was given."""
    conn.execute(
        "CREATE FUNCTION pg_temp.args_http(url text, method text DEFAULT 'POST', "
        "body text DEFAULT NULL, headers jsonb DEFAULT NULL, timeout_seconds int DEFAULT 30) "
        "RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('url', url, "
        "'method', method, 'body', body, 'headers', headers, "
        "'timeout_seconds', timeout_seconds) $$"
    )
    conn.execute(
        "CREATE FUNCTION pg_temp.args_multipart(url text, method text DEFAULT 'POST', "
        "parts jsonb DEFAULT NULL, headers jsonb DEFAULT NULL, timeout_seconds int DEFAULT 30) "
        "RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('url', url, "
        "'method', method, 'parts', parts, 'headers', headers, "
        "'timeout_seconds', timeout_seconds) $$"
    )


@pytest.mark.usefixtures("recorders")
@pytest.mark.parametrize(("call", "message"), BUILD_ERRORS)
def test_constructor_and_df_start_agree(conn: Conn, call: str, message: str) -> None:
    """Each build error, for df.start given the config the constructor was called with
    (with the policy off: df.start checks the config, not the policy)."""
    kind = "HTTP_MULTIPART" if call.startswith("df.http_multipart(") else "HTTP"
    recorder = call.replace("df.http_multipart(", "pg_temp.args_multipart(").replace(
        "df.http(", "pg_temp.args_http("
    )
    config = one(conn, f"SELECT {recorder}::text")
    with raises_exactly(errors.RaiseException, f"{GRAPH}root: {message}"):
        conn.execute("SELECT df.start(%s)", (json.dumps({"node_type": kind, "query": config}),))


def test_df_start_stores_hand_built_configs_as_the_constructors_do(conn: Conn) -> None:
    config = {
        "timeout_seconds": 45,
        "headers": {"b": "2", "A": "1"},
        "unknown": [1, 2],
        "method": "get",
        "url": "https://api.example.com/x",
    }
    iid = one(conn, "SELECT df.start(%s)", (envelope("HTTP", config),))
    assert stored_queries(conn, iid) == [
        (
            "HTTP",
            '{"url":"https://api.example.com/x","method":"GET","body":null,'
            '"headers":{"A":"1","b":"2"},"timeout_seconds":45}',
        )
    ]
    # Defaults filled in.
    iid = one(conn, "SELECT df.start(%s)", (envelope("HTTP", {"url": "http://h.example.com"}),))
    assert stored_queries(conn, iid)[0][1] == (
        '{"url":"http://h.example.com","method":"POST","body":null,"headers":null,'
        '"timeout_seconds":30}'
    )
    iid = one(
        conn,
        "SELECT df.start(%s)",
        (
            envelope(
                "HTTP_MULTIPART",
                {
                    "url": "https://u.example.com",
                    "method": "put",
                    "body": "dropped",
                    "parts": [{"data_b64": "eA==", "name": "f", "content_type": None}],
                },
            ),
        ),
    )
    assert stored_queries(conn, iid)[0][1] == (
        '{"url":"https://u.example.com","method":"PUT","parts":[{"name":"f","data_b64":"eA=="}],'
        '"headers":null,"timeout_seconds":30}'
    )
    # What the DSL builds is stored as it is: the policy is not df.start's business.
    set_policy(conn, "allow-all")
    built = one(
        conn,
        "SELECT df.http('https://api.example.com/x', 'GET', NULL, %s, 45)",
        (json.dumps({"b": "2", "A": "1"}),),
    )
    set_policy(conn, "off")
    iid = one(conn, "SELECT df.start(%s)", (built,))
    assert stored_queries(conn, iid)[0][1] == json.loads(built)["query"]


# -- the allow-list rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://api.example.com/x", "api.example.com"),
        ("https://API.Example.COM", "api.example.com"),
        ("http://api.example.com:8080/x", "api.example.com"),
        ("https://user:pass@api.example.com:443/x", "api.example.com"),
        ("https://api.example.com@evil.example.org/", "evil.example.org"),
        ("https://a@b@evil.example.org/", "evil.example.org"),
        ("https://evil.example.org#@api.example.com", "evil.example.org"),
        ("https://evil.example.org?@api.example.com", "evil.example.org"),
        ("https://evil.example.org/@api.example.com", "evil.example.org"),
        ("https://[::1]:8080/x", "::1"),
        ("https://[FE80::1%25eth0]/", "fe80::1%25eth0"),
        ("http://::1/", "::1"),
        ("https://127.0.0.1:5432", "127.0.0.1"),
        ("https://example.com./", "example.com."),
        ("https:///x", ""),
        ("api.example.com/x", None),
    ],
)
def test_url_host(conn: Conn, url: str, host: str | None) -> None:
    assert one(conn, "SELECT df._http_url_host(%s)", (url,)) == host


ALLOWED_HOSTS = "api.github.com, .blob.core.windows.net, Internal-API.Example.com, .svc_1.example"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("api.github.com", True),
        ("API.GITHUB.COM", True),
        ("internal-api.example.com", True),
        ("acct.blob.core.windows.net", True),
        ("a.b.blob.core.windows.net", True),
        ("x-1.svc_1.example", True),
        # The apex of a suffix, look-alikes, and a suffix that is not at the end.
        ("blob.core.windows.net", False),
        (".blob.core.windows.net", False),
        ("evilblob.core.windows.net", False),
        ("acct.blob.core.windows.net.evil.com", False),
        ("acct-blob.core.windows.net", False),
        ("acct..blob.core.windows.net", False),
        ("github.com", False),
        ("x.api.github.com", False),
        ("api.github.com.evil.com", False),
        ("apiXgithub.com", False),
        # A trailing dot, an empty host, things that are not host names.
        ("api.github.com.", False),
        ("acct.blob.core.windows.net.", False),
        ("", False),
        (None, False),
        ("api.github.com:443", False),
        ("user@api.github.com", False),
        ("api%2egithub.com", False),
        ("api.github.com ", False),
        ("аpi.github.com", False),  # a Cyrillic а
        # IP literals, even when they end like an entry.
        ("127.0.0.1", False),
        ("2130706433", False),
        ("0x7f.1", False),
        ("1.2.3.4.blob.core.windows.net.5", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_host_allowed(conn: Conn, host: str | None, allowed: bool) -> None:
    set_policy(conn, "allow-list", ALLOWED_HOSTS)
    assert one(conn, "SELECT df._http_host_allowed(%s)", (host,)) is allowed
    # The rule does not depend on the policy.
    set_policy(conn, "off")
    assert one(conn, "SELECT df._http_host_allowed(%s)", (host,)) is allowed


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("127.1", True),
        ("2130706433", True),
        ("0x7f000001", True),
        ("0x7F.0.0.1", True),
        ("017700000001", True),
        ("169.254.169.254.", True),
        ("::1", True),
        ("fe80::1", True),
        ("::ffff:169.254.169.254", True),
        ("foo.123", True),  # a name that ends in a number reads as an address: refused
        ("api.example.com", False),
        ("1password.com", False),
        ("a1.b2", False),
        ("0xcafe.example", False),
        ("", False),
        (None, False),
    ],
)
def test_ip_literals(conn: Conn, host: str | None, literal: bool) -> None:
    assert one(conn, "SELECT df._http_is_ip_literal(%s)", (host,)) is literal


# -- what the worker asks before a request -----------------------------------------------------


def request_error(c: Conn, url: str, role: str = "postgres", kind: str = "HTTP") -> Any:
    return one(c, "SELECT df._http_request_error(%s, %s::regrole, %s)", (kind, role, url))


def test_request_checks_by_policy(conn: Conn) -> None:
    urls = {
        "https://api.github.com/x": "api.github.com",
        "https://acct.blob.core.windows.net/c": "acct.blob.core.windows.net",
        "https://evil.example.org/": "evil.example.org",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254",
        "http://[::1]/": "::1",
        "https://api.github.com@evil.example.org/": "evil.example.org",
    }
    set_policy(conn, "off", ALLOWED_HOSTS)
    for url in urls:
        assert request_error(conn, url) == BLOCKED_OFF
    set_policy(conn, "allow-list")
    assert request_error(conn, "https://api.github.com/x") is None
    assert request_error(conn, "https://acct.blob.core.windows.net/c") is None
    assert request_error(conn, "https://evil.example.org/") == not_listed("evil.example.org")
    assert request_error(conn, "https://api.github.com@evil.example.org/") == not_listed(
        "evil.example.org"
    )
    assert request_error(conn, "http://169.254.169.254/latest/meta-data/") == BARE_IP
    assert request_error(conn, "http://[::1]/") == BARE_IP
    assert request_error(conn, "ftp://api.github.com/") == (
        "Blocked: unsupported URL scheme 'ftp'. Only http and https are allowed."
    )
    assert request_error(conn, "https://api.github.com/\r\nX: y") == (
        "url must not contain control characters (CR, LF, TAB, ...)"
    )
    # The host the worker's own parser found is the one checked.
    assert one(
        conn,
        "SELECT df._http_request_error('HTTP', 'postgres', 'https://api.github.com/', "
        "'evil.example.org')",
    ) == not_listed("evil.example.org")
    set_policy(conn, "allow-all")
    for url in urls:
        assert request_error(conn, url) is None
    assert request_error(conn, "file:///etc/passwd") == (
        "Blocked: unsupported URL scheme 'file'. Only http and https are allowed."
    )
    assert request_error(conn, "") == "url is required and cannot be NULL or empty"
    assert (
        one(conn, "SELECT df._http_request_error('HTTP', 'postgres', NULL)")
        == "url is required and cannot be NULL or empty"
    )
    # After substitution nothing is a template any more: the scheme is always checked.
    assert request_error(conn, "{base}/x") == (
        "Invalid URL '{base}/x': it must start with http:// or https://"
    )


def test_privilege_checks(conn: Conn, roles: Roles) -> None:
    set_policy(conn, "allow-all")
    plain = roles.create("plain", grant=True)
    http = roles.create("httprole")
    conn.execute("SELECT df.grant_usage(%s, include_http => true)", (http,))
    only_http = roles.create("onlyhttp", grant=True)
    conn.execute(f'GRANT EXECUTE ON FUNCTION {HTTP_SIG} TO "{only_http}"')
    url = "https://api.github.com/"

    def blocked(role: str, fn: str, sig: str) -> str:
        return (
            f"Blocked: role '{role}' does not have EXECUTE privilege on {fn}(). Grant EXECUTE "
            f"ON FUNCTION {sig} TO {role} to allow HTTP requests."
        )

    assert request_error(conn, url, plain) == blocked(plain, "df.http", HTTP_SIG)
    assert request_error(conn, url, plain, "HTTP_MULTIPART") == blocked(
        plain, "df.http_multipart", MULTIPART_SIG
    )
    assert request_error(conn, url, http) is None
    assert request_error(conn, url, http, "HTTP_MULTIPART") is None
    assert request_error(conn, url, only_http) is None
    assert request_error(conn, url, only_http, "HTTP_MULTIPART") == blocked(
        only_http, "df.http_multipart", MULTIPART_SIG
    )
    assert request_error(conn, url, "postgres") is None  # superusers always may
    # A name that needs quoting is quoted where it is SQL.
    odd = roles.create("odd name", grant=True)
    assert one(conn, "SELECT df._http_privilege_error('HTTP', %s::regrole)", (f'"{odd}"',)) == (
        f"Blocked: role '{odd}' does not have EXECUTE privilege on df.http(). Grant EXECUTE ON "
        f'FUNCTION {HTTP_SIG} TO "{odd}" to allow HTTP requests.'
    )
    # Revoked: blocked again at once.
    conn.execute("SELECT df.revoke_usage(%s)", (http,))
    assert request_error(conn, url, http) == blocked(http, "df.http", HTTP_SIG)


# -- privileges on the constructors ------------------------------------------------------------


def test_constructors_are_closed_to_public(conn: Conn, roles: Roles) -> None:
    for sig in (HTTP_SIG, MULTIPART_SIG):
        acl = one(conn, "SELECT proacl::text[] FROM pg_proc WHERE oid = %s::regprocedure", (sig,))
        assert acl is not None and not any(entry.startswith("=") for entry in acl), acl
    user = roles.create("nohttp", grant=True)
    u = roles.connect(user)
    set_policy(u, "allow-all")
    with raises_exactly(errors.InsufficientPrivilege, "permission denied for function http"):
        u.execute("SELECT df.http('https://api.example.com')")
    with raises_exactly(
        errors.InsufficientPrivilege, "permission denied for function http_multipart"
    ):
        u.execute("SELECT df.http_multipart('https://api.example.com')")
    # The rest of the DSL is there for it, and so is a hand-built HTTP node (checked again
    # by the worker before the request).
    assert one(u, "SELECT df.sleep(1)")
    assert one(u, "SELECT df.start(%s)", (envelope("HTTP", {"url": "https://x.example.com"}),))


def test_grant_usage_include_http(conn: Conn, roles: Roles) -> None:
    user = roles.create("withhttp")
    conn.execute("SELECT df.grant_usage(%s, include_http => true)", (user,))
    u = roles.connect(user)
    with raises_exactly(errors.RaiseException, DISABLED):
        u.execute("SELECT df.http('https://api.example.com')")
    set_policy(u, "allow-list", "api.example.com")
    built = one(u, "SELECT df.http('https://api.example.com/x', 'GET') |=> 'r'")
    iid = one(u, "SELECT df.start(%s ~> 'SELECT $r.status')", (built,))
    assert [t for t, _ in stored_queries(u, iid)] == ["THEN", "HTTP", "SQL"]
    parts = '[{"name": "f", "data_b64": "eA=="}]'
    assert one(u, "SELECT df.http_multipart('https://api.example.com/u', 'POST', %s)", (parts,))
    conn.execute("SELECT df.revoke_usage(%s)", (user,))
    conn.execute("SELECT df.grant_usage(%s)", (user,))
    with raises_exactly(errors.InsufficientPrivilege, "permission denied for function http"):
        u.execute("SELECT df.http('https://api.example.com/x')")


# -- df.explain --------------------------------------------------------------------------------


def unpad(text: str) -> str:
    return "\n".join(line.rstrip(" ") for line in text.split("\n"))


@pytest.mark.usefixtures("http_on")
def test_explain(conn: Conn) -> None:
    def dry(expr: str) -> str:
        return unpad(one(conn, f"SELECT df.explain({expr})"))

    assert dry("df.http('https://api.example.com/v1/rates', 'get') |=> 'response'") == (
        "HTTP GET https://api.example.com/v1/rates |=> 'response'"
    )
    assert dry("df.http('https://api.example.com/v1/rates/latest/everything')") == (
        "HTTP POST https://api.example.com/v1/rates/late..."
    )
    assert dry(
        "df.http_multipart('https://up.example.com/u', 'put', "
        """'[{"name": "f", "data_b64": "eA=="}]')"""
    ) == ("HTTP_MULTIPART PUT https://up.example.com/u")
    assert (
        dry("'SELECT 1' ~> df.http('https://a.example.com', 'DELETE') ~> 'SELECT 2'")
        == "SQL: SELECT 1\n→ HTTP DELETE https://a.example.com\n→ SQL: SELECT 2"
    )
    # The DSL as text is evaluated as the caller: the policy applies, errors come back as text.
    assert unpad(
        one(conn, "SELECT df.explain(%s)", ("df.http('https://a.example.com', 'GET')",))
    ) == ("HTTP GET https://a.example.com")
    set_policy(conn, "off")
    assert one(conn, "SELECT df.explain(%s)", ("df.http('https://a.example.com', 'GET')",)) == (
        f"Failed to evaluate expression: {DISABLED}"
    )
    # A hand-built envelope: drawn as df.start stores it, or refused as df.start refuses it.
    assert (
        unpad(
            one(
                conn,
                "SELECT df.explain(%s)",
                (envelope("HTTP", {"url": "https://h.example.com", "method": "patch"}),),
            )
        )
        == "HTTP PATCH https://h.example.com"
    )
    assert one(
        conn,
        "SELECT df.explain(%s)",
        (envelope("HTTP", {"url": "https://h.example.com", "method": "trace"}),),
    ) == (f"{GRAPH}root: Invalid HTTP method: TRACE. Must be GET, POST, PUT, DELETE, or PATCH")
