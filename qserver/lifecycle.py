"""What happens to a job beyond beanstalkd: counted failures, retries with backoff,
dead letters, progress, results and retained records (protocol.md, "Job lifecycle").

The engine calls in here only for tubes with a policy (a TTR running out, a holding
connection closing) and for the extension commands, so plain beanstalkd traffic never
reaches this module. Per-job extras live in `histories` (id -> History), beside the
jobs rather than in them: most jobs never fail, and a job stays twelve slots.
Decisions come from `policy`; retained records live in the `ledger`. Like the engine
this is pure: `now` is passed in, the wall clock and the jitter are injected.
Imports: `job`, `policy`, `ledger`, `errors`, stdlib.
"""

import logging
import random
import time

from qserver.errors import QueueError
from qserver.job import COMPLETED, DEAD, RESERVED
from qserver.ledger import Ledger, TubeRef
from qserver.policy import DEAD_BURY, DEAD_DELETE, DEFAULT

log = logging.getLogger("qserver")

FAILURES_KEPT = 5
REASON_LIMIT = 4096
TTR_EXPIRED = b"TTR expired"
CONNECTION_CLOSED = b"connection closed"

# Outcomes of a counted failure (the word of `fail`'s reply and its argument).
RETRYING, BURY, MOVED, DELETED = "RETRYING", "BURIED", "MOVED", "DELETED"


class History:
    """A job's attempts, last failures, latest progress and (once completed) result."""

    __slots__ = ("attempts", "failures", "progress", "result", "logged_size")

    def __init__(self, attempts=0, failures=(), progress=None, result=None):
        self.attempts = attempts
        self.failures = failures      # tuple of (wall-clock time, reason bytes)
        self.progress = progress      # bytes or None
        self.result = result          # bytes or None
        self.logged_size = 0          # size of its latest log record (-b accounting)

    def count_failure(self, when: float, reason: bytes) -> None:
        self.attempts += 1
        kept = self.failures[-(FAILURES_KEPT - 1):] if FAILURES_KEPT > 1 else ()
        self.failures = (*kept, (when, bytes(reason[:REASON_LIMIT])))


class Counters:
    """Lifecycle events, process-wide or per tube (stats-ext, /metrics)."""

    __slots__ = ("failures", "retries", "dead_letters", "completions")

    def __init__(self):
        self.failures = self.retries = self.dead_letters = self.completions = 0


