"""The one HTTP listener (`--http ADDR:PORT`, alias `--metrics`): the dashboard at /,
its files under /static/, the JSON API under /api/, Prometheus metrics at /metrics
and the health check at /health (protocol.md, "The dashboard").

Imported only when the listener is on. It runs on the server's event loop; reads
are commands run by an in-process client (`console`), so they cost what the same
commands from a client cost and never slow the queue more than that.

Guards, in this order: with `--http-auth` every path but /health needs valid
credentials (401); actions are POST only (405 otherwise); with `--http-read-only`
every action is refused (403); an action must come from the dashboard's own origin
(`Origin` equal to `http://` or `https://` plus the `Host` header, or
`Sec-Fetch-Site: same-origin`), else 403 — a page elsewhere cannot make a browser
act on the queue, and plain GET links never change anything.
Imports: `http`, `stats` (through `metrics`), stdlib.
"""

import json
from importlib import resources

from qserver.http import metrics
from qserver.http.api import Answer, Api
from qserver.http.auth import Gate
from qserver.http.listener import HttpConnection, Response, text

JSON = "application/json"
STATIC_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8",
                "css": "text/css; charset=utf-8", "svg": "image/svg+xml",
                "png": "image/png", "ico": "image/x-icon"}
# The page loads nothing from elsewhere and may not be framed (clickjacking).
PAGE_HEADERS = (("Content-Security-Policy",
                 "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                 "frame-ancestors 'none'; "
                 "form-action 'self'; base-uri 'none'"),
                ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-cache"))
API_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


async def serve(server, sock, read_only: bool = False, credentials=None):
    """Serve HTTP on the bound, listening `sock`; returns (asyncio server, router)."""
    router = Router(server, read_only, credentials)
    listener = await server.loop.create_server(
        lambda: HttpConnection(router, server.loop), sock=sock)
    return listener, router


class Router:
    def __init__(self, server, read_only: bool, credentials):
        self.server = server
        self.api = Api(server, read_only)
        self.read_only = read_only
        self.gate = None if credentials is None else Gate(credentials)
        self.files = {}                 # static file name -> bytes, read once

    def close(self) -> None:
        self.api.close()

    async def answer(self, request) -> Response:
        path = request.path
        if path == "/health":
            return self.health(request)
        if self.gate is not None and not await self.gate.allows(
                request.headers.get("authorization")):
            return text(401, "credentials needed\n",
                        (("WWW-Authenticate", 'Basic realm="qserver", charset="UTF-8"'),))
        if path.startswith("/api/"):
            return await self.api_answer(request)
        if request.method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD\n", (("Allow", "GET, HEAD"),))
        if path == "/metrics":
            return Response(200, await self.metrics_page(), metrics.CONTENT_TYPE)
        if path in ("/", "/index.html"):
            return self.static("index.html")
        if path.startswith("/static/"):
            return self.static(path[len("/static/"):])
        return text(404, "not found; try /, /api/overview, /metrics or /health\n")

    async def metrics_page(self) -> bytes:
        server = self.server
        if server.store is None:
            figures = metrics.memory_figures(server)
        else:
            figures = await metrics.store_figures(server, self.api.console)
        return metrics.render(server, figures).encode()

    def health(self, request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD\n", (("Allow", "GET, HEAD"),))
        status, message = metrics.health(self.server)
        return text(status, message)

    async def api_answer(self, request) -> Response:
        api = self.api
        try:
            if api.is_action(request.path):
                self.guard(request)
                return as_json(200, await api.post(request.path, request.body))
            if request.method not in ("GET", "HEAD"):
                raise Answer(405, "only GET and HEAD")
            return as_json(200, await api.get(request.path, request.query))
        except Answer as answer:
            headers = (("Allow", "POST" if api.is_action(request.path) else "GET, HEAD"),) \
                if answer.status == 405 else ()
            return as_json(answer.status, {"error": answer.error}, headers)

    def guard(self, request) -> None:
        """Raises Answer unless this action may run."""
        if request.method != "POST":
            raise Answer(405, "use POST")
        if self.read_only:
            raise Answer(403, "read-only dashboard")
        if not same_origin(request.headers):
            raise Answer(403, "cross-origin request refused")

    def static(self, name: str) -> Response:
        kind = name.rpartition(".")[2]
        if kind not in STATIC_TYPES or "/" in name or name.startswith("."):
            return text(404, "not found\n")
        data = self.files.get(name)
        if data is None:
            try:
                data = resources.files("qserver.http").joinpath("static", name).read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                return text(404, "not found\n")
            self.files[name] = data
        return Response(200, data, STATIC_TYPES[kind], PAGE_HEADERS)


def same_origin(headers: dict) -> bool:
    """Whether a browser says the request comes from the dashboard's own origin."""
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = headers.get("origin")
    if origin is None:
        return site == "same-origin"
    host = headers.get("host", "")
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


def as_json(status: int, value, headers=()) -> Response:
    return Response(status, json.dumps(value).encode(), JSON, (*API_HEADERS, *headers))
