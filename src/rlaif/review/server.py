"""`rlaif review`: a local web page for human spot-checks of AI labels (the standard library's HTTP server).

Listens on 127.0.0.1 only and answers only requests addressed to it by that name (or `localhost`), so a web page
elsewhere cannot reach it through DNS rebinding. The page (assets/review/) is static: its script fetches JSON
and puts every text from the labels in with `textContent`, never as HTML.

    GET  /              the page            GET /api/next   the next pair, blind (or none: the review is done)
    GET  /review.js     its script          GET /api/stats  agreement figures so far
    POST /api/verdict   {"id", "choice": left | right | tie | skip} -> the judge's verdict on it + figures
"""

from __future__ import annotations

import errno
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from .session import ReviewSession

log = logging.getLogger("rlaif.review")
HOST = "127.0.0.1"
MAX_BODY = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"/": ("review.html", "text/html; charset=utf-8"), "/review.js": ("review.js", "text/javascript"),
          "/review.css": ("review.css", "text/css")}


class ReviewError(RuntimeError):
    """The review cannot start (e.g. the port is in use); the message says what to do."""


def asset(name: str) -> bytes:
    return (resources.files("rlaif") / "assets" / "review" / name).read_bytes()


def make_handler(session: ReviewSession, port_ref: list[int]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "rlaif-review"

        def log_message(self, fmt: str, *args: Any) -> None:  # requests go to the debug log, not the console
            log.debug("%s " + fmt, self.address_string(), *args)

        def send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def send_json(self, code: int, obj: Any) -> None:
            self.send(code, json.dumps(obj).encode("utf-8"), "application/json")

        def host_ok(self) -> bool:
            host = self.headers.get("Host", "")
            ok = host in {f"{HOST}:{port_ref[0]}", f"localhost:{port_ref[0]}"}
            if not ok:
                self.send_json(403, {"error": "this server answers only to 127.0.0.1 and localhost"})
            return ok

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            if not self.host_ok():
                return
            path = self.path.split("?", 1)[0]
            if path in STATIC:
                name, ctype = STATIC[path]
                self.send(200, asset(name), ctype)
            elif path == "/api/next":
                self.send_json(200, session.next_item())
            elif path == "/api/stats":
                self.send_json(200, session.stats())
            else:
                self.send_json(404, {"error": f"no such page: {path}"})

        def do_POST(self) -> None:  # noqa: N802
            if not self.host_ok():
                return
            if self.path != "/api/verdict":
                self.send_json(404, {"error": f"no such endpoint: {self.path}"})
                return
            if self.headers.get_content_type() != "application/json":
                self.send_json(415, {"error": "send application/json"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                self.send_json(400, {"error": "a JSON body of at most 64 KiB is needed"})
                return
            try:
                body = json.loads(self.rfile.read(length))
                pair_id, choice = body["id"], body["choice"]
                if not isinstance(pair_id, str) or not isinstance(choice, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.send_json(400, {"error": 'expected {"id": str, "choice": left | right | tie | skip}'})
                return
            try:
                self.send_json(200, session.record(pair_id, choice))
            except KeyError:
                self.send_json(404, {"error": f"no pair with id {pair_id!r} in {session.labels}"})
            except ValueError as e:
                self.send_json(400, {"error": str(e)})

    return Handler


def start_server(session: ReviewSession, port: int = 8765) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1:port (0 = any free port); call `serve_forever()` on it."""
    port_ref = [port]
    try:
        server = ThreadingHTTPServer((HOST, port), make_handler(session, port_ref))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ReviewError(f"port {port} on {HOST} is in use (another review?): pass --port N, or --port 0 for "
                              "any free port") from None
        raise ReviewError(f"cannot listen on {HOST}:{port}: {e.strerror or e}") from None
    server.daemon_threads = True
    port_ref[0] = server.server_address[1]
    return server


__all__ = ["start_server", "ReviewError", "HOST"]
