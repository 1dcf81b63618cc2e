"""The request an HTTP or HTTP_MULTIPART node describes, with its references substituted.

The node's config is SPEC §1.3's JSON, as df.http / df.http_multipart store it (12_http.sql's
``df._http_config_text``). df.start checks configs with ``df._http_config_error``, but a role
holding INSERT on df.nodes can write any row, and substitution produces text no one checked:
so :func:`describe` checks again what it sends, with the same messages as SQL where the rule is
the same. Substitution is SPEC §2.7's raw mode: the URL, the body, each header value (keys in
byte order) and each part's name and filename; a part's data_b64 only when it is one whole
reference; content_type never. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pg_durable.errors import StepError, SubstitutionError
from pg_durable.graph.model import Node
from pg_durable.graph.substitution import substitute

DEFAULT_TIMEOUT: Final = 30
METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH")
MULTIPART_METHODS: Final = ("POST", "PUT", "PATCH")
#: Headers the client writes itself: a node that set them could frame another request than the
#: one it describes (request smuggling), or name another host than the one that was checked.
FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
    }
)
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = re.compile(_TCHAR + "+")
_MEDIA_TYPE = re.compile(_TCHAR + "+/" + _TCHAR + r"+(\s*;.*)?", re.DOTALL)
_LINE_BREAK = re.compile(r"[\r\n]")
#: Characters no header value may hold besides CR and LF (tab is allowed).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: A data_b64 that is one whole reference: $n, $n?, $n.c, $n.c? or {var} (SPEC §2.7).
_WHOLE_REFERENCE = re.compile(
    r"\$[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\??|\{[A-Za-z_][A-Za-z0-9_]*\}"
)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP step, substituted and checked, ready to be admitted and sent."""

    node_id: str
    #: HTTP or HTTP_MULTIPART.
    kind: str
    method: str
    #: As substituted, not yet checked against the policy.
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout: int
    #: What pg_durable.http_max_request_bytes limits: the body (multipart: the decoded parts).
    size: int


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def describe(
    node: Node,
    *,
    variables: Mapping[str, str],
    results: Mapping[str, str],
    instance_id: str,
    label: str | None,
) -> HttpRequest:
    """The request ``node`` makes, its references substituted.

    Raises:
        StepError: the config is malformed or a reference cannot be substituted; the message
            is the node's failure.
    """
    kind = node.type
    config = _config(node)

    def sub(text: str) -> str:
        try:
            return substitute(
                text,
                variables=variables,
                results=results,
                instance_id=instance_id,
                label=label,
                mode="raw",
            )
        except SubstitutionError as exc:
            raise StepError(str(exc)) from None

    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise StepError("url is required and cannot be NULL or empty")
    method = _method(config.get("method"), kind)
    timeout = _timeout(config.get("timeout_seconds"))
    headers = _headers(config.get("headers"), kind, sub)
    body: bytes | None
    if kind == "HTTP_MULTIPART":
        parts = _parts(node, config.get("parts"), sub)
        content_type, body = _multipart(parts)
        headers.append(("Content-Type", content_type))
        size = sum(len(p.data) for p in parts)
    else:
        raw = config.get("body")
        if raw is not None and not isinstance(raw, str):
            raise StepError("body must be a JSON string or null")
        body = None if raw is None else sub(raw).encode()
        size = len(body or b"")
    return HttpRequest(node.id, kind, method, sub(url), tuple(headers), body, timeout, size)


