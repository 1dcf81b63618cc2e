"""An HTTP/1.1 response, read with caps, and the result envelope an HTTP step makes of it.

The reader takes what servers send — a body framed by Content-Length, by chunks or by the end
of the connection, interim 1xx responses — and stops at the caps instead of reading on: the
status line and headers at 64 KiB, the body at the worker's ``http_max_response_bytes``.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Final

#: The status line and headers of a response: more is not a response a workflow wants.
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEAD_LINES: Final = 256
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: .*)?", re.DOTALL)
_TEXT_TYPES: Final = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
        "application/yaml",
        "application/x-yaml",
    }
)
_NO_BODY: Final = frozenset({204, 304})
_READ_CHUNK: Final = 64 * 1024

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    #: (lower-case name, value) in the order received.
    headers: Headers
    body: bytes


class TooLarge(Exception):
    """The response's body is larger than the cap it was read with."""


async def read_response(reader: asyncio.StreamReader, cap: int) -> Response:
    """The response on ``reader``, its body read up to ``cap`` bytes.

    Raises:
        TooLarge: the body is larger (nothing past the cap is read).
        ValueError: it is not an HTTP/1.x response.
        asyncio.IncompleteReadError: the connection closed before its end.
    """
    while True:
        status, headers = await _read_head(reader)
        if not 100 <= status < 200 or status == 101:
            break  # (an interim 100 Continue or 103 Early Hints is followed by the response)
    if 100 <= status < 200 or status in _NO_BODY:
        return Response(status, headers, b"")
    codings = [
        c.strip().lower() for v in _values(headers, b"transfer-encoding") for c in v.split(b",")
    ]
    if codings and codings[-1] == b"chunked":
        return Response(status, headers, await _read_chunked(reader, cap))
    lengths = {v.strip() for v in _values(headers, b"content-length")}
    if lengths:
        if len(lengths) > 1 or not all(c in b"0123456789" for c in next(iter(lengths))):
            raise ValueError("the response has an invalid Content-Length")
        length = int(next(iter(lengths)) or b"0")
        if length > cap:
            raise TooLarge
        return Response(status, headers, await reader.readexactly(length))
    chunks: list[bytes] = []
    size = 0
    while chunk := await reader.read(_READ_CHUNK):
        size += len(chunk)
        if size > cap:
            raise TooLarge
        chunks.append(chunk)
    return Response(status, headers, b"".join(chunks))


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, Headers]:
    size = 0

    async def line() -> bytes:
        nonlocal size
        raw = await reader.readuntil(b"\n")
        size += len(raw)
        if size > MAX_HEAD_BYTES:
            raise ValueError(f"the response's headers are larger than {MAX_HEAD_BYTES} bytes")
        return raw.rstrip(b"\r\n")

    status_line = await line()
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ValueError(f"not an HTTP/1.1 response: {status_line[:80]!r}")
    headers: Headers = []
    while raw := await line():
        if len(headers) >= MAX_HEAD_LINES:
            raise ValueError(f"the response has more than {MAX_HEAD_LINES} headers")
        if raw[:1] in (b" ", b"\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + raw.strip())
            continue
        name, colon, value = raw.partition(b":")
        if colon and name and name == name.strip():
            headers.append((name.lower(), value.strip()))
    return int(match.group(1)), headers


async def _read_chunked(reader: asyncio.StreamReader, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        line = await reader.readuntil(b"\n")
        try:
            length = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ValueError("the response has an invalid chunk size") from None
        if length == 0:
            while (await reader.readuntil(b"\n")).strip():  # trailers, ignored
                pass
            return b"".join(chunks)
        size += length
        if size > cap or length < 0:
            raise TooLarge
        chunks.append(await reader.readexactly(length))
        await reader.readuntil(b"\n")


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


# -- the result ----------------------------------------------------------------------------------


def envelope(response: Response, duration_ms: int) -> str:
    """SPEC §2.4's result: ``{status, body, encoding, headers, ok, duration_ms}``, as text."""
    text, encoding = _body(response.body, _first(response.headers, b"content-type"))
    result = {
        "status": response.status,
        "body": text,
        "encoding": encoding,
        "headers": _header_object(response.headers),
        "ok": 200 <= response.status < 300,
        "duration_ms": duration_ms,
    }
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False)


def _first(headers: Headers, name: bytes) -> str | None:
    for n, v in headers:
        if n == name:
            return v.decode("latin-1")
    return None


def _body(body: bytes, content_type: str | None) -> tuple[str, str]:
    """The body as text when its Content-Type declares text (in its charset) or when it is
    valid UTF-8; else base64 (SPEC §3.3, step 6). Text holding a NUL goes as base64 too:
    PostgreSQL's jsonb, where the result is stored, cannot hold one."""
    media, charset = _media(content_type)
    text: str | None = None
    if media is not None and _declares_text(media):
        try:
            codec = codecs.lookup(charset or "utf-8").name
        except LookupError:
            codec = "utf-8"
        text = body.decode(codec, "replace")
    else:
        with contextlib.suppress(UnicodeDecodeError):
            text = body.decode("utf-8")
    if text is None or "\0" in text:
        return base64.b64encode(body).decode("ascii"), "base64"
    return text, "text"


def _media(content_type: str | None) -> tuple[str | None, str | None]:
    if content_type is None:
        return None, None
    media, *params = content_type.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return media.strip().lower(), charset


def _declares_text(media: str) -> bool:
    return (
        media.startswith("text/")
        or media.endswith(("+json", "+xml", "+yaml"))
        or media in _TEXT_TYPES
    )


def _header_object(headers: Headers) -> dict[str, str]:
    """Response headers by lower-case name; repeated ones joined with ", "; values that are
    not UTF-8 (or hold a NUL, which jsonb cannot store) left out."""
    found: dict[str, str] = {}
    for name, raw in headers:
        try:
            key, value = name.decode("ascii"), raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "\0" in key or "\0" in value:
            continue
        found[key] = f"{found[key]}, {value}" if key in found else value
    return found
