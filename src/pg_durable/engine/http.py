"""HTTP steps (df.http, df.http_multipart): admitted by the database's policy, sent safely.

A step goes through three stages, split so that no database transaction waits on the network
(engine/executor.py drives them):

1. ``http_request.describe``, in the step's transaction: the request the node's config
   describes, its references substituted. No I/O.
2. :meth:`HttpSteps.admit`, also before the request: what the database says — 12_http.sql's
   ``df._http_request_error`` (policy, the submitter's EXECUTE privilege, re-checked for every
   request, scheme, bare IP literals, allow-list) and its limits on timeout and request size —
   so that SQL and the worker decide by the same rules, read from the same settings.
3. :meth:`HttpClient.send`, with no transaction open: resolve the host once, drop addresses in
   restricted ranges (unless the policy is allow-all), connect to an address that passed — so
   no later DNS answer can rebind the name to another one — with TLS verified for the URL's
   host, one HTTP/1.1 exchange with ``Connection: close``, a redirect returned as it is, the
   response read up to a size cap (http_response.py).

The settings are server settings (``pg_durable.http_policy`` and friends), and those made with
``ALTER DATABASE … SET`` or ``ALTER ROLE … SET`` reach only sessions that begin afterwards. So
the policy is asked on a connection of its own, opened again whenever the database's or the
worker role's settings in ``pg_db_role_setting`` differ from when it was opened; what
``ALTER SYSTEM`` and a reload change reaches it by itself.

The client is a small HTTP/1.1 implementation on asyncio streams rather than a library: it must
connect to the address that was checked while verifying the certificate of the host name, cap
what it reads, and never follow a redirect — the very places libraries hide.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import psycopg
from psycopg.rows import DictRow

from pg_durable import __version__
from pg_durable.engine.egress import Url, is_loopback, is_restricted, parse_url
from pg_durable.engine.http_request import HttpRequest
from pg_durable.engine.http_response import MAX_HEAD_BYTES, TooLarge, envelope, read_response
from pg_durable.errors import StepError
from pg_durable.graph.interpreter import Failed, Ok, Outcome
from pg_durable.queries import query
from pg_durable.settings import DEFAULT_HTTP_MAX_RESPONSE_BYTES

logger = logging.getLogger(__name__)

AConn = psycopg.AsyncConnection[DictRow]
#: Resolves (host, port) to IP addresses, as text: the system resolver unless a test gives one.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

USER_AGENT: Final = f"pg_durable/{__version__}"
#: Bytes of a 5xx response's body quoted in the node's error (SPEC §2.4).
ERROR_PREVIEW_BYTES: Final = 512


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request the policy lets out, and where to."""

    request: HttpRequest
    url: Url
    #: Whether addresses in restricted ranges are refused (every policy but allow-all).
    restricted: bool


