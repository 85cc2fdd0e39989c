"""Unit tests of the work done a slice per loop turn on the pure engine: flush-tube
(protocol.md, "flush-tube") and the first list-jobs of a tube (its index).

The engine gets a fake loop (`Turns`): the test runs the queued slices one at a
time and changes the queue between them. Slices are one chunk each (the slice time
is 0 and the chunk size small), so a few hundred jobs take many turns.
"""

import pytest

from qserver import flush as flush_room
from qserver import listing
from qserver.engine import Engine, NoLog
from qserver.errors import InternalError, NotFound, TimedOut
from qserver.job import BURIED, DELAYED, HELD, READY, RESERVED
from qserver.listing import TubeIndex, index_of, page_of, parse_request
from qserver.session import Session
from test_lifecycle import configure
from test_steering import put_ex

T0 = 1000.0
WALL0 = 1_700_000_000.0


class Turns:
    """A fake event loop: call_soon queues, `run` runs queued callbacks in order."""

    def __init__(self):
        self.queue = []

    def call_soon(self, callback, *args):
        self.queue.append((callback, args))

    def one(self) -> bool:
        if not self.queue:
            return False
        callback, args = self.queue.pop(0)
        callback(*args)
        return True

    def run(self) -> int:
        for turns in range(100_000):
            if not self.one():
                return turns
        raise AssertionError("slices never ended")


class RecordingLog(NoLog):
    def __init__(self):
        self.calls = []

    def flush(self, tube_name, job_ids):
        self.calls.append(("flush", tube_name, sorted(job_ids)))

    def delete(self, job):
        self.calls.append(("delete", job.id))


@pytest.fixture
def turns(monkeypatch):
    monkeypatch.setattr(flush_room, "SLICE_SECONDS", 0.0)
    monkeypatch.setattr(flush_room, "CHUNK", 16)
    monkeypatch.setattr(listing, "SLICE_SECONDS", 0.0)
    monkeypatch.setattr(listing, "CHUNK", 16)
    return Turns()


@pytest.fixture
def eng(turns):
    engine = Engine(log=RecordingLog(), wall=lambda: WALL0, rand=lambda a, b: b)
    engine.call_soon = turns.call_soon
    return engine


def session(engine, tube="t"):
    s = Session(wake=lambda outcome: None)
    engine.attach(s)
    engine.watch(s, tube)
    engine.ignore(s, "default")
    engine.use(s, tube)
    return s


def put(engine, tube="t", pri=0, delay=0, now=T0):
    return engine.put(engine._tube(tube), engine.allocate_id(), pri, delay, 60, b"x\r\n",
                      now, WALL0)


def fill(engine, s, count=100):
    """`count` jobs of each listed state in tube t; returns them by state."""
    jobs = {READY: [put(engine, pri=i % 7) for i in range(count)],
            DELAYED: [put(engine, delay=10 + i) for i in range(count)],
            BURIED: []}
    for _ in range(count):
        job = put(engine)
        assert engine.reserve_job(s, job.id, T0) is job
        engine.bury(s, job.id, 0)
        jobs[BURIED].append(job)
    return jobs


def flushed_away(engine, job) -> bool:
    """Every lookup by id treats the job as gone."""
    if engine.find(job.id) is not None:
        return False
    for lookup in (lambda: engine.peek(job.id), lambda: engine.kick_job(job.id, T0),
                   lambda: engine.delete(None, job.id)):
        with pytest.raises(NotFound):
            lookup()
    return True


# ------------------------------------------------------------------------ flush-tube

def test_a_flush_takes_effect_at_once_and_forgets_its_jobs_over_many_turns(eng, turns):
    s = session(eng)
    jobs = fill(eng, s)
    flushed = [job for state in jobs.values() for job in state]
    kept = put(eng)
    assert eng.reserve_job(s, kept.id, T0) is kept
    flush = eng.flusher.start("t")
    assert not flush.logged
    tube = eng.tubes["t"]
    # At once: the tube looks empty but for its reserved job.
    assert (tube.ready_count, tube.delayed_count, len(tube.buried), tube.reserved_count) \
        == (0, 0, 0, 1)
    assert tube.peek_ready() is None and eng.kick(tube, 1000, T0) == 0
    assert eng.delayed_total == 0
    assert all(flushed_away(eng, job) for job in flushed)
    # A job put now is not flushed and is reserved first.
    late = put(eng)
    assert eng.reserve(s, 0, T0) is late
    answers = []
    flush.answer = lambda done: answers.append(done.count())
    assert eng.log.calls == []                      # no record before the end
    for collecting in range(10_000):
        if answers:
            break
        assert turns.one()
        # Nothing is freed before the record is written.
        assert (eng.log.calls == []) == (not answers)
        assert answers or len(eng.jobs) == 302
    assert collecting > 10                          # it took many turns
    assert answers == [300] and flush.logged
    assert eng.log.calls == [("flush", "t", sorted(job.id for job in flushed))]
    assert eng.flusher.unlogged is False and len(eng.jobs) > 2   # now freeing
    assert all(flushed_away(eng, job) for job in flushed)
    assert turns.run() > 1
    assert set(eng.jobs) == {kept.id, late.id}
    assert tube.flushes is None and eng.flusher.total == 300


