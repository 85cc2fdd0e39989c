"""Unit tests of the steering extensions (protocol.md, "put-ex", "flush-tube",
"cancel-tag") on the pure engine: the key index, the tag index, flush counts and
lists, cancel flags, forgetting a job's options when it is deleted, completed,
flushed, cancelled or its retained record expires, the meta table empty again once
everything is gone, and the log round trip of keys, tags, flags and flushes.

Time is the `now` argument; the wall clock and the jitter are injected.
"""

import time

import pytest

from qserver.engine import Engine
from qserver.errors import Cancelled, Duplicate, NotFound
from qserver.job import BURIED, DELAYED, READY, RESERVED
from qserver.journal import Journal
from qserver.session import Session
from test_lifecycle import (T0, WALL0, Scheduler, SweepScheduler, advance, configure,
                            new_session, put)
from test_lifecycle import clock, eng  # noqa: F401  (fixtures: injected clock, engine)


def put_ex(engine, tube="default", key=None, tags=(), delay=0, pri=0, ttr=60, now=T0):
    """put-ex as the command runs it: the key is checked before an id is taken."""
    engine.steering.check_key(tube, key)
    job_id = engine.allocate_id()
    return engine.steering.put(engine._tube(tube), job_id, pri, delay, ttr, b"body\r\n",
                               now, WALL0, key, tuple(tags))


def reserve_id(engine, session, job, now=T0):
    assert engine.reserve_job(session, job.id, now) is job
    assert job.state == RESERVED


def bury(engine, session, job):
    reserve_id(engine, session, job)
    engine.bury(session, job.id, 0)
    assert job.state == BURIED


def assert_nothing_kept(engine):
    """No job options left behind: the meta table and both indexes are empty."""
    steering = engine.steering
    assert engine.meta == {}
    assert steering.keys == {}
    assert steering.tags == {}
    assert steering.flagged == {}


def duplicate_of(engine, tube, key):
    with pytest.raises(Duplicate) as raised:
        engine.steering.check_key(tube, key)
    return raised.value


# --------------------------------------------------------------------------- put-ex

def test_put_without_options_keeps_nothing(eng):
    job = put_ex(eng)
    assert eng.jobs[job.id] is job and job.state == READY
    assert_nothing_kept(eng)


def test_put_with_options_indexes_key_and_tags(eng):
    job = put_ex(eng, "t", key=b"k", tags=(b"a", b"b"))
    meta = eng.meta[job.id]
    assert (meta.key, meta.tags, meta.cancelled) == (b"k", (b"a", b"b"), False)
    assert eng.steering.keys == {("t", b"k"): job.id}
    assert eng.steering.tags == {b"a": {job.id: None}, b"b": {job.id: None}}


def test_key_only_and_tags_only(eng):
    keyed = put_ex(eng, key=b"k")
    tagged = put_ex(eng, tags=(b"a",))
    assert (eng.meta[keyed.id].key, eng.meta[keyed.id].tags) == (b"k", ())
    assert (eng.meta[tagged.id].key, eng.meta[tagged.id].tags) == (None, (b"a",))
    assert eng.steering.keys == {("default", b"k"): keyed.id}
    assert eng.steering.tags == {b"a": {tagged.id: None}}


def test_duplicate_names_the_holder_and_is_counted(eng):
    job = put_ex(eng, "t", key=b"k")
    refused = duplicate_of(eng, "t", b"k")
    assert refused.reply == b"DUPLICATE %d\r\n" % job.id
    assert eng.steering.totals.duplicates == 1
    duplicate_of(eng, "t", b"k")
    assert eng.steering.totals.duplicates == 2
    assert eng.next_id == job.id + 1                     # a refused put takes no id


def test_keys_are_per_tube(eng):
    first = put_ex(eng, "a", key=b"k")
    second = put_ex(eng, "b", key=b"k")
    assert duplicate_of(eng, "a", b"k").reply == b"DUPLICATE %d\r\n" % first.id
    assert duplicate_of(eng, "b", b"k").reply == b"DUPLICATE %d\r\n" % second.id
    eng.steering.check_key("c", b"k")                    # free elsewhere
    eng.steering.check_key("a", None)                    # no key: nothing to check
    assert eng.steering.totals.duplicates == 2