class Lifecycle:
    def __init__(self, engine, wall=time.time, rand=random.randint):
        self.engine = engine
        self.wall = wall
        self.rand = rand
        self.policies = engine.policies   # tube name -> Policy; the engine attaches them
        self.histories = engine.histories  # job id -> History (live and retained jobs)
        self.ledger = Ledger()
        self.totals = Counters()

    # -- policies ---------------------------------------------------------------

    def configure(self, tube_name: str, name: str, value: str) -> None:
        """Set one policy value (PolicyError for a bad one); logged first."""
        policy = self.policies.get(tube_name, DEFAULT).with_value(tube_name, name, value)
        self.engine.log.policy(tube_name, policy)
        self.set_policy(tube_name, policy)

    def set_policy(self, tube_name: str, policy) -> None:
        self.policies[tube_name] = policy
        tube = self.engine.tubes.get(tube_name)
        if tube is not None:
            tube.policy = policy

    # -- commands of the holding connection -------------------------------------

    def fail(self, session, job_id: int, reason: bytes, now: float) -> tuple:
        engine = self.engine
        job = engine.held(session, job_id)
        self._make_room(job, len(reason))
        engine.unhold(job)
        with engine.log.atomic():
            return self.failed(job, reason, now)

    def complete(self, session, job_id: int, result: bytes, now: float) -> None:
        engine = self.engine
        job = engine.held(session, job_id)
        engine.steering.check_not_cancelled(job_id)
        policy = job.tube.policy
        retain = policy.retain if policy is not None else 0
        if retain:
            self._make_room(job, len(result))
        history = self.histories.get(job_id)
        meta = engine.meta.get(job_id)
        engine.event("complete", job)
        with engine.log.atomic():
            engine.remove(job)
            self._count(job.tube).completions += 1
            self.totals.completions += 1
            if retain:
                self._retain(job, COMPLETED, history or History(), result, retain, now,
                             meta)

    def progress(self, session, job_id: int, data: bytes, now: float) -> None:
        engine = self.engine
        job = engine.held(session, job_id)
        engine.steering.check_not_cancelled(job_id)
        self._make_room(job, len(data))
        history = self._history(job_id)
        history.progress = bytes(data)
        engine.log.lifecycle(job_id, history)
        engine.touch(session, job_id, now)
        engine.event("progress", job)

    # -- a counted failure ------------------------------------------------------

    def failed(self, job, reason: bytes, now: float) -> tuple:
        """A reservation of `job` (no longer held) ended in failure: count it and
        let the policy decide. Returns the outcome (word, argument)."""
        try:
            return self._decide(job, reason, now)
        except QueueError:
            # A log write failed half-way: a job left in no list is made ready
            # rather than lost (a restart may then show the attempt uncounted).
            if self.engine.jobs.get(job.id) is job and job.state == RESERVED \
                    and job.holder is None:
                job.tube.push_ready(job)
            raise

    def _decide(self, job, reason: bytes, now: float) -> tuple:
        engine = self.engine
        history = self._history(job.id)
        history.count_failure(self.wall(), reason)
        engine.event("fail", job)
        tube_counts = self._count(job.tube)
        tube_counts.failures += 1
        self.totals.failures += 1
        policy = job.tube.policy
        if policy is None:                      # `fail` in a tube without a policy
            engine.bury_job(job)
            engine.log.lifecycle(job.id, history)
            return BURY, None
        if not policy.exhausted(history.attempts):
            delay = policy.retry_delay(history.attempts, self.rand)
            tube_counts.retries += 1
            self.totals.retries += 1
            engine.event("retry", job)
            engine.requeue(job, delay, now)
            engine.log.lifecycle(job.id, history)
            return RETRYING, delay
        tube_counts.dead_letters += 1
        self.totals.dead_letters += 1
        engine.event("dead", job)
        kind = policy.dead_letter[0]
        if kind == DEAD_BURY:
            engine.bury_job(job)
            engine.log.lifecycle(job.id, history)
            return BURY, None
        if kind == DEAD_DELETE:
            meta = engine.meta.get(job.id)
            engine.drop(job)
            if policy.retain:
                self._retain(job, DEAD, history, None, policy.retain, now, meta)
            return DELETED, None
        target = policy.dead_letter[1]
        history.attempts = 0                    # a fresh count under the new tube
        engine.move(job, target, now)
        engine.log.lifecycle(job.id, history)
        return MOVED, target

    def failed_in_background(self, job, reason: bytes, now: float) -> None:
        """A TTR ran out or the holder went away (configured tubes only): nobody
        waits for a reply, so a log failure is reported rather than raised."""
        try:
            with self.engine.log.atomic():
                self.failed(job, reason, now)
        except QueueError:
            log.error("job %d: the log could not record its failed attempt", job.id)

    # -- retained records -------------------------------------------------------

    def _retain(self, job, state: int, history, result, retain: int, now: float,
                meta) -> None:
        job.state = state
        job.tube = TubeRef(job.tube.name)
        job.body = b""
        job.holder = None
        history.result = result
        self.histories[job.id] = history
        self.ledger.keep(job, now + retain)
        self.engine.steering.retain(job, meta)
        self.engine.log.finished(job)
        self.engine.log.lifecycle(job.id, history)
        if meta is not None:
            self.engine.log.meta(job.id, meta)
        self.engine.note_deadline(job.deadline)

    def retained(self, job_id: int):
        return self.ledger.get(job_id)

    def expire(self, now: float) -> None:
        for record in self.ledger.expire(now):
            history = self.histories.pop(record.id, None)
            self.engine.log.expired(record, history)
            self.engine.steering.expired(record)

    def restore(self, policies: dict, histories: dict, finished: dict, now: float,
                wall: float) -> None:
        """Load what the log read back (journal.replay): policies by tube name,
        histories by job id, and retained records with their wall-clock expiry in
        `deadline`; records that expired while the server was down are dropped."""
        for name, policy in policies.items():
            self.set_policy(name, policy)
        jobs = self.engine.jobs
        for job_id, record in finished.items():
            if record.deadline > wall:
                self.ledger.keep(record, now + (record.deadline - wall))
                self.engine.note_deadline(record.deadline)
        for job_id, history in histories.items():
            if job_id in jobs or job_id in self.ledger.records:
                self.histories[job_id] = history

    # -- helpers ----------------------------------------------------------------

    def _history(self, job_id: int) -> History:
        history = self.histories.get(job_id)
        if history is None:
            history = self.histories[job_id] = History()
        return history

    @staticmethod
    def _count(tube) -> Counters:
        """The tube's own counters, made on its first event (and gone with the tube,
        as beanstalkd's per-tube counters are)."""
        counts = tube.counters
        if counts is None:
            counts = tube.counters = Counters()
        return counts

    def _make_room(self, job, extra: int) -> None:
        """Room in the log for everything one command may write (INTERNAL_ERROR
        when there is none, before anything changes)."""
        history = self.histories.get(job.id)
        kept = history.logged_size if history is not None else 0
        self.engine.log.reserve(2 * len(job.body) + kept + extra + 1024 + REASON_LIMIT)
