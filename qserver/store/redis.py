"""The job operations on Redis: thin asyncio wrappers around the function library
in `functions.lua` (one FCALL, one atomic step, per operation).

Every key of one qserver cluster carries the hash tag `{prefix}`, so a cluster's
keys sit in one slot and several clusters can share one Redis (`prefix`). Times are
the store's (Redis TIME), the one clock all nodes share. A holder names one client
connection of one node (`node:connection`); a reserved job can be deleted,
released, buried or touched only by its holder, as in beanstalkd. Each node holds a
lease (`beat`), which also tells the store which tubes its connections use (tube
lifetime); a node whose lease runs out is reaped by the others.
Imports: `errors`, `stats`, `store`, `store.batch`, stdlib; redis-py only for
`RedisStore.redis` (tests).
"""

import asyncio
import logging
import os
from importlib import resources

from qserver.errors import DeadlineSoon, InternalError, NotFound
from qserver.stats import job_pairs
from qserver.store import parse_url
from qserver.store.batch import (CALL_TIMEOUT, Batcher, ReplyError, RespConnection,
                                 StoreUnreachable, locate_primary)

log = logging.getLogger("qserver")

LIBRARY_FILE = "functions.lua"
# Pub/sub delivers at most once: a waiting reserve looks again at least this often,
# and the TTR reaper runs at least this often.
REPOLL_SECONDS = 1.0
EXPIRE_BATCH = 100              # TTR expiries per function call (bounded work)
# A node renews its lease in the store every BEAT_SECONDS; one that has not for its
# lease (--store-lease) is taken for dead: its connections' jobs are ready again
# and the tubes only it referred to are forgotten (protocol.md, "Several nodes").
BEAT_SECONDS = 1.0
FLUSH_STEP = 1000               # a flush's jobs removed per function call
ORPHAN_FLUSH_SECONDS = 30.0     # a flush unfinished this long is taken over
# How far the id counter jumps when a node meets a primary with a replication id
# the store has not recorded (a promoted replica, a restarted Redis): more ids than
# a cluster puts during any replication lag worth having (100 s at 100,000 puts a
# second), and still 900 million jumps below 2^53.
ID_MARGIN = 10_000_000
# The wake-up subscription sends PING after this many seconds of silence, and
# subscribes again when the PING gets no answer within as long again (a store that
# vanished without closing the connection).
KEEPALIVE_SECONDS = 5.0
# With Sentinel, how often a node asks the sentinels which server is the primary.
# A failover does not always close the connections to the old primary (SENTINEL
# FAILOVER, a partition): Sentinel demotes a live old primary only some seconds
# later, and what it acknowledges meanwhile is lost. Asking twice a second bounds
# that window to about half a second (and --store-wait-replicas closes it).
PRIMARY_CHECK_SECONDS = 0.5


def library_code() -> str:
    return resources.files("qserver.store").joinpath(LIBRARY_FILE).read_text()


