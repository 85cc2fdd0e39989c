"""The network side: one `asyncio.Protocol` per connection, the listeners, the single
deadline timer, drain mode and shutdown.

A connection parses every complete command in what it received, runs them in order
and sends all replies with one write. A reserve that has to wait parks the
connection: later commands stay in its buffer until the reserve is answered.
Imports: everything above it.
"""

import asyncio
import collections
import gc
import logging
import math
import signal
import time

from qserver import __version__, systemd
from qserver.collector import Collector, trim
from qserver.commands import Commands
from qserver.engine import Engine
from qserver.errors import BadFormat, JobTooBig, TimedOut
from qserver.session import Session
from qserver.stats import ServerInfo
from qserver.wire import DISCARDED, OVERLONG, Framer, event_frame, job_reply

log = logging.getLogger("qserver")

# Stop reading from a client whose unprocessed input passes this while it cannot be
# processed (parked in reserve, or not reading our replies).
READ_HIGH_WATER = 64 * 1024
# A client that does not read its replies gets its reads paused past this.
WRITE_HIGH_WATER = 1024 * 1024
# How often the server looks for memory a drained backlog left (Engine.shrink).
HOUSEKEEPING_SECONDS = 5.0
# --http addresses that only this machine reaches.
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ConnectionCore:
    """A connection's state and its handling of what it receives; `Connection` adds
    asyncio.Protocol to it. Split so that, compiled, this is an extension type
    (server.pxd): its per-command attribute reads and calls are C struct reads and
    C calls, where a Protocol subclass (an extension type cannot derive from a
    Python class) would look each one up by name."""

    __slots__ = (
        "server", "commands", "engine", "framer", "session", "transport",
        "pending_body", "closing", "half_closed", "write_paused", "read_paused",
        "resume_scheduled", "held", "close_when_sent", "output_wait", "refused",
        "subscription", "awaiting", "store_session", "opened",
    )

    def __init__(self, server):
        self.server = server
        self.commands = server.commands
        self.engine = server.engine
        self.framer = Framer()
        self.session = Session(wake=self._wake)
        self.transport = None
        self.pending_body = None    # (finisher, args) while a command's body arrives
        self.closing = False
        self.half_closed = False
        self.write_paused = False
        self.read_paused = False
        self.resume_scheduled = False
        self.held = collections.deque()   # replies waiting for an fsync (-f 0)
        self.close_when_sent = False
        self.output_wait = False    # stopped running commands until held replies go
        self.refused = False        # over --max-connections: closed at once
        self.subscription = None    # [tube name or None, next seq] once subscribed
        self.awaiting = False       # a command answers later (answer_later)
        self.store_session = None   # store.commands.StoreSession (--store only)
        self.opened = 0.0           # monotonic time it connected (the dashboard shows it)

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        if not self.server.admit():
            # Over --max-connections: accepted, then closed at once without a reply
            # (the protocol has none for this), before anything is attached.
            self.refused = self.closing = True
            transport.close()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.opened = time.monotonic()
        self.engine.attach(self.session)
        self.server.connection_opened(self)

    def data_received(self, data):
        self.framer.buf += data
        self._run()
        if self.engine.timer_dirty:
            self.server.after_batch()

    def eof_received(self):
        # The client shut down its sending side: finish what it sent, answer a
        # parked reserve with TIMED_OUT (as beanstalkd does), then close.
        self.half_closed = True
        if self.awaiting:
            self.commands.input_ended(self)
        self._run()
        if not self.closing and not self.awaiting:
            self.closing = True
            self._close()
        self.server.after_batch()
        return True

    def connection_lost(self, exc):
        if self.refused:
            return
        self.closing = True
        self.let_go()
        self.server.connection_closed(self)
        self.server.after_batch()

    def let_go(self) -> None:
        """Release the session's jobs, then break the cycles (the session's wake,
        the framer's bound reader) so that refcounting frees the connection at
        once: a long-lived connection may be frozen out of the cyclic collector's
        passes (collector.py)."""
        self.engine.detach(self.session, time.monotonic())
        self.session.wake = None
        self.framer.next = None

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        self._run()
        self.server.after_batch()

    # -- command processing -----------------------------------------------------

    def _run(self):
        """Run every complete command that can run now; send the replies in one write."""
        if self.closing:
            return
        if self.awaiting:
            self._limit_reading()
            return
        if self.subscription is not None:
            # A subscribed connection only streams (protocol.md, "subscribe"): what
            # it sends is read and thrown away.
            self.framer.buf.clear()
            self.framer.pos = 0
            self.pump()
            return
        framer = self.framer
        session = self.session
        commands = self.commands
        log = self.engine.log
        records_before = log.written
        out = []
        pending = 0
        while not self.write_paused:
            if session.waiting:
                if not self.half_closed:
                    break
                self.engine.cancel_wait(session)
                out.append(TimedOut.reply)
            item = framer.next()
            if item is None:
                break
            if self.pending_body is not None:
                reply = commands.finish_body(self, item)
            elif type(item) is bytes:       # (compiled: a C type check)
                reply = commands.execute(self, item)
            elif item is OVERLONG:
                reply = BadFormat.reply
            else:
                reply = JobTooBig.reply if item is DISCARDED else None
            if reply is not None:
                out.append(reply)
                pending += len(reply)
                if pending > WRITE_HIGH_WATER:
                    # Send big batches (pipelined peeks of large jobs) as they pile
                    # up, so the transport's high-water mark pauses this loop
                    # instead of `out` growing with everything the client sent.
                    self._send(b"".join(out), log.written != records_before)
                    out = []
                    pending = 0
                    records_before = log.written
                    if self.held:       # waiting for an fsync (-f 0): go on later
                        self.output_wait = True
                        break
            elif self.awaiting:         # the command answers later (answer_later)
                break
            if self.closing:
                break
            if self.subscription is not None:   # subscribe: the rest is ignored
                framer.buf.clear()
                framer.pos = 0
                break
        if out:
            self._send(out[0] if len(out) == 1 else b"".join(out),
                       log.written != records_before)
        if self.closing:
            self._close()
        elif self.read_paused or session.waiting or self.write_paused or self.output_wait:
            self._limit_reading()

    def _send(self, data: bytes, logged: bool) -> None:
        """Write replies, unless they acknowledge changes not yet fsynced (-f 0) or
        must queue behind replies that do."""
        if self.held or (logged and self.engine.log.holds_replies):
            self.held.append(data)
            self.engine.log.when_synced(self._release_one)
        else:
            self.transport.write(data)

    def _release_one(self) -> None:
        """An fsync covers the oldest held reply: send it."""
        data = self.held.popleft()
        if not self.transport.is_closing():
            self.transport.write(data)
        if self.subscription is not None and not self.held:
            self.pump()
        if self.close_when_sent and not self.held:
            self.transport.close()
        elif self.output_wait and not self.held:
            self.output_wait = False
            if not self.resume_scheduled:
                self.resume_scheduled = True
                asyncio.get_running_loop().call_soon(self._resume)

    # -- the event stream -------------------------------------------------------

    def subscribe(self, tube, start, window=None) -> bytes:
        """Start streaming events of `tube` (None: every tube) from sequence number
        `start` (None: from now on); returns the first reply line. `window`: the
        shared store's events (the engine's own otherwise)."""
        events = self.server.events_for(self, window)
        if start is None:
            start = events.next_seq
        reply = b"SUBSCRIBED %d\r\n" % start
        # Older than the window, or from before a restart (each process numbers
        # from its start time up), or from the future: events it cannot have.
        if start < events.oldest or start > events.next_seq:
            start = events.oldest
            reply = b"GAP %d\r\n" % start
        self.subscription = [tube, start]
        return reply

    def pump(self) -> None:
        """Send the events this subscriber has not seen, until the transport's
        buffer is full (resume_writing comes back here) or none are left. One that
        fell behind the window hears `GAP <oldest>` and goes on from there."""
        subscription = self.subscription
        events = self.engine.events
        if self.held or self.transport.is_closing():
            return
        tube = subscription[0]
        for _ in range(64):                 # at most 64 * 256 events per turn
            if self.write_paused:
                return
            out = []
            if subscription[1] < events.oldest:
                subscription[1] = events.oldest
                out.append(b"GAP %d\r\n" % subscription[1])
            batch = events.read(subscription[1], 256)
            if not batch and not out:
                return
            for event in batch:
                if tube is None or event[3] == tube:
                    out.append(event_frame(event))
            if batch:
                subscription[1] = batch[-1][0] + 1
            if out:
                self.transport.write(b"".join(out))
        self.server.events_arrived()        # more to send: go on next turn

    def _close(self) -> None:
        if self.held:
            self.close_when_sent = True
        else:
            self.transport.close()

    def _limit_reading(self):
        """Pause reading while input piles up that cannot be processed yet."""
        stuck = self.session.waiting or self.write_paused or self.output_wait \
            or self.awaiting
        if stuck and not self.read_paused and self.framer.buffered() > READ_HIGH_WATER:
            self.read_paused = True
            self.transport.pause_reading()
        elif self.read_paused and not stuck:
            self.read_paused = False
            self.transport.resume_reading()

    def _wake(self, outcome):
        """The engine answers this connection's parked reserve."""
        if outcome.__class__ is type:
            self._send(outcome.reply, False)
        else:
            self._send(job_reply(b"RESERVED", outcome.id, outcome.body), False)
        if (self.framer.buffered() or self.read_paused) and not self.resume_scheduled:
            self.resume_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self):
        self.resume_scheduled = False
        self._run()
        if self.half_closed and not (self.closing or self.awaiting):
            self.closing = True         # eof_received left it open for a late answer
            self._close()
        self.server.after_batch()

    def answer_later(self, logged: bool):
        """For a command that takes several loop turns (a big flush-tube, the first
        list-jobs of a big tube): nothing more of this connection runs until the
        returned function is called with the reply. `logged`: the reply
        acknowledges a logged change (under -f 0 it waits for the fsync)."""
        self.awaiting = True

        def answer(reply: bytes) -> None:
            self.awaiting = False
            if self.closing or self.transport.is_closing():
                return
            self._send(reply, logged)
            if not self.resume_scheduled:
                self.resume_scheduled = True
                asyncio.get_running_loop().call_soon(self._resume)
        return answer


