"""HTTP/1.1 on the listener's sockets: one request per connection (`Connection:
close`), its head and body read with bounds, answered by the router.

A request head is at most MAX_HEAD bytes and a body at most MAX_BODY (the API's
actions carry a small JSON object); a client has REQUEST_TIMEOUT seconds to send
its request, and at most MAX_CONNECTIONS are served at once, so nothing a browser
or a scanner sends can make the server buffer without bound.
Imports: stdlib.
"""

import asyncio
import logging

log = logging.getLogger("qserver")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Content Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class Request:
    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method: str, target: str, headers: dict, body: bytes = b""):
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers          # lower-case names
        self.body = body


class Response:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes, content_type: str, headers=()):
        self.status = status
        self.body = body
        self.headers = [("Content-Type", content_type), *headers]

    def encode(self, head_only: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS[self.status]}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        return head if head_only else head + self.body


def text(status: int, message: str, headers=()) -> Response:
    return Response(status, message.encode(), "text/plain; charset=utf-8", headers)


class HttpConnection(asyncio.Protocol):
    """Reads one request, lets `router.answer(request)` (a coroutine) answer it,
    writes the response and closes."""

    open = 0                    # connections being served, all listeners together

    def __init__(self, router, loop):
        self.router = router
        self.loop = loop
        self.transport = None
        self.buffer = bytearray()
        self.request = None             # once the head is read
        self.timeout = None
        self.task = None

    def connection_made(self, transport):
        self.transport = transport
        HttpConnection.open += 1
        if HttpConnection.open > MAX_CONNECTIONS:
            self._send("GET", text(503, "too many HTTP connections\n"))
            return
        self.timeout = self.loop.call_later(REQUEST_TIMEOUT, transport.abort)

    def connection_lost(self, exc):
        HttpConnection.open -= 1
        if self.timeout is not None:
            self.timeout.cancel()
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data):
        if self.transport.is_closing() or self.task is not None:
            return
        self.buffer += data
        if self.request is None:
            self._read_head()
        if self.request is not None:
            self._read_body()

    def _read_head(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._send("GET", text(400, "request head too long\n"))
            return
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        del self.buffer[:end + 4]
        parts = head[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1]:
            self._send("GET", text(400, "bad request line\n"))
            return
        headers = {}
        for line in head[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                self._send("GET", text(400, "bad header line\n"))
                return
            headers[name.strip().lower()] = value.strip()
        self.request = Request(parts[0], parts[1], headers)

    def _read_body(self) -> None:
        request = self.request
        headers = request.headers
        if "transfer-encoding" in headers:
            self._send(request.method, text(411, "send Content-Length\n"))
            return
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            self._send(request.method, text(413, f"a body is at most {MAX_BODY} bytes\n"))
            return
        if len(self.buffer) < int(length):
            return
        request.body = bytes(self.buffer[:int(length)])
        self.transport.pause_reading()
        self.task = self.loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        try:
            response = await self.router.answer(request)
        except Exception:       # a request must never take the server down
            log.exception("http: cannot answer %s %s", request.method, request.path[:80])
            response = text(500, "internal error\n")
        self._send(request.method, response)

    def _send(self, method: str, response: Response) -> None:
        if not self.transport.is_closing():
            self.transport.write(response.encode(head_only=method == "HEAD"))
            self.transport.close()
