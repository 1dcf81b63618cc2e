"""A small local HTTP API for examples/08_http.sql (not an example itself).

    python examples/http_server.py [--port 8765]

It listens on 127.0.0.1 and answers:

* ``GET /rates`` — exchange rates as JSON. It is flaky on purpose: the first request with a
  given ``Idempotency-Key`` gets ``503 Service Unavailable``, a repeat of it ``200``. A worker
  sends a retried HTTP step with the same key, so ``df.retry`` gets through on the second
  attempt.
* ``POST /reports`` — ``201 Created``, echoing the JSON body it received and whether the
  ``Authorization`` header was ``Bearer example-token``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

RATES = {"EUR": 0.92, "GBP": 0.79, "JPY": 151.3}
TOKEN = "example-token"


class Api(BaseHTTPRequestHandler):
    seen_keys: ClassVar[set[str]] = set()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_GET(self) -> None:
        if self.path != "/rates":
            self._reply(404, {"error": "no such path"})
            return
        key = self.headers.get("Idempotency-Key", "")
        with self.lock:
            first = key not in self.seen_keys
            self.seen_keys.add(key)
        if first:
            self._reply(503, {"error": "busy, try again"})
        else:
            self._reply(200, RATES)

    def do_POST(self) -> None:
        if self.path != "/reports":
            self._reply(404, {"error": "no such path"})
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        authorized = self.headers.get("Authorization") == f"Bearer {TOKEN}"
        self._reply(201, {"received": json.loads(body or b"null"), "authorized": authorized})

    def _reply(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the example's output is what psql prints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Api)
    print(f"serving on http://127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
