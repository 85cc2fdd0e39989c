"""One pipeline per round trip: the store calls made while the previous batch was on
its way go together as the next one (protocol.md's group commit, for Redis).

A node serving many busy clients must not pay one Redis round trip per command.
Up to MAX_IN_FLIGHT batches are on their way at once, all over one connection, so
the calls reach Redis in the order they were made (Redis runs one connection's
commands in order): a client's pipelined `put` then `reserve` see each other's
effects, and one client's replies stay in order. Each call gets a future, or for
the hot commands a callback (`call_then`) run as soon as the batch's replies are
read (no future, no extra loop turn); a call that Redis refuses gets its error,
the others of the batch are not affected. Calls are encoded when they are made,
an FCALL's fixed head once per function (`fcall_head`).

The batches go over a connection of their own that speaks RESP directly (hiredis
parses the replies): redis-py's pipeline spent about 14 µs of CPU per call here, this
about 1.4 (measured with /tmp/exp/rawbench.py, 100 calls a batch). The node needs no
redis-py at all (tests get one as `RedisStore.redis`).

Once prepared, the connection's replies go straight from its protocol
(`BatchProtocol.data_received`) to the batches in flight: no task, stream reader or
timeout object per batch, which cost about as much CPU as the round trip's system
calls. A batch that gets no reply within CALL_TIMEOUT, or whose connection breaks,
fails as a whole, with the others in flight on that connection: their calls'
outcome is unknown, and the next call connects again (at most every
RECONNECT_PAUSE; the calls made while it connects fail with it if it cannot). Each
new connection asks the sentinels for the primary when
the URL names sentinels, checks with ROLE that it is one, and runs the store's
`prepare` step (the function library, the id fence) before any batch. With
`wait_replicas` N > 0 each batch ends with WAIT N WAIT_TIMEOUT_MS, and its calls
answer only once N replicas have them; if fewer acknowledge in time, every call of
the batch fails with ReplicasMissing (applied on the primary, perhaps lost by a
failover). protocol.md, "Several nodes", "Faults".
Imports: stdlib, hiredis.
"""

import asyncio
import collections
import logging
import ssl

import hiredis

log = logging.getLogger("qserver")

CALL_TIMEOUT = 10.0             # seconds a batch may wait for its replies
# Batches on their way at once, so that Redis runs one while the node handles
# another's replies (with one, node and Redis took turns: bench/README.md, "Several
# nodes on Redis"; four did a little better than two in a quick, noisy check).
MAX_IN_FLIGHT = 4
CONNECT_TIMEOUT = 2.0           # seconds to reach one sentinel or the primary
RECONNECT_PAUSE = 0.1           # seconds between two attempts to connect
# WAIT's timeout: replicas that have not acknowledged a batch within this are taken
# as missing. A replica acknowledges in about a millisecond on a LAN and Redis asks
# at once (REPLCONF GETACK); a second leaves room for a busy host while keeping a
# lost replica from stalling every batch for long.
WAIT_TIMEOUT_MS = 1000


class ReplyError(Exception):
    """Redis answered one call with an error (the call's own; the batch goes on)."""


class StoreUnreachable(ConnectionError):
    """The batch's connection failed or timed out: the calls' outcome is unknown."""


class ReplicasMissing(StoreUnreachable):
    """WAIT heard from fewer replicas than asked: the calls were applied on the
    primary, but a failover may lose them."""


