"""The in-memory queue: tubes, the job index, every state transition, and time.

Pure and synchronous: methods take `now` (monotonic seconds) from the caller, so
tests drive time by hand. Nothing here knows about sockets, asyncio or wire bytes.
Everything that happens at a moment (a delay ending, a TTR running out, a pause
ending, a reserve timing out) sits in one of four heaps; `next_wakeup()` gives the
earliest moment and `tick(now)` does what is due, so the server needs one timer.
Parked reserves are answered through `Session.wake`. What goes beyond beanstalkd
(counted failures, policies, results, retained records) is the `lifecycle` room's;
the engine calls it only for tubes with a policy, so plain traffic never does. Keys,
tags and cancellation are the `steering` room's, consulted only for jobs that have
options (put-ex); flush-tube is the `flush` room's, and a flushed job stays hidden
(`hides`) until its slice forgets it.
Imports: `job`, `tube`, `session`, `swapset`, `errors`, `lifecycle`, `steering`,
`flush`, stdlib.
"""

import contextlib
import heapq
import itertools
import math
import sys

from qserver.errors import DeadlineSoon, NotFound, NotIgnored, TimedOut
from qserver.job import (BURIED, DELAYED, HELD, ID_MASK, ONE_BURY, ONE_KICK,
                         ONE_RELEASE, ONE_RESERVE, ONE_TIMEOUT, PRI_SHIFT, READY, RESERVED,
                         Job)
from qserver.lifecycle import CONNECTION_CLOSED, TTR_EXPIRED, Lifecycle
from qserver.flush import Flusher, hides
from qserver.steering import Steering
from qserver.swapset import SwapSet
from qserver.tube import Tube

class NoLog:
    """The log hooks when there is no log (`-b` not given): they do nothing."""

    oldest_index = current_index = migrated = written = 0
    holds_replies = False

    def put(self, job): pass
    def reserve_update(self): pass
    def update(self, job): pass
    def delete(self, job): pass
    def reserve(self, size): pass
    def moved(self, job, old_tube_name): pass
    def policy(self, tube_name, policy): pass
    def lifecycle(self, job_id, history): pass
    def finished(self, record): pass
    def expired(self, record, history): pass
    def meta(self, job_id, meta): pass
    def flush(self, tube_name, job_ids): pass
    def forget(self, job): pass
    def atomic(self): return contextlib.nullcontext()


# DEADLINE_SOON is answered this long before a reserved job's TTR runs out.
SAFETY_MARGIN = 1.0
DEFAULT_TUBE = "default"


