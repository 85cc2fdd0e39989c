"""The beanstalkd commands on the shared store (`--store`, protocol.md "Several
nodes"): the same parsing and replies as the in-memory table, with each job
operation one call into Redis.

A handler parses its line at once (bad input is answered at once, as ever), then
starts the store call and returns nothing: the connection runs none of its later
commands until the reply is sent (`answer_later`), so each client's replies stay in
command order while the calls of all clients in one loop turn share one round trip
(`batch.Batcher`). A waiting reserve is a task that the connection's end cancels;
the jobs a closed connection held are released at once (`release_holder`).

Served: every beanstalkd command (protocol.md, "Several nodes", says where a shared
store differs: counts per node or per cluster, tube order) and the extensions'
(`store.lifecycle`, `store.steering`, merged in), but for `subscribe`, not on the
store yet.
Imports: `wire`, `errors`, `commands`, `stats`, stdlib (redis-py through
`store.redis`).
"""

import asyncio
import itertools
import logging
import time
from collections import Counter

from qserver import wire
from qserver.commands import FOUND, RESERVED, CommandTable
from qserver.errors import (BadFormat, Cancelled, DeadlineSoon, Draining, ExpectedCrlf,
                            InternalError, NotFound, QueueError, TimedOut)
from qserver.stats import server_pairs, tube_pairs
from qserver.store.batch import ReplyError
from qserver.store.lifecycle import StoreLifecycle
from qserver.store.steering import StoreSteering
from qserver.store.redis import job_stats_pairs

log = logging.getLogger("qserver")

DEFAULT_TUBE = "default"
HALF_CLOSED = "half-closed"     # why a waiting reserve was cancelled: say TIMED_OUT
# A function's status words that are the protocol's error replies as they are.
REFUSALS = {b"NOT_FOUND": NotFound.reply, b"CANCELLED": Cancelled.reply}


class StoreSession:
    """A connection's own state in store mode: the tube it uses, the tubes it
    watches, its holder name in the store, and its waiting reserve."""

    __slots__ = ("holder", "use", "watch", "waiting", "producer", "worker")

    def __init__(self, holder: str):
        self.holder = holder
        self.use = DEFAULT_TUBE
        self.watch = [DEFAULT_TUBE]
        self.waiting = None             # the task of a reserve in progress
        self.producer = self.worker = False     # put / reserved once (stats)