class Connection(ConnectionCore, asyncio.Protocol):
    """One client connection: the event loop calls its Protocol methods."""

    __slots__ = ()


class Server:
    """Owns the engine, the listeners, the connections and the one timer."""

    def __init__(self, config, loop, journal=None, store=None):
        self.config = config
        self.loop = loop
        self.journal = journal
        self.store = store              # store.redis.RedisStore with --store, else None
        self.engine = Engine(log=journal)
        self.engine.call_soon = loop.call_soon
        self.info = ServerInfo(__version__, config.max_job_size, config.segment_size,
                               time.monotonic())
        if store is None:
            self.commands = Commands(self.engine, self.info, config.max_job_size)
        else:
            from qserver.store.commands import StoreCommands
            self.commands = StoreCommands(store, self.info, config.max_job_size,
                                          config.event_window)
        self.connections = set()
        self.subscribers = set()        # connections streaming events (subscribe)
        self.refusals_logged_at = -math.inf
        self.listeners = []
        self.timer = None
        self.stopped = loop.create_future()
        self.shutting_down = False
        self.watchdog = None            # the WATCHDOG=1 timer handle under systemd
        self.housekeeping = None        # the Engine.shrink timer handle (in memory)
        self.http = None                # (asyncio server, router) of --http, when on
        self.all_closed = loop.create_future()

    def in_process_connection(self) -> Connection:
        """A connection with no socket, not counted and attached to no tube, for a
        client inside the process (the dashboard's console)."""
        return Connection(self)

    async def serve(self, sockets, early_signals=()) -> None:
        for sock in sockets:
            server = await self.loop.create_server(lambda: Connection(self), sock=sock,
                                                   backlog=1024)
            self.listeners.append(server)
        if self.store is None:
            self.housekeeping = self.loop.call_later(HOUSEKEEPING_SECONDS,
                                                     self._housekeep)
        self._install_signals()
        for signum in early_signals:
            self._on_signal(signum)

    # -- connections ------------------------------------------------------------

    def admit(self) -> bool:
        """Whether one more client fits under --max-connections."""
        limit = self.config.max_connections
        if limit is None or len(self.connections) < limit:
            return True
        now = time.monotonic()
        if now >= self.refusals_logged_at + 10:     # at most one warning per 10 s
            self.refusals_logged_at = now
            log.warning("--max-connections %d reached: refusing new connections",
                        limit)
        return False

    def connection_opened(self, conn) -> None:
        if self.store is not None:      # it uses and watches default from now on
            self.commands.session(conn)
        self.connections.add(conn)
        self.info.current_connections += 1
        self.info.total_connections += 1

    def connection_closed(self, conn) -> None:
        if self.store is not None:
            self.commands.closed(conn)
        self.connections.discard(conn)
        self.subscribers.discard(conn)
        self.info.current_connections -= 1
        if self.shutting_down and not self.connections and not self.all_closed.done():
            self.all_closed.set_result(None)

    # -- the event stream -------------------------------------------------------

    def events_for(self, conn, window=None):
        """The engine's event window (made by the first subscribe, or the store's
        `window` with --store), with `conn` as one of its subscribers."""
        engine = self.engine
        if engine.events is None:
            if window is None:
                from qserver.events import EventLog
                window = EventLog(self.config.event_window)
            engine.events = window
            engine.events.notify = self.events_arrived
        self.subscribers.add(conn)
        self.events_arrived()               # the reply goes first, then the events
        return engine.events

    def events_arrived(self) -> None:
        # With nobody listening the window's `notified` flag stays set, so recording
        # costs no loop callbacks until the next subscribe (events_for) calls again.
        if self.subscribers:
            self.loop.call_soon(self._pump_subscribers)

    def _pump_subscribers(self) -> None:
        self.engine.events.notified = False
        for conn in list(self.subscribers):
            conn.pump()

    # -- the timer --------------------------------------------------------------

    def after_batch(self) -> None:
        """Re-arm the timer if the engine learnt of an earlier deadline."""
        engine = self.engine
        if engine.timer_dirty:
            engine.timer_dirty = False
            self._arm(engine.earliest)

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if when != math.inf:
            delay = when - time.monotonic()
            self.timer = self.loop.call_later(delay if delay > 0 else 0, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.engine.tick(time.monotonic())
        self._arm(self.engine.earliest)

    def _housekeep(self) -> None:
        """Give back what a drained backlog left: oversized dicts rebuilt, then
        malloc's free pages returned (beanstalkd #54/#642: memory never returned)."""
        if self.engine.shrink():
            trim()
        self.housekeeping = self.loop.call_later(HOUSEKEEPING_SECONDS, self._housekeep)

    # -- signals and shutdown ---------------------------------------------------

    def _install_signals(self) -> None:
        for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum) -> None:
        if signum == signal.SIGUSR1:
            self.drain()
        else:
            self.shutdown()

    def drain(self) -> None:
        """SIGUSR1: refuse new jobs from now on; everything else carries on."""
        log.info("entering drain mode")
        self.engine.draining = True
        if self.store is not None:
            self.commands.draining = True
        systemd.notify("STATUS=" + self.status())

    def shutdown(self) -> None:
        """Stop accepting, close every connection, and let `run` return."""
        if self.shutting_down:
            return
        log.info("shutting down")
        self.shutting_down = True
        systemd.notify("STOPPING=1", "STATUS=shutting down")
        for listener in self.listeners:
            listener.close()
        # Nothing may touch the engine or the log after it is closed: no timer, and
        # no command from a connection whose resume is already scheduled.
        for handle in (self.timer, self.watchdog, self.housekeeping):
            if handle is not None:
                handle.cancel()
        self.timer = self.watchdog = self.housekeeping = None
        # A flush in progress completes (and is logged) first: its client and others
        # saw those jobs gone already.
        self.engine.flusher.finish_all()
        for conn in self.connections:
            conn.closing = True
        if self.journal is not None:
            self.journal.flush_and_close()     # also sends replies held for fsync
        # Parked reserves and idle clients alike get their pending replies and then
        # an orderly close (FIN); `run` waits, bounded, for the closes to finish.
        for conn in list(self.connections):
            conn.transport.close()
        if not self.connections and not self.all_closed.done():
            self.all_closed.set_result(None)
        if not self.stopped.done():
            self.stopped.set_result(None)

    # -- systemd ----------------------------------------------------------------

    def status(self) -> str:
        """A one-line summary for systemd's STATUS= (shown by `systemctl status`)."""
        text = (f"jobs {len(self.engine.jobs)}, tubes {len(self.engine.tubes)}, "
                f"connections {self.info.current_connections}")
        return text + ", draining" if self.engine.draining else text

    def start_watchdog(self, interval: float) -> None:
        """Ping WATCHDOG=1 from the loop itself, so a stuck loop stops the pings."""
        def ping():
            systemd.notify("WATCHDOG=1", "STATUS=" + self.status())
            self.watchdog = self.loop.call_later(interval, ping)
        ping()


