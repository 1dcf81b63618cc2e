"""The dashboard's requests and responses: routes, the checks every request passes, and the
answers to errors. The HTTP plumbing is :mod:`pg_durable.ui.server`'s.

=======================================  ==================================================
GET  /instances                          filters, one keyset page, live refresh
GET  /instances/ID                       the instance, its graph, actions when allowed
GET  /workers                            df.workers: heartbeats, alive
GET  /api/instances, /api/instances/ID,  the same as JSON
     /api/workers
POST /instances/ID/signal, …/cancel      only with ``allow_actions``, a CSRF token, and no
                                         foreign Origin; 403 otherwise
=======================================  ==================================================

Every read goes through :mod:`pg_durable.client` (or df.workers) on the viewer's connection,
so row-level security decides what exists: another role's instance is a 404 like an id that
was never used.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import psycopg
from psycopg import errors as pg_errors

from pg_durable import client
from pg_durable.cli.connection import one_line
from pg_durable.cli.ls import parse_time
from pg_durable.client.errors import InstanceFinished, InstanceNotFound, InvalidInstanceId
from pg_durable.client.records import Page
from pg_durable.errors import ConfigurationError
from pg_durable.ui import api, fleet, instance_page, instances_page, workers_page
from pg_durable.ui.database import Database, Viewer
from pg_durable.ui.filters import BadFilter, parse
from pg_durable.ui.markup import Markup, element, page

logger = logging.getLogger(__name__)

#: Sent with every response: no script, style or frame from anywhere but here, nothing
#: inline, no sniffing, no caching, no referrer to other sites (ids and cursors stay here).
#: (Not no-referrer: with it a browser sends "Origin: null" on its own forms' POSTs.)
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
STATIC = {"style.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
HTML = "text/html; charset=utf-8"
JSON = "application/json"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_INSTANCE = re.compile(r"/(api/)?instances/([0-9a-fA-F]{8})")
_ACTION = re.compile(r"/instances/([0-9a-fA-F]{8})/(signal|cancel)")


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the app sees it: header names lower-case, one value per query or form
    name (the first)."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """Status, headers and body."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Options:
    """How the dashboard behaves."""

    #: Signal and cancel (POST); without it every POST is refused with 403.
    allow_actions: bool = False
    #: Seconds between live refreshes of a page (0: none).
    refresh: float = 2.0
    #: The host names a request's Host header may carry (None: any). Bound to a loopback
    #: address, only loopback names: a web page that rebinds its own name to 127.0.0.1 gets
    #: nothing.
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES


class Refused(Exception):
    """A request the dashboard refuses (a 4xx): its status and what to tell the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@cache
def _static(name: str) -> bytes:
    return (resources.files("pg_durable.ui") / "static" / name).read_bytes()


def _host_name(header: str) -> str:
    """The host of a Host header, without its port ('[::1]:8765' → '::1')."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _role_identifier(role: str) -> str:
    return role if re.fullmatch(r"[a-z_][a-z0-9_$]*", role) else '"' + role.replace('"', '""') + '"'


