"""The worker's ``/metrics`` endpoint: a minimal HTTP/1.1 server on the event loop.

It answers ``GET`` (and ``HEAD``) ``/metrics`` with the Prometheus text format and anything
else with 404 (405 for other methods), one request per connection. Scrapers need nothing
more, and a server this small adds no dependency and no thread. A client gets
:data:`_READ_TIMEOUT` seconds to send its request; a request head larger than
:data:`_MAX_HEAD` bytes gets no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from pg_durable.engine.metrics import CONTENT_TYPE
from pg_durable.errors import ConfigurationError

logger = logging.getLogger(__name__)

_READ_TIMEOUT: Final = 10.0
_MAX_HEAD: Final = 8192
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}

Render = Callable[[], Awaitable[str]]


async def start(host: str, port: int, render: Render) -> asyncio.Server:
    """Listen on ``host``:``port`` and serve what ``render`` returns at /metrics.

    Raises:
        ConfigurationError: the address cannot be listened on (in use, not this machine's).
    """
    try:
        server = await asyncio.start_server(
            lambda reader, writer: _serve(reader, writer, render), host, port, limit=_MAX_HEAD
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
            "choose another --metrics-port or --metrics-host"
        ) from exc
    logger.info(
        "serving metrics on http://%s:%d/metrics",
        host,
        port,
        extra={"action": "metrics_listening"},
    )
    return server


async def stop(server: asyncio.Server) -> None:
    """Stop listening and close open connections."""
    server.close()
    close_clients = getattr(server, "close_clients", None)  # (Python 3.13+)
    if close_clients is not None:
        close_clients()
    await server.wait_closed()


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, render: Render
) -> None:
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return  # (gone, silent, or a head past _MAX_HEAD: nothing worth an answer)
        method, path = _request_line(head)
        if path is None:
            await _respond(writer, 400, "bad request\n")
        elif path.split("?", 1)[0] != "/metrics":
            await _respond(writer, 404, "not found: the metrics are at /metrics\n")
        elif method not in ("GET", "HEAD"):
            await _respond(writer, 405, "only GET and HEAD\n", allow=True)
        else:
            try:
                body = await render()
            except Exception:
                logger.exception("could not render the metrics", extra={"action": "metrics"})
                await _respond(writer, 500, "internal error\n")
                return
            await _respond(writer, 200, body, head_only=method == "HEAD", content=CONTENT_TYPE)
    except ConnectionError:
        pass  # the scraper went away
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _request_line(head: bytes) -> tuple[str, str | None]:
    """(method, path) of the request line; path None when it is not an HTTP request."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[1].startswith("/"):
        return "", None
    return parts[0], parts[1]


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: str,
    *,
    head_only: bool = False,
    content: str = "text/plain; charset=utf-8",
    allow: bool = False,
) -> None:
    data = body.encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content}",
        f"Content-Length: {len(data)}",
        "Connection: close",
    ]
    if allow:
        lines.append("Allow: GET, HEAD")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(data)
    await writer.drain()
