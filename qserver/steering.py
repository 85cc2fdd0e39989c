"""Steering jobs (protocol.md, "put-ex", "cancel-tag", "Per-key concurrency"):
unique keys, tags, lock keys and cooperative cancellation (flushing a tube is the
`flush` room's).

A job put with `put-ex` options gets a `Meta` (key, tags, cancelled flag) in the
engine's `meta` table, beside the job rather than in it, as the lifecycle's
histories are: plain jobs never have one, and the engine looks here only when the
table is not empty. Unique keys are per tube and stay taken while the job lives or
its finished record is retained; tags index live jobs for `cancel-tag`.

Lock keys are checked when a job is about to be reserved: a job whose lock already
has `lock-limit` holders is held (state HELD, out of the ready heap) instead, and
each time a holder's reservation ends the oldest held job of that lock is ready
again. So at most `lock-limit` jobs of one lock are reserved at once, whatever way
reservations end, and the (pri, id) order holds among the jobs that may be reserved.
Imports: `job`, `errors`, `flush`, stdlib.
"""

from qserver.errors import Cancelled, Duplicate, InternalError, OutOfMemory
from qserver.flush import hides
from qserver.job import HELD, RESERVED

MAX_TAGS = 8


class Meta:
    __slots__ = ("key", "tags", "lock", "cancelled", "logged_size")

    def __init__(self, key=None, tags=(), cancelled=False, lock=None):
        self.key = key              # bytes or None
        self.tags = tags            # tuple of bytes
        self.lock = lock            # bytes or None: the lock key (per-key concurrency)
        self.cancelled = cancelled  # set by cancel-tag while the job was reserved
        self.logged_size = 0        # size of its latest log record (-b accounting)


class Lock:
    """One lock key of one tube: how many of its jobs are reserved, and the held
    ones, oldest first."""

    __slots__ = ("holders", "held")

    def __init__(self):
        self.holders = 0
        self.held = {}              # job id -> job


class SteeringCounters:
    __slots__ = ("duplicates", "cancelled_removed", "cancelled_flagged")

    def __init__(self):
        self.duplicates = 0
        self.cancelled_removed = self.cancelled_flagged = 0