class StoreCommands(CommandTable):
    def __init__(self, store, info, max_job_size: int, event_window: int = 100_000):
        self.store = store
        self.info = info
        self.max_job_size = max_job_size
        self.counts = info.cmd_counts
        # Holders name a connection of this node: node id, connection number.
        self.node = store.node
        self.numbers = itertools.count(1)
        # How many uses and watches of this node's connections name each tube: the
        # store hears when a count leaves or reaches 0 (tube lifetime).
        self.refs = Counter()
        store.referred = self.refs.keys
        self.tasks = set()              # store calls in progress (kept referenced)
        self.sessions = set()           # this node's connections' StoreSessions
        self.draining = False           # SIGUSR1: puts answer DRAINING
        self.event_window = event_window
        self.with_args = {
            b"put": self.put, b"peek": self.peek,
            b"reserve-with-timeout": self.reserve_with_timeout, b"delete": self.delete,
            b"release": self.release, b"bury": self.bury, b"kick": self.kick,
            b"kick-job": self.kick_job, b"touch": self.touch, b"use": self.use,
            b"watch": self.watch, b"ignore": self.ignore, b"reserve-job": self.reserve_job,
            b"stats-job": self.stats_job, b"stats-tube": self.stats_tube,
        }
        self.no_args = {
            b"reserve": self.reserve, b"peek-ready": self.peek_ready,
            b"peek-delayed": self.peek_delayed, b"peek-buried": self.peek_buried,
            b"list-tube-used": self.list_tube_used,
            b"list-tubes-watched": self.list_tubes_watched, b"quit": self.quit,
            b"stats": self.stats, b"list-tubes": self.list_tubes,
        }
        self.by_prefix = self.prefix_table()
        # Extension words are new words: exact lookups only, never by prefix.
        for with_args, no_args in (StoreLifecycle(self).table(),
                                   StoreSteering(self).table()):
            self.with_args.update(with_args)
            self.no_args.update(no_args)

    # -- connections ----------------------------------------------------------------

    def session(self, client) -> StoreSession:
        session = client.store_session
        if session is None:
            session = client.store_session = StoreSession(
                f"{self.node}:{next(self.numbers)}")
            self.sessions.add(session)
            self._refer(session.use)
            self._refer(session.watch[0])
        return session

    def _refer(self, tube: str):
        """Count a use or watch of `tube`; the store's call when it is the node's
        first (a reply that names the tube waits for it: then every node sees
        the tube), else None."""
        refs = self.refs
        refs[tube] += 1
        if refs[tube] == 1:
            return self.store.refer(tube)
        return None

    @staticmethod
    def _after(client, call, reply: bytes):
        """`reply` once the store has heard of the tube's first or last reference
        (whatever it answered: the next beat repeats a failed one)."""
        if call is None:
            return reply
        answer = client.answer_later(logged=False)
        call.add_done_callback(lambda _: answer(reply))
        return None

    def _unrefer(self, tube: str):
        """Count a use or watch of `tube` less; the store's call when it was the
        node's last, else None."""
        refs = self.refs
        refs[tube] -= 1
        if refs[tube] == 0:
            del refs[tube]
            return self.store.unrefer(tube)
        return None

    def closed(self, client) -> None:
        """The connection is gone: stop its waiting reserve, release its jobs (after
        any call of it still on its way, which the batch order guarantees)."""
        session = client.store_session
        if session is None:
            return
        if client.pending_body is not None:
            self.store.skip_id()        # a put line was accepted: its id is used up
        self.sessions.discard(session)
        if session.waiting is not None:
            session.waiting.cancel()
        self.store.release_holder_soon(session.holder)
        # After the release (the batch keeps the order): the jobs it makes ready
        # keep their tubes alive.
        for tube in (session.use, *session.watch):
            self._unrefer(tube)

    def input_ended(self, client) -> None:
        """The client shut its sending side: a waiting reserve answers TIMED_OUT at
        once (as beanstalkd does), and the connection closes after its replies."""
        session = client.store_session
        # (A reserve still at its first look answers TIMED_OUT when it finds none.)
        if session is not None and isinstance(session.waiting, asyncio.Task):
            session.waiting.cancel(HALF_CLOSED)

    # -- running a store call ---------------------------------------------------------

    def later(self, client, work):
        """Answer `work` (a coroutine giving reply bytes) when it is done."""
        answer = client.answer_later(logged=False)
        return self._spawn(self._answer(work, answer))

    def _spawn(self, work) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def when(self, client, future, make_reply, answer=None) -> None:
        """Answer from the store's raw reply to one call, without a task: NOT_FOUND
        and CANCELLED as they are, else `make_reply(reply)` (None: a task it started
        answers through `answer`); a failed call is INTERNAL_ERROR."""
        if answer is None:
            answer = client.answer_later(logged=False)
        done = self._replier(answer, make_reply)

        def settled(call):
            if not call.cancelled():
                error = call.exception()
                done(None if error is not None else call.result(), error)
        future.add_done_callback(settled)

    def ask(self, client, make_reply, name: str, *args) -> None:
        """FCALL `name` and answer as `when` does, straight from the batch's replies
        (a callback: no future, no extra loop turn). For the hot commands."""
        self.store.then(self._replier(client.answer_later(logged=False), make_reply),
                        name, *args)

    def _replier(self, answer, make_reply):
        """done(reply, error): `when`'s answer to one call's outcome."""
        store = self.store

        def done(reply, error):
            if error is None:
                if reply[0] in REFUSALS:    # (not .get: see batch.encode_args)
                    answer(REFUSALS[reply[0]])
                    return
                try:
                    text = make_reply(reply)
                    if text is not None:
                        answer(text)
                except Exception:
                    log.exception("store reply %r", reply[:1])
                    answer(InternalError.reply)
                return
            if isinstance(error, ReplyError) and "Function not found" in str(error):
                store.reload_soon()
            failures.log(error)
            answer(InternalError.reply)
        return done

    @staticmethod
    async def _answer(work, answer) -> None:
        try:
            reply = await work
        except asyncio.CancelledError as cancelled:
            if cancelled.args == (HALF_CLOSED,):
                answer(TimedOut.reply)
            return                      # else the connection is gone
        except QueueError as error:
            reply = error.reply
        except Exception as error:      # Redis unreachable or refusing
            failures.log(error)
            reply = InternalError.reply
        answer(reply)

    # -- producer commands ------------------------------------------------------------

    def inserted(self, reply) -> bytes:
        """INSERTED <id>, the id noted by the store (for the id fence)."""
        return b"INSERTED %d\r\n" % self.store.saw(reply[1])

    def put(self, client, rest):
        # The framing is Commands.put's, written out again rather than shared: the
        # in-memory put is the hot path and stays one call.
        pri, delay, ttr, size, tail = wire.parse_put(rest)
        self.counts["put"] += 1
        if size > self.max_job_size:
            client.framer.discard_body(size)
            return None
        if tail:
            raise BadFormat
        self.session(client).producer = True   # from the accepted line, as beanstalkd
        body = client.framer.take_body(size)
        if body is None:
            client.pending_body = (self._put, (pri, delay, ttr or 1))
            return None
        return self._put(client, body, pri, delay, ttr or 1)

    def _put(self, client, body: bytes, pri: int, delay: int, ttr: int):
        if not body.endswith(wire.CRLF) or self.draining:
            self.store.skip_id()        # the line was accepted: its id is used up
            raise ExpectedCrlf if not body.endswith(wire.CRLF) else Draining
        self.ask(client, self.inserted, "qs_put", client.store_session.use, pri, delay, ttr,
                 body)

    def use(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["use"] += 1
        session = self.session(client)
        first = self._refer(name)
        last = self._unrefer(session.use)
        session.use = name
        # The batch keeps the calls in order: the later one answers for both.
        return self._after(client, last or first, b"USING %s\r\n" % rest)

    def watch(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["watch"] += 1
        watch = self.session(client).watch
        call = None
        if name not in watch:
            watch.append(name)
            call = self._refer(name)
        return self._after(client, call, b"WATCHING %d\r\n" % len(watch))

    def ignore(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["ignore"] += 1
        watch = self.session(client).watch
        if name in watch:
            if len(watch) == 1:
                return b"NOT_IGNORED\r\n"
            # The last one takes the ignored one's place, as in beanstalkd's lists
            # (list-tubes-watched shows that order).
            i = watch.index(name)
            watch[i] = watch[-1]
            watch.pop()
            return self._after(client, self._unrefer(name),
                               b"WATCHING %d\r\n" % len(watch))
        return b"WATCHING %d\r\n" % len(watch)

    # -- worker commands --------------------------------------------------------------

    def _reserve(self, client, timeout):
        if client.half_closed:          # nobody can wait any more: one look, as beanstalkd
            timeout = 0
        session = self.session(client)
        session.worker = True
        # The first look is a plain call (no task): most reserves of a busy queue
        # end there. Only one that must wait becomes a task (reserve_wait).
        answer = client.answer_later(logged=False)
        # It counts as waiting from now on (stats), as when it was one task. One that
        # may wait marks its tubes in the store if it finds nothing (wake-ups).
        session.waiting = look = self.store.look(session.holder, session.watch,
                                                 wait=timeout != 0)
        look.add_done_callback(lambda _: _looked(session, look))
        self.when(client, look,
                  lambda reply: self._first_look(client, session, reply, timeout, answer),
                  answer)

    def _first_look(self, client, session, reply, timeout, answer):
        status = reply[0]
        if status == b"OK":
            return wire.job_reply(RESERVED, reply[1], reply[2])
        if status == b"DEADLINE_SOON":
            return DeadlineSoon.reply
        if timeout == 0 or client.half_closed:
            return TimedOut.reply
        if session not in self.sessions:
            return None                 # the connection went away meanwhile
        # Waits: registered for wake-ups first, then it looks again (a job made
        # ready since the first look wakes it).
        session.waiting = self._spawn(self._answer(self._reserve_job(session, timeout),
                                                   answer))
        return None

    async def _reserve_job(self, session, timeout) -> bytes:
        try:
            found = await self.store.reserve_wait(session.holder, list(session.watch),
                                                  timeout)
        finally:
            session.waiting = None
        if found is None:
            raise TimedOut
        return wire.job_reply(RESERVED, *found)

    def reserve_job(self, client, rest):
        job_id = wire.parse_id(rest)
        session = self.session(client)
        self.later(client, self._reserve_by_id(session, job_id))

    async def _reserve_by_id(self, session, job_id: int) -> bytes:
        found = await self.store.reserve_job(job_id, session.holder)
        session.worker = True           # only once it succeeded, as in memory
        return wire.job_reply(RESERVED, *found)

    def delete(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["delete"] += 1
        self.simple(client, b"DELETED\r\n", "qs_delete", job_id,
                     self.session(client).holder)

    def release(self, client, rest):
        job_id, pri, delay = wire.parse_id_pri_delay(rest)
        self.counts["release"] += 1
        self.simple(client, b"RELEASED\r\n", "qs_release", job_id,
                     self.session(client).holder, pri, delay)

    def bury(self, client, rest):
        job_id, pri = wire.parse_id_pri(rest)
        self.counts["bury"] += 1
        self.simple(client, b"BURIED\r\n", "qs_bury", job_id, self.session(client).holder,
                     pri)

    def touch(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["touch"] += 1
        self.simple(client, b"TOUCHED\r\n", "qs_touch", job_id,
                     self.session(client).holder)

    def simple(self, client, reply: bytes, name: str, *args):
        """A call whose only replies are `reply` and NOT_FOUND."""
        self.ask(client, lambda _: reply, name, *args)

    # -- other commands ---------------------------------------------------------------

    def peek(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["peek"] += 1
        self.ask(client, _found, "qs_peek", job_id)

    def _peek_in_used(self, client, counter: str, state: str):
        self.counts[counter] += 1
        tube = self.session(client).use
        self.ask(client, _found, "qs_peek_list", tube, state)

    def peek_ready(self, client, rest):
        return self._peek_in_used(client, "peek-ready", "ready")

    def peek_delayed(self, client, rest):
        return self._peek_in_used(client, "peek-delayed", "delayed")

    def peek_buried(self, client, rest):
        return self._peek_in_used(client, "peek-buried", "buried")

    def kick(self, client, rest):
        bound = wire.parse_kick_bound(rest)
        self.counts["kick"] += 1
        self.later(client, self._kick(self.session(client).use, bound))

    async def _kick(self, tube: str, bound: int) -> bytes:
        return b"KICKED %d\r\n" % await self.store.kick(tube, bound)

    def kick_job(self, client, rest):
        job_id = wire.parse_id(rest)
        self.simple(client, b"KICKED\r\n", "qs_kick_job", job_id)

    def pause_tube(self, client, rest):
        name, seconds = wire.parse_pause(rest)
        self.counts["pause-tube"] += 1
        wire.parse_tube(name)           # checked after counting, as beanstalkd does
        self.later(client, self._pause(name.decode(), seconds))

    async def _pause(self, tube: str, seconds: int) -> bytes:
        if tube not in self._local_tubes():
            _, counts = await self.store.tube_counts([tube])
            if not counts[tube].exists:
                raise NotFound
        await self.store.pause(tube, seconds)
        return b"PAUSED\r\n"

    # -- stats --------------------------------------------------------------------------

    def _local_tubes(self) -> set:
        """The tubes this node's connections use or watch (they exist, jobs or not)."""
        tubes = {DEFAULT_TUBE}
        for session in self.sessions:
            tubes.add(session.use)
            tubes.update(session.watch)
        return tubes

    def _existing(self, counts: dict) -> list:
        """The tubes that exist for stats: the store's, and this node's."""
        local = self._local_tubes()
        return sorted(tube for tube, found in counts.items()
                      if tube in local or found.exists)

    def stats(self, client, rest):
        self.counts["stats"] += 1
        self.later(client, self._stats())

    async def _stats(self) -> bytes:
        names = sorted(set(await self.store.tubes()) | self._local_tubes())
        now, counts = await self.store.tube_counts(names)
        total_jobs, timeouts = await self.store.totals()
        sums = [0] * 5
        for found in counts.values():
            for i, value in enumerate((found.urgent, found.ready, found.reserved,
                                       found.delayed, found.buried)):
                sums[i] += value
        sessions = self.sessions
        return wire.yaml_mapping(server_pairs(
            tuple(sums), self.info, time.monotonic(), timeouts, total_jobs,
            len(self._existing(counts)), sum(s.producer for s in sessions),
            sum(s.worker for s in sessions), sum(s.waiting is not None for s in sessions),
            (0, 0, 0, 0), self.draining))

    def stats_tube(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["stats-tube"] += 1
        self.later(client, self._stats_tube(name))

    async def _stats_tube(self, name: str) -> bytes:
        now, counts = await self.store.tube_counts([name])
        found = counts[name]
        if name not in self._local_tubes() and not found.exists:
            raise NotFound
        sessions = self.sessions
        paused = found.unpause / 1e6 > now
        return wire.yaml_mapping(tube_pairs(
            name, (found.urgent, found.ready, found.reserved, found.delayed, found.buried),
            found.total_jobs, sum(s.use == name for s in sessions),
            sum(name in s.watch for s in sessions),
            sum(s.waiting is not None and name in s.watch for s in sessions),
            found.cmd_delete, found.cmd_pause, found.pause if paused else 0,
            int(found.unpause / 1e6 - now) if paused else 0))

    def stats_job(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["stats-job"] += 1
        self.later(client, self._stats_job(job_id))

    async def _stats_job(self, job_id: int) -> bytes:
        now, fields = await self.store.stats_job(job_id)
        return wire.yaml_mapping(job_stats_pairs(job_id, now, fields))

    def list_tubes(self, client, rest):
        self.counts["list-tubes"] += 1
        self.later(client, self._list_tubes())

    async def _list_tubes(self) -> bytes:
        names = sorted(set(await self.store.tubes()) | self._local_tubes())
        _, counts = await self.store.tube_counts(names)
        return wire.yaml_list(self._existing(counts))

    def list_tube_used(self, client, rest):
        self.counts["list-tube-used"] += 1
        return b"USING %s\r\n" % self.session(client).use.encode()

    def list_tubes_watched(self, client, rest):
        self.counts["list-tubes-watched"] += 1
        return wire.yaml_list(self.session(client).watch)

    def quit(self, client, rest):
        client.closing = True
        return None


class FailureLog:
    """Failed store calls, logged at most once a second with how many more there
    were: a store that is away for a minute must not write a line per command."""

    def __init__(self, every: float = 1.0, clock=time.monotonic):
        self.every = every
        self.clock = clock
        self.logged_at = -float("inf")
        self.unlogged = 0

    def log(self, error) -> None:
        now = self.clock()
        if now - self.logged_at < self.every:
            self.unlogged += 1
            return
        more = f" (and {self.unlogged} more since the last one logged)" \
            if self.unlogged else ""
        log.error("store call failed: %s%s", error, more)
        self.logged_at, self.unlogged = now, 0


failures = FailureLog()         # one for the node: the store is one


def _looked(session, look) -> None:
    """A reserve's first look is back (whatever it found): no longer waiting on it."""
    if session.waiting is look:
        session.waiting = None




def _found(reply) -> bytes:
    return wire.job_reply(FOUND, reply[1], reply[2])