def test_key_is_held_in_every_live_state(eng):
    s = new_session(eng)
    ready = put_ex(eng, "t", key=b"r")
    delayed = put_ex(eng, "t", key=b"d", delay=10)
    buried = put_ex(eng, "t", key=b"b")
    reserved = put_ex(eng, "t", key=b"v")
    bury(eng, s, buried)
    reserve_id(eng, s, reserved)
    assert delayed.state == DELAYED
    for key, job in ((b"r", ready), (b"d", delayed), (b"b", buried), (b"v", reserved)):
        assert duplicate_of(eng, "t", key).reply == b"DUPLICATE %d\r\n" % job.id


def test_delete_forgets_key_and_tags(eng):
    s = new_session(eng)
    job = put_ex(eng, "t", key=b"k", tags=(b"a",))
    other = put_ex(eng, "t", key=b"k2", tags=(b"a",))
    eng.delete(s, job.id)
    assert eng.steering.keys == {("t", b"k2"): other.id}
    assert eng.steering.tags == {b"a": {other.id: None}}
    eng.steering.check_key("t", b"k")
    reserve_id(eng, s, other)
    eng.delete(s, other.id)
    assert_nothing_kept(eng)


# --------------------------------------------------------------------------- retained

def test_complete_without_retain_forgets(eng):
    s = new_session(eng)
    job = put_ex(eng, "t", key=b"k", tags=(b"a",))
    reserve_id(eng, s, job)
    eng.lifecycle.complete(s, job.id, b"r", T0)
    assert_nothing_kept(eng)
    eng.steering.check_key("t", b"k")


@pytest.mark.parametrize("ending", ["complete", "dead"])
def test_retained_record_holds_its_key_until_it_expires(eng, ending):
    s = new_session(eng)
    configure(eng, "t", retain=30, max_attempts=1, dead_letter="delete")
    job = put_ex(eng, "t", key=b"k", tags=(b"a", b"b"))
    reserve_id(eng, s, job)
    if ending == "complete":
        eng.lifecycle.complete(s, job.id, b"r", T0)
    else:
        eng.lifecycle.fail(s, job.id, b"x", T0)
    assert job.id not in eng.jobs
    assert eng.lifecycle.retained(job.id) is not None
    assert duplicate_of(eng, "t", b"k").reply == b"DUPLICATE %d\r\n" % job.id
    meta = eng.meta[job.id]
    assert (meta.key, meta.tags) == (b"k", (b"a", b"b"))     # job-info still shows them
    assert eng.steering.tags == {}                          # but cancel-tag finds nothing
    assert eng.steering.cancel_tag(b"a") == (0, 0)
    advance(eng, T0 + 29)
    duplicate_of(eng, "t", b"k")
    advance(eng, T0 + 31)
    assert eng.lifecycle.retained(job.id) is None
    assert_nothing_kept(eng)
    eng.steering.check_key("t", b"k")


def test_new_holder_after_expiry_is_not_forgotten_by_the_old_record(eng):
    s = new_session(eng)
    configure(eng, "t", retain=30)
    old = put_ex(eng, "t", key=b"k")
    reserve_id(eng, s, old)
    eng.lifecycle.complete(s, old.id, b"r", T0)
    advance(eng, T0 + 31)
    new = put_ex(eng, "t", key=b"k", now=T0 + 31)
    assert eng.steering.keys == {("t", b"k"): new.id}
    assert duplicate_of(eng, "t", b"k").reply == b"DUPLICATE %d\r\n" % new.id


# --------------------------------------------------------------------------- flush

def _every_state(eng, s, tube="t"):
    """Two ready (one urgent), two delayed, two buried and one reserved job, some
    with options; returns them by state."""
    jobs = {
        READY: [put_ex(eng, tube, key=b"r1", tags=(b"g",), pri=5),
                put_ex(eng, tube, pri=2000)],
        DELAYED: [put_ex(eng, tube, key=b"d1", delay=10), put_ex(eng, tube, delay=20)],
        BURIED: [put_ex(eng, tube, tags=(b"g", b"h")), put_ex(eng, tube)],
        RESERVED: [put_ex(eng, tube, key=b"v1", tags=(b"g",), ttr=1000)],
    }
    for job in jobs[BURIED]:
        bury(eng, s, job)
    reserve_id(eng, s, jobs[RESERVED][0])
    return jobs