class Steering:
    def __init__(self, engine):
        self.engine = engine
        self.meta = engine.meta          # job id -> Meta (live and retained jobs)
        self.keys = {}                   # (tube name, key) -> job id
        self.tags = {}                   # tag -> {job id: None}, live jobs only
        self.lock_jobs = engine.lock_jobs  # job id -> lock key, live jobs only
        self.locks = {}                  # (tube name, lock key) -> Lock
        # Live jobs flagged by cancel-tag (id -> None), so that /metrics counts them
        # without walking every job's Meta.
        self.flagged = {}
        self.totals = SteeringCounters()

    # -- put-ex -----------------------------------------------------------------

    def check_key(self, tube_name: str, key) -> None:
        """DUPLICATE <id> when a live or retained job of the tube has this key."""
        if key is None:
            return
        holder = self.keys.get((tube_name, key))
        if holder is None:
            return
        job = self.engine.jobs.get(holder)
        if job is not None and job.tube.flushes and hides(job):
            self.engine.flusher.give_up_key(job)    # the key is free from now on
        elif self._holds_key(holder, tube_name, key):
            self.totals.duplicates += 1
            raise Duplicate(holder)

    def _holds_key(self, job_id: int, tube_name: str, key: bytes) -> bool:
        job = self.engine.find(job_id) or self.engine.lifecycle.retained(job_id)
        meta = self.meta.get(job_id)
        return job is not None and meta is not None and meta.key == key \
            and job.tube.name == tube_name

    def put(self, tube, job_id: int, pri: int, delay: int, ttr: int, body: bytes,
            now: float, created: float, key, tags, lock=None):
        """put-ex: the job and its options, logged as one write (the caller has
        checked the key)."""
        engine = self.engine
        if key is None and not tags and lock is None:
            return engine.put(tube, job_id, pri, delay, ttr, body, now, created)
        try:                    # room for both records, or OUT_OF_MEMORY as put has
            engine.log.reserve(len(body) + len(tube.name) + 4096)
        except InternalError:
            raise OutOfMemory from None
        if lock is not None:    # known before the put may hand the job to a reserve
            self.lock_jobs[job_id] = lock
        try:
            with engine.log.atomic():
                job = engine.put(tube, job_id, pri, delay, ttr, body, now, created)
                meta = Meta(key, tags, lock=lock)
                self._index(job, meta)
                engine.log.meta(job.id, meta)
        except Exception:
            self.lock_jobs.pop(job_id, None)
            raise
        return job

    def _index(self, job, meta: Meta) -> None:
        self.meta[job.id] = meta
        if meta.cancelled:
            self.flagged[job.id] = None
        if meta.lock is not None:
            self.lock_jobs[job.id] = meta.lock
        if meta.key is not None:
            self.keys[(job.tube.name, meta.key)] = job.id
        for tag in meta.tags:
            self.tags.setdefault(tag, {})[job.id] = None

    # -- a job going away ---------------------------------------------------------

    def forget(self, job) -> None:
        """The job is gone (deleted, flushed, cancelled, completed or dead)."""
        meta = self.meta.pop(job.id, None)
        if meta is None:
            return
        if job.state == HELD:
            self.left_held(job)
        self.lock_jobs.pop(job.id, None)
        self.flagged.pop(job.id, None)
        self._unindex(job.id, job.tube.name, meta)

    def _unindex(self, job_id: int, tube_name: str, meta: Meta) -> None:
        if meta.key is not None and self.keys.get((tube_name, meta.key)) == job_id:
            del self.keys[(tube_name, meta.key)]
        for tag in meta.tags:
            ids = self.tags.get(tag)
            if ids is not None:
                ids.pop(job_id, None)
                if not ids:
                    del self.tags[tag]

    def drop_key(self, job) -> None:
        """Free a job's unique key while the job stays (flushed, not freed yet)."""
        meta = self.meta.get(job.id)
        if meta is not None and meta.key is not None \
                and self.keys.get((job.tube.name, meta.key)) == job.id:
            del self.keys[(job.tube.name, meta.key)]

    def moved(self, job, old_tube_name: str) -> None:
        """A job went to another tube (a dead letter): its key goes with it, unless
        a job there holds that key already (then the first one keeps it)."""
        meta = self.meta.get(job.id)
        if meta is None or meta.key is None:
            return
        if self.keys.get((old_tube_name, meta.key)) == job.id:
            del self.keys[(old_tube_name, meta.key)]
        holder = self.keys.get((job.tube.name, meta.key))
        if holder is None or not self._holds_key(holder, job.tube.name, meta.key):
            self.keys[(job.tube.name, meta.key)] = job.id

    def retain(self, record, meta) -> None:
        """A finished job's record is retained: its key stays taken (no tags)."""
        if meta is None:
            return
        self.meta[record.id] = meta
        if meta.key is not None:
            self.keys[(record.tube.name, meta.key)] = record.id

    def expired(self, record) -> None:
        meta = self.meta.pop(record.id, None)
        if meta is not None:
            self._unindex(record.id, record.tube.name, meta)

    # -- locks (the engine asks only for jobs in lock_jobs) --------------------------

    def _lock(self, job) -> Lock:
        key = (job.tube.name, self.lock_jobs[job.id])
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = Lock()
        return lock

    def _tidy(self, job, lock: Lock) -> None:
        if not lock.holders and not lock.held:
            self.locks.pop((job.tube.name, self.lock_jobs[job.id]), None)

    @staticmethod
    def _limit(job) -> int:
        policy = job.tube.policy
        return policy.lock_limit if policy is not None else 1

    def may_reserve(self, job) -> bool:
        return self._lock(job).holders < self._limit(job)

    def hold(self, job) -> None:
        """A ready job whose lock is taken: out of the ready heap until a holder
        ends (the caller has taken it off the heap)."""
        job.state = HELD
        self._lock(job).held[job.id] = job
        self.engine.event("held", job)
        if job.tube.index is not None:
            job.tube.index.add(HELD, (job.id, job.id))

    def reserved(self, job) -> None:
        self._lock(job).holders += 1

    def holder_ended(self, job) -> bool:
        """A reservation of a lock job ended; the oldest held job of its lock is
        ready again. Returns whether one was."""
        lock = self._lock(job)
        lock.holders -= 1
        promoted = False
        if lock.held and lock.holders < self._limit(job):
            oldest = next(iter(lock.held.values()))
            self.left_held(oldest)
            oldest.tube.push_ready(oldest)
            promoted = True
        self._tidy(job, lock)
        return promoted

    def left_held(self, job) -> None:
        lock = self._lock(job)
        if lock.held.pop(job.id, None) is not None and job.tube.index is not None:
            job.tube.index.discard(HELD, (job.id, job.id))
        self._tidy(job, lock)

    def take_held(self, tube) -> list:
        """flush-tube: the tube's held jobs, out of their locks (the index's held
        list goes with the tube's other lists)."""
        held = []
        for key, lock in list(self.locks.items()):
            if key[0] == tube.name and lock.held:
                held += lock.held.values()
                lock.held = {}
                if not lock.holders:
                    del self.locks[key]
        return held

    def held_in(self, tube) -> list:
        return [job for (name, _), lock in self.locks.items() if name == tube.name
                for job in lock.held.values()]

    def held_count(self) -> int:
        return sum(len(lock.held) for lock in self.locks.values())

    # -- cancellation ---------------------------------------------------------------

    def check_not_cancelled(self, job_id: int) -> None:
        meta = self.meta.get(job_id)
        if meta is not None and meta.cancelled:
            raise Cancelled

    def cancel_tag(self, tag: bytes) -> tuple:
        """Remove the tag's jobs that are not reserved, flag the reserved ones;
        returns (removed, flagged)."""
        with self.engine.log.atomic():
            removed, flagged = self._cancel(tag)
        self.totals.cancelled_removed += removed
        self.totals.cancelled_flagged += flagged
        return removed, flagged

    def _cancel(self, tag: bytes) -> tuple:
        engine = self.engine
        removed = flagged = 0
        for job_id in list(self.tags.get(tag, ())):
            job = engine.jobs[job_id]
            if job.tube.flushes and hides(job):
                continue                    # flushed already, not yet forgotten
            if job.state == RESERVED:
                meta = self.meta[job_id]
                if not meta.cancelled:
                    meta.cancelled = True
                    self.flagged[job_id] = None
                    engine.log.meta(job_id, meta)
                flagged += 1
            else:
                engine.remove(job)
                removed += 1
            engine.event("cancel", job)
        return removed, flagged

    # -- restart --------------------------------------------------------------------

    def restore(self, meta: dict) -> None:
        engine = self.engine
        for job_id, job_meta in meta.items():
            job = engine.jobs.get(job_id)
            if job is not None:
                self._index(job, job_meta)
                continue
            record = engine.lifecycle.retained(job_id)
            if record is not None:
                self.retain(record, job_meta)

