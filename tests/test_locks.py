"""Unit tests of per-key concurrency (protocol.md, "Per-key concurrency") on the pure
engine: at most `lock-limit` jobs of one lock key reserved at once, the others held,
and the oldest held job ready again whichever way a holder's reservation ends.
"""

import pytest

from qserver.engine import Engine
from qserver.errors import NotFound
from qserver.job import HELD, READY, RESERVED
from qserver.listing import list_jobs
from qserver.session import Session

T0 = 1000.0


@pytest.fixture
def eng():
    return Engine(wall=lambda: 1_700_000_000.0, rand=lambda a, b: b)


def session(engine, tube="t"):
    woken = []
    s = Session(wake=woken.append)
    engine.attach(s)
    engine.watch(s, tube)
    engine.use(s, tube)
    return s, woken


def put(engine, s, lock=b"acct-1", pri=0, ttr=60):
    job_id = engine.allocate_id()
    return engine.steering.put(s.use, job_id, pri, 0, ttr, b"x\r\n", T0, 0.0, None, (),
                               lock)


def reserved_of(engine, lock=b"acct-1"):
    return [j for j in engine.jobs.values()
            if j.state == RESERVED and engine.lock_jobs.get(j.id) == lock]


def test_one_holder_by_default_the_rest_held(eng):
    s, _ = session(eng)
    jobs = [put(eng, s) for _ in range(3)]
    other = put(eng, s, lock=None, pri=5)
    assert eng.reserve(s, 0, T0) is jobs[0]
    # the next best jobs are held on the way; a job without a lock is served
    assert eng.reserve(s, 0, T0) is other
    assert [j.state for j in jobs[1:]] == [HELD, HELD]
    assert eng.default_tube.ready_count == 0 and eng.tubes["t"].ready_count == 0


def test_lock_limit_two_never_more_than_two_reserved(eng):
    eng.lifecycle.configure("t", "lock-limit", "2")
    workers = [session(eng)[0] for _ in range(10)]
    jobs = [put(eng, workers[0]) for _ in range(20)]
    completed = []
    for _ in range(100):
        for w in workers:
            if not w.reserved:
                try:
                    eng.reserve(w, 0, T0)
                except Exception:
                    pass
            assert len(reserved_of(eng)) <= 2
        for w in workers:
            for job_id in list(w.reserved):
                eng.lifecycle.complete(w, job_id, b"", T0)
                completed.append(job_id)
                break
            eng.tick(T0)
        if len(completed) == 20:
            break
    assert sorted(completed) == [j.id for j in jobs]
    assert not eng.steering.locks and not eng.lock_jobs


@pytest.mark.parametrize("ending", ["delete", "complete", "fail", "release", "bury",
                                    "timeout", "close"])
def test_every_way_a_holder_ends_readies_the_oldest_held(eng, ending):
    eng.lifecycle.configure("t", "max-attempts", "0")
    s, _ = session(eng)
    first, second, third = put(eng, s, ttr=5), put(eng, s), put(eng, s)
    holder_session, _ = session(eng)
    assert eng.reserve(holder_session, 0, T0) is first
    with pytest.raises(Exception):
        eng.reserve(s, 0, T0)                  # TIMED_OUT: the others are held
    assert second.state == HELD and third.state == HELD
    if ending == "delete":
        eng.delete(holder_session, first.id)
    elif ending == "complete":
        eng.lifecycle.complete(holder_session, first.id, b"", T0)
    elif ending == "fail":
        eng.lifecycle.fail(holder_session, first.id, b"", T0)
    elif ending == "release":
        eng.release(holder_session, first.id, 0, 0, T0)
    elif ending == "bury":
        eng.bury(holder_session, first.id, 0)
    elif ending == "timeout":
        eng.tick(T0 + 5)
    else:
        eng.detach(holder_session, T0)
    assert second.state == READY and third.state == HELD
    # (pri, id) order among the reservable: the old holder first if it is ready again
    best = first if first.state == READY else second
    assert eng.reserve(s, 0, T0) is best
    assert len(reserved_of(eng)) == 1


def test_a_waiting_reserve_gets_the_promoted_job_at_the_next_tick(eng):
    s, _ = session(eng)
    first, second = put(eng, s), put(eng, s)
    holder, _ = session(eng)
    waiter, woken = session(eng)
    assert eng.reserve(holder, 0, T0) is first
    assert eng.reserve(waiter, None, T0) is None      # parked; second is held
    assert second.state == HELD
    eng.delete(holder, first.id)
    assert second.state == READY and eng.timer_dirty and eng.earliest < T0
    eng.tick(T0)
    assert woken == [second] and second.state == RESERVED


def test_held_jobs_are_listed_and_can_be_deleted_or_flushed(eng):
    s, _ = session(eng)
    jobs = [put(eng, s) for _ in range(4)]
    eng.reserve(s, 0, T0)
    with pytest.raises(Exception):
        eng.reserve(s, 0, T0)
    held, _ = list_jobs(eng, "t", "held", "0", 10)
    assert [j.id for j in held] == [j.id for j in jobs[1:]]
    eng.delete(s, jobs[1].id)
    assert [j.id for j in list_jobs(eng, "t", "held", "0", 10)[0]] == [jobs[2].id,
                                                                        jobs[3].id]
    assert eng.flusher.flush("t") == 2
    assert list_jobs(eng, "t", "held", "0", 10) == ([], None)
    eng.delete(s, jobs[0].id)
    assert not eng.steering.locks and not eng.lock_jobs and not eng.meta


def test_reserve_job_respects_the_lock(eng):
    s, _ = session(eng)
    first, second = put(eng, s), put(eng, s)
    assert eng.reserve_job(s, first.id, T0) is first
    with pytest.raises(NotFound):
        eng.reserve_job(s, second.id, T0)
    assert second.state == READY          # not held by a refused reserve-job


def test_locks_are_per_tube_and_per_key(eng):
    s, _ = session(eng)
    a1, b1 = put(eng, s, lock=b"a"), put(eng, s, lock=b"b")
    u, _ = session(eng, "u")
    a_in_u = put(eng, u, lock=b"a")
    assert eng.reserve(s, 0, T0) is a1
    assert eng.reserve(s, 0, T0) is b1
    assert eng.reserve(u, 0, T0) is a_in_u