class RedisStore:
    def __init__(self, settings: dict, prefix: str = "qserver", wait_replicas: int = 0,
                 url: str = ""):
        self.settings = settings            # qserver.store.parse_url's
        self.url = url
        self.key = "{%s}" % prefix          # KEYS[1] of every call: the hash tag
        # The calls of a loop turn, one round trip, on a connection of their own.
        self.batcher = Batcher(settings, self._prepare, wait_replicas)
        self.wakeups = Wakeups(settings, self.key + ":wake")
        self.tasks = []                     # the TTR reaper, a library reload
        self.reloading = False
        self.node = os.urandom(6).hex()     # this node's name in the store
        self.lease = 10.0                   # seconds (--store-lease)
        self.referred = tuple               # () -> the tubes this node's clients use
        self.library_loaded = False         # by this process, since it started
        self.primary = None                 # (host, port, replication id) last fenced
        self._redis = None

    @classmethod
    async def connect(cls, url: str, prefix: str = "qserver", wait_replicas: int = 0,
                      lease: float = 10.0) -> "RedisStore":
        """Connect to the store `url` names (redis://, rediss://, or the sentinels
        of redis+sentinel://), (re)load the function library (every node runs the
        functions its own version ships), fence the job ids, take the node's lease,
        subscribe to the wake-ups and start the TTR reaper. Raises if the store
        cannot be used."""
        store = cls(parse_url(url), prefix, wait_replicas, url)
        store.lease = lease
        await store.batcher.connect()
        try:
            await store.beat()
        except (InternalError, ConnectionError) as error:   # e.g. too few replicas
            log.warning("store: the node's first lease: %s (the next beat tries again)",
                        error)
        await store.wakeups.start()
        loop = asyncio.get_running_loop()
        store.tasks = [loop.create_task(store._reap()), loop.create_task(store._beat())]
        if store.settings["sentinels"]:
            store.tasks.append(loop.create_task(store._follow_primary()))
        return store

    async def _follow_primary(self) -> None:
        """Ask the sentinels every PRIMARY_CHECK_SECONDS which server is the
        primary; a connection to another one is closed, and connects again to the
        one named (the batch in flight, if any, answers INTERNAL_ERROR)."""
        while True:
            await asyncio.sleep(PRIMARY_CHECK_SECONDS)
            try:
                named = await locate_primary(self.settings)
            except StoreUnreachable as error:
                log.debug("store: asking the sentinels: %s", error)
                continue
            for connection in (self.batcher.connection, self.wakeups.connection):
                if connection is not None and connection.is_open and \
                        connection.address not in (None, named):
                    log.warning("store: the sentinels name %s:%s the primary; leaving "
                                "%s:%s", *named, *connection.address)
                    connection.close()

    async def _prepare(self, connection) -> None:
        """Each new connection to the primary, before its first batch: load the
        function library (at start, or when this primary has none: restarted
        without persistence), then fence the job ids (qs_fence: a primary whose
        replication id is new to the store may have lost the last INCRs of the id
        counter, so the counter jumps ID_MARGIN once per primary)."""
        if not self.library_loaded:
            await connection.call("FUNCTION", "LOAD", "REPLACE", library_code())
            self.library_loaded = True
        try:
            reply = await connection.call("FCALL", "qs_fence", 1, self.key, ID_MARGIN)
        except ReplyError as error:
            if "Function not found" not in str(error):
                raise
            log.warning("store: %s:%s has no function library; loading it",
                        *connection.address)
            await connection.call("FUNCTION", "LOAD", "REPLACE", library_code())
            reply = await connection.call("FCALL", "qs_fence", 1, self.key, ID_MARGIN)
        _, jumped, replid = reply
        primary = (*connection.address, replid.decode())
        if jumped:
            log.warning("store: primary %s:%s has a new replication id %s: job ids "
                        "jump by %d (ids the old primary gave may be lost)", *primary,
                        jumped)
        elif primary != self.primary:
            log.info("store: primary %s:%s (replication id %s)", *primary)
        self.primary = primary

    async def load_functions(self) -> None:
        await self.batcher.call("FUNCTION", "LOAD", "REPLACE", library_code())

    @property
    def redis(self):
        """A redis-py client on the same store, made at first use (tests, tools):
        the node itself speaks RESP on its own connections."""
        if self._redis is None:
            import redis.asyncio as aioredis
            s = self.settings
            if s["sentinels"]:
                from redis.asyncio.sentinel import Sentinel
                self._redis = Sentinel(s["sentinels"], ssl=s["tls"]).master_for(
                    s["master"], db=s["db"], username=s["username"],
                    password=s["password"], ssl=s["tls"])
            else:
                self._redis = aioredis.from_url(self.url)
        return self._redis

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.wakeups.close()
        self.batcher.close()
        if self._redis is not None:
            await self._redis.aclose()

    def call(self, name: str, *args) -> asyncio.Future:
        """FCALL a function in this turn's batch; the future gets the raw reply
        (status word first). For the commands that answer from a callback."""
        return self.batcher.call("FCALL", name, 1, self.key, *args)

    def reload_soon(self) -> None:
        """A call found the library gone: load it again in the background."""
        if not self.reloading:
            self.reloading = True
            log.warning("store: the function library is gone; loading it again")
            task = asyncio.get_running_loop().create_task(self._reload())
            self.tasks.append(task)

    async def _reload(self) -> None:
        try:
            await self.load_functions()
        except Exception as error:
            log.error("store: loading the function library: %s", error)
        finally:
            self.reloading = False

    async def _fcall(self, name: str, *args) -> list:
        """FCALL a function in this turn's batch; its error becomes INTERNAL_ERROR.
        A store that lost the library (restarted without persistence) gets it again
        and the call is made once more."""
        for attempt in (1, 2):
            try:
                return await self.batcher.call("FCALL", name, 1, self.key, *args)
            except ReplyError as error:
                if attempt == 1 and "Function not found" in str(error):
                    log.warning("store: the function library is gone; loading it again")
                    await self.load_functions()
                    continue
                log.error("store: %s failed: %s", name, error)
                raise InternalError from None

    async def _call(self, name: str, *args) -> list:
        """FCALL a function; NOT_FOUND becomes the protocol's error; returns the
        values after the status word."""
        reply = await self._fcall(name, *args)
        if reply[0] == b"NOT_FOUND":
            raise NotFound
        return reply[1:]

    values = _call                      # for the extension rooms

    async def finish_flush(self, flush: int) -> None:
        """Remove a flush's jobs, FLUSH_STEP per call (each call atomic)."""
        while (await self._call("qs_flush_step", flush, FLUSH_STEP))[0]:
            pass

    # -- the job operations ---------------------------------------------------------

    async def put(self, tube: str, pri: int, delay: int, ttr: int, body: bytes) -> int:
        (job_id,) = await self._call("qs_put", tube, pri, delay, ttr, body)
        return job_id

    async def reserve(self, holder: str, tubes) -> tuple | None:
        """(id, body) of the ready job with the smallest (pri, id) in `tubes`,
        now reserved by `holder`; None when there is none."""
        found = await self._try_reserve(holder, tubes)
        return found if isinstance(found, tuple) else None

    async def _try_reserve(self, holder: str, tubes):
        """(id, body), or how many ms a waiting reserve may sleep (-1: until woken);
        DEADLINE_SOON raised."""
        reply = await self._fcall("qs_reserve", holder, *tubes)
        if reply[0] == b"OK":
            return reply[1], reply[2]
        if reply[0] == b"DEADLINE_SOON":
            raise DeadlineSoon
        return reply[1]

    async def reserve_wait(self, holder: str, tubes, timeout: float | None) -> tuple | None:
        """reserve, waiting up to `timeout` seconds (None: for ever) for a job: woken
        when any node makes a job ready in one of the tubes, when a delayed one is
        due, a pause ends or one of the holder's jobs enters its safety margin
        (DEADLINE_SOON is raised), and at least every REPOLL_SECONDS. None when the
        time ran out."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waiter = Waiter()
        self.wakeups.add(tubes, waiter)
        waited = False
        try:
            while True:
                waiter.woken = False        # before looking: a wake-up from now on counts
                found = await self._try_reserve(holder, tubes)
                if isinstance(found, tuple):
                    # A wake-up wakes one waiter per job. One that came while this
                    # reserve was looking anyway was not needed here, and one this
                    # reserve waited for may have announced a job of another tube
                    # than the one it took: either way the next waiter looks too (one
                    # call, not one per waiter).
                    if waiter.woken or (waited and len(tubes) > 1):
                        self.wakeups.pass_on(tubes, waiter)
                    return found
                if waiter.woken:
                    continue                # a job came while it looked: look again
                wait = REPOLL_SECONDS if found < 0 else min(REPOLL_SECONDS, found / 1000)
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    wait = min(wait, remaining)
                await waiter.sleep(loop, wait)
                waited = True
        finally:
            self.wakeups.discard(tubes, waiter)

    async def reserve_job(self, job_id: int, holder: str) -> tuple:
        found_id, body = await self._call("qs_reserve_job", job_id, holder)
        return found_id, body

    async def pause(self, tube: str, seconds: int) -> None:
        await self._call("qs_pause", tube, seconds)

    async def tube_counts(self, tubes) -> tuple:
        """(store time in s, {tube: TubeCounts}) for stats and stats-tube."""
        reply = await self._call("qs_tube_counts", *tubes)
        now_us, values = reply[0], reply[1:]
        width = len(TubeCounts.__slots__)
        counts = {tube: TubeCounts(*values[i * width:(i + 1) * width])
                  for i, tube in enumerate(tubes)}
        return now_us / 1e6, counts

    async def held_count(self, tube: str) -> int:
        """Jobs of `tube` held by per-key concurrency (the dashboard's overview)."""
        return await self.batcher.call("ZCARD", f"{self.key}:t:{tube}:held")

    async def tubes(self) -> list:
        """The tubes that ever had jobs or a pause in the store."""
        return [name.decode() for name in await self._call("qs_tubes")]

    async def stats_job(self, job_id: int) -> tuple:
        """(store time in s, the job's stored fields)."""
        reply = await self._call("qs_stats_job", job_id)
        fields = dict(zip(reply[1::2], reply[2::2]))
        return reply[0] / 1_000_000, {name.decode(): value for name, value in fields.items()}

    async def totals(self) -> tuple:
        """(total jobs, job timeouts) of the whole cluster."""
        total_jobs, timeouts = await self._call("qs_totals")
        return total_jobs, timeouts

    async def delete(self, job_id: int, holder: str) -> None:
        await self._call("qs_delete", job_id, holder)

    async def release(self, job_id: int, holder: str, pri: int, delay: int) -> None:
        await self._call("qs_release", job_id, holder, pri, delay)

    async def bury(self, job_id: int, holder: str, pri: int) -> None:
        await self._call("qs_bury", job_id, holder, pri)

    async def touch(self, job_id: int, holder: str) -> None:
        await self._call("qs_touch", job_id, holder)

    async def kick(self, tube: str, bound: int) -> int:
        """Kick up to `bound` jobs, 1000 per call (each call atomic; a function never
        does unbounded work), all from the list the first call chose."""
        kicked, chosen = 0, ""
        while kicked < bound:
            count, list_name = await self._call("qs_kick", tube, min(bound - kicked, 1000),
                                                chosen)
            kicked += count
            chosen = list_name
            if count < 1000:
                break
        return kicked

    def skip_id(self) -> None:
        """A put line was accepted and the put then failed: its id is used up, as
        in beanstalkd (fire and forget; the next puts' calls come after it)."""
        self._forget_reply(self.batcher.call("INCR", self.key + ":seq"))

    async def kick_job(self, job_id: int) -> None:
        await self._call("qs_kick_job", job_id)

    async def peek(self, job_id: int) -> tuple:
        found_id, body = await self._call("qs_peek", job_id)
        return found_id, body

    async def peek_list(self, tube: str, state: str) -> tuple:
        """The next job of a tube's ready, delayed or buried list: (id, body)."""
        found_id, body = await self._call("qs_peek_list", tube, state)
        return found_id, body

    async def expire(self, limit: int = EXPIRE_BATCH) -> int:
        """Put reserved jobs past their TTR back to ready (any node may call it)."""
        count, _, *_ = await self._call("qs_expire", limit, int(ORPHAN_FLUSH_SECONDS * 1e6))
        return count

    async def _reap(self) -> None:
        """Each node expires TTRs: at the next deadline the store reports, and at
        least every REPOLL_SECONDS (another node may have reserved meanwhile)."""
        while True:
            try:
                count, wait_ms, *orphans = await self._call(
                    "qs_expire", EXPIRE_BATCH, int(ORPHAN_FLUSH_SECONDS * 1e6))
                # Flushes whose node stopped driving them (killed mid-flush).
                for flush in orphans:
                    await self.finish_flush(int(flush))
            except (InternalError, OSError, ConnectionError) as error:
                log.warning("store: TTR reaper: %s", error)
                count, wait_ms = 0, -1
            if count == EXPIRE_BATCH:
                continue                    # more are due
            wait = REPOLL_SECONDS if wait_ms < 0 else min(REPOLL_SECONDS, wait_ms / 1000)
            await asyncio.sleep(wait)

    async def beat(self) -> int:
        """Renew this node's lease and say which tubes it refers to; reap the nodes
        whose lease ran out (how many: the reply)."""
        (reaped,) = await self._call("qs_beat", self.node, int(self.lease * 1000),
                                     *self.referred())
        return reaped

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(BEAT_SECONDS)
            try:
                await self.beat()
            except (InternalError, OSError, ConnectionError) as error:
                log.warning("store: renewing the node's lease: %s", error)

    def refer(self, tube: str) -> asyncio.Future:
        """The first of this node's connections uses or watches `tube` (in order with
        the calls that follow; if it fails, the next beat repeats it)."""
        future = self.batcher.call("FCALL", "qs_refer", 1, self.key, self.node, tube)
        self._forget_reply(future)
        return future

    def unrefer(self, tube: str) -> asyncio.Future:
        """The last of this node's connections to refer to `tube` stopped."""
        future = self.batcher.call("FCALL", "qs_unrefer", 1, self.key, self.node, tube)
        self._forget_reply(future)
        return future

    def release_holder_soon(self, holder: str) -> None:
        """A connection closed: its reserved jobs are ready again, in order with the
        calls that follow (Redis away: their TTRs or the node's lease free them)."""
        future = self.batcher.call("FCALL", "qs_release_holder", 1, self.key, holder)

        def done(call):
            if not call.cancelled() and call.exception() is not None:
                log.warning("store: releasing %s's jobs: %s", holder, call.exception())
        future.add_done_callback(done)

    @staticmethod
    def _forget_reply(future) -> None:
        future.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def release_holder(self, holder: str) -> int:
        """A connection closed: its reserved jobs are ready again at once."""
        (count,) = await self._call("qs_release_holder", holder)
        return count

    async def job(self, job_id: int) -> dict:
        """The job's fields as stored (for stats-job and tests)."""
        flat = await self.batcher.call("HGETALL", f"{self.key}:j:{job_id}")
        if not flat:
            raise NotFound
        return {name.decode(): value for name, value in zip(flat[::2], flat[1::2])}


def job_stats_pairs(job_id: int, now: float, fields: dict) -> list:
    """stats-job's pairs from a job's hash in the store (or a retained record's,
    whose time-left counts down to its expiry); `now` in store seconds."""
    state = fields["state"].decode()
    if state in ("reserved", "delayed"):
        time_left = int(int(fields["due"]) / 1e6 - now)
    elif state in ("completed", "dead"):
        time_left = int(int(fields["expires"]) / 1e6 - now)
    else:
        time_left = 0
    return job_pairs(
        job_id, fields["tube"].decode(), state, int(fields["pri"]),
        int(now - int(fields["created"]) / 1e6), int(fields["delay"]), int(fields["ttr"]),
        time_left, 0, tuple(int(fields.get(name, 0)) for name in
                            ("reserves", "timeouts", "releases", "buries", "kicks")))


class TubeCounts:
    """One tube's figures as the store reports them (qs_tube_counts)."""

    __slots__ = ("urgent", "ready", "reserved", "delayed", "buried", "total_jobs",
                 "cmd_delete", "cmd_pause", "pause", "unpause", "exists")

    def __init__(self, *values):
        for name, value in zip(self.__slots__, values):
            setattr(self, name, value)


class Waiter:
    """A waiting reserve as the wake-ups see it: asleep on a future until woken or
    its time is up (a plain future and a timer, cheaper than an Event and wait_for,
    which makes a task each time)."""

    __slots__ = ("future", "woken")

    def __init__(self):
        self.future = None
        self.woken = False

    def wake(self) -> None:
        self.woken = True
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)

    async def sleep(self, loop, seconds: float) -> None:
        self.future = future = loop.create_future()
        timer = loop.call_later(seconds, _resolve, future)
        try:
            await future
        finally:
            timer.cancel()
            self.future = None