class LoopScheduler:
    """What the journal may ask of the event loop."""

    def __init__(self, loop):
        self.loop = loop
        self.clock = time.monotonic

    def call_soon(self, callback) -> None:
        self.loop.call_soon(callback)

    def call_later(self, delay: float, callback) -> None:
        self.loop.call_later(delay, callback)

    def run_in_thread(self, work, done) -> None:
        """Run `work()` in a worker thread, then `done(error or None)` on the loop."""
        future = self.loop.run_in_executor(None, work)
        future.add_done_callback(lambda f: done(f.exception()))


def open_journal(config, loop, salvage: bool):
    """Lock the log directory and read it back; returns (journal, recovery)."""
    from qserver.journal import Journal
    journal = Journal(config.binlog_dir, config.segment_size, config.fsync_ms,
                      LoopScheduler(loop))
    return journal, journal.recover(salvage)


async def run(config, sockets, early_signals=(), http_socket=None) -> int:
    """Replay the log if there is one, then serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    journal = recovery = store = None
    if config.binlog_dir:
        gc.disable()            # during replay; _restore turns it back on
        journal, recovery = open_journal(config, loop, config.salvage_log)
    if config.store:
        store = await _connect_store(config)
    server = Server(config, loop, journal, store)
    if journal is not None:
        _restore(server.engine, journal, recovery)
        _log_recovery(config, recovery, server.engine)
    else:
        log.info("no log directory (-b): jobs are kept in memory only")
    # Jobs in memory: keep full passes of the cyclic collector short (collector.py).
    # The shared store keeps its jobs in Redis, and few objects here.
    collector = Collector(live=server.engine.jobs.__len__)
    if store is None:
        collector.start()
    await server.serve(sockets, early_signals)
    if http_socket is not None:
        await _start_http(server, http_socket)
    log.info("ready")
    _announce_ready(server, sockets)
    await server.stopped
    await _wait_closed(server)
    if store is not None:
        await store.close()
    collector.stop()
    return 0


async def _connect_store(config):
    """The shared store (--store), its functions loaded; raises StoreError."""
    from qserver.store.redis import RedisStore
    try:
        store = await RedisStore.connect(config.store, config.store_prefix,
                                         config.store_wait_replicas, config.store_lease)
    except Exception as error:
        raise StoreError(f"cannot use the store {redact(config.store)}: {error}") from None
    log.info("shared store %s, prefix %s, primary %s:%s%s", redact(config.store),
             config.store_prefix, *store.primary[:2],
             f", waiting for {config.store_wait_replicas} replica(s) per batch"
             if config.store_wait_replicas else "")
    return store


class StoreError(Exception):
    pass


def redact(url: str) -> str:
    """A store URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':***' if user else '***'}@{host}"


