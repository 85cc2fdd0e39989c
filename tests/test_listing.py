"""Unit tests of list-jobs' paging on the pure engine (protocol.md, "list-jobs"): each
state's own order, cursors that survive jobs coming and going, the index kept up to
date by every transition once a tube was listed, and retained records.
"""

import random

import pytest

from qserver.engine import Engine
from qserver.errors import BadFormat
from qserver.job import BURIED, DELAYED, READY, RESERVED
from qserver.listing import list_jobs
from qserver.session import Session

T0 = 1000.0


@pytest.fixture
def eng():
    return Engine(wall=lambda: 1_700_000_000.0, rand=lambda a, b: b)


def session(engine, tube="t"):
    s = Session(wake=lambda outcome: None)
    engine.attach(s)
    engine.watch(s, tube)
    engine.use(s, tube)
    return s


def put(engine, s, pri=0, delay=0, ttr=60, now=T0):
    return engine.put(s.use, engine.allocate_id(), pri, delay, ttr, b"x\r\n", now, 0.0)


def all_pages(engine, state, limit, tube="t", between=None):
    """Every page of a listing, calling `between()` after each page."""
    seen, cursor = [], "0"
    for _ in range(10_000):
        jobs, cursor = list_jobs(engine, tube, state, cursor, limit)
        seen += [job.id for job in jobs]
        if cursor is None:
            return seen
        if between is not None:
            between()
    raise AssertionError("paging never ended")


def test_ready_pages_come_in_pri_then_id_order(eng):
    s = session(eng)
    jobs = [put(eng, s, pri=random.Random(i).randint(0, 5)) for i in range(57)]
    expected = [j.id for j in sorted(jobs, key=lambda j: (j.pri, j.id))]
    for limit in (1, 7, 57, 1000):
        assert all_pages(eng, "ready", limit) == expected


def test_each_state_in_its_own_order(eng):
    s = session(eng)
    delayed = [put(eng, s, delay=d) for d in (30, 10, 20)]
    reserved_jobs = []
    for ttr in (50, 5, 20):
        job = put(eng, s, ttr=ttr)
        reserved_jobs.append(eng.reserve(s, 0, T0))
    buried = []
    for _ in range(3):
        job = put(eng, s, pri=9)
        eng.reserve(s, 0, T0)
        eng.bury(s, job.id, 9)
        buried.append(job)
    assert all_pages(eng, "delayed", 2) == [delayed[1].id, delayed[2].id, delayed[0].id]
    by_deadline = sorted(reserved_jobs, key=lambda j: (j.deadline, j.id))
    assert all_pages(eng, "reserved", 2) == [j.id for j in by_deadline]
    assert all_pages(eng, "buried", 2) == [j.id for j in buried]
    assert all_pages(eng, "all", 4) == (all_pages(eng, "delayed", 9)
                                         + all_pages(eng, "reserved", 9)
                                         + all_pages(eng, "buried", 9))


def test_paging_under_change_shows_every_unmoved_job_exactly_once(eng):
    """Between pages, other jobs are put, reserved, deleted and released; each job
    that stayed ready all along is shown exactly once, in order."""
    rng = random.Random(7)
    s = session(eng)
    worker = session(eng)
    for _ in range(300):
        put(eng, s, pri=rng.randint(0, 20))
    list_jobs(eng, "t", "ready", "0", 1)          # the tube is indexed from here on
    touched = set()

    def churn():
        for _ in range(5):
            action = rng.random()
            if action < 0.4:
                touched.add(put(eng, s, pri=rng.randint(0, 20)).id)
            else:
                job = eng.reserve(worker, 0, T0)
                touched.add(job.id)
                if action < 0.7:
                    eng.delete(worker, job.id)
                else:
                    eng.release(worker, job.id, rng.randint(0, 20), 0, T0)

    before = {job.id for job in eng.jobs.values() if job.state == READY}
    seen = all_pages(eng, "ready", 10, between=churn)
    unmoved = before - touched
    shown = [i for i in seen if i in unmoved]
    assert sorted(shown) == sorted(unmoved)                  # none skipped
    assert len(shown) == len(set(shown))                    # none twice
    keys = [(eng.jobs[i].pri, i) for i in shown]
    assert keys == sorted(keys)


def test_the_index_follows_every_transition(eng):
    s = session(eng)
    first = put(eng, s)
    list_jobs(eng, "t", "all", "0", 10)
    delayed = put(eng, s, delay=5)
    job = eng.reserve(s, 0, T0)
    assert job is first
    eng.touch(s, job.id, T0 + 1)
    assert all_pages(eng, "reserved", 5) == [first.id]
    eng.bury(s, job.id, 0)
    assert all_pages(eng, "buried", 5) == [first.id]
    assert eng.kick(s.use, 1, T0) == 1
    assert all_pages(eng, "ready", 5) == [first.id]
    eng.tick(T0 + 5)
    assert all_pages(eng, "delayed", 5) == []
    assert set(all_pages(eng, "ready", 5)) == {first.id, delayed.id}
    eng.flusher.flush("t")
    assert all_pages(eng, "all", 5) == []
    again = put(eng, s)
    assert all_pages(eng, "ready", 5) == [again.id]


def test_retained_records_are_listed_by_expiry(eng):
    eng.lifecycle.configure("t", "retain", "100")
    s = session(eng)
    done = []
    for _ in range(3):
        job = put(eng, s)
        eng.reserve(s, 0, T0)
        eng.lifecycle.complete(s, job.id, b"r", T0 + len(done))
        done.append(job.id)
    assert all_pages(eng, "completed", 2) == done
    assert all_pages(eng, "dead", 2) == []
    eng.tick(T0 + 100)                           # the first one expires
    assert all_pages(eng, "completed", 2) == done[1:]


def test_a_missing_tube_lists_nothing(eng):
    assert list_jobs(eng, "nope", "all", "0", 10) == ([], None)


@pytest.mark.parametrize("state, cursor, limit", [
    ("ready", "0", 0), ("ready", "0", 1001), ("sleeping", "0", 5), ("ready", "x", 5),
    ("ready", "r:1", 5), ("ready", "r:a:b", 5), ("ready", "d:1.0:2", 5),
    ("buried", "q:1:2", 5),
])
def test_bad_requests_are_refused(eng, state, cursor, limit):
    with pytest.raises(BadFormat):
        list_jobs(eng, "default", state, cursor, limit)


def test_the_states_of_listed_jobs(eng):
    s = session(eng)
    put(eng, s, delay=3)
    put(eng, s)
    eng.reserve(s, 0, T0)
    jobs, _ = list_jobs(eng, "t", "all", "0", 10)
    assert [job.state for job in jobs] == [DELAYED, RESERVED]
    assert BURIED not in [job.state for job in jobs]
