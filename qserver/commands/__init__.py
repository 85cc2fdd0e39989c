"""The command table: each protocol command's handler, and the one place where queue
errors become reply bytes.

A handler takes the client (the server's per-connection object: `session`, `framer`,
`pending_body`, `closing`) and the rest of the line after the command word, and
returns reply bytes, or None when there is nothing to say yet (a parked reserve, a
put waiting for its body, quit). This module holds the beanstalkd table; each
extension topic has a module of its own whose table is merged in (`lifecycle`,
`steering`).
Imports: `wire`, `engine`, `errors`, `stats`, `commands.*`.
"""

import logging
import time

from qserver import wire
from qserver.commands.lifecycle import LifecycleCommands
from qserver.commands.steering import SteeringCommands
from qserver.errors import BadFormat, Draining, ExpectedCrlf, InternalError, QueueError
from qserver.errors import UnknownCommand
from qserver.stats import job_stats, server_stats, tube_stats

log = logging.getLogger("qserver")

RESERVED = b"RESERVED"
FOUND = b"FOUND"

# beanstalkd matches command words as prefixes, in this order (prefix, handler name,
# whether nothing may follow); the exact lookups agree with it on every line, this
# covers the odd ones.
BY_PREFIX = [
    (b"put ", "put", False), (b"peek ", "peek", False),
    (b"peek-ready", "peek_ready", True), (b"peek-delayed", "peek_delayed", True),
    (b"peek-buried", "peek_buried", True),
    (b"reserve-with-timeout ", "reserve_with_timeout", False),
    (b"reserve-job ", "reserve_job", False), (b"reserve", "reserve", True),
    (b"delete ", "delete", False), (b"release ", "release", False),
    (b"bury ", "bury", False), (b"kick ", "kick", False),
    (b"kick-job ", "kick_job", False), (b"touch ", "touch", False),
    (b"stats-job ", "stats_job", False), (b"stats-tube ", "stats_tube", False),
    (b"stats", "stats", True), (b"use ", "use", False), (b"watch ", "watch", False),
    (b"ignore ", "ignore", False), (b"list-tubes-watched", "list_tubes_watched", True),
    (b"list-tube-used", "list_tube_used", True), (b"list-tubes", "list_tubes", True),
    (b"quit", "quit", False), (b"pause-tube", "pause_tube", False),
]


class CommandTable:
    """Dispatch, shared by the in-memory table (Commands) and the shared store's
    (store.commands): a line to its handler by the command word (exact lookups for
    the common lines, beanstalkd's prefix order for the odd ones), and queue errors
    to their reply bytes. A subclass fills `with_args`, `no_args` and `by_prefix`."""

    with_args: dict
    no_args: dict
    by_prefix: list
    counts: dict

    # Both tables reserve alike up to `_reserve` (a subclass's: the engine's or the
    # store's).
    def reserve(self, client, rest):
        self.counts["reserve"] += 1
        return self._reserve(client, None)

    def reserve_with_timeout(self, client, rest):
        timeout = wire.parse_timeout(rest)
        self.counts["reserve-with-timeout"] += 1
        return self._reserve(client, timeout)

    def input_ended(self, client) -> None:
        """The client half-closed while a command's answer is pending (the in-memory
        ones that answer later, flush-tube and list-jobs, just complete)."""

    def prefix_table(self) -> list:
        """(prefix, handler, exact) in BY_PREFIX's order, for the handlers this
        table has."""
        return [(prefix, getattr(self, name), exact) for prefix, name, exact in BY_PREFIX
                if hasattr(self, name)]

    def execute(self, client, line: bytes):
        """Run one command line; returns reply bytes or None."""
        try:
            # `0 in line`, not `b"\0" in line`: bytes.__contains__ tries its argument
            # as an int first, and a bytes argument costs a raised and cleared
            # TypeError (7x slower, ~2,000 instructions a command).
            if 0 in line:
                raise BadFormat
            space = line.find(b" ")
            if space > 0:
                handler = self.with_args.get(line[:space])
                if handler is not None:
                    return handler(client, line[space + 1:])
            else:
                handler = self.no_args.get(line)
                if handler is not None:
                    return handler(client, b"")
            return self._by_prefix(client, line)
        except QueueError as error:
            return error.reply
        except Exception:
            log.exception("command failed: %r", line[:64])
            return InternalError.reply

    def _by_prefix(self, client, line: bytes):
        for prefix, handler, exact in self.by_prefix:
            if line.startswith(prefix):
                rest = line[len(prefix):]
                if exact and rest:
                    raise BadFormat
                return handler(client, rest)
        raise UnknownCommand

    def with_body(self, client, rest: bytes, finish):
        """An extension command `<word> <id> <bytes>` followed by a body: read the body
        as put does (too big: thrown away, JOB_TOO_BIG) and call
        finish(client, body without CRLF, id) once it is here."""
        job_id, size = wire.parse_id_size(rest)
        if size > self.max_job_size:
            client.framer.discard_body(size)
            return None
        body = client.framer.take_body(size)
        if body is None:
            client.pending_body = (self._body_then, (finish, job_id))
            return None
        return self._body_then(client, body, finish, job_id)

    @staticmethod
    def _body_then(client, body: bytes, finish, job_id: int):
        if not body.endswith(wire.CRLF):
            raise ExpectedCrlf
        return finish(client, body[:-2], job_id)

    def finish_body(self, client, body: bytes):
        """The body of a put (or an extension command) arrived later than its line
        (with its trailer bytes)."""
        finish, args = client.pending_body
        client.pending_body = None
        try:
            return finish(client, body, *args)
        except QueueError as error:
            return error.reply
        except Exception:
            log.exception("%s failed", getattr(finish, "__name__", "command"))
            return InternalError.reply



