"""Unit tests of the job lifecycle (protocol.md, "Job lifecycle") on the pure engine:
policies and their parsing, counted failures by `fail`, TTR expiry and closed
connections, every backoff, every dead letter, results and retention expiry, and the
log round trip of everything the lifecycle persists.

Time is the `now` argument; the wall clock and the jitter are injected.
"""

import time

import pytest

from qserver.engine import Engine, NoLog
from qserver.errors import InternalError, NotFound
from qserver.job import BURIED, DELAYED, READY, RESERVED
from qserver.journal import Journal
from qserver.lifecycle import (CONNECTION_CLOSED, FAILURES_KEPT, REASON_LIMIT,
                               TTR_EXPIRED)
from qserver.policy import DEFAULT, Policy, PolicyError
from qserver.session import Session

T0 = 1000.0
WALL0 = 1_700_000_000.0


class Clock:
    """The injected wall clock and jitter: fixed, and recording the jitter ranges."""

    def __init__(self):
        self.wall = WALL0
        self.ranges = []

    def time(self):
        return self.wall

    def randint(self, low, high):
        self.ranges.append((low, high))
        return high             # the top of the range: the contract's upper bound


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def eng(clock):
    return Engine(wall=clock.time, rand=clock.randint)


def new_session(engine):
    s = Session(wake=lambda outcome: None)
    engine.attach(s)
    return s


def put(engine, tube="default", ttr=60, pri=0, now=T0):
    job_id = engine.allocate_id()
    return engine.put(engine._tube(tube), job_id, pri, 0, ttr, b"body\r\n", now, WALL0)


def reserve(engine, session, tube, now=T0):
    engine.watch(session, tube)
    job = engine.reserve(session, 0, now)
    assert job is not None
    return job


def configure(engine, tube, **values):
    for name, value in values.items():
        engine.lifecycle.configure(tube, name.replace("_", "-"), str(value))


def advance(engine, until):
    for _ in range(10000):
        when = engine.next_wakeup()
        if when > until:
            break
        engine.tick(when)
    engine.tick(until)


# -- policy values -------------------------------------------------------------------

@pytest.mark.parametrize("name, value, field, expected", [
    ("max-attempts", "0", "max_attempts", 0),
    ("max-attempts", "4294967295", "max_attempts", 4294967295),
    ("backoff", "none", "backoff", ("none",)),
    ("backoff", "fixed:30", "backoff", ("fixed", 30)),
    ("backoff", "exp:5:300", "backoff", ("exp", 5, 300)),
    ("dead-letter", "bury", "dead_letter", ("bury",)),
    ("dead-letter", "delete", "dead_letter", ("delete",)),
    ("dead-letter", "tube:dead(1)", "dead_letter", ("tube", "dead(1)")),
    ("retain", "3600", "retain", 3600),
])
def test_policy_values_parse(name, value, field, expected):
    assert getattr(DEFAULT.with_value("t", name, value), field) == expected


@pytest.mark.parametrize("name, value", [
    ("max-attempts", "-1"), ("max-attempts", "4294967296"), ("max-attempts", ""),
    ("max-attempts", "3x"), ("max-attempts", "٣"), ("backoff", "fixed"),
    ("backoff", "fixed:"), ("backoff", "exp:5"), ("backoff", "exp:0:10"),
    ("backoff", "exp:10:5"), ("backoff", "none:1"), ("backoff", "linear:1"),
    ("dead-letter", "tube:"), ("dead-letter", "tube:t"), ("dead-letter", "tube:-x"),
    ("dead-letter", "tube:a b"), ("dead-letter", "kill"), ("retain", "1.5"),
    ("colour", "red"),
])
def test_bad_policy_values_are_refused(name, value):
    with pytest.raises(PolicyError):
        DEFAULT.with_value("t", name, value)


def test_policy_text_round_trips():
    policy = (DEFAULT.with_value("t", "max-attempts", "3")
              .with_value("t", "backoff", "exp:2:64")
              .with_value("t", "dead-letter", "tube:t-dead")
              .with_value("t", "retain", "10"))
    assert Policy.from_text("t", policy.to_text()) == policy


def test_exponential_backoff_doubles_up_to_the_cap_with_equal_jitter(clock):
    policy = DEFAULT.with_value("t", "backoff", "exp:5:60")
    delays = [policy.retry_delay(n, clock.randint) for n in range(1, 7)]
    assert clock.ranges == [(3, 5), (5, 10), (10, 20), (20, 40), (30, 60), (30, 60)]
    assert delays == [5, 10, 20, 40, 60, 60]
    assert policy.retry_delay(10_000, clock.randint) == 60    # no overflow