class RespConnection:
    """A plain RESP2 connection: write a batch of commands, read as many replies."""

    def __init__(self, settings: dict):
        self.settings = settings        # host, port, db, username, password, tls
        self.reader = self.writer = None
        self.parser = None
        self.address = None             # (host, port) of the server once open

    async def open(self) -> None:
        """Connect to the primary (asking the sentinels where it is, when the URL
        names sentinels), log in and select the database; StoreUnreachable if that
        fails or the server is not a primary."""
        s = self.settings
        if s.get("sentinels"):
            host, port = await locate_primary(s)
        else:
            host, port = s["host"], s["port"]
        await self._connect(host, port)
        try:
            setup = []
            if s.get("password"):
                setup.append(("AUTH", s["username"], s["password"]) if s.get("username")
                             else ("AUTH", s["password"]))
            if s.get("db"):
                setup.append(("SELECT", s["db"]))
            if s.get("sentinels"):
                setup.append(("ROLE",))
            replies = await self.execute(setup) if setup else []
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    raise StoreUnreachable(f"store refused the connection: {reply}")
            if s.get("sentinels") and replies[-1][0] != b"master":
                # The sentinels have not caught up with a failover yet.
                raise StoreUnreachable(f"{host}:{port}, named primary by the sentinels, "
                                       f"is a {replies[-1][0].decode()}")
        except BaseException:
            self.close()
            raise
        self.address = (host, port)

    async def _connect(self, host: str, port: int) -> None:
        context = ssl.create_default_context() if self.settings.get("tls") else None
        async with asyncio.timeout(CONNECT_TIMEOUT):
            self.reader, self.writer = await asyncio.open_connection(host, port,
                                                                     ssl=context)
        self.parser = hiredis.Reader()

    async def call(self, *command):
        """One command, its reply; an error reply raises ReplyError."""
        (reply,) = await self.execute([command])
        if isinstance(reply, hiredis.ReplyError):
            raise ReplyError(str(reply))
        return reply

    @property
    def is_open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None

    async def send(self, command) -> None:
        self.writer.write(encode(command))

    async def next_reply(self):
        """The next reply (or pushed message) as it comes; StoreUnreachable when the
        store closes the connection. Safe to cancel (nothing read is lost)."""
        while True:
            reply = self.parser.gets()
            if reply is not False:
                return reply
            await self._read_more()

    async def execute(self, commands) -> list:
        self.write(commands)
        return await self.read(len(commands))

    def write(self, commands) -> None:
        self.writer.write(b"".join([encode(command) for command in commands]))

    async def read(self, count: int) -> list:
        """The next `count` replies (those of the commands written first)."""
        replies = []
        parser = self.parser
        while True:
            reply = parser.gets()
            while reply is not False:
                replies.append(reply)
                if len(replies) == count:
                    return replies
                reply = parser.gets()
            await self._read_more()

    async def _read_more(self) -> None:
        data = await self.reader.read(1 << 16)
        if not data:
            raise StoreUnreachable("the store closed the connection")
        self.parser.feed(data)


async def locate_primary(settings: dict) -> tuple:
    """(host, port) of the primary, from the first sentinel that knows it
    (SENTINEL get-master-addr-by-name), asked in the order the URL gives them."""
    problems = []
    for host, port in settings["sentinels"]:
        sentinel = RespConnection({"tls": settings.get("tls")})
        try:
            await sentinel._connect(host, port)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                found = await sentinel.call("SENTINEL", "get-master-addr-by-name",
                                            settings["master"])
        except (OSError, TimeoutError, StoreUnreachable, ReplyError,
                hiredis.ProtocolError) as error:
            problems.append(f"{host}:{port}: {error or type(error).__name__}")
            continue
        finally:
            sentinel.close()
        if found:
            return found[0].decode(), int(found[1])
        problems.append(f"{host}:{port} does not know {settings['master']!r}")
    raise StoreUnreachable("no sentinel gave the primary: " + "; ".join(problems))


def encode(command) -> bytes:
    """One command as a RESP array of bulk strings (str, int or bytes args)."""
    return b"*%d\r\n%s" % (len(command), encode_args(command))


def encode_args(args) -> bytes:
    """Arguments as RESP bulk strings, one after the other (no array head).

    The hot path of every store call (a tenth of a node's instructions when it
    formatted each one): a str argument (the prefix, a tube, a holder) is looked up
    whole in `_BULK`, and the length head of any other comes from `_LENGTH_HEADS`.
    """
    parts = []
    append = parts.append
    bulk = _BULK
    for arg in args:
        cls = type(arg)
        if cls is str:
            # `in` and [] rather than .get: compiled, a method call on an untyped
            # dict costs a lookup by name each time.
            if arg in bulk:
                append(bulk[arg])
                continue
            data = _bulk_string(arg.encode())
            if len(arg) <= 256:
                if len(bulk) >= _BULK_LIMIT:
                    bulk.clear()        # bounded; the names in use come back at once
                bulk[arg] = data
            append(data)
            continue
        if cls is int:
            arg = b"%d" % arg
        elif cls is not bytes:
            arg = str(arg).encode()
        size = len(arg)
        append(_LENGTH_HEADS[size] if size < 1024 else b"$%d\r\n" % size)
        append(arg)
        append(b"\r\n")
    return b"".join(parts)