class Engine:
    # Slots, not an instance dict: past ~30 attributes CPython 3.11 stops sharing a
    # dict's keys and every attribute load on the hot path gets slower (measured:
    # +4% instructions per put/reserve/delete).
    __slots__ = (
        "log", "jobs", "tubes", "tube_order", "next_id", "next_bury_seq", "draining",
        "job_timeouts", "total_jobs", "producers", "workers", "waiting_count",
        "delayed_total", "reserved_total", "_delays", "_ttrs", "_waits", "_pauses",
        "_seq", "_tubes_with_waiters", "earliest", "timer_dirty", "policies",
        "histories", "meta", "lock_jobs", "_promoted", "events", "lifecycle",
        "steering", "flusher", "default_tube", "call_soon",
    )

    def __init__(self, log=None, wall=None, rand=None):
        # The append-only log: every change of persisted state is handed to it
        # before the reply (journal.Journal), or to NoLog without -b.
        self.log = log if log is not None else NoLog()
        self.jobs = {}                  # id -> Job
        self.tubes = {}                 # name -> Tube
        self.tube_order = SwapSet()     # list-tubes order, as beanstalkd keeps it
        self.next_id = 1
        self.next_bury_seq = 1
        self.draining = False
        self.job_timeouts = 0
        self.total_jobs = 0
        self.producers = 0
        self.workers = 0
        self.waiting_count = 0
        self.delayed_total = 0
        self.reserved_total = 0
        self._delays = []               # (due, id) for every delayed job
        self._ttrs = []                 # (deadline, id) for every reserved job
        self._waits = []                # (when, n, session, wait_seq) for parked reserves
        self._pauses = []               # (unpause_at, n, tube)
        self._seq = itertools.count()
        self._tubes_with_waiters = set()
        self.earliest = math.inf        # the soonest moment anything may be due
        self.timer_dirty = False        # set when `earliest` moved earlier
        self.policies = {}              # tube name -> Policy (config-tube)
        self.histories = {}             # job id -> lifecycle.History, for few jobs
        self.meta = {}                  # job id -> steering.Meta, for put-ex jobs
        self.lock_jobs = {}             # job id -> lock key, for put-ex jobs with lock=
        self._promoted = False          # a held job became ready: hand it out at tick
        self.events = None              # events.EventLog from the first subscribe on
        self.lifecycle = Lifecycle(self, **{k: v for k, v in
                                           (("wall", wall), ("rand", rand)) if v})
        self.steering = Steering(self)
        self.flusher = Flusher(self)
        # Set by the server (the loop's call_soon) for work done a slice per loop
        # turn (flush-tube, a first list-jobs); without it that work completes at once.
        self.call_soon = None
        self.default_tube = self._tube(DEFAULT_TUBE)

    # -- tubes ------------------------------------------------------------------

    def _tube(self, name: str) -> Tube:
        tube = self.tubes.get(name)
        if tube is None:
            tube = self.tubes[name] = Tube(name, self.jobs, self.policies.get(name))
            self.tube_order.append(tube)
        return tube

    def _release_tube(self, tube: Tube) -> None:
        """Drop a tube nothing refers to any more (its pause goes with it)."""
        if tube.is_unused() and tube.name != DEFAULT_TUBE:
            del self.tubes[tube.name]
            self.tube_order.remove(tube)

    def tube_named(self, name: str) -> Tube:
        tube = self.tubes.get(name)
        if tube is None:
            raise NotFound
        return tube

    # -- sessions ---------------------------------------------------------------

    def attach(self, session) -> None:
        """A new connection uses and watches `default`."""
        tube = self.default_tube
        session.use = tube
        tube.using += 1
        session.watch.append(tube)
        tube.watching += 1

    def detach(self, session, now: float) -> None:
        """A connection went away: its reserved jobs are ready again at once."""
        if session.waiting:
            self._unpark(session)
        for job in list(session.reserved.values()):
            self.unhold(job)
            if job.tube.policy is None:
                job.tube.push_ready(job)
                if self.events is not None:     # the server released it for them
                    self.event("release", job)
            else:       # a worker that crashes with the job counts an attempt
                self.lifecycle.failed_in_background(job, CONNECTION_CLOSED, now)
            self._process_queue(now)
        if session.producer:
            self.producers -= 1
        if session.worker:
            self.workers -= 1
        session.use.using -= 1
        self._release_tube(session.use)
        for tube in list(session.watch):
            tube.watching -= 1
            self._release_tube(tube)
        session.watch = SwapSet()

    def mark_producer(self, session) -> None:
        if not session.producer:
            session.producer = True
            self.producers += 1

    def mark_worker(self, session) -> None:
        if not session.worker:
            session.worker = True
            self.workers += 1

    def use(self, session, name: str) -> Tube:
        tube = self._tube(name)
        old = session.use
        if tube is not old:
            tube.using += 1
            session.use = tube
            old.using -= 1
            self._release_tube(old)
        return tube

    def watch(self, session, name: str) -> int:
        tube = self._tube(name)
        if tube not in session.watch:
            session.watch.append(tube)
            tube.watching += 1
        return len(session.watch)

    def ignore(self, session, name: str) -> int:
        tube = self.tubes.get(name)
        if tube is not None and tube in session.watch:
            if len(session.watch) < 2:
                raise NotIgnored
            session.watch.remove(tube)
            tube.watching -= 1
            self._release_tube(tube)
        return len(session.watch)

    # -- put --------------------------------------------------------------------

    def allocate_id(self) -> int:
        """Ids are used up when a put line is accepted, even if the put then fails."""
        job_id = self.next_id
        self.next_id = job_id + 1
        return job_id

    def put(self, tube: Tube, job_id: int, pri: int, delay: int, ttr: int,
            body: bytes, now: float, created: float) -> Job:
        job = Job(job_id, tube, pri, delay, ttr, body, created)
        if delay:
            job.state = DELAYED
            job.deadline = now + delay
        self.log.put(job)           # may refuse with OUT_OF_MEMORY: nothing changed yet
        self.jobs[job_id] = job
        tube.total_jobs += 1
        self.total_jobs += 1
        if self.events is not None:
            self.event("put", job)
        if delay:
            self._delay(job, job.deadline)
        else:
            tube.push_ready(job)
            if self._tubes_with_waiters:
                self._process_queue(now)
        return job

    # -- reserve ----------------------------------------------------------------

    def reserve(self, session, timeout, now: float):
        """Reserve the best ready job in the watched tubes.

        Returns the job, or None when the session is now parked (its answer comes
        through `session.wake`). `timeout` is None to wait forever.
        """
        if session.reserved and self._deadline_soon(session, now) \
                and not any(t.ready_count for t in session.watch):
            raise DeadlineSoon
        job = self._best_ready(session.watch, now)
        if job is not None and self.lock_jobs and job.id in self.lock_jobs:
            job = self._unlocked_ready(session.watch, job, now)
        if job is not None:
            job.tube.forget_ready(job)
            self._reserve(session, job, now)
            return job
        if timeout == 0:
            raise TimedOut
        self._park(session, timeout, now)
        return None

    def reserve_job(self, session, job_id: int, now: float) -> Job:
        """Reserve one job by id, in any tube and any state but reserved."""
        job = self.find(job_id)
        if job is None or job.state == RESERVED or job.state == HELD \
                or (self.lock_jobs and job_id in self.lock_jobs
                    and not self.steering.may_reserve(job)):
            raise NotFound
        # Taking a job out of buried or delayed is logged (it comes back ready).
        logged = job.state != READY
        if logged:
            self.log.reserve_update()
        self._unlist(job)
        self._reserve(session, job, now)
        if logged:
            self.log.update(job)
        return job

    def _unlocked_ready(self, tubes, job, now: float):
        """The best ready job that may be reserved: jobs whose lock is taken are
        held on the way (per-key concurrency)."""
        steering = self.steering
        lock_jobs = self.lock_jobs
        while job is not None and job.id in lock_jobs and not steering.may_reserve(job):
            job.tube.forget_ready(job)
            steering.hold(job)
            job = self._best_ready(tubes, now)
        return job

    def _best_ready(self, tubes, now: float):
        best = None
        for tube in tubes:
            if tube.ready_count and not tube.is_paused(now):
                job = tube.peek_ready()
                if best is None or job.ready_key < best.ready_key:
                    best = job
        return best

    def _deadline_soon(self, session, now: float) -> bool:
        soonest = session.soonest_deadline()
        return soonest is not None and now >= soonest - SAFETY_MARGIN

    def _reserve(self, session, job: Job, now: float) -> None:
        job.state = RESERVED
        job.deadline = deadline = now + job.ttr
        job.counts += ONE_RESERVE
        job.holder = session
        tube = job.tube
        tube.reserved_count += 1
        if tube.index is not None:
            tube.index.add(RESERVED, (deadline, job.id))
        if self.lock_jobs and job.id in self.lock_jobs:
            self.steering.reserved(job)
        if self.events is not None:
            self.event("reserve", job)
        self.reserved_total += 1
        session.hold(job)
        self._push(self._ttrs, (deadline, job.id), deadline, self.reserved_total)

    def _park(self, session, timeout, now: float) -> None:
        session.waiting = True
        session.wait_seq += 1
        session.wait_until = None if timeout is None else now + timeout
        self.waiting_count += 1
        for tube in session.watch:
            tube.waiting.append(session)
            self._tubes_with_waiters.add(tube)
        self._schedule_wait(session)

    def cancel_wait(self, session) -> None:
        """Give up a parked reserve without an answer from the engine."""
        if session.waiting:
            self._unpark(session)

    def _schedule_wait(self, session) -> None:
        when = session.wait_until
        soonest = session.soonest_deadline()
        if soonest is not None and (when is None or soonest - SAFETY_MARGIN < when):
            when = soonest - SAFETY_MARGIN
        if when is not None:
            entry = (when, next(self._seq), session, session.wait_seq)
            self._push(self._waits, entry, when, self.waiting_count)

    def _unpark(self, session) -> None:
        session.waiting = False
        session.wait_seq += 1
        self.waiting_count -= 1
        for tube in session.watch:
            tube.waiting.remove(session)
            if not tube.waiting:
                self._tubes_with_waiters.discard(tube)

    def _process_queue(self, now: float) -> None:
        """Hand ready jobs to parked reserves, best (pri, id) first across tubes."""
        waiting_tubes = self._tubes_with_waiters
        while waiting_tubes:
            job = self._best_ready(waiting_tubes, now)
            if job is not None and self.lock_jobs and job.id in self.lock_jobs:
                job = self._unlocked_ready(waiting_tubes, job, now)
            if job is None:
                return
            session = job.tube.waiting.take()
            self._unpark(session)
            job.tube.forget_ready(job)
            self._reserve(session, job, now)
            session.wake(job)

    # -- the other job commands -------------------------------------------------

    def delete(self, session, job_id: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or (job.state == RESERVED and job.holder is not session) \
                or (job.tube.flushes and hides(job)):
            raise NotFound
        if self.events is not None:         # before the job's history goes with it
            self.event("delete", job)
        self.log.delete(job)                # remove()'s steps, one call less: hot path
        self._unlist(job)
        self._forget(job)

    def remove(self, job: Job) -> None:
        """Delete a job whoever holds it (logged first)."""
        self.log.delete(job)
        self._unlist(job)
        self._forget(job)

    def drop(self, job: Job) -> None:
        """Delete a job that is in no list (a dead letter with `dead-letter delete`)."""
        self.log.delete(job)
        self._forget(job)

    def _forget(self, job: Job) -> None:
        del self.jobs[job.id]
        histories = self.histories
        if histories:
            histories.pop(job.id, None)
        if self.meta:
            self.steering.forget(job)
        tube = job.tube
        tube.cmd_delete += 1
        self._release_tube(tube)

    def release(self, session, job_id: int, pri: int, delay: int, now: float) -> None:
        job = self.held(session, job_id)
        self.log.reserve_update()
        self.unhold(job)
        job.pri = pri
        job.delay = delay
        job.counts += ONE_RELEASE
        if delay:
            self._delay(job, now + delay)
        else:
            job.tube.push_ready(job)
        self.log.update(job)
        if self.events is not None:
            self.event("release", job)
        if not delay:
            self._process_queue(now)

    def bury(self, session, job_id: int, pri: int) -> None:
        job = self.held(session, job_id)
        self.log.reserve_update()
        self.unhold(job)
        job.pri = pri
        self.bury_job(job)

    def bury_job(self, job: Job) -> None:
        """Bury a job that is in no list (logged)."""
        job.counts += ONE_BURY
        job.bury_seq = self.next_bury_seq
        self.next_bury_seq += 1
        job.tube.push_buried(job)
        self.log.update(job)
        if self.events is not None:
            self.event("bury", job)

    def requeue(self, job: Job, delay: int, now: float) -> None:
        """Put a job that is in no list back, delayed or ready (logged): a retry."""
        job.delay = delay
        if delay:
            self._delay(job, now + delay)
        else:
            job.tube.push_ready(job)
        self.log.update(job)

    def move(self, job: Job, tube_name: str, now: float) -> None:
        """Make a job that is in no list ready in another tube (logged)."""
        old = job.tube
        job.tube = tube = self._tube(tube_name)
        tube.total_jobs += 1
        tube.push_ready(job)
        if tube.flushes:
            self.flusher.kept(job)
        self.log.moved(job, old.name)
        if self.meta:
            self.steering.moved(job, old.name)
        self._release_tube(old)

    def touch(self, session, job_id: int, now: float) -> None:
        job = self.held(session, job_id)
        if self.meta:
            self.steering.check_not_cancelled(job_id)
        index = job.tube.index
        if index is not None:
            index.discard(RESERVED, (job.deadline, job_id))
            index.add(RESERVED, (now + job.ttr, job_id))
        job.deadline = deadline = now + job.ttr
        session.note_deadline(job)
        self._push(self._ttrs, (deadline, job_id), deadline, self.reserved_total)

    def kick(self, tube: Tube, bound: int, now: float) -> int:
        """Kick up to `bound` buried jobs or, if there are none, delayed jobs."""
        count = 0
        if tube.buried:
            while count < bound and tube.buried:
                self._kick(tube.peek_buried(), now)
                count += 1
        else:
            while count < bound and tube.delayed_count:
                self._kick(tube.peek_delayed(), now)
                count += 1
        return count

    def kick_job(self, job_id: int, now: float) -> None:
        job = self.find(job_id)
        if job is None or job.state not in (BURIED, DELAYED):
            raise NotFound
        self._kick(job, now)

    def _kick(self, job: Job, now: float) -> None:
        self.log.reserve_update()
        self._unlist(job)
        job.counts += ONE_KICK
        job.tube.push_ready(job)
        self.log.update(job)
        if self.events is not None:
            self.event("kick", job)
        self._process_queue(now)

    def pause_tube(self, name: str, seconds: int, now: float) -> None:
        tube = self.tube_named(name)
        tube.pause = seconds
        tube.unpause_at = when = now + seconds
        tube.cmd_pause += 1
        if seconds:
            self._push(self._pauses, (when, next(self._seq), tube), when, len(self.tubes))
        else:
            # A zero pause un-pauses at once and wakes whoever waits on the tube.
            self._process_queue(now)

    def reserved_in(self, tube: Tube) -> list:
        """The tube's reserved jobs (from the TTR schedule, which holds them all)."""
        found = {}
        for entry in self._ttrs:
            if self._describes(entry, RESERVED):
                job = self.jobs[entry[1]]
                if job.tube is tube:
                    found[job.id] = job
        return list(found.values())

    def empty_lists(self, tube: Tube) -> tuple:
        """flush-tube: give the tube empty ready, delayed, buried and held lists at
        once and return the old ones (flush.Flush forgets their jobs in slices);
        reserved jobs stay."""
        self.delayed_total -= tube.delayed_count
        ready, delayed, buried, index_lists = tube.take_listed()
        held = self.steering.take_held(tube)
        self._release_tube(tube)
        return ready, delayed, buried, held, index_lists

    def forget_flushed(self, job: Job, logged: bool) -> None:
        """Forget a job a flush took (it is in no list any more) once its FLUSH
        record is written; `logged`: its own DELETE went before (the journal has
        stopped counting its bytes already)."""
        if not logged:
            self.log.forget(job)
        del self.jobs[job.id]
        if self.histories:
            self.histories.pop(job.id, None)
        if self.meta:
            self.steering.forget(job)

    # -- restart ----------------------------------------------------------------

    def restore(self, jobs, next_id: int, now: float, wall: float) -> None:
        """Load jobs read back from the log (see `journal.records.decode` for how
        they arrive). Reserved jobs come back ready (no connection survives a
        restart), a delayed job keeps its wall-clock due time, buried jobs keep their
        order, and no counter is bumped."""
        ready = {}
        buried = []
        index = self.jobs
        name = tube = tube_ready = None
        for job in jobs:
            # Replayed jobs of one tube share its name object (records.decode): one
            # tube lookup per run of them, not per job.
            if job.tube is not name:
                name = job.tube
                tube = self._tube(name)
                tube_ready = ready.setdefault(tube, [])
            job.tube = tube
            index[job.id] = job
            state = job.state
            if state == READY:
                tube_ready.append(job)
            elif state == BURIED:
                buried.append(job)
            elif state == DELAYED and job.deadline > wall:
                self._delay(job, now + (job.deadline - wall))
            else:
                tube_ready.append(job)
        for tube, tube_jobs in ready.items():
            tube.restore_ready(tube_jobs)
        buried.sort(key=lambda job: job.deadline)       # the bury order
        for job in buried:
            self.next_bury_seq = max(self.next_bury_seq, int(job.deadline) + 1)
            job.tube.push_buried(job)
        self.next_id = max(self.next_id, next_id)
        for tube in list(self.tubes.values()):
            self._release_tube(tube)

    # -- memory -----------------------------------------------------------------

    def shrink(self) -> bool:
        """Let the memory of a drained backlog go: CPython never shrinks a dict on
        deletion, so the job index (and a tube's buried jobs, the lifecycle and
        steering records) keep a table sized for the most they ever held. Rebuild
        those holding under a sixteenth of what their table was made for, when the
        table is big (SHRINK_MIN_BYTES) and the rebuild small (SHRINK_MAX_ENTRIES):
        a few ms, in place, so every holder of the dict keeps it. The server calls
        this from a timer, not per command. Returns whether anything was rebuilt."""
        dicts = [self.jobs, self.histories, self.meta, self.lock_jobs]
        dicts += [tube.buried for tube in self.tubes.values()]
        shrunk = False
        for table in dicts:
            if _oversized(table):
                live = table.copy()
                table.clear()
                table.update(live)
                shrunk = True
        return shrunk

    # -- lookups ----------------------------------------------------------------

    def peek(self, job_id: int) -> Job:
        job = self.find(job_id)
        if job is None:
            raise NotFound
        return job

    def find(self, job_id: int):
        """The live job with that id, or None; a job being flushed is gone already."""
        job = self.jobs.get(job_id)
        if job is not None and job.tube.flushes and hides(job):
            return None
        return job

    @staticmethod
    def found(job):
        if job is None:
            raise NotFound
        return job

    # -- time -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Do everything due at or before `now`, in beanstalkd's order."""
        if self._promoted:
            self._promoted = False
            self._process_queue(now)
        self._mature_delays(now)
        self._end_pauses(now)
        # A waiting client hears DEADLINE_SOON before its job can time out.
        self._answer_waits(now)
        self._expire_ttrs(now)
        if self.lifecycle.ledger.next_expiry() <= now:
            self.lifecycle.expire(now)
        self.earliest = self.next_wakeup()
        self.timer_dirty = False

    def next_wakeup(self) -> float:
        """The soonest moment something may be due (math.inf when nothing is)."""
        soonest = self.lifecycle.ledger.next_expiry()
        for heap in (self._delays, self._ttrs, self._waits, self._pauses):
            if heap and heap[0][0] < soonest:
                soonest = heap[0][0]
        return soonest

    def _due_jobs(self, heap: list, now: float, state: int):
        """Pop the (time, id) entries due by `now`; yield the jobs they still describe."""
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._describes(entry, state):
                yield self.jobs[entry[1]]

    def _describes(self, entry: tuple, state: int) -> bool:
        """Whether a (time, id) heap entry is current: the job is still in `state`
        with that time (else it is a stale entry left by lazy deletion)."""
        job = self.jobs.get(entry[1])
        return job is not None and job.state == state and job.deadline == entry[0]

    def _mature_delays(self, now: float) -> None:
        for job in self._due_jobs(self._delays, now, DELAYED):
            if job.tube.flushes and hides(job):
                continue                    # flushed: its tube's lists are gone
            self._unlist(job)
            job.tube.push_ready(job)
            self._process_queue(now)

    def _end_pauses(self, now: float) -> None:
        heap = self._pauses
        while heap and heap[0][0] <= now:
            when, _, tube = heapq.heappop(heap)
            if tube.unpause_at == when:
                self._process_queue(now)

    def _expire_ttrs(self, now: float) -> None:
        for job in self._due_jobs(self._ttrs, now, RESERVED):
            self.unhold(job)
            job.counts += ONE_TIMEOUT
            self.job_timeouts += 1
            if self.events is not None:
                self.event("timeout", job)
            if job.tube.policy is None:
                job.tube.push_ready(job)
            else:       # counted as a failed attempt (protocol.md, "Job lifecycle")
                self.lifecycle.failed_in_background(job, TTR_EXPIRED, now)
            self._process_queue(now)

    def _answer_waits(self, now: float) -> None:
        heap = self._waits
        while heap and heap[0][0] <= now:
            _, _, session, seq = heapq.heappop(heap)
            if not session.waiting or session.wait_seq != seq:
                continue
            if self._deadline_soon(session, now):
                self._unpark(session)
                session.wake(DeadlineSoon)
            elif session.wait_until is not None and now >= session.wait_until:
                self._unpark(session)
                session.wake(TimedOut)
            else:
                self._schedule_wait(session)

    # -- helpers ----------------------------------------------------------------

    def held(self, session, job_id: int) -> Job:
        """The job `session` holds reserved under this id, else NOT_FOUND."""
        job = session.reserved.get(job_id)
        if job is None:
            raise NotFound
        return job

    def unhold(self, job: Job) -> None:
        """A reserved job stops being reserved (its TTR entry goes stale)."""
        del job.holder.reserved[job.id]
        job.holder = None
        tube = job.tube
        tube.reserved_count -= 1
        self.reserved_total -= 1
        if tube.index is not None:
            tube.index.discard(RESERVED, (job.deadline, job.id))
        if self.lock_jobs and job.id in self.lock_jobs \
                and self.steering.holder_ended(job):
            # A held job is ready again: waiting reserves get it at the next tick,
            # which comes at once (this runs inside many different transitions).
            self._promoted = True
            self.note_deadline(-math.inf)

    def _unlist(self, job: Job) -> None:
        """Take a job out of whatever list its state puts it in."""
        state = job.state
        tube = job.tube
        if state == READY:
            tube.forget_ready(job)
        elif state == DELAYED:
            tube.forget_delayed(job)
            self.delayed_total -= 1
        elif state == BURIED:
            tube.forget_buried(job)
        elif state == HELD:
            self.steering.left_held(job)
        else:
            self.unhold(job)

    def event(self, name: str, job) -> None:
        """Record an event for subscribers, if anyone ever subscribed."""
        events = self.events
        if events is not None:
            history = self.histories.get(job.id) if self.histories else None
            events.add(name, job.id, job.tube.name, history.attempts if history else 0)

    def note_deadline(self, when: float) -> None:
        """Something outside the four heaps (a retained record's expiry) is due at
        `when`: make sure the timer fires by then."""
        if when < self.earliest:
            self.earliest = when
            self.timer_dirty = True

    def _delay(self, job: Job, due: float) -> None:
        job.tube.push_delayed(job, due)
        self.delayed_total += 1
        self._push(self._delays, (due, job.id), due, self.delayed_total)

    def _push(self, heap: list, entry: tuple, when: float, live: int) -> None:
        """Add a timed entry; rebuild the heap when stale entries pile up."""
        heapq.heappush(heap, entry)
        if len(heap) > 2 * live + 1024:
            self._prune(heap)
        if when < self.earliest:
            self.earliest = when
            self.timer_dirty = True

    def _prune(self, heap: list) -> None:
        if heap is self._delays:
            keep = [e for e in heap if self._describes(e, DELAYED)]
        elif heap is self._ttrs:
            keep = [e for e in heap if self._describes(e, RESERVED)]
        elif heap is self._waits:
            keep = [e for e in heap if e[2].waiting and e[2].wait_seq == e[3]]
        else:
            keep = [e for e in heap if e[2].unpause_at == e[0] and e[2].name in self.tubes]
        heap[:] = set(keep)         # identical entries (same instant) collapse
        heapq.heapify(heap)


# A dict's table is rebuilt (Engine.shrink) when it takes at least this much and
# holds under a sixteenth of what it was sized for, and at most this many entries.
SHRINK_MIN_BYTES = 1 << 20
SHRINK_MAX_ENTRIES = 100_000


def _oversized(table: dict) -> bool:
    size = sys.getsizeof(table)     # O(1): the object and its table
    return size >= SHRINK_MIN_BYTES and len(table) <= SHRINK_MAX_ENTRIES \
        and len(table) * 16 * 42 < size     # ~42 bytes an entry when sized for it