def test_flush_removes_ready_delayed_buried_and_keeps_reserved(eng):
    s = new_session(eng)
    jobs = _every_state(eng, s)
    bystander = put_ex(eng, "other", key=b"r1", tags=(b"g",))
    assert eng.flusher.flush("t") == 6
    tube = eng.tubes["t"]
    [held] = jobs[RESERVED]
    assert set(eng.jobs) == {held.id, bystander.id}
    assert (tube.ready_count, tube.urgent_count, tube.delayed_count, tube.reserved_count) \
        == (0, 0, 0, 1)
    assert tube.buried == {} and tube.peek_ready() is None
    assert eng.delayed_total == 0 and eng.reserved_total == 1
    assert eng.flusher.total == 6
    assert set(eng.meta) == {held.id, bystander.id}
    assert eng.steering.keys == {("t", b"v1"): held.id, ("other", b"r1"): bystander.id}
    assert eng.steering.tags == {b"g": {held.id: None, bystander.id: None}}
    for state in (READY, DELAYED, BURIED):
        for job in jobs[state]:
            with pytest.raises(NotFound):
                eng.peek(job.id)


def test_flushed_jobs_never_come_back(eng):
    s = new_session(eng)
    jobs = _every_state(eng, s)
    assert eng.flusher.flush("t") == 6
    advance(eng, T0 + 100)                  # past every delay: stale entries only
    tube = eng.tubes["t"]
    assert (tube.ready_count, tube.delayed_count, eng.delayed_total) == (0, 0, 0)
    assert eng.kick(tube, 10, T0 + 100) == 0
    assert tube.peek_ready() is None and tube.peek_delayed() is None
    # The reserved job goes on as usual: release makes it ready in the tube.
    [held] = jobs[RESERVED]
    eng.release(s, held.id, 0, 0, T0 + 100)
    assert tube.peek_ready() is held and tube.ready_count == 1
    assert eng.flusher.flush("t") == 1
    assert eng.jobs == {}
    assert_nothing_kept(eng)


def test_flush_counts_each_job_once_despite_stale_heap_entries(eng):
    s = new_session(eng)
    moved = put_ex(eng, "t", pri=5)
    reserve_id(eng, s, moved)
    eng.release(s, moved.id, 1, 0, T0)                  # a stale (pri 5) entry stays
    kicked = put_ex(eng, "t", delay=10)
    eng.kick_job(kicked.id, T0)                         # a stale delayed entry stays
    unburied = put_ex(eng, "t")
    bury(eng, s, unburied)
    eng.kick_job(unburied.id, T0)
    again = put_ex(eng, "t", delay=10)
    reserve_id(eng, s, again)                           # reserve-job of a delayed job
    eng.release(s, again.id, 0, 5, T0)                  # delayed again, another due
    assert eng.flusher.flush("t") == 4
    assert eng.jobs == {}
    assert eng.delayed_total == 0


def test_flush_of_a_missing_or_empty_tube(eng):
    assert eng.flusher.flush("nobody") == 0
    assert "nobody" not in eng.tubes
    assert eng.flusher.flush("default") == 0
    assert eng.flusher.total == 0


def test_flush_drops_a_tube_nobody_uses(eng):
    put_ex(eng, "t", key=b"k")
    assert "t" in eng.tubes
    assert eng.flusher.flush("t") == 1
    assert "t" not in eng.tubes
    assert_nothing_kept(eng)


def test_flush_wakes_nobody_and_leaves_waiters_waiting(eng):
    waiter = Session(wake=lambda outcome: woken.append(outcome))
    woken = []
    eng.attach(waiter)
    eng.watch(waiter, "t")
    eng.ignore(waiter, "default")
    assert eng.reserve(waiter, None, T0) is None         # parked
    eng.flusher.flush("t")
    assert woken == [] and waiter.waiting
    job = put_ex(eng, "t")
    assert woken == [job]


