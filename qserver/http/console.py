"""The dashboard's way into the queue: protocol commands run by an in-process client,
and their replies read back into Python values.

Going through the command table, not around it, is what makes the dashboard show
and do exactly what a client would, on either store (in memory, or the shared
store, whose commands answer later): `stats` is `stats`, a kick is `kick-job`,
logged and (under `-f 0`) fsynced before it is acknowledged. The client is not a
connection of the server: it is not counted in `current-connections`, and it uses
and watches no tube (so `stats-tube` counts stay what the real clients make them),
except for the one command that needs a used tube, `kick N`, which runs in a client
of its own that exists only for that command. Its reads are not counted in the
`cmd-*` figures (a dashboard polling `stats` would swamp them); its actions are,
as any client's.
Imports: stdlib (the connection comes from the server it is given).
"""

import asyncio
import re

REPLY_TIMEOUT = 10.0            # seconds; a store that does not answer gives up here
# Replies followed by `<bytes>` of data: `OK <bytes>`, `FOUND <id> <bytes>`.
WITH_DATA = (b"OK", b"FOUND", b"RESERVED")


class Reply:
    """One reply: its first line (without CRLF) split into words, and its data
    block (bytes) when it has one."""

    __slots__ = ("words", "data")

    def __init__(self, words: list, data):
        self.words = words
        self.data = data

    @property
    def word(self) -> str:
        return self.words[0]

    @property
    def line(self) -> str:
        return " ".join(self.words)

    def yaml(self):
        return parse_yaml(self.data.decode("latin-1"))

    def pairs(self) -> list:
        """A mapping reply's (key, value) pairs with the values as written."""
        lines = self.data.decode("latin-1").split("\n")[1:]
        return [tuple(line.split(": ", 1)) for line in lines if ": " in line]


class _Collector:
    """The transport of the in-process client: it keeps what the connection writes
    and resolves the waiting call once a whole reply is there."""

    def __init__(self):
        self.buffer = b""
        self.waiter = None

    def write(self, data: bytes) -> None:
        self.buffer += data
        reply = self._take()
        if reply is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reply)

    def _take(self):
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return None
        words = self.buffer[:end].decode("latin-1").split(" ")
        data = None
        rest = end + 2
        if words[0].encode() in WITH_DATA and len(words) > 1 and words[-1].isdigit():
            size = int(words[-1])
            if len(self.buffer) < rest + size + 2:
                return None
            data = self.buffer[rest:rest + size]
            rest += size + 2
        self.buffer = self.buffer[rest:]
        return Reply(words, data)

    # The rest of what a connection may ask of its transport.
    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def get_extra_info(self, name, default=None):
        return default


class Console:
    """Runs one command at a time (callers queue on a lock) and returns its Reply."""

    def __init__(self, server):
        self.server = server
        self.lock = asyncio.Lock()
        self.client = self._client(attached=False)

    def _client(self, attached: bool):
        client = self.server.in_process_connection()
        client.transport = _Collector()
        if attached:
            # A client that uses a tube: attached as a connection is, minus the counts.
            client.engine.attach(client.session)
            if self.server.store is not None:
                self.server.commands.session(client)
        elif self.server.store is not None:
            from qserver.store.commands import StoreSession
            client.store_session = StoreSession(f"{self.server.store.node}:http")
        return client

    async def run(self, line: str, counted: bool = False) -> Reply:
        async with self.lock:
            return await self._send(self.client, line, counted)

    async def run_in_tube(self, tube: str, line: str) -> Reply:
        """`line` from a client that uses `tube` (kick N), gone right after."""
        async with self.lock:
            client = self._client(attached=True)
            try:
                used = await self._send(client, f"use {tube}", counted=False)
                if used.word != "USING":
                    return used
                return await self._send(client, line, counted=True)
            finally:
                client.let_go()
                if self.server.store is not None:
                    self.server.commands.closed(client)

    async def _send(self, client, line: str, counted: bool) -> Reply:
        collector = client.transport
        collector.waiter = asyncio.get_running_loop().create_future()
        counts = self.server.info.cmd_counts
        word = line.partition(" ")[0]
        before = counts.get(word)
        try:
            # A handler counts its command before it first waits (for the store),
            # so the count can be put back right after: nothing else ran meanwhile.
            client.data_received(line.encode("latin-1") + b"\r\n")
            if not counted and before is not None:
                counts[word] = before
            return await asyncio.wait_for(collector.waiter, REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            # The reply may still come; a new client keeps the next call in step.
            if client is self.client:
                self.client = self._client(attached=False)
            return Reply(["INTERNAL_ERROR"], None)
        finally:
            collector.waiter = None


# -- the YAML the server writes ----------------------------------------------------

_INT = re.compile(r"-?\d+\Z")
_FLOAT = re.compile(r"-?\d+\.\d+\Z")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")


def _unescape(match) -> str:
    code = match.group(1)
    return chr(int(code[1:], 16)) if code[0] == "x" and len(code) == 3 else code


def scalar(text: str):
    """One value as the server's YAML writes it: ~, true/false, numbers, quoted
    strings (one character per byte), flow lists of quoted strings, plain text."""
    if text == "~":
        return None
    if text in ("true", "false"):
        return text == "true"
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return _ESCAPE.sub(_unescape, text[1:-1])
    if text.startswith("[") and text.endswith("]"):
        return [_ESCAPE.sub(_unescape, item) for item in _QUOTED.findall(text)]
    return text


def parse_yaml(text: str):
    """The subset the server writes: a mapping of scalars, where a value may be a
    list of mappings (`jobs:`, `failures:`) or `[]`; or a list of plain items
    (list-tubes)."""
    lines = [line for line in text.split("\n") if line and line != "---"]
    if lines and lines[0].startswith("- ") and ": " not in lines[0]:
        return [scalar(line[2:]) for line in lines]
    result = {}
    current = None              # the list of mappings being read
    for line in lines:
        if line.startswith("- "):
            current.append({})
            line = "  " + line[2:]
        if line.startswith("  "):
            key, _, value = line[2:].partition(": ")
            current[-1][key] = scalar(value)
            continue
        key, colon, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if value == "":
            current = result[key] = []
        else:
            result[key] = scalar(value)
    return result