class Dashboard:
    """Answers the dashboard's requests as ``viewer``, on ``database``'s connections."""

    def __init__(self, database: Database, viewer: Viewer, options: Options) -> None:
        self.database = database
        self.viewer = viewer
        self.options = options
        #: Proves a POST comes from a page this server rendered: a page of another origin
        #: cannot read it. One per process; no cookies are involved.
        self.csrf_token = secrets.token_urlsafe(32)

    # -- responses ---------------------------------------------------------------------------

    def _respond(
        self, status: int, body: bytes, content_type: str, *extra: tuple[str, str]
    ) -> Response:
        return Response(status, body, (("Content-Type", content_type), *SECURITY_HEADERS, *extra))

    def _html(self, status: int, title: str, nav: str, body: Markup) -> Response:
        mode = "actions enabled" if self.options.allow_actions else "read-only"
        if self.viewer.sees_all:
            mode += " · this role sees every role's instances"
        document = page(title=title, role=self.viewer.role, nav=nav, body=body, status_line=mode)
        return self._respond(status, document, HTML)

    def _json(self, status: int, document: object) -> Response:
        return self._respond(status, api.dumps(document), JSON)

    def _error(self, request: Request, status: int, message: str) -> Response:
        if request.path.startswith("/api/"):
            return self._json(status, {"error": message})
        body = Markup(
            element("h1", None, f"{status}")
            + element("p", {"class_": "problem", "role": "alert"}, message)
            + element("p", None, element("a", {"href": "/instances"}, "« instances"))
        )
        return self._html(status, f"{status}", "", body)

    # -- dispatch ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """The response to ``request``; never raises (errors become their pages)."""
        try:
            self._check_host(request)
            try:
                return self._route(request)
            except psycopg.OperationalError:
                if request.method != "GET":
                    raise
                # Once more on a new connection: the pool's may have died with a restart of
                # the server since the last request (a GET changes nothing: safe to repeat).
                return self._route(request)
        except Refused as refused:
            return self._error(request, refused.status, refused.message)
        except (InstanceNotFound, InvalidInstanceId) as exc:
            return self._error(request, 404, str(exc))
        except pg_errors.InsufficientPrivilege as exc:
            return self._error(request, 403, one_line(exc))
        except psycopg.OperationalError as exc:
            return self._error(request, 503, f"the database is unavailable: {one_line(exc)}")
        except psycopg.Error as exc:
            return self._error(request, 400, one_line(exc))
        except Exception:  # the boundary of a request: log it, answer 500, keep serving
            logger.exception("dashboard request failed", extra={"action": "ui_error"})
            return self._error(request, 500, "internal error (the dashboard's log has it)")

    def _check_host(self, request: Request) -> None:
        allowed = self.options.allowed_hosts
        if allowed is None:
            return
        host = _host_name(request.headers.get("host", "")).lower()
        if host not in allowed:
            raise Refused(403, f"this dashboard does not answer for host {host!r}")

    def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if request.method == "POST":
            action = _ACTION.fullmatch(path)
            if action is None:
                raise Refused(405 if _INSTANCE.fullmatch(path) else 404, "nothing to POST here")
            return self._act(request, action.group(1).lower(), action.group(2))
        if request.method != "GET":
            raise Refused(405, f"method {request.method} is not served")
        if path == "/":
            return self._respond(303, b"", HTML, ("Location", "/instances"))
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in STATIC:
                raise Refused(404, "no such file")
            return self._respond(200, _static(name), STATIC[name])
        one = _INSTANCE.fullmatch(path)
        if one is not None:
            return self._instance(request, one.group(2).lower(), as_json=bool(one.group(1)))
        routes: dict[str, Callable[[Request], Response]] = {
            "/instances": lambda r: self._instances(r, as_json=False),
            "/api/instances": lambda r: self._instances(r, as_json=True),
            "/workers": lambda r: self._workers(r, as_json=False),
            "/api/workers": lambda r: self._workers(r, as_json=True),
        }
        if path not in routes:
            raise Refused(404, f"no page at {path}")
        return routes[path](request)

    # -- pages -------------------------------------------------------------------------------

    def _instances(self, request: Request, *, as_json: bool) -> Response:
        try:
            filters = parse(request.query)
        except BadFilter as exc:
            raise Refused(400, str(exc)) from None
        problem = None
        found: Page | None = None
        with self.database.connection() as conn:
            try:
                since = parse_time(conn, "since", filters.since) if filters.since else None
                until = parse_time(conn, "until", filters.until) if filters.until else None
            except ConfigurationError as exc:
                problem = str(exc)
            else:
                found = client.list_instances(
                    conn,
                    status=filters.status,
                    label=filters.label,
                    since=since,
                    until=until,
                    limit=filters.limit,
                    after=filters.after,
                )
        if as_json:
            if found is None:
                raise Refused(400, problem or "bad filter")
            return self._json(200, api.page_json(found))
        body = instances_page.render(filters, found, problem, self.options.refresh)
        return self._html(200 if found is not None else 400, "Instances", "instances", body)

    def _instance(self, request: Request, iid: str, *, as_json: bool) -> Response:
        with self.database.snapshot() as conn:
            progress = client.progress(conn, iid)
            nodes = client.nodes(conn, iid)
            explained = client.explain(conn, iid)
        if as_json:
            return self._json(200, api.instance_document(progress, nodes, explained))
        actions = instance_page.Actions(self.csrf_token) if self.options.allow_actions else None
        body = instance_page.render(
            progress,
            nodes,
            explained,
            actions=actions,
            notice=request.query.get("notice"),
            refresh=self.options.refresh,
        )
        return self._html(200, f"Instance {iid}", "instances", body)

    def _workers(self, request: Request, *, as_json: bool) -> Response:
        try:
            with self.database.connection() as conn:
                found = fleet.read(conn)
        except pg_errors.InsufficientPrivilege:
            role = self.viewer.role
            problem = workers_page.NOT_GRANTED.format(role=role, role_ident=_role_identifier(role))
            if as_json:
                raise Refused(403, problem) from None
            return self._html(403, "Workers", "workers", workers_page.render(None, problem, 0))
        if as_json:
            return self._json(200, api.fleet_json(found))
        body = workers_page.render(found, None, self.options.refresh)
        return self._html(200, "Workers", "workers", body)

    # -- actions -----------------------------------------------------------------------------

    def _check_action(self, request: Request) -> None:
        if not self.options.allow_actions:
            raise Refused(
                403, "this dashboard is read-only: start pg-durable ui with --allow-actions"
            )
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin != f"http://{host}":
            raise Refused(403, "refused: the request comes from another site")
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise Refused(403, "refused: the request comes from another site")
        token = request.form.get("csrf", "")
        if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
            raise Refused(
                403, "refused: the form's CSRF token is missing or stale; reload the page"
            )

    def _act(self, request: Request, iid: str, action: str) -> Response:
        self._check_action(request)
        with self.database.connection() as conn:
            if action == "signal":
                name = request.form.get("name", "").strip()
                if not name:
                    raise Refused(400, "a signal needs a name")
                try:
                    client.signal(conn, iid, name, request.form.get("data", "{}") or "{}")
                    notice = "signalled"
                except InstanceFinished:
                    notice = "finished"
            else:  # (df.cancel keeps no reason: none is asked for)
                notice = "cancelled" if client.cancel(conn, iid) else "not-cancelled"
        logger.info(
            "dashboard: %s %s (%s)",
            action,
            iid,
            notice,
            extra={"action": f"ui_{action}", "instance_id": iid},
        )
        return self._respond(303, b"", HTML, ("Location", f"/instances/{iid}?notice={notice}"))