# --------------------------------------------------------------------------- cancel

def test_cancel_removes_unreserved_and_flags_reserved(eng):
    s = new_session(eng)
    jobs = _every_state(eng, s)
    far = put_ex(eng, "elsewhere", tags=(b"g",))
    untagged = put_ex(eng, "t", tags=(b"x",))
    # g: r1 (ready), the first buried one, the reserved one, and `far`.
    assert eng.steering.cancel_tag(b"g") == (3, 1)
    [held] = jobs[RESERVED]
    assert eng.meta[held.id].cancelled is True and held.state == RESERVED
    assert eng.steering.flagged == {held.id: None}      # what /metrics counts
    for job in (jobs[READY][0], jobs[BURIED][0], far):
        assert job.id not in eng.jobs
    assert untagged.id in eng.jobs and jobs[READY][1].id in eng.jobs
    assert eng.steering.tags == {b"g": {held.id: None}, b"x": {untagged.id: None}}
    assert (eng.steering.totals.cancelled_removed,
            eng.steering.totals.cancelled_flagged) == (3, 1)
    assert eng.steering.cancel_tag(b"h") == (0, 0)       # went with the buried job
    assert eng.steering.cancel_tag(b"nobody") == (0, 0)


def test_flagged_job_refuses_touch_progress_and_complete(eng):
    s = new_session(eng)
    configure(eng, "t", retain=60)
    job = put_ex(eng, "t", key=b"k", tags=(b"g",), ttr=10)
    reserve_id(eng, s, job)
    assert eng.steering.cancel_tag(b"g") == (0, 1)
    deadline = job.deadline
    with pytest.raises(Cancelled):
        eng.touch(s, job.id, T0 + 5)
    assert job.deadline == deadline                     # not touched
    with pytest.raises(Cancelled):
        eng.lifecycle.progress(s, job.id, b"half", T0 + 5)
    assert eng.histories.get(job.id) is None or eng.histories[job.id].progress is None
    with pytest.raises(Cancelled):
        eng.lifecycle.complete(s, job.id, b"r", T0 + 5)
    assert job.state == RESERVED and eng.lifecycle.retained(job.id) is None
    assert Cancelled.reply == b"CANCELLED\r\n"


def test_flagged_job_is_refused_only_to_its_holder(eng):
    s, other = new_session(eng), new_session(eng)
    job = put_ex(eng, "t", tags=(b"g",))
    reserve_id(eng, s, job)
    eng.steering.cancel_tag(b"g")
    for attempt in (lambda: eng.touch(other, job.id, T0),
                    lambda: eng.lifecycle.progress(other, job.id, b"p", T0),
                    lambda: eng.lifecycle.complete(other, job.id, b"r", T0),
                    lambda: eng.delete(other, job.id)):
        with pytest.raises(NotFound):
            attempt()


@pytest.mark.parametrize("ending", ["delete", "release", "bury", "fail", "ttr", "close"])
def test_flagged_job_can_still_end_its_reservation(eng, ending):
    s = new_session(eng)
    job = put_ex(eng, "t", key=b"k", tags=(b"g",), ttr=5)
    reserve_id(eng, s, job)
    eng.steering.cancel_tag(b"g")
    if ending == "delete":
        eng.delete(s, job.id)
        assert_nothing_kept(eng)
        return
    if ending == "release":
        eng.release(s, job.id, 0, 0, T0)
    elif ending == "bury":
        eng.bury(s, job.id, 0)
    elif ending == "fail":
        assert eng.lifecycle.fail(s, job.id, b"stop", T0)[0] is not None
    elif ending == "ttr":
        advance(eng, T0 + 6)
    else:
        eng.detach(s, T0)
    assert job.state in (READY, BURIED)
    assert eng.meta[job.id].cancelled is True            # the flag stays
    duplicate_of(eng, "t", b"k")
    # Not reserved any more: the next cancel-tag removes it.
    assert eng.steering.cancel_tag(b"g") == (1, 0)
    assert_nothing_kept(eng)


