"""HTTP for the dashboard: the standard library's ``ThreadingHTTPServer``, one thread per
request, each answered by :class:`~pg_durable.ui.app.Dashboard`.

A request is read into an :class:`~pg_durable.ui.app.Request` (a form body of at most
:data:`MAX_BODY` bytes) and the app's response written back. Request lines go to the log at
DEBUG, not to stderr.
"""

from __future__ import annotations

import logging
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from pg_durable.ui.app import Dashboard, Request, Response

logger = logging.getLogger(__name__)

#: The largest form accepted (a signal's data included); df.signal has limits of its own.
MAX_BODY = 1 << 20
_FORM = "application/x-www-form-urlencoded"


def _first_values(text: str) -> dict[str, str]:
    parsed = parse_qs(text, keep_blank_values=True, max_num_fields=100)
    return {name: values[0] for name, values in parsed.items()}


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "pg-durable-ui"
    sys_version = ""
    #: Seconds a connection may idle mid-request before it is dropped.
    timeout = 60

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._write(
                Response(413, b"request body too large\n", (("Content-Type", "text/plain"),))
            )
            return
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes) -> None:
        url = urlsplit(self.path)
        form: dict[str, str] = {}
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if body and content_type == _FORM:
            form = _first_values(body.decode("utf-8", errors="replace"))
        request = Request(
            method=self.command,
            path=url.path,
            query=_first_values(url.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            form=form,
        )
        self._write(self.server.dashboard.handle(request))

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args, extra={"action": "ui_http"})


class DashboardServer(ThreadingHTTPServer):
    """Serves ``dashboard`` on ``(host, port)`` (port 0: any free one; see
    ``server_address``)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard) -> None:
        # IPv6 for an IPv6 address (or a name that resolves to one first).
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        self.dashboard = dashboard
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own server_bind looks the host up in DNS (getfqdn), which can hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


def make_server(dashboard: Dashboard, host: str, port: int) -> DashboardServer:
    """A server bound (not yet serving: call ``serve_forever``).

    Raises:
        OSError: the address cannot be bound (the port is taken, say).
    """
    return DashboardServer((host, port), dashboard)
