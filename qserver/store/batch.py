"""One pipeline per round trip: the store calls made while the previous batch was on
its way go together as the next one (protocol.md's group commit, for Redis).

A node serving many busy clients must not pay one Redis round trip per command.
At most one batch is in flight, so the calls reach Redis in the order they were
made: a client's pipelined `put` then `reserve` see each other's effects, and one
client's replies stay in order. Each call gets a future; a call that Redis refuses
gets its error, the others of the batch are not affected.

The batches go over a connection of their own that speaks RESP directly (hiredis
parses the replies): redis-py's pipeline spent about 14 µs of CPU per call here, this
about 1.4 (measured with /tmp/exp/rawbench.py, 100 calls a batch). redis-py still
reads the URL and serves everything that is not a batched call (function load,
pub/sub). A batch that gets no reply within CALL_TIMEOUT, or whose connection
breaks, fails as a whole: its calls' outcome is unknown, and the next batch
connects again.
Imports: stdlib, hiredis.
"""

import asyncio
import ssl

import hiredis

CALL_TIMEOUT = 10.0             # seconds a batch may wait for its replies


class ReplyError(Exception):
    """Redis answered one call with an error (the call's own; the batch goes on)."""


class StoreUnreachable(ConnectionError):
    """The batch's connection failed or timed out: the calls' outcome is unknown."""


class RespConnection:
    """A plain RESP2 connection: write a batch of commands, read as many replies."""

    def __init__(self, settings: dict):
        self.settings = settings        # host, port, db, username, password, tls
        self.reader = self.writer = None
        self.parser = None

    async def open(self) -> None:
        s = self.settings
        context = ssl.create_default_context() if s.get("tls") else None
        self.reader, self.writer = await asyncio.open_connection(s["host"], s["port"],
                                                                 ssl=context)
        self.parser = hiredis.Reader()
        setup = []
        if s.get("password"):
            setup.append(("AUTH", s["username"], s["password"]) if s.get("username")
                         else ("AUTH", s["password"]))
        if s.get("db"):
            setup.append(("SELECT", s["db"]))
        if setup:
            for reply in await self.execute(setup):
                if isinstance(reply, hiredis.ReplyError):
                    raise StoreUnreachable(f"store refused the connection: {reply}")

    @property
    def is_open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None

    async def send(self, command) -> None:
        self.writer.write(encode(command))

    async def replies(self):
        """Every reply (or pushed message) as it comes; ends when the store closes
        the connection (StoreUnreachable)."""
        while True:
            reply = self.parser.gets()
            while reply is not False:
                yield reply
                reply = self.parser.gets()
            await self._read_more()

    async def execute(self, commands) -> list:
        self.writer.write(b"".join(encode(command) for command in commands))
        replies = []
        parser = self.parser
        while True:
            reply = parser.gets()
            while reply is not False:
                replies.append(reply)
                if len(replies) == len(commands):
                    return replies
                reply = parser.gets()
            await self._read_more()

    async def _read_more(self) -> None:
        data = await self.reader.read(1 << 16)
        if not data:
            raise StoreUnreachable("the store closed the connection")
        self.parser.feed(data)


def encode(command) -> bytes:
    """One command as a RESP array of bulk strings (str, int or bytes args)."""
    parts = [b"*%d\r\n" % len(command)]
    append = parts.append
    for arg in command:
        cls = arg.__class__
        if cls is str:
            arg = arg.encode()
        elif cls is int:
            arg = b"%d" % arg
        elif cls is not bytes:
            arg = str(arg).encode()
        append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class Batcher:
    def __init__(self, settings: dict):
        self.connection = RespConnection(settings)
        self.pending = []               # (command args, future) not sent yet
        self.in_flight = False
        self.round_trips = 0            # batches sent (tests, stats)
        self.largest = 0                # the most calls one batch carried

    def call(self, *args) -> asyncio.Future:
        """Queue one command (e.g. "FCALL", name, 1, key, ...); its reply comes
        through the returned future."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((args, future))
        if not self.in_flight:
            self.in_flight = True
            # After this loop turn's other callbacks, so their calls join the batch.
            asyncio.get_running_loop().call_soon(self._send_next)
        return future

    def close(self) -> None:
        self.connection.close()

    def _send_next(self) -> None:
        if not self.pending:
            self.in_flight = False
            return
        batch, self.pending = self.pending, []
        asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list) -> None:
        connection = self.connection
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                if not connection.is_open:
                    await connection.open()
                self.round_trips += 1
                self.largest = max(self.largest, len(batch))
                results = await connection.execute([args for args, _ in batch])
        except (OSError, EOFError, TimeoutError, StoreUnreachable, hiredis.ProtocolError) \
                as error:
            connection.close()          # the next batch connects again
            failure = error if isinstance(error, StoreUnreachable) else \
                StoreUnreachable(f"store unreachable: {error!r}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
        else:
            for (_, future), result in zip(batch, results):
                if future.done():       # its caller gave up (cancelled)
                    continue
                if isinstance(result, hiredis.ReplyError):
                    future.set_exception(ReplyError(str(result)))
                else:
                    future.set_result(result)
        self._send_next()