def test_flagged_job_reserved_again_is_still_cancelled(eng):
    s = new_session(eng)
    job = put_ex(eng, "t", tags=(b"g",))
    reserve_id(eng, s, job)
    eng.steering.cancel_tag(b"g")
    eng.release(s, job.id, 0, 0, T0)
    reserve_id(eng, s, job)
    with pytest.raises(Cancelled):
        eng.touch(s, job.id, T0)


def test_unflagged_jobs_are_untouched_by_a_cancel_elsewhere(eng):
    s = new_session(eng)
    job = put_ex(eng, "t", tags=(b"mine",))
    reserve_id(eng, s, job)
    eng.steering.cancel_tag(b"other")
    eng.touch(s, job.id, T0)
    eng.lifecycle.progress(s, job.id, b"p", T0)
    eng.lifecycle.complete(s, job.id, b"r", T0)
    assert_nothing_kept(eng)


# --------------------------------------------------------------------------- no leak

def test_nothing_is_kept_once_every_job_is_gone(eng):
    """Every way a job with options can go: the meta table and the indexes end
    empty."""
    s = new_session(eng)
    configure(eng, "ret", retain=10)
    configure(eng, "dl", max_attempts=1, dead_letter="delete", retain=10)
    for round_ in range(3):
        now = T0 + 100 * round_
        deleted = put_ex(eng, "a", key=b"k1", tags=(b"x", b"y"), now=now)
        eng.delete(s, deleted.id)
        flushed = [put_ex(eng, "b", key=b"k%d" % i, tags=(b"f",), now=now)
                   for i in range(3)]
        bury(eng, s, flushed[0])
        assert eng.flusher.flush("b") == 3
        cancelled = put_ex(eng, "c", key=b"k", tags=(b"z",), now=now)
        flagged = put_ex(eng, "c", key=b"k2", tags=(b"z", b"w"), now=now)
        reserve_id(eng, s, flagged, now)
        assert eng.steering.cancel_tag(b"z") == (1, 1)
        eng.delete(s, flagged.id)
        done = put_ex(eng, "ret", key=b"k", tags=(b"r",), now=now)
        reserve_id(eng, s, done, now)
        eng.lifecycle.complete(s, done.id, b"res", now)
        dead = put_ex(eng, "dl", key=b"k", tags=(b"d",), now=now)
        reserve_id(eng, s, dead, now)
        eng.lifecycle.fail(s, dead.id, b"x", now)
        plain = put(eng, "a", now=now)
        eng.reserve_job(s, plain.id, now)
        eng.delete(s, plain.id)
        advance(eng, now + 11)                          # the retained records expire
        assert eng.jobs == {}
        assert_nothing_kept(eng)
        assert cancelled.id not in eng.jobs


def _moved_to_dead_letter_tube(eng, s):
    configure(eng, "t", max_attempts=1, dead_letter="tube:d")
    job = put_ex(eng, "t", key=b"k", tags=(b"g",))
    reserve_id(eng, s, job)
    assert eng.lifecycle.fail(s, job.id, b"x", T0)[1] == "d"
    assert job.tube.name == "d" and job.state == READY
    return job


def test_a_job_moved_to_a_dead_letter_tube_leaves_no_stale_key(eng):
    s = new_session(eng)
    job = _moved_to_dead_letter_tube(eng, s)
    reserve_id(eng, s, job)
    eng.delete(s, job.id)
    assert_nothing_kept(eng)


def test_a_job_moved_to_a_dead_letter_tube_holds_its_key_there(eng):
    s = new_session(eng)
    job = _moved_to_dead_letter_tube(eng, s)
    eng.steering.check_key("t", b"k")                   # free where it was
    assert duplicate_of(eng, "d", b"k").reply == b"DUPLICATE %d\r\n" % job.id


# --------------------------------------------------------------------------- the log

def _open(path, clock, wall, scheduler=None, segment=1 << 20):
    journal = Journal(str(path), segment, None, scheduler or Scheduler())
    recovery = journal.recover()
    engine = Engine(log=journal, wall=clock.time, rand=clock.randint)
    engine.restore(recovery.jobs.values(), recovery.next_id, T0, wall)
    engine.lifecycle.restore(recovery.policies, recovery.histories, recovery.finished,
                             T0, wall)
    engine.steering.restore(recovery.meta)
    journal.start(engine)
    return journal, engine