def test_the_delay_timer_does_not_bring_back_a_flushed_delayed_job(eng, turns):
    s = session(eng)
    jobs = fill(eng, s, count=40)
    eng.flusher.start("t")
    turns.one()
    eng.tick(T0 + 1000)                             # every delay has ended
    tube = eng.tubes["t"]
    assert tube.ready_count == 0 and tube.peek_ready() is None
    turns.run()
    assert eng.jobs == {} and eng.delayed_total == 0
    assert not any(job.state == READY for job in jobs[DELAYED])


def test_a_reserved_job_that_comes_back_during_a_flush_is_not_flushed(eng, turns):
    s = session(eng)
    fill(eng, s, count=40)
    out = put(eng)
    assert eng.reserve_job(s, out.id, T0) is out
    eng.flusher.start("t")
    turns.one()
    eng.release(s, out.id, 5, 0, T0)
    assert eng.find(out.id) is out and eng.tubes["t"].peek_ready() is out
    turns.run()
    assert set(eng.jobs) == {out.id}
    assert eng.reserve(s, 0, T0) is out


def test_a_dead_letter_that_arrives_during_a_flush_is_not_flushed(eng, turns):
    s = session(eng, "work")
    configure(eng, "work", max_attempts=1, dead_letter="tube:t")
    failing = put(eng, "work")
    assert eng.reserve(s, 0, T0) is failing
    fill(eng, session(eng), count=40)
    eng.flusher.start("t")
    turns.one()
    eng.lifecycle.fail(s, failing.id, b"no", T0)
    assert failing.tube.name == "t" and failing.state == READY
    turns.run()
    assert set(eng.jobs) == {failing.id}
    assert eng.find(failing.id) is failing


def test_a_key_of_a_job_being_flushed_is_free_and_its_job_deleted_first(eng, turns):
    s = session(eng)
    fill(eng, s, count=40)
    old = put_ex(eng, "t", key=b"k", tags=(b"g",))
    flush = eng.flusher.start("t")
    turns.one()
    assert not flush.logged
    assert eng.steering.cancel_tag(b"g") == (0, 0)  # flushed already: not cancelled
    new = put_ex(eng, "t", key=b"k")                 # no DUPLICATE
    assert eng.log.calls == [("delete", old.id)]    # before the record: its own DELETE
    assert eng.steering.keys == {("t", b"k"): new.id}
    answers = []
    flush.answer = lambda done: answers.append(done.count())
    turns.run()
    assert answers == [121]
    [(_, _, named)] = [call for call in eng.log.calls if call[0] == "flush"]
    assert old.id in named and len(named) == 121
    assert set(eng.jobs) == {new.id} and eng.flusher.deleted == set()
    assert eng.steering.keys == {("t", b"k"): new.id}


def test_a_key_freed_after_the_record_needs_no_delete(eng, turns):
    s = session(eng)
    fill(eng, s, count=40)
    old = put_ex(eng, "t", key=b"k")
    flush = eng.flusher.start("t")
    for _ in range(10_000):
        if flush.logged:
            break
        turns.one()
    turns.run()
    new = put_ex(eng, "t", key=b"k")
    assert [call[0] for call in eng.log.calls] == ["flush"]
    assert old.id in eng.log.calls[0][2] and set(eng.jobs) == {new.id}


def test_held_jobs_are_flushed_and_their_lock_forgotten(eng, turns):
    s = session(eng)
    configure(eng, "t", lock_limit=1)
    first = put_ex(eng, "t", key=None)
    locked = [eng.steering.put(eng._tube("t"), eng.allocate_id(), 0, 0, 60, b"x\r\n", T0,
                               WALL0, None, (), b"L") for _ in range(40)]
    assert eng.reserve(s, 0, T0) is first
    holder = eng.reserve(s, 0, T0)
    assert holder is locked[0]
    with pytest.raises(TimedOut):                   # the others are held on the way
        eng.reserve(s, 0, T0)
    assert all(job.state == HELD for job in locked[1:])
    eng.flusher.start("t")
    assert eng.steering.held_in(eng.tubes["t"]) == []
    turns.run()
    assert set(eng.jobs) == {first.id, holder.id}
    eng.delete(s, holder.id)                        # no held job left to promote
    assert eng.steering.locks == {} and eng.lock_jobs == {}