# -- fail ----------------------------------------------------------------------------

def test_fail_without_policy_buries_and_keeps_the_reason(eng, clock):
    s = new_session(eng)
    job = put(eng, "plain")
    reserve(eng, s, "plain")
    assert eng.lifecycle.fail(s, job.id, b"boom", T0) == ("BURIED", None)
    assert job.state == BURIED and job.buries == 1
    history = eng.histories[job.id]
    assert history.attempts == 1 and history.failures == ((WALL0, b"boom"),)


def test_fail_needs_the_reserving_session(eng):
    s, other = new_session(eng), new_session(eng)
    job = put(eng)
    with pytest.raises(NotFound):
        eng.lifecycle.fail(s, job.id, b"", T0)          # not reserved at all
    reserve(eng, s, "default")
    with pytest.raises(NotFound):
        eng.lifecycle.fail(other, job.id, b"", T0)
    assert job.state == RESERVED and job.id not in eng.histories


def test_fail_with_no_backoff_is_ready_again_at_once(eng):
    configure(eng, "t", max_attempts=0)
    s = new_session(eng)
    job = put(eng, "t")
    reserve(eng, s, "t")
    assert eng.lifecycle.fail(s, job.id, b"x", T0) == ("RETRYING", 0)
    assert job.state == READY
    assert reserve(eng, s, "t") is job


def test_fail_with_fixed_backoff_delays_exactly(eng):
    configure(eng, "t", backoff="fixed:30")
    s = new_session(eng)
    job = put(eng, "t")
    reserve(eng, s, "t")
    assert eng.lifecycle.fail(s, job.id, b"x", T0) == ("RETRYING", 30)
    assert job.state == DELAYED and job.delay == 30
    advance(eng, T0 + 29.999)
    assert job.state == DELAYED
    advance(eng, T0 + 30)
    assert job.state == READY


def test_fail_with_exponential_backoff_grows(eng, clock):
    configure(eng, "t", backoff="exp:2:100")
    s = new_session(eng)
    job = put(eng, "t")
    now = T0
    delays = []
    for _ in range(4):
        reserve(eng, s, "t", now)
        word, delay = eng.lifecycle.fail(s, job.id, b"x", now)
        delays.append(delay)
        now += delay
        advance(eng, now)
    assert delays == [2, 4, 8, 16]
    assert clock.ranges == [(1, 2), (2, 4), (4, 8), (8, 16)]


def test_failures_are_capped_in_count_and_size(eng, clock):
    configure(eng, "t", max_attempts=0)
    s = new_session(eng)
    job = put(eng, "t")
    for n in range(FAILURES_KEPT + 3):
        reserve(eng, s, "t")
        clock.wall = WALL0 + n
        eng.lifecycle.fail(s, job.id, b"%d" % n + b"y" * 10_000, T0)
    history = eng.histories[job.id]
    assert history.attempts == FAILURES_KEPT + 3
    assert [when - WALL0 for when, _ in history.failures] == list(range(3, 8))
    assert all(len(reason) == REASON_LIMIT for _, reason in history.failures)


# -- attempts running out --------------------------------------------------------------

@pytest.mark.parametrize("ending", ["fail", "ttr", "close"])
def test_attempts_run_out_into_a_buried_dead_letter(eng, ending):
    """#189: a job whose worker fails, times out or crashes every time is delivered
    max-attempts times and then buried, whatever way its attempts end."""
    configure(eng, "t", max_attempts=3)
    reason = {"fail": b"boom", "ttr": TTR_EXPIRED, "close": CONNECTION_CLOSED}[ending]
    job = put(eng, "t", ttr=10)
    now = T0
    deliveries = 0
    for _ in range(10):
        if job.state != READY:
            break
        s = new_session(eng)
        reserve(eng, s, "t", now)
        deliveries += 1
        if ending == "fail":
            eng.lifecycle.fail(s, job.id, reason, now)
        elif ending == "ttr":
            now += 10
            advance(eng, now)
        else:
            eng.detach(s, now)
    assert deliveries == 3
    assert job.state == BURIED
    history = eng.histories[job.id]
    assert history.attempts == 3
    assert [r for _, r in history.failures] == [reason] * 3
    assert eng.lifecycle.totals.dead_letters == 1