async def _start_http(server, sock) -> None:
    from qserver import http        # imported only when --http is given
    config = server.config
    server.http = await http.serve(server, sock, config.http_read_only, config.http_auth)
    where = systemd.describe(sock)
    log.info("dashboard on http://%s/ (metrics at /metrics)%s", where,
             ", read-only" if config.http_read_only else "")
    if config.http_auth is None and config.http[0] not in LOOPBACK:
        log.warning("--http %s answers beyond loopback without --http-auth: anyone who "
                    "reaches it can see and act on the queue", where)


def _announce_ready(server, sockets) -> None:
    """READY=1 once the listeners serve and the log is replayed; then the watchdog."""
    if server.shutting_down:
        return      # a signal caught during startup already began the shutdown
    where = ", ".join(systemd.describe(sock) for sock in sockets)
    systemd.notify("READY=1", f"STATUS=listening on {where}; {server.status()}")
    interval = systemd.watchdog_interval()
    if interval is not None:
        server.start_watchdog(interval)


# A client that stops reading must not hold up the exit for long.
CLOSE_TIMEOUT = 1.0


async def _wait_closed(server) -> None:
    """Let closed connections flush and finish, then close the HTTP listener."""
    try:
        await asyncio.wait_for(asyncio.shield(server.all_closed), CLOSE_TIMEOUT)
    except asyncio.TimeoutError:
        for conn in list(server.connections):
            conn.transport.abort()
    if server.http is not None:
        listener, router = server.http
        listener.close()
        router.close()


def _restore(engine, journal, recovery) -> None:
    """Load the replayed jobs and start logging after them.

    The cyclic garbage collector is kept out of the way while a million objects are
    made (replay and restore), then those long-lived objects are frozen out of its
    future passes.
    """
    try:
        now, wall = time.monotonic(), time.time()
        engine.restore(recovery.jobs.values(), recovery.next_id, now, wall)
        engine.lifecycle.restore(recovery.policies, recovery.histories,
                                 recovery.finished, now, wall)
        engine.steering.restore(recovery.meta)
        recovery.jobs = recovery.histories = recovery.finished = recovery.meta = None
        journal.start(engine)
    finally:
        gc.freeze()
        gc.enable()


def _log_recovery(config, recovery, engine) -> None:
    for warning in recovery.warnings:
        log.warning("%s", warning)
    for dropped in recovery.dropped:
        log.error("salvage: %s", dropped)
    log.info("log %s: %d records replayed, %d jobs, next id %d", config.binlog_dir,
             recovery.records, len(engine.jobs), engine.next_id)