def test_two_flushes_of_one_tube_run_in_turn_and_count_their_own_jobs(eng, turns):
    s = session(eng)
    fill(eng, s, count=30)
    first = eng.flusher.start("t")
    between = [put(eng) for _ in range(50)]
    second = eng.flusher.start("t")
    assert all(flushed_away(eng, job) for job in between)
    answers = []
    first.answer = lambda done: answers.append(("first", done.count()))
    second.answer = lambda done: answers.append(("second", done.count()))
    turns.run()
    assert answers == [("first", 90), ("second", 50)]
    assert eng.jobs == {} and eng.tubes["t"].flushes is None


def test_a_flush_the_log_cannot_take_answers_the_error_and_frees_the_queue(eng, turns):
    def full(tube_name, job_ids):
        raise InternalError
    eng.log.flush = full
    s = session(eng)
    fill(eng, s, count=40)
    failed = eng.flusher.start("t")
    replies = []
    failed.answer = lambda done: replies.append(done.error)
    turns.run()
    assert len(replies) == 1 and isinstance(replies[0], InternalError)
    assert eng.flusher.unlogged is False and eng.tubes["t"].flushes is None
    del eng.log.flush                               # the disk has room again
    put(eng)
    assert eng.flusher.flush("t") == 1 and eng.log.calls[-1][0] == "flush"


def test_finish_all_completes_a_flush_at_once(eng, turns):
    s = session(eng)
    fill(eng, s, count=50)
    flush = eng.flusher.start("t")
    eng.flusher.finish_all()
    assert flush.logged and flush.count() == 150 and eng.jobs == {}
    assert eng.flusher.unlogged is False
    turns.run()                                     # the queued turn finds nothing
    assert eng.flusher.total == 150


def test_a_flush_of_a_small_tube_completes_in_its_first_slice(eng, turns, monkeypatch):
    monkeypatch.setattr(flush_room, "SLICE_SECONDS", 10.0)
    s = session(eng)
    put(eng)
    put(eng, delay=5)
    flush = eng.flusher.start("t")
    assert flush.logged and flush.count() == 2
    assert turns.queue == [] and eng.jobs == {}
    assert eng.flusher.start("nothing-here") is None


# ------------------------------------------------------------ the list-jobs index

def _fresh_index(engine, tube):
    """What the index should hold: one built from scratch, at once."""
    fresh = TubeIndex(engine, tube)
    assert fresh.build_step(engine, tube, float("inf"))
    return {state: list(entries) for state, entries in fresh.lists.items()}


def test_a_big_first_listing_is_built_over_many_turns_while_jobs_change(eng, turns):
    s = session(eng)
    jobs = fill(eng, s)
    tube = eng.tubes["t"]
    index = index_of(eng, tube)
    assert not index.built
    answered = []
    index.waiters.append(lambda: answered.append(True))
    # Change things between slices: every kind of move, before and after the
    # builder reaches the job.
    changes = iter([
        lambda: eng.delete(None, jobs[READY][0].id),
        lambda: put(eng, pri=3),
        lambda: eng.reserve(s, 0, T0),
        lambda: eng.release(s, eng.reserve(s, 0, T0).id, 99, 0, T0),
        lambda: eng.kick_job(jobs[BURIED][-1].id, T0),
        lambda: eng.kick_job(jobs[DELAYED][-1].id, T0),
        lambda: eng.bury(s, eng.reserve(s, 0, T0).id, 1),
        lambda: eng.tick(T0 + 30),                  # twenty delays end
        lambda: eng.delete(None, jobs[BURIED][3].id),
    ])
    for _ in range(100_000):
        if not turns.one():
            break
        next(changes, lambda: None)()
    assert answered == [True] and index.built
    expected = _fresh_index(eng, tube)
    assert {state: list(entries) for state, entries in index.lists.items()} == expected
    assert sum(len(entries) for entries in expected.values()) == 300 - 2 + 1
    assert len(expected[RESERVED]) == 1 and len(expected[READY]) > 100


def test_a_flush_during_the_build_leaves_a_correct_index(eng, turns):
    s = session(eng)
    fill(eng, s)
    tube = eng.tubes["t"]
    index = index_of(eng, tube)
    turns.one()
    eng.flusher.start("t")
    late = [put(eng, pri=i) for i in range(5)]
    turns.run()
    assert index.built
    assert list(index.lists[READY]) == [(job.pri, job.id) for job in late]
    assert all(not index.lists[state] for state in (DELAYED, BURIED, RESERVED, HELD))
    jobs, cursor = page_of(eng, "t", parse_request("all", "0", 10))
    assert jobs == late and cursor is None