def test_ttr_expiry_in_a_tube_without_policy_is_beanstalkd(eng):
    job = put(eng, "plain", ttr=5)
    s = new_session(eng)
    reserve(eng, s, "plain")
    advance(eng, T0 + 5)
    assert job.state == READY and job.timeouts == 1
    assert job.id not in eng.histories


def test_closed_connection_in_a_tube_without_policy_is_beanstalkd(eng):
    job = put(eng, "plain")
    s = new_session(eng)
    reserve(eng, s, "plain")
    eng.detach(s, T0)
    assert job.state == READY and job.id not in eng.histories


def test_ttr_expiry_retries_after_the_backoff(eng):
    configure(eng, "t", backoff="fixed:7")
    job = put(eng, "t", ttr=5)
    s = new_session(eng)
    reserve(eng, s, "t")
    advance(eng, T0 + 5)
    assert job.state == DELAYED and eng.histories[job.id].attempts == 1
    advance(eng, T0 + 11.9)
    assert job.state == DELAYED
    advance(eng, T0 + 12)
    assert job.state == READY


def test_dead_letter_delete_retains_a_dead_record(eng):
    configure(eng, "t", max_attempts=1, dead_letter="delete", retain=60)
    s = new_session(eng)
    job = put(eng, "t")
    reserve(eng, s, "t")
    assert eng.lifecycle.fail(s, job.id, b"bad", T0) == ("DELETED", None)
    assert job.id not in eng.jobs
    record = eng.lifecycle.retained(job.id)
    assert record.state == 6 and record.tube.name == "t"
    assert eng.histories[job.id].failures == ((WALL0, b"bad"),)
    assert "t" not in eng.tubes or eng.tubes["t"].ready_count == 0
    advance(eng, T0 + 59.9)
    assert eng.lifecycle.retained(job.id) is not None
    advance(eng, T0 + 60)
    assert eng.lifecycle.retained(job.id) is None and job.id not in eng.histories


def test_dead_letter_delete_without_retain_forgets(eng):
    configure(eng, "t", max_attempts=1, dead_letter="delete")
    s = new_session(eng)
    job = put(eng, "t")
    reserve(eng, s, "t")
    assert eng.lifecycle.fail(s, job.id, b"bad", T0) == ("DELETED", None)
    assert eng.lifecycle.retained(job.id) is None and job.id not in eng.histories


def test_dead_letter_tube_moves_the_job_with_a_fresh_count(eng):
    configure(eng, "t", max_attempts=2, dead_letter="tube:t-dead")
    s = new_session(eng)
    job = put(eng, "t", pri=7)
    for expected in [("RETRYING", 0), ("MOVED", "t-dead")]:
        reserve(eng, s, "t")
        assert eng.lifecycle.fail(s, job.id, b"x", T0) == expected
    assert job.tube.name == "t-dead" and job.state == READY and job.pri == 7
    assert eng.tubes["t-dead"].ready_count == 1 and eng.tubes["t-dead"].total_jobs == 1
    history = eng.histories[job.id]
    assert history.attempts == 0 and len(history.failures) == 2
    # the dead-letter tube has no policy: a fail there buries
    assert reserve(eng, s, "t-dead") is job
    assert eng.lifecycle.fail(s, job.id, b"x", T0) == ("BURIED", None)


def test_a_kicked_dead_letter_gets_one_more_attempt(eng):
    configure(eng, "t", max_attempts=2)
    s = new_session(eng)
    job = put(eng, "t")
    for _ in range(2):
        reserve(eng, s, "t")
        eng.lifecycle.fail(s, job.id, b"x", T0)
    assert job.state == BURIED
    assert eng.kick(job.tube, 1, T0) == 1
    reserve(eng, s, "t")
    assert eng.lifecycle.fail(s, job.id, b"x", T0) == ("BURIED", None)


def test_release_and_bury_do_not_count(eng):
    configure(eng, "t", max_attempts=1)
    s = new_session(eng)
    job = put(eng, "t")
    reserve(eng, s, "t")
    eng.release(s, job.id, 0, 0, T0)
    reserve(eng, s, "t")
    eng.bury(s, job.id, 0)
    eng.kick(job.tube, 1, T0)
    reserve(eng, s, "t")
    assert job.id not in eng.histories
    assert eng.lifecycle.fail(s, job.id, b"x", T0) == ("BURIED", None)