class HttpSteps:
    """HTTP steps for all slots of a worker: the policy the database holds, and the client."""

    def __init__(self, client: HttpClient, connect: Callable[[], Awaitable[AConn]]) -> None:
        self.client = client
        self._connect = connect
        self._conn: AConn | None = None
        #: The database's and the worker role's settings when _conn began (a fingerprint).
        self._settings: str | None = None
        self._lock = asyncio.Lock()

    async def admit(self, request: HttpRequest, role_oid: int) -> Admitted:
        """The request, if the policy lets it out on behalf of the role ``role_oid``.

        Raises:
            StepError: it does not (``Blocked: …``), or it goes past a limit; the message is
                the node's failure.
        """
        try:
            url: Url | None = parse_url(request.url)
            problem = None
        except StepError as exc:
            url, problem = None, exc
        params = {
            "node_type": request.kind,
            "role": role_oid,
            "url": request.url,
            # The host this client resolves and connects to is the host checked.
            "host": None if url is None else url.host,
        }
        try:
            row = await self._ask(params)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:  # an invalid setting: the message names it
            raise StepError(exc.diag.message_primary or str(exc)) from None
        if row["error"] is not None:
            raise StepError(str(row["error"]))
        if problem is not None or url is None:
            raise problem or StepError(f"HTTP connection failed: invalid URL '{request.url}'")
        if request.timeout > row["max_timeout"]:
            raise StepError(
                f"Timeout of {request.timeout} seconds exceeds "
                f"pg_durable.http_max_timeout_seconds ({row['max_timeout']}); use a shorter "
                "timeout, or raise the setting"
            )
        if request.size > row["max_request_bytes"]:
            raise StepError(
                f"HTTP request body is {request.size} bytes, more than "
                f"pg_durable.http_max_request_bytes ({row['max_request_bytes']}); send less "
                "data per request, or raise the setting"
            )
        return Admitted(request, url, restricted=row["policy"] != "allow-all")

    async def send(self, admitted: Admitted, idempotency_key: str) -> Outcome:
        """Send an admitted request: the step's outcome."""
        request, url = admitted.request, admitted.url
        outcome = await self.client.send(
            request, url, restricted=admitted.restricted, idempotency_key=idempotency_key
        )
        # (The host only: paths and query strings may carry secrets.)
        logger.debug(
            "HTTP %s to %s: %s",
            request.method,
            url.host,
            "failed" if isinstance(outcome, Failed) else "done",
            extra={"action": "http_request", "node_id": request.node_id},
        )
        return outcome

    async def _ask(self, params: dict[str, object]) -> DictRow:
        """The policy's answer, from a session that has the database's settings as they are."""
        async with self._lock:
            for _ in range(3):
                conn = self._conn
                if conn is None or conn.closed or conn.broken:
                    conn = self._conn = await self._connect()
                try:
                    cur = await conn.execute(query("http_settings"))
                    settings = await cur.fetchone()
                    assert settings is not None
                    if settings["fingerprint"] == self._settings:
                        cur = await conn.execute(query("http_gate"), params)
                        row = await cur.fetchone()
                        assert row is not None
                        return row
                except psycopg.OperationalError:
                    settings = None
                # Settings changed since the session began (or it is new, or it broke):
                # a session that begins after this reading has them.
                await conn.close()
                self._conn = None
                self._settings = None if settings is None else settings["fingerprint"]
            raise psycopg.OperationalError("the HTTP policy could not be read")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses, as the system resolves them."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class HttpClient:
    """Sends the requests of HTTP steps, one connection each."""

    def __init__(
        self,
        max_response_bytes: int = DEFAULT_HTTP_MAX_RESPONSE_BYTES,
        resolver: Resolver | None = None,
    ) -> None:
        self.max_response_bytes = max_response_bytes
        #: Test hooks: fake DNS answers, a certificate authority of the tests' own, and
        #: loopback addresses let through the restricted ranges (the tests' server listens
        #: there). The worker's settings have no way to set them.
        self.resolver: Resolver = resolver or system_resolver
        self.ssl_context: ssl.SSLContext | None = None
        self.allow_loopback = False
        self._default_ssl: ssl.SSLContext | None = None

    async def send(
        self, request: HttpRequest, url: Url, *, restricted: bool, idempotency_key: str
    ) -> Outcome:
        """Send ``request`` to ``url`` and read the response: the node's outcome (SPEC §2.4).
        ``restricted``: addresses in private, loopback, link-local and other internal ranges
        are refused (every policy but allow-all)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(request.timeout):
                addresses = await self._addresses(url, restricted=restricted)
                reader, writer = await self._connect(url, addresses)
                try:
                    writer.write(_head(request, url, idempotency_key))
                    if request.body:
                        writer.write(request.body)
                    await writer.drain()
                    response = await read_response(reader, self.max_response_bytes)
                finally:
                    await _close(writer)
        except TimeoutError:
            return Failed(f"HTTP timeout after {request.timeout}s: {url.text}")
        except StepError as exc:
            return Failed(str(exc))
        except TooLarge:
            return Failed(
                f"HTTP {request.method} {url.text}: the response is larger than "
                f"{self.max_response_bytes} bytes, the worker's limit "
                "(--http-max-response-bytes)"
            )
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            return Failed(
                f"HTTP connection failed: error sending request for url ({url.text}): "
                f"{_reason(exc)}"
            )
        if response.status >= 500:
            preview = response.body[:ERROR_PREVIEW_BYTES]
            text = preview.decode("utf-8", "replace").replace("\0", "")
            return Failed(f"HTTP {request.method} {url.text} returned {response.status}: {text}")
        return Ok(envelope(response, int((time.monotonic() - started) * 1000)))

    async def _addresses(self, url: Url, *, restricted: bool) -> list[str]:
        """The addresses to connect to: the host's, resolved once, those in restricted ranges
        left out (SPEC §3.3, step 4)."""
        try:
            # (A bare IP only reaches here under allow-all: admit() refuses it otherwise.)
            found = [str(ipaddress.ip_address(url.host))]
        except ValueError:
            try:
                found = list(await self.resolver(url.host, url.port))
            except socket.gaierror as exc:
                raise OSError(f"dns error: {exc.strerror or exc}") from None
        if not restricted:
            return list(found)
        allowed = [
            a for a in found if not is_restricted(a) or (self.allow_loopback and is_loopback(a))
        ]
        if not allowed:
            raise StepError(
                f"Blocked: the resolved IP address for '{url.host}' is in a restricted range. "
                "df.http() cannot access private or internal network addresses."
            )
        return allowed

    async def _connect(
        self, url: Url, addresses: Sequence[str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the first of ``addresses`` that answers — never to the host name
        itself, which could resolve to another address now."""
        context = self._tls() if url.scheme == "https" else None
        error: OSError = OSError("the host has no address")
        for address in addresses:
            try:
                return await asyncio.open_connection(
                    address,
                    url.port,
                    ssl=context,
                    server_hostname=url.host if context is not None else None,
                    limit=MAX_HEAD_BYTES,
                )
            except OSError as exc:
                error = exc
        raise error

    def _tls(self) -> ssl.SSLContext:
        if self.ssl_context is not None:
            return self.ssl_context
        if self._default_ssl is None:
            self._default_ssl = ssl.create_default_context()
        return self._default_ssl


def _head(request: HttpRequest, url: Url, idempotency_key: str) -> bytes:
    """The request line and headers."""
    given = {name.lower() for name, _ in request.headers}
    lines = [f"{request.method} {url.target} HTTP/1.1", f"Host: {url.host_header}"]
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "idempotency-key" not in given:
        lines.append(f"Idempotency-Key: {idempotency_key}")
    if url.userinfo is not None and "authorization" not in given:
        user, _, password = url.userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    lines += [f"{name}: {value}" for name, value in request.headers]
    if request.body is not None or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(request.body or b'')}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(1):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed before the response was complete"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