def _config(node: Node) -> dict[str, object]:
    try:
        config = json.loads(node.query or "")
    except (ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise StepError(f"query in {node.type} must be a JSON config object")
    return config


def _method(value: object, kind: str) -> str:
    if value is None:
        return "POST"
    method = (value if isinstance(value, str) else json.dumps(value)).upper()
    if kind == "HTTP" and method not in METHODS:
        raise StepError(f"Invalid HTTP method: {method}. Must be GET, POST, PUT, DELETE, or PATCH")
    if kind == "HTTP_MULTIPART" and method not in MULTIPART_METHODS:
        raise StepError(f"Invalid HTTP method for multipart: {method}. Must be POST, PUT, or PATCH")
    return method


def _timeout(value: object) -> int:
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StepError("timeout_seconds must be a whole number of seconds")
    if value <= 0:
        raise StepError("Timeout must be positive")
    if value != int(value):
        raise StepError("timeout_seconds must be a whole number of seconds")
    return int(value)


def _headers(value: object, kind: str, sub: Callable[[str], str]) -> list[tuple[str, str]]:
    """The node's headers, values substituted. pg_durable dropped a value that was not a string
    silently (an integer Authorization made an anonymous request); here it fails the node."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise StepError("headers must be a JSON object of header names and string values")
    headers = []
    seen: set[str] = set()
    # Byte order, as the config stores them and as SQL checks them (COLLATE "C").
    for name in sorted(value, key=lambda k: k.encode()):
        lowered = name.lower()
        if not _TOKEN.fullmatch(name):
            raise StepError(
                f"Invalid HTTP header name '{name}': a header name is one or more letters, "
                "digits and !#$%&'*+-.^_`|~"
            )
        if lowered in FORBIDDEN_HEADERS or lowered.startswith("proxy-"):
            raise StepError(
                f"HTTP header '{name}' cannot be set: the HTTP client sets it itself. Headers "
                "that cannot be set: Host, Content-Length, Transfer-Encoding, Connection, "
                "Keep-Alive, Upgrade, TE, Trailer, Expect and Proxy-*"
            )
        if lowered in seen:
            raise StepError(
                f"HTTP header '{name}' is given twice (header names are case-insensitive)"
            )
        seen.add(lowered)
        if kind == "HTTP_MULTIPART" and lowered == "content-type":
            raise StepError(
                f"HTTP header '{name}' cannot be set on a multipart request: the HTTP client "
                "sets it, with the boundary between the parts"
            )
        raw = value[name]
        if not isinstance(raw, str):
            raise StepError(
                f"HTTP header '{name}' has a {_json_type(raw)} value; header values must be "
                "JSON strings"
            )
        text = sub(raw)
        if _LINE_BREAK.search(text):
            raise StepError(f"HTTP header '{name}': the value must not contain CR or LF characters")
        if _CONTROL.search(text):
            raise StepError(f"HTTP header '{name}': the value must not contain control characters")
        headers.append((name, text))
    return headers


def _parts(node: Node, value: object, sub: Callable[[str], str]) -> list[_Part]:
    if value is None:
        raise StepError("parts is required and cannot be NULL")
    if not isinstance(value, list):
        raise StepError("parts must be a JSON array of part objects")
    if not value:
        raise StepError("parts must contain at least one part")
    parts = []
    for i, part in enumerate(value):
        if not isinstance(part, dict):
            raise StepError(f'parts[{i}] must be a JSON object {{"name": …, "data_b64": …}}')
        name = part.get("name")
        if not isinstance(name, str) or not name:
            raise StepError(f"parts[{i}]: name is required and must be a non-empty string")
        name = sub(name)
        if _LINE_BREAK.search(name) or "\0" in name:
            raise StepError(f"parts[{i}]: name must not contain CR or LF characters")
        filename = part.get("filename")
        if filename is not None:
            if not isinstance(filename, str):
                raise StepError(f"parts[{i}] ('{name}'): filename must be a string")
            filename = sub(filename)
            if _LINE_BREAK.search(filename) or "\0" in filename:
                raise StepError(
                    f"parts[{i}] ('{name}'): filename must not contain CR or LF characters"
                )
        content_type = part.get("content_type")
        if content_type is not None:
            if not isinstance(content_type, str):
                raise StepError(f"parts[{i}] ('{name}'): content_type must be a string")
            if _LINE_BREAK.search(content_type) or not _MEDIA_TYPE.fullmatch(content_type):
                raise StepError(
                    f"parts[{i}] ('{name}'): invalid content_type '{content_type}': expected "
                    "type/subtype, such as application/pdf"
                )
        data = part.get("data_b64")
        if not isinstance(data, str):
            raise StepError(
                f"parts[{i}] ('{name}'): data_b64 is required and must be a string of base64"
            )
        parts.append(_Part(name, filename, content_type, _decode(node, name, data, sub)))
    return parts


def _decode(node: Node, name: str, data: str, sub: Callable[[str], str]) -> bytes:
    """A part's data: data_b64, substituted only if it is one whole reference, decoded."""
    whole = data.strip()
    if _WHOLE_REFERENCE.fullmatch(whole):
        data = sub(whole)
    elif "$" in data or "{" in data:
        raise StepError(
            f"HTTP_MULTIPART node {node.id}: data_b64 for part '{name}' mixes a variable "
            "reference with other text. Only a whole-value reference is supported (e.g. "
            "data_b64 => '$result' or '{myvar}'), because splicing into base64 would corrupt "
            "the payload."
        )
    # Tolerates ASCII whitespace: the line breaks of PostgreSQL's encode(…, 'base64').
    compact = re.sub(r"[ \t\r\n\f\v]", "", data)
    try:
        return base64.b64decode(compact.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise StepError(f"Invalid base64 in part '{name}': {exc}") from None


def _multipart(parts: Sequence[_Part]) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/form-data request."""
    boundary = "pg-durable-" + secrets.token_hex(16)
    while any(boundary.encode() in p.data for p in parts):  # (random: practically never)
        boundary = "pg-durable-" + secrets.token_hex(16)
    chunks: list[bytes] = []
    for part in parts:
        disposition = f'form-data; name="{_quoted(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quoted(part.filename)}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if part.content_type is not None:
            head += f"Content-Type: {part.content_type}\r\n"
        chunks += [head.encode(), b"\r\n", part.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


def _quoted(text: str) -> str:
    # As browsers write form-data names (HTML's rule): a quote cannot end the string early.
    return text.replace('"', "%22")


def _json_type(value: object) -> str:
    """The name jsonb_typeof gives a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    return "array"