def test_policy_follows_the_tube_name_across_its_lifetime(eng):
    configure(eng, "t", max_attempts=4)
    assert "t" not in eng.tubes
    s = new_session(eng)
    eng.use(s, "t")
    assert eng.tubes["t"].policy.max_attempts == 4
    eng.use(s, "default")
    assert "t" not in eng.tubes
    eng.use(s, "t")
    assert eng.tubes["t"].policy.max_attempts == 4


# -- complete, progress ----------------------------------------------------------------

def test_complete_keeps_the_result_for_retain_seconds(eng):
    configure(eng, "t", retain=30)
    s = new_session(eng)
    job = put(eng, "t")
    reserve(eng, s, "t")
    eng.lifecycle.complete(s, job.id, b"42", T0)
    assert job.id not in eng.jobs
    assert eng.lifecycle.retained(job.id).state == 5
    assert eng.histories[job.id].result == b"42"
    assert eng.lifecycle.totals.completions == 1
    advance(eng, T0 + 29.99)
    assert eng.histories[job.id].result == b"42"
    advance(eng, T0 + 30)
    assert eng.lifecycle.retained(job.id) is None and not eng.histories


def test_complete_without_retain_is_delete(eng):
    s = new_session(eng)
    job = put(eng)
    reserve(eng, s, "default")
    eng.lifecycle.complete(s, job.id, b"42", T0)
    assert job.id not in eng.jobs and eng.lifecycle.retained(job.id) is None
    assert eng.default_tube.cmd_delete == 1


def test_complete_needs_the_reserving_session(eng):
    s = new_session(eng)
    job = put(eng)
    with pytest.raises(NotFound):
        eng.lifecycle.complete(s, job.id, b"", T0)
    assert job.state == READY


def test_progress_stores_the_latest_and_restarts_the_ttr(eng):
    s = new_session(eng)
    job = put(eng, ttr=10)
    reserve(eng, s, "default")
    eng.lifecycle.progress(s, job.id, b"10%", T0 + 8)
    eng.lifecycle.progress(s, job.id, b"20%", T0 + 9)
    assert eng.histories[job.id].progress == b"20%"
    advance(eng, T0 + 18.99)
    assert job.state == RESERVED
    advance(eng, T0 + 19)
    assert job.state == READY


def test_delete_forgets_the_history(eng):
    s = new_session(eng)
    job = put(eng)
    reserve(eng, s, "default")
    eng.lifecycle.progress(s, job.id, b"x", T0)
    eng.delete(s, job.id)
    assert not eng.histories


# -- the log round trip ----------------------------------------------------------------
# The journal writes absolute times on the real wall clock, so these tests restore
# with the real wall clock too (`time.time()` at the start of the test).

class Scheduler:
    def clock(self):
        return T0

    def call_soon(self, callback):
        pass

    def call_later(self, delay, callback):
        pass

    def run_in_thread(self, work, done):
        work()
        done(None)


def _open(path, clock, wall):
    journal = Journal(str(path), 1 << 20, None, Scheduler())
    recovery = journal.recover()
    engine = Engine(log=journal, wall=clock.time, rand=clock.randint)
    engine.restore(recovery.jobs.values(), recovery.next_id, T0, wall)
    engine.lifecycle.restore(recovery.policies, recovery.histories, recovery.finished,
                             T0, wall)
    journal.start(engine)
    return journal, engine


def test_everything_the_lifecycle_keeps_is_replayed(tmp_path, clock):
    wall = time.time()
    journal, eng = _open(tmp_path, clock, wall)
    configure(eng, "t", max_attempts=3, backoff="fixed:5", retain=100)
    configure(eng, "t", dead_letter="tube:t-dead")
    s = new_session(eng)
    failed = put(eng, "t")
    reserve(eng, s, "t")
    eng.lifecycle.fail(s, failed.id, b"\x00bin\xff", T0)
    working = put(eng, "t")
    reserve(eng, s, "t")
    eng.lifecycle.progress(s, working.id, b"half", T0)
    done = put(eng, "t")
    reserve(eng, s, "t", T0)
    eng.lifecycle.complete(s, done.id, b"result", T0)
    journal.flush_and_close()

    _, again = _open(tmp_path, clock, wall)
    assert again.lifecycle.policies["t"] == eng.lifecycle.policies["t"]
    assert again.tubes["t"].policy.dead_letter == ("tube", "t-dead")
    old, new = eng.histories, again.histories
    assert set(new) == {failed.id, working.id, done.id}
    for job_id in new:
        assert (new[job_id].attempts, new[job_id].failures, new[job_id].progress,
                new[job_id].result) == (old[job_id].attempts, old[job_id].failures,
                                        old[job_id].progress, old[job_id].result)
    assert again.jobs[failed.id].state == DELAYED
    assert again.jobs[working.id].state == READY        # reserved jobs come back ready
    record = again.lifecycle.retained(done.id)
    assert record.state == 5 and record.tube.name == "t"
    assert abs(record.deadline - (T0 + 100)) < 1       # the same expiry, to the clock