def _options(engine) -> dict:
    return {job_id: (meta.key, meta.tags, meta.cancelled)
            for job_id, meta in engine.meta.items()}


def test_keys_tags_flags_and_flushes_are_replayed(tmp_path, clock):
    wall = time.time()
    journal, eng = _open(tmp_path, clock, wall)
    configure(eng, "ret", retain=100)
    s = new_session(eng)
    ready = put_ex(eng, "t", key=b"k", tags=(b"a", b"b"))
    plain = put_ex(eng, "t")
    flagged = put_ex(eng, "t", key=b"f", tags=(b"a",))
    reserve_id(eng, s, flagged)
    assert eng.steering.cancel_tag(b"a") == (1, 1)       # `ready` removed
    eng.release(s, flagged.id, 0, 0, T0)
    kept = put_ex(eng, "t", key=b"k", tags=(b"c",))      # the key is free again
    gone = [put_ex(eng, "fl", key=b"g%d" % i, tags=(b"g",)) for i in range(3)]
    held = put_ex(eng, "fl", key=b"h", tags=(b"g",))
    reserve_id(eng, s, held)
    assert eng.flusher.flush("fl") == 3
    done = put_ex(eng, "ret", key=b"r", tags=(b"d",))
    reserve_id(eng, s, done)
    eng.lifecycle.complete(s, done.id, b"res", T0)
    before = _options(eng)
    keys, tags = dict(eng.steering.keys), {t: set(i) for t, i in eng.steering.tags.items()}
    journal.flush_and_close()

    _, again = _open(tmp_path, clock, wall)
    assert _options(again) == before
    assert set(again.jobs) == {plain.id, flagged.id, kept.id, held.id}
    assert ready.id not in again.jobs and all(job.id not in again.jobs for job in gone)
    assert again.jobs[held.id].state == READY            # reserved jobs come back ready
    assert again.steering.keys == keys
    assert again.steering.flagged == {flagged.id: None}
    assert {t: set(i) for t, i in again.steering.tags.items()} == tags
    assert duplicate_of(again, "ret", b"r").reply == b"DUPLICATE %d\r\n" % done.id
    assert again.steering.cancel_tag(b"a") == (1, 0)     # flagged, ready after restart
    assert again.steering.cancel_tag(b"g") == (1, 0)
    again.steering.check_key("fl", b"g0")


def test_compaction_rewrites_keys_tags_and_flags(tmp_path, clock):
    wall = time.time()
    scheduler = SweepScheduler()
    journal, eng = _open(tmp_path, clock, wall, scheduler, 4096)
    configure(eng, "ret", retain=1000)
    s = new_session(eng)
    keyed = put_ex(eng, "t", key=b"k", tags=(b"a",))
    flagged = put_ex(eng, "t", key=b"f", tags=(b"a", b"b"))
    reserve_id(eng, s, flagged)
    eng.steering.cancel_tag(b"b")
    eng.release(s, flagged.id, 0, 0, T0)
    done = put_ex(eng, "ret", key=b"r", tags=(b"d",))
    reserve_id(eng, s, done)
    eng.lifecycle.complete(s, done.id, b"res", T0)
    before = _options(eng)
    oldest = journal.oldest_index
    # Put/delete churn until compaction has deleted every segment written so far.
    for _ in range(10_000):
        if journal.oldest_index > oldest:
            break
        eng.delete(s, put(eng, "churn").id)
        scheduler.run_soon()
    assert journal.oldest_index > oldest, "compaction never removed the old segments"
    journal.flush_and_close()

    _, again = _open(tmp_path, clock, wall, segment=4096)
    assert _options(again) == before
    assert set(again.jobs) == {keyed.id, flagged.id}
    duplicate_of(again, "t", b"k")
    duplicate_of(again, "ret", b"r")
    assert again.steering.cancel_tag(b"a") == (2, 0)