def _resolve(future) -> None:
    if not future.done():
        future.set_result(None)


class Wakeups:
    """A node's one subscription to the store's wake channel, on which every change
    that makes a job ready publishes the tube's name (once per job): each message
    wakes the longest-waiting reserve of that tube that is not awake already, which
    looks again. It reads RESP itself, as the batches do (redis-py's pub/sub cost
    about 20 µs of CPU a message). Messages lost while the subscription reconnects
    are made up for by waking every waiter and by their REPOLL_SECONDS."""

    def __init__(self, settings: dict, channel: str):
        self.settings = settings
        self.channel = channel
        self.waiting = {}               # tube name -> {Waiter: None}, oldest first
        self.connection = None
        self.task = None
        self.heard = self.silent = False    # _keepalive's view of the connection

    async def start(self) -> None:
        """Subscribe (raises if the store cannot be reached), then listen."""
        await self._subscribe()
        self.task = asyncio.get_running_loop().create_task(self._listen())

    async def _subscribe(self) -> None:
        """Connect (to the primary the sentinels name, if any) and subscribe; raises
        StoreUnreachable unless the store confirms."""
        connection = RespConnection(self.settings)
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await connection.open()
                await connection.send(("SUBSCRIBE", self.channel))
                confirmed = await connection.next_reply()
            if not isinstance(confirmed, list) or confirmed[:1] != [b"subscribe"]:
                raise StoreUnreachable(f"SUBSCRIBE answered {confirmed!r}")
        except BaseException:
            connection.close()
            raise
        self.connection = connection

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.connection is not None:
            self.connection.close()

    def add(self, tubes, waiter) -> None:
        for tube in tubes:
            self.waiting.setdefault(tube, {})[waiter] = None

    def discard(self, tubes, waiter) -> None:
        for tube in tubes:
            waiters = self.waiting.get(tube)
            if waiters is not None:
                waiters.pop(waiter, None)
                if not waiters:
                    del self.waiting[tube]

    def _wake(self, tube: str, besides=None) -> None:
        for waiter in self.waiting.get(tube, ()):
            if not waiter.woken and waiter is not besides:
                waiter.wake()
                return

    def pass_on(self, tubes, own) -> None:
        for tube in tubes:
            self._wake(tube, besides=own)

    def _wake_all(self) -> None:
        for waiters in self.waiting.values():
            for waiter in waiters:
                waiter.wake()

    async def _listen(self) -> None:
        while True:
            try:
                await self._read_messages()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # gone, refused, or a reply it cannot read
                log.warning("store: wake-up subscription lost (%s); subscribing again",
                            error or type(error).__name__)
            self.connection.close()
            self._wake_all()
            while True:
                await asyncio.sleep(0.1)
                try:
                    await self._subscribe()
                    break
                except Exception as error:   # not reachable yet, or refusing
                    log.debug("store: subscribing: %r", error)
                    continue
            self._wake_all()            # anything may have happened meanwhile

    async def _read_messages(self) -> None:
        """Wake waiters for each message until the connection fails (a watchdog
        task closes it when the store stays silent, see _keepalive)."""
        connection = self.connection
        watchdog = asyncio.get_running_loop().create_task(self._keepalive(connection))
        try:
            while True:
                message = await connection.next_reply()
                self.heard = True
                if not isinstance(message, list):
                    raise StoreUnreachable(f"the store said {message!r}")
                # [b"message", channel, tube]; [b"pong", b""] answers a PING.
                if message[0] == b"message":
                    self._wake(message[2].decode("utf-8", "replace"))
        except StoreUnreachable:
            if self.silent:
                raise StoreUnreachable("no answer to PING") from None
            raise
        finally:
            watchdog.cancel()

    async def _keepalive(self, connection) -> None:
        """Silence for KEEPALIVE_SECONDS sends a PING; silence for as long again
        means the store is gone without closing the connection (a host lost, a
        network cut): close it, and the reader subscribes again. (A timer per
        message would cost more than this one per connection.)"""
        self.heard, self.silent = True, False
        pinged = False
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            if self.heard:
                self.heard = pinged = False
            elif pinged:
                self.silent = True
                connection.close()      # the reader sees the connection end
                return
            else:
                await connection.send(("PING",))
                pinged = True
