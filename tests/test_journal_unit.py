"""The journal in-process, with a scheduler the test drives: the fsync policies, group
commit, and compaction in slices that hand the event loop back between them (how long
a slice lasts is bench/compaction.py's figure, not a test)."""

import os
import time

import pytest

import qserver.journal
from qserver.engine import Engine
from qserver.journal import Journal
from qserver.session import Session


class FakeScheduler:
    """Records what the journal asks of the event loop; the test runs it."""

    def __init__(self):
        self.now = 1000.0
        self.soon = []
        self.later = []         # (due, callback)
        self.threads = []       # (work, done)
        self.fsyncs = 0

    def clock(self):
        return self.now

    def call_soon(self, callback):
        self.soon.append(callback)

    def call_later(self, delay, callback):
        self.later.append((self.now + delay, callback))

    def run_in_thread(self, work, done):
        self.threads.append((work, done))

    def run_soon(self):
        while self.soon:
            self.soon.pop(0)()

    def finish_threads(self):
        while self.threads:
            work, done = self.threads.pop(0)
            work()
            self.fsyncs += 1
            done(None)


def _journal(tmp_path, fsync_ms, segment_size=1 << 20):
    scheduler = FakeScheduler()
    journal = Journal(str(tmp_path), segment_size, fsync_ms, scheduler)
    journal.recover()
    engine = Engine(log=journal)
    journal.start(engine)
    session = Session(wake=lambda outcome: None)
    engine.attach(session)
    return scheduler, journal, engine, session


def _put(engine, body=b"x" * 100, now=0.0):
    job_id = engine.allocate_id()
    engine.put(engine.default_tube, job_id, 0, 0, 60, body + b"\r\n", now, time.time())
    return job_id


def test_interval_mode_fsyncs_the_tail_by_timer(tmp_path):
    scheduler, journal, engine, _ = _journal(tmp_path, fsync_ms=50)
    _put(engine)
    # No further write comes; a timer is armed at most 50 ms ahead all the same.
    assert len(scheduler.later) == 1
    due, callback = scheduler.later.pop()
    assert due - scheduler.now <= 0.050
    scheduler.now = due
    callback()
    scheduler.finish_threads()
    assert journal.synced == journal.written == 1
    assert scheduler.fsyncs == 1


def test_always_mode_shares_one_fsync_between_many_commands(tmp_path):
    scheduler, journal, engine, _ = _journal(tmp_path, fsync_ms=0)
    released = []
    for i in range(20):                       # twenty clients' puts in one loop turn
        _put(engine)
        journal.when_synced(lambda i=i: released.append(i))
    assert released == []                     # nothing acknowledged before the fsync
    scheduler.run_soon()
    scheduler.finish_threads()
    assert released == list(range(20))
    assert scheduler.fsyncs == 1


def test_always_mode_replies_written_during_an_fsync_wait_for_the_next(tmp_path):
    scheduler, journal, engine, _ = _journal(tmp_path, fsync_ms=0)
    released = []
    _put(engine)
    journal.when_synced(lambda: released.append("first"))
    scheduler.run_soon()                      # the fsync starts, covering one record
    _put(engine)
    journal.when_synced(lambda: released.append("second"))
    scheduler.run_soon()
    work, done = scheduler.threads.pop(0)
    work()
    done(None)
    assert released == ["first"]
    scheduler.run_soon()
    scheduler.finish_threads()
    assert released == ["first", "second"]


def test_never_mode_does_not_fsync(tmp_path):
    scheduler, journal, engine, _ = _journal(tmp_path, fsync_ms=None)
    _put(engine)
    assert not scheduler.later and not scheduler.soon and not scheduler.threads


def test_compaction_runs_in_slices_and_migrates_every_live_job(tmp_path, monkeypatch):
    """The sweep rewrites live jobs a slice at a time, handing the event loop back
    (call_soon) between slices, until every live job is in the new segments and the
    old ones are gone. A slice ends once its time is up; with that time set to zero
    every slice is as short as the sweep allows, so the test sees many slices however
    fast or slow the host is. How long slices last with 1,000,000 live jobs is
    measured by bench/compaction.py."""
    monkeypatch.setattr(qserver.journal, "SWEEP_SLICE_SECONDS", 0.0)
    scheduler, journal, engine, session = _journal(tmp_path, fsync_ms=None,
                                                   segment_size=1 << 20)
    body = b"y" * 100
    live = [_put(engine, body) for _ in range(50_000)]      # about 8 segments
    # Churn would start the sweep once the log passes twice the live data; writing
    # that much more would only slow the test, so start it directly.
    assert journal.sweep is None
    journal._start_sweep()
    # The start only lists the live ids (a loop turn of its own with a million
    # jobs); the first slice comes at the next turn.
    assert journal.migrated == 0 and journal.sweep is not None
    assert len(scheduler.soon) == 1
    scheduler.soon.pop(0)()
    slices = 1
    migrated = [journal.migrated]
    for _ in range(len(live)):               # bounded: at least one job per slice
        if journal.sweep is None:
            break
        assert scheduler.soon, "the sweep stopped without finishing"
        scheduler.soon.pop(0)()
        slices += 1
        migrated.append(journal.migrated)
    assert journal.sweep is None, "the sweep never finished"
    assert journal.migrated >= len(live) - 1
    # It yielded to the loop many times, and every slice but the last few (which
    # unlink the old segments) moved jobs.
    assert slices >= 10, slices
    assert 0 < migrated[0] < len(live) - 1, migrated[0]
    moved = [b - a for a, b in zip(migrated, migrated[1:])]
    assert all(moved[:len(moved) // 2]), moved
    remaining = sorted(int(name.split(".")[1]) for name in os.listdir(tmp_path)
                       if name.startswith("qlog."))
    assert remaining[0] == journal.oldest_index
    assert journal.total_bytes() < journal.live_bytes + 2 * journal.segment_size


@pytest.mark.parametrize("fsync_ms", [0, 50, None])
def test_flush_and_close_syncs_and_releases_waiters(tmp_path, fsync_ms):
    scheduler, journal, engine, _ = _journal(tmp_path, fsync_ms=fsync_ms)
    _put(engine)
    released = []
    journal.when_synced(lambda: released.append(True))
    journal.flush_and_close()
    assert released == [True]


def test_replayed_jobs_share_their_priority_creation_time_and_tube_name():
    """A restart shares the objects that consecutive jobs have equal, as live puts
    do, so a million replayed jobs take no more memory than a million put ones."""
    from qserver.job import BURIED, READY, Job
    from qserver.journal.records import decode, job_record
    from qserver.journal.replay import Recovery

    class Tube:
        name = "emails"

    found = Recovery()
    made = [Job(i, Tube, 1024 + (i == 3), 0, 60, b"body\r\n", 1.7e9 + (i == 4))
            for i in range(1, 6)]
    made[1].state, made[1].deadline, made[1].counts = BURIED, 7, 5
    for job in made:
        decode(b"".join(job_record(job, 0.0)[1:]), 1, found)
    jobs = [found.jobs[i] for i in range(1, 6)]
    assert [j.pri for j in jobs] == [1024, 1024, 1025, 1024, 1024]
    assert jobs[0].pri is jobs[1].pri and jobs[0].created is jobs[1].created
    assert jobs[3].created == 1.7e9 + 1 and jobs[4].created == 1.7e9
    assert all(j.tube is jobs[0].tube == "emails" for j in jobs)
    assert [j.state for j in jobs] == [READY, BURIED, READY, READY, READY]
    assert jobs[1].bury_seq == 7 and jobs[1].reserves == 5 and jobs[0].counts == 0