class Commands(CommandTable):
    def __init__(self, engine, info, max_job_size: int, clock=time.monotonic,
                 wall=time.time):
        self.engine = engine
        self.info = info
        self.max_job_size = max_job_size
        self.clock = clock
        self.wall = wall
        self.counts = info.cmd_counts
        self._last_created = 0.0
        # Commands written `word <args>`: looked up by the word before the first space.
        self.with_args = {
            b"put": self.put, b"peek": self.peek,
            b"reserve-with-timeout": self.reserve_with_timeout,
            b"reserve-job": self.reserve_job, b"delete": self.delete,
            b"release": self.release, b"bury": self.bury, b"kick": self.kick,
            b"kick-job": self.kick_job, b"touch": self.touch,
            b"stats-job": self.stats_job, b"stats-tube": self.stats_tube,
            b"use": self.use, b"watch": self.watch, b"ignore": self.ignore,
        }
        # Commands without arguments: looked up by the whole line.
        self.no_args = {
            b"reserve": self.reserve, b"stats": self.stats,
            b"peek-ready": self.peek_ready, b"peek-delayed": self.peek_delayed,
            b"peek-buried": self.peek_buried, b"list-tubes": self.list_tubes,
            b"list-tube-used": self.list_tube_used,
            b"list-tubes-watched": self.list_tubes_watched, b"quit": self.quit,
        }
        self.by_prefix = self.prefix_table()
        # Extension words are new words: exact lookups only, never by prefix.
        for with_args, no_args in (LifecycleCommands(self).table(),
                                   SteeringCommands(self).table()):
            self.with_args.update(with_args)
            self.no_args.update(no_args)

    def _store(self, client, body: bytes, job_id, pri, delay, ttr) -> bytes:
        """Make the job from a complete body; raises the put's error replies."""
        if not body.endswith(wire.CRLF):
            raise ExpectedCrlf
        if self.engine.draining:
            raise Draining
        self.engine.put(client.session.use, job_id, pri, delay, ttr, body,
                        self.clock(), self.creation_time())
        return b"INSERTED %d\r\n" % job_id

    def creation_time(self) -> float:
        """The wall clock for a new job's `age`, as one float object shared by all
        jobs made within the same millisecond (24 bytes a job saved at scale)."""
        now = self.wall()
        if now - self._last_created < 0.001:
            return self._last_created
        self._last_created = now
        return now

    # -- producer commands ------------------------------------------------------

    def put(self, client, rest):
        pri, delay, ttr, size, tail = wire.parse_put(rest)
        self.counts["put"] += 1
        if size > self.max_job_size:
            client.framer.discard_body(size)
            return None
        if tail:
            raise BadFormat
        engine = self.engine
        engine.mark_producer(client.session)
        job_id = engine.allocate_id()
        ttr = ttr or 1
        # Usually the body came in the same read: store the job at once. Otherwise
        # the framer hands the body over when it is complete (finish_body).
        body = client.framer.take_body(size)
        if body is None:
            client.pending_body = (self._store, (job_id, pri, delay, ttr))
            return None
        return self._store(client, body, job_id, pri, delay, ttr)

    def use(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["use"] += 1
        self.engine.use(client.session, name)
        return b"USING %s\r\n" % rest

    # -- worker commands --------------------------------------------------------

    def _reserve(self, client, timeout):
        self.engine.mark_worker(client.session)
        job = self.engine.reserve(client.session, timeout, self.clock())
        if job is None:
            return None
        return wire.job_reply(RESERVED, job.id, job.body)

    def reserve_job(self, client, rest):
        job_id = wire.parse_id(rest)
        job = self.engine.reserve_job(client.session, job_id, self.clock())
        self.engine.mark_worker(client.session)
        return wire.job_reply(RESERVED, job.id, job.body)

    def delete(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["delete"] += 1
        self.engine.delete(client.session, job_id)
        return b"DELETED\r\n"

    def release(self, client, rest):
        job_id, pri, delay = wire.parse_id_pri_delay(rest)
        self.counts["release"] += 1
        self.engine.release(client.session, job_id, pri, delay, self.clock())
        return b"RELEASED\r\n"

    def bury(self, client, rest):
        job_id, pri = wire.parse_id_pri(rest)
        self.counts["bury"] += 1
        self.engine.bury(client.session, job_id, pri)
        return b"BURIED\r\n"

    def touch(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["touch"] += 1
        self.engine.touch(client.session, job_id, self.clock())
        return b"TOUCHED\r\n"

    def watch(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["watch"] += 1
        return b"WATCHING %d\r\n" % self.engine.watch(client.session, name)

    def ignore(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["ignore"] += 1
        return b"WATCHING %d\r\n" % self.engine.ignore(client.session, name)

    # -- other commands ---------------------------------------------------------

    def peek(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["peek"] += 1
        job = self.engine.peek(job_id)
        return wire.job_reply(FOUND, job.id, job.body)

    def _peek_in_used(self, client, counter, which):
        self.counts[counter] += 1
        job = self.engine.found(which(client.session.use))
        return wire.job_reply(FOUND, job.id, job.body)

    def peek_ready(self, client, rest):
        return self._peek_in_used(client, "peek-ready", lambda tube: tube.peek_ready())

    def peek_delayed(self, client, rest):
        return self._peek_in_used(client, "peek-delayed", lambda tube: tube.peek_delayed())

    def peek_buried(self, client, rest):
        return self._peek_in_used(client, "peek-buried", lambda tube: tube.peek_buried())

    def kick(self, client, rest):
        bound = wire.parse_kick_bound(rest)
        self.counts["kick"] += 1
        return b"KICKED %d\r\n" % self.engine.kick(client.session.use, bound, self.clock())

    def kick_job(self, client, rest):
        job_id = wire.parse_id(rest)
        self.engine.kick_job(job_id, self.clock())
        return b"KICKED\r\n"

    def stats(self, client, rest):
        self.counts["stats"] += 1
        return wire.yaml_mapping(server_stats(self.engine, self.info, self.clock()))

    def stats_job(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["stats-job"] += 1
        job = self.engine.peek(job_id)
        return wire.yaml_mapping(job_stats(job, self.clock(), self.wall()))

    def stats_tube(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["stats-tube"] += 1
        tube = self.engine.tube_named(name)
        return wire.yaml_mapping(tube_stats(tube, self.clock()))

    def list_tubes(self, client, rest):
        self.counts["list-tubes"] += 1
        return wire.yaml_list(tube.name for tube in self.engine.tube_order)

    def list_tube_used(self, client, rest):
        self.counts["list-tube-used"] += 1
        return b"USING %s\r\n" % client.session.use.name.encode()

    def list_tubes_watched(self, client, rest):
        self.counts["list-tubes-watched"] += 1
        return wire.yaml_list(tube.name for tube in client.session.watch)

    def pause_tube(self, client, rest):
        name, seconds = wire.parse_pause(rest)
        self.counts["pause-tube"] += 1
        wire.parse_tube(name)       # checked after counting, as beanstalkd does
        self.engine.pause_tube(name.decode(), seconds, self.clock())
        return b"PAUSED\r\n"

    def quit(self, client, rest):
        client.closing = True
        return None