@pytest.mark.parametrize("later, kept", [(0, True), (11, False)])
def test_records_expired_while_down_are_not_replayed(tmp_path, clock, later, kept):
    wall = time.time()
    journal, eng = _open(tmp_path, clock, wall)
    configure(eng, "t", retain=10)
    s = new_session(eng)
    job = put(eng, "t")
    reserve(eng, s, "t")
    eng.lifecycle.complete(s, job.id, b"r", T0)
    journal.flush_and_close()
    _, again = _open(tmp_path, clock, wall + later)
    assert (again.lifecycle.retained(job.id) is not None) is kept
    assert (job.id in again.histories) is kept


class SweepScheduler(Scheduler):
    """Runs the compaction's call_soon slices when the test asks."""

    def __init__(self):
        self.soon = []

    def call_soon(self, callback):
        self.soon.append(callback)

    def run_soon(self):
        for _ in range(100_000):
            if not self.soon:
                return
            self.soon.pop(0)()


def test_compaction_keeps_policies_histories_and_retained_records(tmp_path, clock):
    """Churn until the log is compacted and its old segments deleted: what the
    lifecycle keeps must be rewritten, so a restart still finds all of it."""
    wall = time.time()
    scheduler = SweepScheduler()
    journal = Journal(str(tmp_path), 4096, None, scheduler)
    journal.recover()
    eng = Engine(log=journal, wall=clock.time, rand=clock.randint)
    journal.start(eng)
    configure(eng, "t", max_attempts=9, retain=1000)
    s = new_session(eng)
    failed = put(eng, "t")
    reserve(eng, s, "t")
    eng.lifecycle.fail(s, failed.id, b"kept", T0)
    done = put(eng, "t")
    eng.reserve_job(s, done.id, T0)
    eng.lifecycle.complete(s, done.id, b"answer", T0)
    first_segment = journal.oldest_index
    for _ in range(400):                   # put/delete churn: many segments' worth
        job = put(eng, "churn")
        eng.delete(s, job.id)
        scheduler.run_soon()
    assert journal.oldest_index > first_segment       # old segments are gone
    journal.flush_and_close()

    journal = Journal(str(tmp_path), 4096, None, Scheduler())
    recovery = journal.recover()
    assert recovery.policies["t"].max_attempts == 9
    assert recovery.histories[failed.id].failures[0][1] == b"kept"
    assert recovery.histories[done.id].result == b"answer"
    assert set(recovery.finished) == {done.id}
    assert recovery.jobs[failed.id].state == READY


class FailingLog(NoLog):
    """A log whose state and delete records cannot be written (EIO)."""

    def update(self, job):
        raise InternalError

    def delete(self, job):
        raise InternalError


@pytest.mark.parametrize("dead_letter, state", [("bury", BURIED), ("delete", READY)])
def test_a_failed_log_write_leaves_the_job_listed_not_lost(clock, dead_letter, state):
    """A log write that fails after the job left its reservation: the job is buried
    (the change was made, the record not) or, if it was to go, ready again."""
    eng = Engine(log=FailingLog(), wall=clock.time, rand=clock.randint)
    configure(eng, "t", max_attempts=1, dead_letter=dead_letter)
    s = new_session(eng)
    job = put(eng, "t", ttr=5)
    reserve(eng, s, "t")
    with pytest.raises(InternalError):
        eng.lifecycle.fail(s, job.id, b"x", T0)
    assert job.state == state and eng.jobs[job.id] is job
    other = put(eng, "t", ttr=5, pri=0)
    assert eng.reserve_job(s, other.id, T0) is other
    advance(eng, T0 + 5)            # in the background: reported, not raised
    assert other.state == state and eng.jobs[other.id] is other
