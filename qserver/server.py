"""The network side: one `asyncio.Protocol` per connection, the listeners, the single
deadline timer, drain mode and shutdown.

A connection parses every complete command in what it received, runs them in order
and sends all replies with one write. A reserve that has to wait parks the
connection: later commands stay in its buffer until the reserve is answered.
Imports: everything above it.
"""

import asyncio
import collections
import logging
import math
import signal
import time

from qserver import __version__
from qserver.commands import Commands
from qserver.engine import Engine
from qserver.errors import BadFormat, JobTooBig, TimedOut
from qserver.session import Session
from qserver.stats import ServerInfo
from qserver.wire import DISCARDED, OVERLONG, Framer, job_reply

log = logging.getLogger("qserver")

# Stop reading from a client whose unprocessed input passes this while it cannot be
# processed (parked in reserve, or not reading our replies).
READ_HIGH_WATER = 64 * 1024
# A client that does not read its replies gets its reads paused past this.
WRITE_HIGH_WATER = 1024 * 1024


class Connection(asyncio.Protocol):
    __slots__ = (
        "server", "commands", "engine", "framer", "session", "transport",
        "pending_put", "closing", "half_closed", "write_paused", "read_paused",
        "resume_scheduled", "held", "close_when_sent",
    )

    def __init__(self, server):
        self.server = server
        self.commands = server.commands
        self.engine = server.engine
        self.framer = Framer()
        self.session = Session(wake=self._wake)
        self.transport = None
        self.pending_put = None     # (id, pri, delay, ttr) while a put body arrives
        self.closing = False
        self.half_closed = False
        self.write_paused = False
        self.read_paused = False
        self.resume_scheduled = False
        self.held = collections.deque()   # replies waiting for an fsync (-f 0)
        self.close_when_sent = False

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
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
        self._run()
        if not self.closing:
            self.closing = True
            self._close()
        self.server.after_batch()
        return True

    def connection_lost(self, exc):
        self.closing = True
        self.engine.detach(self.session, time.monotonic())
        self.server.connection_closed(self)
        self.server.after_batch()

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
        framer = self.framer
        session = self.session
        commands = self.commands
        log = self.engine.log
        records_before = log.written
        out = []
        while not self.write_paused:
            if session.waiting:
                if not self.half_closed:
                    break
                self.engine.cancel_wait(session)
                out.append(TimedOut.reply)
            item = framer.next()
            if item is None:
                break
            if self.pending_put is not None:
                reply = commands.finish_put(self, item)
            elif item.__class__ is bytes:
                reply = commands.execute(self, item)
            elif item is OVERLONG:
                reply = BadFormat.reply
            else:
                reply = JobTooBig.reply if item is DISCARDED else None
            if reply is not None:
                out.append(reply)
            if self.closing:
                break
        if out:
            self._send(out[0] if len(out) == 1 else b"".join(out),
                       log.written != records_before)
        if self.closing:
            self._close()
        elif self.read_paused or session.waiting or self.write_paused:
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
        if self.close_when_sent and not self.held:
            self.transport.close()

    def _close(self) -> None:
        if self.held:
            self.close_when_sent = True
        else:
            self.transport.close()

    def _limit_reading(self):
        """Pause reading while input piles up that cannot be processed yet."""
        stuck = self.session.waiting or self.write_paused
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
        self.server.after_batch()


class Server:
    """Owns the engine, the listeners, the connections and the one timer."""

    def __init__(self, config, loop, journal=None):
        self.config = config
        self.loop = loop
        self.journal = journal
        self.engine = Engine(log=journal)
        self.info = ServerInfo(__version__, config.max_job_size, config.segment_size,
                               time.monotonic())
        self.commands = Commands(self.engine, self.info, config.max_job_size)
        self.connections = set()
        self.listeners = []
        self.timer = None
        self.stopped = loop.create_future()

    async def serve(self, sockets, early_signals=()) -> None:
        for sock in sockets:
            server = await self.loop.create_server(lambda: Connection(self), sock=sock,
                                                   backlog=1024)
            self.listeners.append(server)
        self._install_signals()
        for signum in early_signals:
            self._on_signal(signum)

    # -- connections ------------------------------------------------------------

    def connection_opened(self, conn) -> None:
        self.connections.add(conn)
        self.info.current_connections += 1
        self.info.total_connections += 1

    def connection_closed(self, conn) -> None:
        self.connections.discard(conn)
        self.info.current_connections -= 1

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

    def shutdown(self) -> None:
        """Stop accepting, close every connection, and let `run` return."""
        log.info("shutting down")
        for listener in self.listeners:
            listener.close()
        if self.journal is not None:
            self.journal.flush_and_close()     # also sends replies held for fsync
        for conn in list(self.connections):
            conn.transport.close()
        if not self.stopped.done():
            self.stopped.set_result(None)


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


async def run(config, sockets, early_signals=()) -> int:
    """Replay the log if there is one, then serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    journal = recovery = None
    if config.binlog_dir:
        journal, recovery = open_journal(config, loop, config.salvage_log)
    server = Server(config, loop, journal)
    if journal is not None:
        server.engine.restore(recovery.images.values(), recovery.next_id,
                              time.monotonic(), time.time())
        journal.start(server.engine)
        _log_recovery(config, recovery, server.engine)
    await server.serve(sockets, early_signals)
    log.info("ready")
    await server.stopped
    return 0


def _log_recovery(config, recovery, engine) -> None:
    for warning in recovery.warnings:
        log.warning("%s", warning)
    for dropped in recovery.dropped:
        log.error("salvage: %s", dropped)
    log.info("log %s: %d records replayed, %d jobs, next id %d", config.binlog_dir,
             recovery.records, len(engine.jobs), engine.next_id)
