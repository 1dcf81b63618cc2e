"""HTTP steps without a network or a database: the request a node describes, its URL, the
addresses it may reach, and the response read back into SPEC's envelope."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from pg_durable.engine.egress import is_loopback, is_restricted, parse_url
from pg_durable.engine.http_request import HttpRequest, describe
from pg_durable.engine.http_response import Response, TooLarge, envelope, read_response
from pg_durable.errors import StepError
from pg_durable.graph.model import Node

IID = "ab12cd34"

# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::200e"],
)
def test_public_addresses_may_be_reached(address: str) -> None:
    assert not is_restricted(address)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "100.64.0.1",
        "100.100.100.200",  # Alibaba's metadata service (CGNAT)
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.170",
        "192.168.0.1",
        "198.18.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::10.0.0.1",  # IPv4-compatible
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "not an address",
    ],
)
def test_internal_addresses_are_restricted(address: str) -> None:
    assert is_restricted(address)


def test_mapped_public_addresses_are_judged_by_their_ipv4() -> None:
    assert not is_restricted("::ffff:8.8.8.8")
    assert not is_restricted("64:ff9b::808:808")


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3")
    assert is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("nonsense")


# -- URLs -----------------------------------------------------------------------------------------


def test_urls_as_the_client_sends_them() -> None:
    # The host is the one SPEC §3.3 checks (after the last @): the one connected to, too.
    assert parse_url("http://evil.example\\@good.example/").host == "good.example"
    url = parse_url("HTTPS://User:p%40ss@API.Example.com:8443/a b/c?q=1 2&r=é#frag")
    assert (url.scheme, url.host, url.port) == ("https", "api.example.com", 8443)
    assert url.target == "/a%20b/c?q=1%202&r=%C3%A9"
    assert url.userinfo == "User:p%40ss"
    assert url.host_header == "api.example.com:8443"
    assert parse_url("http://x.example").target == "/"
    assert parse_url("http://x.example?a=1").target == "/?a=1"
    assert parse_url("http://x.example:80/").host_header == "x.example"
    assert parse_url("http://[::1]:8080/").host == "::1"
    assert parse_url("http://[::1]:8080/").host_header == "[::1]:8080"
    assert parse_url("http://bücher.example/").host == "xn--bcher-kva.example"
    assert parse_url("http://x.example/%0d%0a").target == "/%0d%0a"
    # A line break cannot end the request line: it is percent-encoded.
    assert parse_url("http://x.example/a\r\nHost: evil").target == "/a%0D%0AHost:%20evil"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://x.example/", "it must start with http:// or https://"),
        ("http://good.example\\evil/", "'good.example\\evil' is not a host name"),
        ("http://x.example:99999/", "99999 is not a port"),
        ("http://x.example:8o/", "'8o' is not a port"),
        ("http://[::1/", "unbalanced brackets around its IPv6 address"),
        ("http://[nope]/", "'nope' is not an IPv6 address"),
        ("http:///path", "'' is not a host name"),
    ],
)
def test_urls_the_client_refuses(url: str, why: str) -> None:
    with pytest.raises(StepError) as caught:
        parse_url(url)
    assert str(caught.value) == f"HTTP connection failed: invalid URL '{url}': {why}"


# -- requests -------------------------------------------------------------------------------------


def node(config: dict[str, Any] | str, kind: str = "HTTP") -> Node:
    query = config if isinstance(config, str) else json.dumps(config)
    return Node("n1", kind, query, None)


def request(
    config: dict[str, Any] | str,
    kind: str = "HTTP",
    *,
    results: dict[str, str] | None = None,
    variables: dict[str, str] | None = None,
) -> HttpRequest:
    return describe(
        node(config, kind),
        variables=variables or {},
        results=results or {},
        instance_id=IID,
        label="nightly",
    )


def error(config: dict[str, Any] | str, kind: str = "HTTP", **kwargs: Any) -> str:
    with pytest.raises(StepError) as caught:
        request(config, kind, **kwargs)
    return str(caught.value)


def test_substitution_in_url_body_and_header_values() -> None:
    got = request(
        {
            "url": "{base}/users/$u.id",
            "method": "patch",
            "body": '{"name": "$u.name", "run": "{sys_instance_id}"}',
            "headers": {"X-Label": "{sys_label}", "Authorization": "Bearer {key}", "A": "1"},
        },
        results={"u": '{"rows":[{"id":7,"name":"Ada"}],"row_count":1}'},
        variables={"base": "https://api.example.com", "key": "k"},
    )
    assert got.url == "https://api.example.com/users/7"
    assert got.method == "PATCH"
    assert got.body == f'{{"name": "Ada", "run": "{IID}"}}'.encode()
    assert got.headers == (("A", "1"), ("Authorization", "Bearer k"), ("X-Label", "nightly"))
    assert (got.timeout, got.size) == (30, len(got.body or b""))


def test_defaults_of_a_hand_built_config() -> None:
    got = request({"url": "https://x.example"})
    assert (got.method, got.body, got.headers, got.timeout) == ("POST", None, (), 30)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[1]", "query in HTTP must be a JSON config object"),
        ({"url": None}, "url is required and cannot be NULL or empty"),
        (
            {"url": "http://x", "method": "HEAD"},
            "Invalid HTTP method: HEAD. Must be GET, POST, PUT, DELETE, or PATCH",
        ),
        ({"url": "http://x", "timeout_seconds": 0}, "Timeout must be positive"),
        (
            {"url": "http://x", "timeout_seconds": 1.5},
            "timeout_seconds must be a whole number of seconds",
        ),
        (
            {"url": "http://x", "timeout_seconds": "9"},
            "timeout_seconds must be a whole number of seconds",
        ),
        ({"url": "http://x", "body": 5}, "body must be a JSON string or null"),
        (
            {"url": "http://x", "headers": ["a"]},
            "headers must be a JSON object of header names and string values",
        ),
        (
            {"url": "http://x", "headers": {"Bad Name": "v"}},
            "Invalid HTTP header name 'Bad Name': a header name is one or more letters, digits "
            "and !#$%&'*+-.^_`|~",
        ),
        (
            {"url": "http://x", "headers": {"transfer-encoding": "chunked"}},
            "HTTP header 'transfer-encoding' cannot be set: the HTTP client sets it itself. "
            "Headers that cannot be set: Host, Content-Length, Transfer-Encoding, Connection, "
            "Keep-Alive, Upgrade, TE, Trailer, Expect and Proxy-*",
        ),
        (
            {"url": "http://x", "headers": {"Proxy-Authorization": "x"}},
            "HTTP header 'Proxy-Authorization' cannot be set: the HTTP client sets it itself. "
            "Headers that cannot be set: Host, Content-Length, Transfer-Encoding, Connection, "
            "Keep-Alive, Upgrade, TE, Trailer, Expect and Proxy-*",
        ),
        (
            {"url": "http://x", "headers": {"X-A": "1", "x-a": "2"}},
            "HTTP header 'x-a' is given twice (header names are case-insensitive)",
        ),
        (
            {"url": "http://x", "headers": {"Authorization": 123}},
            "HTTP header 'Authorization' has a number value; header values must be JSON strings",
        ),
    ],
)
def test_configs_the_worker_refuses(config: dict[str, Any] | str, message: str) -> None:
    assert error(config) == message


def test_substituted_header_values_cannot_smuggle_headers() -> None:
    config = {"url": "http://x", "headers": {"X-Id": "$r.v"}}
    results = {"r": '{"rows":[{"v":"1\\r\\nHost: evil"}],"row_count":1}'}
    assert error(config, results=results) == (
        "HTTP header 'X-Id': the value must not contain CR or LF characters"
    )
    results = {"r": '{"rows":[{"v":"1\\u0000"}],"row_count":1}'}
    assert error(config, results=results) == (
        "HTTP header 'X-Id': the value must not contain control characters"
    )


def test_substitution_errors_fail_the_node() -> None:
    results = {"r": '{"rows":[],"row_count":0}'}
    assert error({"url": "http://x/$r"}, results=results) == (
        "$r has no rows — query returned zero results"
    )


def multipart_parts(got: HttpRequest) -> list[tuple[str, bytes]]:
    content_type = dict(got.headers)["Content-Type"]
    boundary = content_type.split("boundary=", 1)[1].encode()
    assert got.body is not None
    assert got.body.endswith(b"--" + boundary + b"--\r\n")
    chunks = got.body.split(b"--" + boundary)[1:-1]
    parts = []
    for chunk in chunks:
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        parts.append((head.decode(), data))
    return parts


def test_multipart_body() -> None:
    data = bytes(range(256))
    encoded = base64.encodebytes(data).decode()  # with line breaks, as encode() writes it
    got = request(
        {
            "url": "http://x",
            "method": "put",
            "parts": [
                {
                    "name": "doc-{id}",
                    "data_b64": " $f.b64 ",
                    "filename": 'a"b.bin',
                    "content_type": "application/octet-stream",
                },
                {"name": "two", "data_b64": "aGk="},
            ],
        },
        "HTTP_MULTIPART",
        results={"f": json.dumps({"rows": [{"b64": encoded}], "row_count": 1})},
        variables={"id": "9"},
    )
    assert got.method == "PUT" and got.size == 258
    assert multipart_parts(got) == [
        (
            'Content-Disposition: form-data; name="doc-9"; filename="a%22b.bin"\r\n'
            "Content-Type: application/octet-stream",
            data,
        ),
        ('Content-Disposition: form-data; name="two"', b"hi"),
    ]


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (None, "parts is required and cannot be NULL"),
        ({}, "parts must be a JSON array of part objects"),
        ([], "parts must contain at least one part"),
        (["x"], 'parts[0] must be a JSON object {"name": …, "data_b64": …}'),
        ([{"data_b64": ""}], "parts[0]: name is required and must be a non-empty string"),
        ([{"name": "a"}], "parts[0] ('a'): data_b64 is required and must be a string of base64"),
        (
            [{"name": "a", "data_b64": "", "content_type": "pdf"}],
            "parts[0] ('a'): invalid content_type 'pdf': expected type/subtype, such as "
            "application/pdf",
        ),
        ([{"name": "a", "data_b64": "###"}], "Invalid base64 in part 'a': "),
        (
            [{"name": "a", "data_b64": "QUJD$x"}],
            "HTTP_MULTIPART node n1: data_b64 for part 'a' mixes a variable reference with "
            "other text. Only a whole-value reference is supported (e.g. data_b64 => '$result' "
            "or '{myvar}'), because splicing into base64 would corrupt the payload.",
        ),
        (
            [{"name": "a", "data_b64": "$x.*"}],
            "HTTP_MULTIPART node n1: data_b64 for part 'a' mixes a variable reference with "
            "other text. Only a whole-value reference is supported (e.g. data_b64 => '$result' "
            "or '{myvar}'), because splicing into base64 would corrupt the payload.",
        ),
        (
            [{"name": "{v}", "data_b64": ""}],
            "parts[0]: name must not contain CR or LF characters",
        ),
        (
            [{"name": "a", "filename": "{v}", "data_b64": ""}],
            "parts[0] ('a'): filename must not contain CR or LF characters",
        ),
    ],
)
def test_multipart_configs_the_worker_refuses(parts: Any, message: str) -> None:
    got = error({"url": "http://x", "parts": parts}, "HTTP_MULTIPART", variables={"v": "a\r\nb"})
    assert got.startswith(message) if message.endswith(": ") else got == message


def test_multipart_methods() -> None:
    assert error({"url": "http://x", "method": "GET", "parts": []}, "HTTP_MULTIPART") == (
        "Invalid HTTP method for multipart: GET. Must be POST, PUT, or PATCH"
    )
    assert error(
        {
            "url": "http://x",
            "headers": {"content-type": "x/y"},
            "parts": [{"name": "a", "data_b64": ""}],
        },
        "HTTP_MULTIPART",
    ) == (
        "HTTP header 'content-type' cannot be set on a multipart request: the HTTP client sets "
        "it, with the boundary between the parts"
    )


# -- responses ------------------------------------------------------------------------------------


def read(raw: bytes, cap: int = 1000) -> Response:
    async def go() -> Response:
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_response(reader, cap)

    return asyncio.run(go())


def test_framings() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").body == b"abc"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
    )
    assert read(chunked).body == b"abcde"
    assert read(b"HTTP/1.0 200 OK\r\n\r\nto the end").body == b"to the end"
    assert read(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").body == b""
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    assert read(interim).status == 201
    folded = read(b"HTTP/1.1 200 OK\r\nX-A: one\r\n  two\r\nContent-Length: 0\r\n\r\n")
    assert folded.headers == [(b"x-a", b"one two"), (b"content-length", b"0")]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1001,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"x" * 1001,
    ],
)
def test_bodies_past_the_cap_are_not_read(raw: bytes) -> None:
    with pytest.raises(TooLarge):
        read(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_what_is_not_an_http_response(raw: bytes) -> None:
    with pytest.raises(ValueError):
        read(raw)


def test_a_response_cut_short() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")


def test_envelope() -> None:
    response = Response(
        302,
        [
            (b"location", b"/next"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"x-bin", b"\xff"),
        ],
        b"",
    )
    text = envelope(response, 12)
    assert text == (
        '{"status":302,"body":"","encoding":"text","headers":{"location":"/next",'
        '"set-cookie":"a=1, b=2"},"ok":false,"duration_ms":12}'
    )


@pytest.mark.parametrize(
    ("content_type", "body", "encoding", "text"),
    [
        (b"application/json", b'{"a":"\xc3\xa9"}', "text", '{"a":"é"}'),
        (b"text/html; charset=ISO-8859-1", b"caf\xe9", "text", "café"),
        (b"text/plain; charset=nonsense", b"ok", "text", "ok"),
        (b"application/vnd.api+json", b"{}", "text", "{}"),
        (b"application/x-yaml", b"a: 1", "text", "a: 1"),
        (b"image/png", b"\x89PNG", "base64", "iVBORw=="),
        (b"image/svg+xml", b"<svg/>", "text", "<svg/>"),
        (b"application/octet-stream", b"valid utf-8", "text", "valid utf-8"),
        (None, b"\x00\x01", "base64", "AAE="),
        (b"text/plain", b"nul\x00inside", "base64", "bnVsAGluc2lkZQ=="),
    ],
)
def test_text_or_base64(content_type: bytes | None, body: bytes, encoding: str, text: str) -> None:
    headers = [] if content_type is None else [(b"content-type", content_type)]
    result = json.loads(envelope(Response(200, headers, body), 0))
    assert (result["encoding"], result["body"], result["ok"]) == (encoding, text, True)