def _bulk_string(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


# Strings the node sends again and again (tube names, holders, the prefix) as RESP
# bulk strings, at most _BULK_LIMIT of them; and `$<n>\r\n` for the usual sizes.
_BULK = {}
_BULK_LIMIT = 4096
_LENGTH_HEADS = [b"$%d\r\n" % size for size in range(1024)]


_heads = {}


def fcall_head(name: str, key: str, count: int) -> bytes:
    """The RESP of `FCALL name 1 key` for a call with `count` more arguments (the
    array head counts them): made once per function and count."""
    which = (name, key, count)
    if which in _heads:
        return _heads[which]
    fixed = ("FCALL", name, 1, key)
    head = _heads[which] = b"*%d\r\n%s" % (len(fixed) + count, encode_args(fixed))
    return head


class Batch:
    """One batch written: its calls' futures or callbacks, how many replies it
    awaits (WAIT's too), those read so far, and when it was written."""

    __slots__ = ("targets", "count", "replies", "sent")

    def __init__(self, targets: list, count: int, sent: float):
        self.targets = targets
        self.count = count
        self.replies = []
        self.sent = sent


class BatchProtocol(asyncio.Protocol):
    """The protocol of a connection once it is prepared: the replies go straight to
    the batches in flight as they arrive (no task, no stream reader, no timeout
    object per batch: each of those cost about as much as the round trip's
    system calls)."""

    def __init__(self, batcher, parser):
        self.batcher = batcher
        self.parser = parser

    def data_received(self, data) -> None:
        self.batcher._received(self, data)

    def eof_received(self):
        return False                    # close: connection_lost fails what flies

    def connection_lost(self, exc) -> None:
        self.batcher._lost(self, exc)


class Batcher:
    def __init__(self, settings: dict, prepare=None, wait_replicas: int = 0):
        self.connection = RespConnection(settings)
        # prepare(connection): awaited on each new connection before its first batch.
        self.prepare = prepare
        self.wait_replicas = wait_replicas
        self.pending = []               # (RESP bytes, future or callback) not sent yet
        self.flying = collections.deque()   # Batches written, oldest first
        self.scheduled = False          # _send_next is due this loop turn
        self.protocol = None            # the prepared connection's BatchProtocol
        self.opening = None             # the task connecting and preparing
        self.timer = None               # watches the oldest batch's CALL_TIMEOUT
        self.round_trips = 0            # batches sent (tests, stats)
        self.largest = 0                # the most calls one batch carried
        self.connects = 0               # connections made (tests)
        self.next_attempt = 0.0         # loop time before which no connect is tried
        self.closed = False             # close() was called

    def call(self, *args) -> asyncio.Future:
        """Queue one command (e.g. "FCALL", name, 1, key, ...); its reply comes
        through the returned future."""
        return self.call_encoded(encode(args))

    def call_encoded(self, data: bytes) -> asyncio.Future:
        """call() for a command already in RESP."""
        future = asyncio.get_running_loop().create_future()
        self._queue(data, future)
        return future

    def call_then(self, data: bytes, callback) -> None:
        """Queue one command already in RESP; `callback(reply, error)` gets its
        reply (error None) or its failure (reply None), called as soon as the
        batch's replies are read, in the batch's order."""
        self._queue(data, callback)

    def _queue(self, data: bytes, target) -> None:
        self.pending.append((data, target))
        if not self.scheduled and len(self.flying) < MAX_IN_FLIGHT:
            self.scheduled = True
            # After this loop turn's other callbacks, so their calls join the batch.
            asyncio.get_running_loop().call_soon(self._send_next)

    def close(self) -> None:
        """Close the connection for good: calls not sent yet are written first (a
        closed client's release, at shutdown), their replies are not waited for;
        calls in flight or made later fail."""
        self.closed = True
        if self.pending and self.protocol is not None and self.connection.is_open:
            self._write()
        self.connection.close()

    async def connect(self) -> None:
        """Open and prepare the connection now (at start: the errors are the
        caller's). Only while no batch is in flight."""
        async with asyncio.timeout(CALL_TIMEOUT):
            await self._open()

    async def _open(self) -> None:
        self.protocol = None
        connection = self.connection
        loop = asyncio.get_running_loop()
        pause = self.next_attempt - loop.time()
        if pause > 0:                   # the store just failed: do not hammer it
            await asyncio.sleep(pause)
        self.next_attempt = loop.time() + RECONNECT_PAUSE
        await connection.open()
        try:
            if self.prepare is not None:
                await self.prepare(connection)
        except BaseException:
            connection.close()
            raise
        self.connects += 1
        # From now on the replies go to the batches (the parser keeps whatever the
        # preparation left unread).
        protocol = BatchProtocol(self, connection.parser)
        connection.writer.transport.set_protocol(protocol)
        self.protocol = protocol

    async def _reopen(self) -> None:
        """Connect and prepare for the calls waiting; if that fails, they fail
        (their outcome is known: not sent), and the next call tries again."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._open()
        except (OSError, EOFError, TimeoutError, StoreUnreachable, ReplyError,
                hiredis.ProtocolError) as error:
            self.connection.close()
            self._fail_pending(error if isinstance(error, StoreUnreachable) else
                               StoreUnreachable(f"store unreachable: {error!r}"))
        except BaseException as error:  # a bug: the calls must not wait for ever
            self.connection.close()
            self._fail_pending(StoreUnreachable(f"store call failed: {error!r}"))
            raise
        finally:
            self.opening = None
        self._send_next()

    def _fail_pending(self, failure: Exception) -> None:
        batch, self.pending = self.pending, []
        self._fail(batch, failure)

    def _send_next(self) -> None:
        """Write the calls waiting as one batch (unless MAX_IN_FLIGHT are on their
        way: the first to come back sends it)."""
        self.scheduled = False
        if not self.pending or len(self.flying) >= MAX_IN_FLIGHT:
            return
        if self.closed:
            self.connection.close()     # (one a connect in progress made)
            self._fail_pending(StoreUnreachable("the store connection is closed"))
            return
        if self.protocol is None or not self.connection.is_open:
            # Connect (and prepare) first; nothing is written meanwhile, so that
            # the replies come back in the order the batches expect them.
            if self.opening is None:
                self.opening = asyncio.get_running_loop().create_task(self._reopen())
            return
        self._write()

    def _write(self) -> None:
        batch, self.pending = self.pending, []
        data = [command for command, _ in batch]
        if self.wait_replicas:
            data.append(encode(("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)))
        loop = asyncio.get_running_loop()
        self.flying.append(Batch([target for _, target in batch], len(data), loop.time()))
        self.round_trips += 1
        if len(batch) > self.largest:
            self.largest = len(batch)
        self.connection.writer.write(b"".join(data))
        if self.timer is None:
            self.timer = loop.call_at(self.flying[0].sent + CALL_TIMEOUT, self._check_time)

    def _received(self, protocol, data) -> None:
        """Replies: each goes to the oldest batch still waiting for some (Redis
        answers one connection's commands in order); a batch complete is answered."""
        if protocol is not self.protocol:
            return                      # a connection given up (closed)
        parser = protocol.parser
        flying = self.flying
        try:
            parser.feed(data)
            while True:
                reply = parser.gets()
                if reply is False:
                    break
                if not flying:
                    raise StoreUnreachable("the store sent a reply nobody asked for")
                batch = flying[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.count:
                    flying.popleft()
                    self._answer(batch)
                    if protocol is not self.protocol:
                        return          # given up while answering (READONLY)
        except (hiredis.ProtocolError, StoreUnreachable) as error:
            self._give_up(StoreUnreachable(f"store unreachable: {error!r}"))
            return
        self._send_next()

    def _answer(self, batch: Batch) -> None:
        results = batch.replies
        if self.wait_replicas:
            acknowledged = results.pop()
            if isinstance(acknowledged, hiredis.ReplyError) or \
                    acknowledged < self.wait_replicas:
                self._fail([(None, target) for target in batch.targets], ReplicasMissing(
                    f"{acknowledged} of {self.wait_replicas} replicas acknowledged "
                    f"within {WAIT_TIMEOUT_MS} ms"))
                return
        for target, result in zip(batch.targets, results):
            if isinstance(result, hiredis.ReplyError):
                if str(result).startswith("READONLY"):
                    # A replica now (a failover demoted it): find the primary.
                    self._give_up(StoreUnreachable("the store is a replica now"))
                _settle(target, None, ReplyError(str(result)))
            else:
                _settle(target, result, None)

    def _lost(self, protocol, exc) -> None:
        if protocol is self.protocol:
            self._give_up(StoreUnreachable(
                "the store closed the connection" if exc is None else
                f"store unreachable: {exc!r}"))

    def _check_time(self) -> None:
        """A batch without all its replies after CALL_TIMEOUT: the connection is
        given up and the calls in flight fail (their outcome is unknown)."""
        self.timer = None
        if not self.flying:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self.flying[0].sent + CALL_TIMEOUT:
            self._give_up(StoreUnreachable(
                f"store unreachable: no reply within {CALL_TIMEOUT} s"))
        else:
            self.timer = loop.call_at(self.flying[0].sent + CALL_TIMEOUT, self._check_time)

    def _give_up(self, failure: Exception) -> None:
        """Close the connection and fail the batches in flight; calls made from
        now on connect again."""
        self.protocol = None
        self.connection.close()
        flying, self.flying = self.flying, collections.deque()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for batch in flying:
            self._fail([(None, target) for target in batch.targets], failure)
        flying.clear()
        if self.pending and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._send_next)

    @staticmethod
    def _fail(batch: list, failure: Exception) -> None:
        for _, target in batch:
            _settle(target, None, failure)


_Future = asyncio.Future


def _settle(target, reply, error) -> None:
    """Hand a call its reply or its failure: a future (unless its caller gave up),
    or a callback (whose own failure must not stop the batch's other calls)."""
    if isinstance(target, _Future):
        if target.done():               # its caller gave up (cancelled)
            return
        if error is None:
            target.set_result(reply)
        else:
            target.set_exception(error)
        return
    try:
        target(reply, error)
    except Exception:
        log.exception("store: a reply's callback failed")
