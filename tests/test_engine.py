"""Unit tests of the pure, synchronous Engine with a fake clock (plain floats).

No sockets and no sleeps: time is the `now` argument. Parked reserves are answered
through `Session.wake`, recorded here in a list per session. The helper `advance`
drives the engine the way the server's single timer does: tick at each
`next_wakeup()` moment up to a target time, then at the target itself.
"""

import math

import pytest

from qserver.engine import DEFAULT_TUBE, SAFETY_MARGIN, Engine
from qserver.errors import DeadlineSoon, NotFound, NotIgnored, TimedOut
from qserver.job import BURIED, DELAYED, READY, RESERVED
from qserver.session import Session
from qserver.swapset import SwapSet

T0 = 1000.0   # an arbitrary monotonic origin, so nothing depends on time 0


# -- helpers ------------------------------------------------------------------------

def new_session(engine):
    woken = []
    s = Session(wake=woken.append)
    engine.attach(s)
    return s, woken


def put(engine, session, pri=0, delay=0, ttr=60, now=T0, tube=None, body=b"x"):
    job_id = engine.allocate_id()
    return engine.put(tube if tube is not None else session.use, job_id, pri, delay, ttr,
                      body + b"\r\n", now, 0.0)


def advance(engine, until):
    """Tick at every next_wakeup() moment up to `until`, then at `until`.

    This is exactly what the server's one timer does, so a deadline that is not
    reflected in next_wakeup() is never acted on (as in the lost-TTR bug)."""
    for _ in range(100000):
        when = engine.next_wakeup()
        if when > until:
            break
        engine.tick(when)
    else:  # pragma: no cover
        raise AssertionError("next_wakeup() never moved past %r" % until)
    engine.tick(until)


@pytest.fixture
def eng():
    return Engine()


# -- put / reserve order -----------------------------------------------------------

def test_reserve_orders_by_pri_then_id(eng):
    s, _ = new_session(eng)
    a = put(eng, s, pri=5)
    b = put(eng, s, pri=1)
    c = put(eng, s, pri=5)
    d = put(eng, s, pri=0)
    e = put(eng, s, pri=1)
    got = [eng.reserve(s, 0, T0).id for _ in range(5)]
    assert got == [d.id, b.id, e.id, a.id, c.id]


def test_equal_priority_is_fifo(eng):
    s, _ = new_session(eng)
    jobs = [put(eng, s, pri=100) for _ in range(20)]
    got = [eng.reserve(s, 0, T0).id for _ in range(20)]
    assert got == [j.id for j in jobs]


def test_max_priority_value(eng):
    s, _ = new_session(eng)
    low = put(eng, s, pri=4294967295)
    high = put(eng, s, pri=4294967294)
    assert eng.reserve(s, 0, T0) is high
    assert eng.reserve(s, 0, T0) is low


def test_global_order_across_watched_tubes(eng):
    s, _ = new_session(eng)
    eng.use(s, "a")
    a1 = put(eng, s, pri=5)
    eng.use(s, "b")
    b1 = put(eng, s, pri=5)
    b2 = put(eng, s, pri=1)
    eng.use(s, "a")
    a2 = put(eng, s, pri=1)
    eng.watch(s, "a")
    eng.watch(s, "b")
    eng.ignore(s, DEFAULT_TUBE)
    got = [eng.reserve(s, 0, T0).id for _ in range(4)]
    assert got == [b2.id, a2.id, a1.id, b1.id]


def test_reserve_only_from_watched_tubes(eng):
    s, _ = new_session(eng)
    eng.use(s, "other")
    put(eng, s)
    with pytest.raises(TimedOut):
        eng.reserve(s, 0, T0)


def test_reserve_sets_deadline_and_counts(eng):
    s, _ = new_session(eng)
    j = put(eng, s, ttr=7)
    assert eng.reserve(s, 0, T0 + 1) is j
    assert j.state == RESERVED
    assert j.deadline == T0 + 8
    assert j.reserves == 1
    assert j.holder is s
    assert s.reserved == {j.id: j}
    assert eng.reserved_total == 1
    assert j.tube.reserved_count == 1
    assert j.tube.ready_count == 0


def test_reserve_timeout_zero_times_out_at_once(eng):
    s, woken = new_session(eng)
    with pytest.raises(TimedOut):
        eng.reserve(s, 0, T0)
    assert not s.waiting
    assert eng.waiting_count == 0
    assert woken == []


# -- pause ---------------------------------------------------------------------------

def test_paused_tube_is_skipped(eng):
    s, _ = new_session(eng)
    eng.watch(s, "p")
    eng.use(s, "p")
    p1 = put(eng, s, pri=0)
    eng.use(s, DEFAULT_TUBE)
    d1 = put(eng, s, pri=10)
    eng.pause_tube("p", 5, T0)
    assert eng.reserve(s, 0, T0) is d1          # p1 is better but its tube is paused
    with pytest.raises(TimedOut):
        eng.reserve(s, 0, T0 + 4.5)
    advance(eng, T0 + 5)
    assert eng.reserve(s, 0, T0 + 5) is p1


def test_pause_unknown_tube_not_found(eng):
    with pytest.raises(NotFound):
        eng.pause_tube("nope", 5, T0)
    assert "nope" not in eng.tubes


def test_pause_end_wakes_parked_reserve(eng):
    s, woken = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s)
    eng.pause_tube(DEFAULT_TUBE, 3, T0)
    assert eng.reserve(w, None, T0) is None
    assert eng.next_wakeup() == T0 + 3
    advance(eng, T0 + 2.99)
    assert wwoken == []
    advance(eng, T0 + 3)
    assert wwoken == [j]
    assert j.holder is w


def test_pause_zero_unpauses_and_wakes_at_once(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s)
    eng.pause_tube(DEFAULT_TUBE, 60, T0)
    assert eng.reserve(w, None, T0) is None
    eng.pause_tube(DEFAULT_TUBE, 0, T0 + 1)
    assert wwoken == [j]


def test_shorter_repause_replaces_longer(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s)
    eng.pause_tube(DEFAULT_TUBE, 60, T0)
    eng.pause_tube(DEFAULT_TUBE, 2, T0)
    assert eng.reserve(w, None, T0) is None
    advance(eng, T0 + 2)
    assert wwoken == [j]


def test_longer_repause_replaces_shorter(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s)
    eng.pause_tube(DEFAULT_TUBE, 2, T0)
    eng.pause_tube(DEFAULT_TUBE, 10, T0)
    assert eng.reserve(w, None, T0) is None
    advance(eng, T0 + 9.5)
    assert wwoken == []
    advance(eng, T0 + 10)
    assert wwoken == [j]


# -- delays --------------------------------------------------------------------------

def test_delayed_job_not_reservable_until_due(eng):
    s, _ = new_session(eng)
    j = put(eng, s, delay=5)
    assert j.state == DELAYED
    assert eng.delayed_total == 1
    assert eng.next_wakeup() == T0 + 5
    advance(eng, T0 + 4.99)
    with pytest.raises(TimedOut):
        eng.reserve(s, 0, T0 + 4.99)
    advance(eng, T0 + 5)
    assert j.state == READY
    assert eng.delayed_total == 0
    assert eng.reserve(s, 0, T0 + 5) is j


def test_delays_mature_in_due_order_not_priority(eng):
    """A delayed job becomes ready by its due time; pri only orders simultaneous ones.

    A parked reserve sees them in due order even though the later one has a better
    priority (beanstalkd issue #400)."""
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    late = put(eng, s, pri=0, delay=3)
    early = put(eng, s, pri=100, delay=2)
    assert eng.reserve(w, None, T0) is None
    advance(eng, T0 + 2)
    assert wwoken == [early]
    assert late.state == DELAYED
    assert eng.reserve(w, None, T0 + 2) is None
    advance(eng, T0 + 3)
    assert wwoken == [early, late]


def test_delays_maturing_together_then_ordered_by_pri(eng):
    s, _ = new_session(eng)
    a = put(eng, s, pri=50, delay=2)
    b = put(eng, s, pri=10, delay=1)
    c = put(eng, s, pri=30, delay=3)
    advance(eng, T0 + 10)      # one late tick matures all three
    assert [eng.reserve(s, 0, T0 + 10) for _ in range(3)] == [b, c, a]


def test_delay_heap_across_tubes(eng):
    s, _ = new_session(eng)
    eng.watch(s, "x")
    eng.use(s, "x")
    x = put(eng, s, delay=4)
    eng.use(s, DEFAULT_TUBE)
    d = put(eng, s, delay=2)
    assert eng.next_wakeup() == T0 + 2
    advance(eng, T0 + 2)
    assert d.state == READY and x.state == DELAYED
    assert eng.next_wakeup() == T0 + 4
    advance(eng, T0 + 4)
    assert x.state == READY


def test_next_wakeup_is_one_value_for_many_delayed_jobs(eng):
    s, _ = new_session(eng)
    dues = [37, 5, 99, 12, 5, 64, 3, 250, 18, 7]
    for i in range(1000):
        put(eng, s, delay=dues[i % len(dues)] + (i // len(dues)))
    wake = eng.next_wakeup()
    assert isinstance(wake, float)
    assert wake == T0 + 3
    assert eng.next_wakeup() == wake      # asking does not consume anything
    eng.tick(T0 + 3)
    assert eng.next_wakeup() == T0 + 4
    assert Engine().next_wakeup() == math.inf


def test_next_wakeup_covers_every_kind_of_timer(eng):
    s, _ = new_session(eng)
    put(eng, s, delay=50)
    assert eng.next_wakeup() == T0 + 50
    eng.pause_tube(DEFAULT_TUBE, 40, T0)
    assert eng.next_wakeup() == T0 + 40
    j = put(eng, s, ttr=30)
    eng.pause_tube(DEFAULT_TUBE, 0, T0)
    assert eng.reserve(s, 0, T0) is j
    assert eng.next_wakeup() == T0 + 30
    w, _ = new_session(eng)
    assert eng.reserve(w, 10, T0) is None
    assert eng.next_wakeup() == T0 + 10


def test_timer_dirty_when_earlier_deadline_appears(eng):
    s, _ = new_session(eng)
    eng.tick(T0)
    assert eng.earliest == math.inf
    put(eng, s, delay=10)
    assert eng.timer_dirty and eng.earliest == T0 + 10
    eng.timer_dirty = False
    put(eng, s, delay=20)           # later than the armed timer: nothing to re-arm
    assert not eng.timer_dirty
    put(eng, s, delay=5)
    assert eng.timer_dirty and eng.earliest == T0 + 5


# -- TTR -----------------------------------------------------------------------------

def test_ttr_expiry_returns_job_to_ready_and_counts(eng):
    s, _ = new_session(eng)
    j = put(eng, s, ttr=3)
    assert eng.reserve(s, 0, T0) is j
    advance(eng, T0 + 2.99)
    assert j.state == RESERVED
    advance(eng, T0 + 3)
    assert j.state == READY
    assert j.timeouts == 1
    assert eng.job_timeouts == 1
    assert j.holder is None
    assert s.reserved == {}
    assert eng.reserved_total == 0
    assert j.tube.reserved_count == 0
    assert j.tube.ready_count == 1
    # the former holder now gets NOT_FOUND
    for op in (lambda: eng.touch(s, j.id, T0 + 3),
               lambda: eng.release(s, j.id, 0, 0, T0 + 3),
               lambda: eng.bury(s, j.id, 0)):
        with pytest.raises(NotFound):
            op()


def test_ttr_expired_job_keeps_its_place_by_pri_id(eng):
    s, _ = new_session(eng)
    first = put(eng, s, pri=5)
    second = put(eng, s, pri=5, ttr=1)
    third = put(eng, s, pri=5)
    assert eng.reserve(s, 0, T0) is first
    assert eng.reserve(s, 0, T0) is second
    advance(eng, T0 + 1)
    assert second.state == READY
    o, _ = new_session(eng)
    assert eng.reserve(o, 0, T0 + 1) is second
    assert eng.reserve(o, 0, T0 + 1) is third


def test_ttr_expiry_goes_to_parked_reserve(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s, ttr=2)
    assert eng.reserve(s, 0, T0) is j
    assert eng.reserve(w, None, T0) is None
    advance(eng, T0 + 2)
    assert wwoken == [j]
    assert j.holder is w and j.state == RESERVED
    assert j.deadline == T0 + 4
    assert j.reserves == 2 and j.timeouts == 1


def test_touch_extends_deadline(eng):
    s, _ = new_session(eng)
    j = put(eng, s, ttr=5)
    eng.reserve(s, 0, T0)
    advance(eng, T0 + 4)
    eng.touch(s, j.id, T0 + 4)
    assert j.deadline == T0 + 9
    advance(eng, T0 + 8.99)
    assert j.state == RESERVED and j.timeouts == 0
    advance(eng, T0 + 9)
    assert j.state == READY and j.timeouts == 1 and eng.job_timeouts == 1


def test_touch_many_times_then_expire_once(eng):
    s, _ = new_session(eng)
    j = put(eng, s, ttr=2)
    eng.reserve(s, 0, T0)
    now = T0
    for _ in range(50):
        now += 1
        advance(eng, now)
        eng.touch(s, j.id, now)
    assert j.state == RESERVED
    advance(eng, now + 2)
    assert j.state == READY
    assert j.timeouts == 1 and eng.job_timeouts == 1


def test_touch_only_own_reserved(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    j = put(eng, s)
    with pytest.raises(NotFound):
        eng.touch(s, j.id, T0)            # ready
    eng.reserve(s, 0, T0)
    with pytest.raises(NotFound):
        eng.touch(o, j.id, T0)            # reserved by another
    with pytest.raises(NotFound):
        eng.touch(s, 999, T0)


def test_ttr_timeouts_count_repeatedly(eng):
    s, _ = new_session(eng)
    j = put(eng, s, ttr=1)
    for k in range(1, 4):
        now = T0 + 10 * k
        advance(eng, now)
        assert eng.reserve(s, 0, now) is j
        advance(eng, now + 1)
        assert j.timeouts == k
    assert eng.job_timeouts == 3
    assert j.reserves == 3


# -- DEADLINE_SOON -------------------------------------------------------------------

def test_deadline_soon_inside_margin_without_ready_jobs(eng):
    s, woken = new_session(eng)
    j = put(eng, s, ttr=5)
    eng.reserve(s, 0, T0)
    # outside the margin: an ordinary timeout
    with pytest.raises(TimedOut):
        eng.reserve(s, 0, T0 + 3.5)
    # exactly at deadline - 1 s: inside (now >= deadline - margin)
    with pytest.raises(DeadlineSoon):
        eng.reserve(s, 0, T0 + 4)
    with pytest.raises(DeadlineSoon):
        eng.reserve(s, None, T0 + 4.5)
    assert not s.waiting and woken == []
    assert j.state == RESERVED


def test_deadline_soon_with_ttr_one_is_immediate(eng):
    s, _ = new_session(eng)
    put(eng, s, ttr=1)
    eng.reserve(s, 0, T0)
    with pytest.raises(DeadlineSoon):
        eng.reserve(s, None, T0)


def test_ready_job_suppresses_deadline_soon(eng):
    s, _ = new_session(eng)
    put(eng, s, ttr=1)
    eng.reserve(s, 0, T0)
    k = put(eng, s)
    assert eng.reserve(s, None, T0 + 0.5) is k


def test_ready_job_in_other_watched_tube_suppresses_deadline_soon(eng):
    s, _ = new_session(eng)
    put(eng, s, ttr=1)
    eng.reserve(s, 0, T0)
    eng.watch(s, "other")
    eng.use(s, "other")
    k = put(eng, s)
    assert eng.reserve(s, None, T0) is k


def test_ready_job_in_unwatched_tube_does_not_suppress(eng):
    s, _ = new_session(eng)
    put(eng, s, ttr=1)
    eng.reserve(s, 0, T0)
    eng.use(s, "elsewhere")
    put(eng, s)
    with pytest.raises(DeadlineSoon):
        eng.reserve(s, None, T0)


def test_paused_tube_with_ready_job_suppresses_deadline_soon_at_reserve(eng):
    """conn_ready ignores pause: the reserve does not answer DEADLINE_SOON at once.

    It parks instead (the paused job cannot be had), and the next tick, which is due
    right away because the connection is inside the margin, answers DEADLINE_SOON."""
    s, woken = new_session(eng)
    put(eng, s, ttr=1)
    eng.reserve(s, 0, T0)
    eng.watch(s, "p")
    eng.use(s, "p")
    put(eng, s)
    eng.pause_tube("p", 60, T0)
    assert eng.reserve(s, None, T0 + 0.25) is None
    assert s.waiting
    assert eng.next_wakeup() <= T0 + 0.25
    eng.tick(T0 + 0.25)
    assert woken == [DeadlineSoon]
    assert not s.waiting and eng.waiting_count == 0


def test_reserved_job_of_other_session_does_not_matter(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    put(eng, s, ttr=1)
    eng.reserve(o, 0, T0)
    with pytest.raises(TimedOut):
        eng.reserve(s, 0, T0)


def test_reserve_job_never_answers_deadline_soon(eng):
    s, _ = new_session(eng)
    put(eng, s, ttr=1)
    eng.reserve(s, 0, T0)
    eng.use(s, "elsewhere")
    k = put(eng, s)
    assert eng.reserve_job(s, k.id, T0) is k


# -- parked reserves -----------------------------------------------------------------

def test_parked_reserve_answered_by_later_put(eng):
    w, wwoken = new_session(eng)
    p, _ = new_session(eng)
    assert eng.reserve(w, None, T0) is None
    assert w.waiting and eng.waiting_count == 1
    assert w in eng.default_tube.waiting
    j = put(eng, p, now=T0 + 7)
    assert wwoken == [j]
    assert j.state == RESERVED and j.holder is w
    assert j.deadline == T0 + 7 + j.ttr
    assert not w.waiting and eng.waiting_count == 0
    assert w not in eng.default_tube.waiting


def test_parked_reserve_with_timeout_answered_by_put(eng):
    w, wwoken = new_session(eng)
    p, _ = new_session(eng)
    assert eng.reserve(w, 10, T0) is None
    j = put(eng, p, now=T0 + 3)
    assert wwoken == [j]
    advance(eng, T0 + 20)           # the old timeout must not fire afterwards
    assert wwoken == [j]


def test_parked_reserve_timed_out_by_tick(eng):
    w, wwoken = new_session(eng)
    assert eng.reserve(w, 3, T0) is None
    assert eng.next_wakeup() == T0 + 3
    advance(eng, T0 + 2.99)
    assert wwoken == []
    advance(eng, T0 + 3)
    assert wwoken == [TimedOut]
    assert not w.waiting and eng.waiting_count == 0
    assert w not in eng.default_tube.waiting


def test_parked_reserve_forever_never_times_out(eng):
    w, wwoken = new_session(eng)
    assert eng.reserve(w, None, T0) is None
    assert eng.next_wakeup() == math.inf
    advance(eng, T0 + 100000)
    assert wwoken == [] and w.waiting


def test_parked_reserve_gets_deadline_soon_via_tick(eng):
    w, wwoken = new_session(eng)
    j = put(eng, w, ttr=10)
    eng.reserve(w, 0, T0)
    assert eng.reserve(w, None, T0 + 2) is None
    assert SAFETY_MARGIN == 1.0
    assert eng.next_wakeup() == T0 + 10 - SAFETY_MARGIN
    advance(eng, T0 + 8.99)
    assert wwoken == []
    advance(eng, T0 + 9)
    assert wwoken == [DeadlineSoon]
    assert j.state == RESERVED and j.holder is w
    assert not w.waiting


def test_deadline_soon_before_reserve_timeout(eng):
    w, wwoken = new_session(eng)
    put(eng, w, ttr=5)
    eng.reserve(w, 0, T0)
    assert eng.reserve(w, 30, T0) is None
    advance(eng, T0 + 4)
    assert wwoken == [DeadlineSoon]
    advance(eng, T0 + 40)
    assert wwoken == [DeadlineSoon]


def test_reserve_timeout_before_deadline_soon(eng):
    w, wwoken = new_session(eng)
    put(eng, w, ttr=50)
    eng.reserve(w, 0, T0)
    assert eng.reserve(w, 2, T0) is None
    advance(eng, T0 + 2)
    assert wwoken == [TimedOut]


def test_parked_reserve_put_in_other_tube_not_delivered(eng):
    w, wwoken = new_session(eng)
    p, _ = new_session(eng)
    eng.use(p, "other")
    assert eng.reserve(w, None, T0) is None
    put(eng, p)
    assert wwoken == []


def test_parked_reserve_watching_two_tubes_gets_best_across_both(eng):
    w, wwoken = new_session(eng)
    p, _ = new_session(eng)
    eng.watch(w, "a")
    eng.watch(w, "b")
    eng.use(p, "a")
    eng.pause_tube("a", 5, T0)
    ja = put(eng, p, pri=3)
    eng.use(p, "b")
    eng.pause_tube("b", 5, T0)
    jb = put(eng, p, pri=1)
    assert eng.reserve(w, None, T0) is None
    advance(eng, T0 + 5)
    assert wwoken == [jb]
    assert ja.state == READY


def test_cancel_wait(eng):
    w, wwoken = new_session(eng)
    p, _ = new_session(eng)
    assert eng.reserve(w, 5, T0) is None
    eng.cancel_wait(w)
    assert not w.waiting and eng.waiting_count == 0
    j = put(eng, p)
    advance(eng, T0 + 10)
    assert wwoken == []
    assert j.state == READY


def test_two_waiters_each_get_one_job(eng):
    a, awoken = new_session(eng)
    b, bwoken = new_session(eng)
    p, _ = new_session(eng)
    eng.reserve(a, None, T0)
    eng.reserve(b, None, T0)
    j1 = put(eng, p)
    j2 = put(eng, p)
    assert sorted([awoken, bwoken], key=len) == [[j1], [j2]] or \
        sorted([awoken, bwoken], key=len) == [[j2], [j1]]
    assert len(awoken) == 1 and len(bwoken) == 1
    assert eng.waiting_count == 0


# -- the lost-TTR bug (beanstalkd issues #380/#262): must NOT be reproduced ---------

def test_lost_ttr_after_deadline_soon_is_not_copied(eng):
    s, woken = new_session(eng)
    o, _ = new_session(eng)
    a = put(eng, s, ttr=2)
    b = put(eng, s, ttr=8)
    assert eng.reserve(s, 0, T0) is a
    assert eng.reserve(s, 0, T0) is b
    assert eng.reserve(s, 3, T0) is None
    advance(eng, T0 + 1)
    assert woken == [DeadlineSoon]
    eng.delete(s, a.id)
    # The session does nothing more; only the timer (next_wakeup/tick) drives time.
    advance(eng, T0 + 7.99)
    assert b.state == RESERVED
    assert eng.next_wakeup() == T0 + 8
    advance(eng, T0 + 8)
    assert b.state == READY
    assert b.timeouts == 1 and eng.job_timeouts == 1
    assert eng.reserve(o, 0, T0 + 8) is b
    assert woken == [DeadlineSoon]        # no stray TIMED_OUT from the old reserve


def test_lost_ttr_variant_reserve_again_after_deadline_soon(eng):
    """After DEADLINE_SOON the client deletes A and waits again; B must still time out
    and be handed straight back to it (it is the only waiter)."""
    s, woken = new_session(eng)
    a = put(eng, s, ttr=2)
    b = put(eng, s, ttr=8)
    eng.reserve(s, 0, T0)
    eng.reserve(s, 0, T0)
    eng.reserve(s, 3, T0)
    advance(eng, T0 + 1)
    eng.delete(s, a.id)
    assert eng.reserve(s, 100, T0 + 1) is None
    advance(eng, T0 + 7)
    assert woken == [DeadlineSoon, DeadlineSoon]    # b's own margin at T0+7
    advance(eng, T0 + 8)
    assert b.state == READY and b.timeouts == 1


# -- release / bury / kick -----------------------------------------------------------

def test_release_sets_pri_and_readies(eng):
    s, _ = new_session(eng)
    j = put(eng, s, pri=5)
    k = put(eng, s, pri=3)
    eng.reserve_job(s, j.id, T0)
    eng.release(s, j.id, 1, 0, T0)
    assert j.state == READY and j.pri == 1 and j.releases == 1
    assert eng.reserve(s, 0, T0) is j
    assert eng.reserve(s, 0, T0) is k


def test_release_with_delay(eng):
    s, _ = new_session(eng)
    j = put(eng, s)
    eng.reserve(s, 0, T0)
    eng.release(s, j.id, 0, 4, T0 + 1)
    assert j.state == DELAYED and j.delay == 4
    assert eng.delayed_total == 1 and eng.reserved_total == 0
    assert eng.next_wakeup() == T0 + 5
    advance(eng, T0 + 5)
    assert j.state == READY


def test_release_wakes_parked_reserve(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s)
    eng.reserve(s, 0, T0)
    eng.reserve(w, None, T0)
    eng.release(s, j.id, 0, 0, T0)
    assert wwoken == [j] and j.holder is w


def test_release_bury_only_own_reserved(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    j = put(eng, s)
    with pytest.raises(NotFound):
        eng.release(s, j.id, 0, 0, T0)     # ready
    with pytest.raises(NotFound):
        eng.bury(s, j.id, 0)
    eng.reserve(s, 0, T0)
    with pytest.raises(NotFound):
        eng.release(o, j.id, 0, 0, T0)
    with pytest.raises(NotFound):
        eng.bury(o, j.id, 0)
    with pytest.raises(NotFound):
        eng.release(s, 12345, 0, 0, T0)


def test_bury_fifo_and_kick_buried_before_delayed(eng):
    s, _ = new_session(eng)
    d1 = put(eng, s, delay=10)
    r = [put(eng, s) for _ in range(3)]
    for j in r:
        eng.reserve_job(s, j.id, T0)
    eng.bury(s, r[2].id, 7)
    eng.bury(s, r[0].id, 1)
    eng.bury(s, r[1].id, 0)
    assert r[2].state == BURIED and r[2].pri == 7 and r[2].buries == 1
    assert eng.default_tube.peek_buried() is r[2]   # oldest buried first, not by pri
    assert eng.kick(eng.default_tube, 2, T0) == 2
    assert r[2].state == READY and r[0].state == READY
    assert r[1].state == BURIED
    assert d1.state == DELAYED                        # buried ones go first
    assert eng.kick(eng.default_tube, 5, T0) == 1     # only the buried one, not d1
    assert d1.state == DELAYED
    assert r[1].kicks == 1
    assert eng.kick(eng.default_tube, 5, T0) == 1     # now the delayed one
    assert d1.state == READY and d1.kicks == 1
    assert eng.kick(eng.default_tube, 5, T0) == 0


def test_kick_delayed_soonest_first_and_bound(eng):
    s, _ = new_session(eng)
    a = put(eng, s, delay=30)
    b = put(eng, s, delay=10)
    c = put(eng, s, delay=20)
    d = put(eng, s, delay=10)
    assert eng.kick(eng.default_tube, 3, T0) == 3
    assert [x.state for x in (b, d, c, a)] == [READY, READY, READY, DELAYED]
    assert eng.delayed_total == 1
    assert eng.kick(eng.default_tube, 0, T0) == 0
    # the kicked jobs' delay entries are stale: maturing them later changes nothing
    advance(eng, T0 + 25)
    got = [eng.reserve(s, 0, T0 + 25) for _ in range(3)]
    assert got == [b, c, d]
    with pytest.raises(TimedOut):
        eng.reserve(s, 0, T0 + 25)


def test_kick_only_used_tube(eng):
    s, _ = new_session(eng)
    eng.use(s, "t")
    j = put(eng, s, delay=5)
    assert eng.kick(eng.default_tube, 10, T0) == 0
    assert eng.kick(eng.tubes["t"], 10, T0) == 1
    assert j.state == READY


def test_kick_wakes_parked_reserve(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s, delay=100)
    eng.reserve(w, None, T0)
    eng.kick(eng.default_tube, 1, T0)
    assert wwoken == [j]


def test_kick_job(eng):
    s, _ = new_session(eng)
    ready = put(eng, s)
    delayed = put(eng, s, delay=5)
    buried = put(eng, s)
    reserved = put(eng, s)
    eng.reserve_job(s, buried.id, T0)
    eng.bury(s, buried.id, 0)
    eng.reserve_job(s, reserved.id, T0)
    with pytest.raises(NotFound):
        eng.kick_job(ready.id, T0)
    with pytest.raises(NotFound):
        eng.kick_job(reserved.id, T0)
    with pytest.raises(NotFound):
        eng.kick_job(9999, T0)
    eng.kick_job(delayed.id, T0)
    assert delayed.state == READY and delayed.kicks == 1 and eng.delayed_total == 0
    eng.kick_job(buried.id, T0)
    assert buried.state == READY and buried.kicks == 1
    assert not eng.default_tube.buried


def test_kick_job_in_any_tube(eng):
    s, _ = new_session(eng)
    eng.use(s, "far")
    j = put(eng, s, delay=9)
    eng.use(s, DEFAULT_TUBE)
    eng.kick_job(j.id, T0)
    assert j.state == READY


# -- reserve-job ---------------------------------------------------------------------

def test_reserve_job_ready_delayed_buried(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    ready = put(eng, s)
    delayed = put(eng, s, delay=50, ttr=5)
    buried = put(eng, s)
    eng.reserve_job(s, buried.id, T0)
    eng.bury(s, buried.id, 0)
    for j in (ready, delayed, buried):
        assert eng.reserve_job(o, j.id, T0) is j
        assert j.state == RESERVED and j.holder is o
    assert eng.delayed_total == 0
    assert not eng.default_tube.buried
    assert eng.default_tube.ready_count == 0
    assert delayed.deadline == T0 + 5
    # the old delay entry must not turn the reserved job ready at T0+50
    advance(eng, T0 + 4)
    assert delayed.state == RESERVED
    # released with delay 0, the once-delayed job is ready
    eng.release(o, delayed.id, 0, 0, T0 + 4)
    assert delayed.state == READY


def test_reserve_job_reserved_is_not_found_even_for_holder(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    j = put(eng, s)
    eng.reserve(s, 0, T0)
    with pytest.raises(NotFound):
        eng.reserve_job(s, j.id, T0)
    with pytest.raises(NotFound):
        eng.reserve_job(o, j.id, T0)
    with pytest.raises(NotFound):
        eng.reserve_job(o, 424242, T0)


def test_reserve_job_unwatched_and_paused_tube(eng):
    s, _ = new_session(eng)
    eng.use(s, "elsewhere")
    j = put(eng, s)
    eng.pause_tube("elsewhere", 100, T0)
    assert eng.reserve_job(s, j.id, T0) is j


def test_reserve_job_delayed_then_ttr_expiry(eng):
    s, _ = new_session(eng)
    j = put(eng, s, delay=2, ttr=5)
    eng.reserve_job(s, j.id, T0)
    advance(eng, T0 + 5)
    assert j.state == READY and j.timeouts == 1


# -- delete --------------------------------------------------------------------------

def test_delete_rules(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    ready = put(eng, s)
    delayed = put(eng, s, delay=5)
    buried = put(eng, s)
    mine = put(eng, s)
    theirs = put(eng, s)
    eng.reserve_job(s, buried.id, T0)
    eng.bury(s, buried.id, 0)
    eng.reserve_job(s, mine.id, T0)
    eng.reserve_job(o, theirs.id, T0)
    with pytest.raises(NotFound):
        eng.delete(s, theirs.id)
    assert theirs.state == RESERVED and theirs.id in eng.jobs
    for j in (ready, delayed, buried, mine):
        eng.delete(o if j is not mine else s, j.id)
        assert j.id not in eng.jobs
    with pytest.raises(NotFound):
        eng.delete(s, ready.id)
    eng.delete(o, theirs.id)
    assert eng.jobs == {}
    t = eng.default_tube
    assert (t.ready_count, t.delayed_count, t.reserved_count, len(t.buried)) == (0, 0, 0, 0)
    assert eng.delayed_total == 0 and eng.reserved_total == 0
    assert t.cmd_delete == 5
    assert s.reserved == {} and o.reserved == {}


def test_deleted_reserved_job_does_not_time_out(eng):
    s, _ = new_session(eng)
    j = put(eng, s, ttr=2)
    eng.reserve(s, 0, T0)
    eng.delete(s, j.id)
    advance(eng, T0 + 10)
    assert eng.job_timeouts == 0


def test_deleted_delayed_job_never_becomes_ready(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s, delay=2)
    eng.delete(s, j.id)
    eng.reserve(w, None, T0)
    advance(eng, T0 + 10)
    assert wwoken == []


# -- detach --------------------------------------------------------------------------

def test_detach_releases_reserved_jobs_at_once(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    j = put(eng, s, ttr=100)
    k = put(eng, s, ttr=100)
    eng.reserve(s, 0, T0)
    eng.reserve(s, 0, T0)
    eng.detach(s, T0 + 1)
    assert j.state == READY and k.state == READY
    assert j.holder is None and eng.reserved_total == 0
    assert j.timeouts == 0 and eng.job_timeouts == 0
    assert eng.reserve(o, 0, T0 + 1) is j
    advance(eng, T0 + 200)
    assert j.timeouts == 1 and k.timeouts == 0   # only o's reservation timed out


def test_detach_hands_jobs_to_waiting_reserve(eng):
    s, _ = new_session(eng)
    w, wwoken = new_session(eng)
    j = put(eng, s)
    eng.reserve(s, 0, T0)
    eng.reserve(w, None, T0)
    eng.detach(s, T0 + 0.5)
    assert wwoken == [j] and j.holder is w


def test_detach_of_waiting_session(eng):
    w, wwoken = new_session(eng)
    p, _ = new_session(eng)
    eng.reserve(w, 5, T0)
    eng.detach(w, T0 + 1)
    assert eng.waiting_count == 0
    assert w not in eng.default_tube.waiting
    j = put(eng, p, now=T0 + 2)
    advance(eng, T0 + 10)
    assert wwoken == [] and j.state == READY


def test_detach_drops_unused_tubes_and_counts(eng):
    s, _ = new_session(eng)
    eng.use(s, "u")
    eng.watch(s, "w")
    eng.mark_producer(s)
    eng.mark_worker(s)
    assert eng.producers == 1 and eng.workers == 1
    assert set(eng.tubes) == {DEFAULT_TUBE, "u", "w"}
    eng.detach(s, T0)
    assert set(eng.tubes) == {DEFAULT_TUBE}
    assert list(t.name for t in eng.tube_order) == [DEFAULT_TUBE]
    assert eng.producers == 0 and eng.workers == 0
    assert eng.default_tube.watching == 0 and eng.default_tube.using == 0


def test_detach_keeps_tube_with_jobs(eng):
    s, _ = new_session(eng)
    eng.use(s, "u")
    eng.watch(s, "u")
    j = put(eng, s)
    eng.reserve_job(s, j.id, T0)
    eng.detach(s, T0)
    assert "u" in eng.tubes and j.state == READY
    o, _ = new_session(eng)
    eng.delete(o, j.id)
    assert "u" not in eng.tubes


def test_mark_producer_worker_once(eng):
    s, _ = new_session(eng)
    for _ in range(3):
        eng.mark_producer(s)
        eng.mark_worker(s)
    assert eng.producers == 1 and eng.workers == 1


# -- tube lifetime -------------------------------------------------------------------

def test_attach_uses_and_watches_default(eng):
    s, _ = new_session(eng)
    t = eng.default_tube
    assert s.use is t and list(s.watch) == [t]
    assert t.using == 1 and t.watching == 1


def test_use_refcounts_and_drops(eng):
    s, _ = new_session(eng)
    o, _ = new_session(eng)
    eng.use(s, "x")
    eng.use(o, "x")
    assert eng.tubes["x"].using == 2
    assert eng.default_tube.using == 0
    eng.use(s, "x")                       # same tube again: no change
    assert eng.tubes["x"].using == 2
    eng.use(s, "y")
    assert "x" in eng.tubes
    eng.use(o, "y")
    assert "x" not in eng.tubes
    assert eng.tubes["y"].using == 2
    eng.use(s, DEFAULT_TUBE)
    eng.use(o, DEFAULT_TUBE)
    assert set(eng.tubes) == {DEFAULT_TUBE}


def test_watch_ignore_refcounts(eng):
    s, _ = new_session(eng)
    assert eng.watch(s, "a") == 2
    assert eng.watch(s, "a") == 2          # already watched: same count
    assert eng.tubes["a"].watching == 1
    assert eng.watch(s, "b") == 3
    assert eng.ignore(s, "nope") == 3      # not watched: no error, no tube made
    assert "nope" not in eng.tubes
    assert eng.ignore(s, "a") == 2
    assert "a" not in eng.tubes
    assert eng.ignore(s, DEFAULT_TUBE) == 1
    assert DEFAULT_TUBE in eng.tubes       # default is never dropped
    assert eng.default_tube.watching == 0
    with pytest.raises(NotIgnored):
        eng.ignore(s, "b")
    assert [t.name for t in s.watch] == ["b"]


def test_default_tube_never_dropped(eng):
    s, _ = new_session(eng)
    eng.use(s, "x")
    eng.watch(s, "x")
    eng.ignore(s, DEFAULT_TUBE)
    assert DEFAULT_TUBE in eng.tubes
    eng.detach(s, T0)
    assert DEFAULT_TUBE in eng.tubes
    assert set(eng.tubes) == {DEFAULT_TUBE}


def test_tube_with_jobs_outlives_users(eng):
    s, _ = new_session(eng)
    eng.use(s, "x")
    j = put(eng, s, delay=3)
    eng.use(s, DEFAULT_TUBE)
    assert "x" in eng.tubes
    advance(eng, T0 + 3)
    assert "x" in eng.tubes
    eng.delete(s, j.id)
    assert "x" not in eng.tubes


def test_pause_goes_with_dropped_tube(eng):
    s, _ = new_session(eng)
    eng.use(s, "x")
    eng.pause_tube("x", 100, T0)
    eng.use(s, DEFAULT_TUBE)
    assert "x" not in eng.tubes
    eng.watch(s, "x")
    eng.use(s, "x")
    j = put(eng, s)
    assert not eng.tubes["x"].is_paused(T0 + 1)
    eng.ignore(s, DEFAULT_TUBE)
    assert eng.reserve(s, 0, T0 + 1) is j
    advance(eng, T0 + 200)                 # the old pause entry is harmless


def test_tube_order_is_swapset(eng):
    s, _ = new_session(eng)
    for name in "abcde":
        eng.watch(s, name)
    assert [t.name for t in eng.tube_order] == [DEFAULT_TUBE, "a", "b", "c", "d", "e"]
    assert [t.name for t in s.watch] == [DEFAULT_TUBE, "a", "b", "c", "d", "e"]
    eng.ignore(s, "b")                     # the last item fills the hole
    assert [t.name for t in eng.tube_order] == [DEFAULT_TUBE, "a", "e", "c", "d"]
    assert [t.name for t in s.watch] == [DEFAULT_TUBE, "a", "e", "c", "d"]
    eng.ignore(s, DEFAULT_TUBE)
    assert [t.name for t in eng.tube_order] == [DEFAULT_TUBE, "a", "e", "c", "d"]
    assert [t.name for t in s.watch] == ["d", "a", "e", "c"]
    eng.watch(s, "b")
    assert [t.name for t in eng.tube_order] == [DEFAULT_TUBE, "a", "e", "c", "d", "b"]


# -- SwapSet -------------------------------------------------------------------------

def test_swapset_removal_moves_last_into_hole():
    s = SwapSet([1, 2, 3, 4, 5])
    assert s.remove(2)
    assert list(s) == [1, 5, 3, 4]
    assert s.remove(4)                     # removing the last item: no move
    assert list(s) == [1, 5, 3]
    assert not s.remove(99)
    assert 5 in s and 2 not in s and len(s) == 3
    s.append(2)
    assert list(s) == [1, 5, 3, 2]


def test_swapset_take_sequence_like_beanstalkd():
    s = SwapSet([1, 2, 3, 4, 5, 6])
    assert [s.take() for _ in range(6)] == [1, 2, 3, 6, 5, 4]
    assert len(s) == 0


def test_swapset_index_consistency_after_many_ops():
    s = SwapSet(range(100))
    model = list(range(100))
    for x in range(0, 100, 3):
        s.remove(x)
        i = model.index(x)
        last = model.pop()
        if i < len(model):
            model[i] = last
    assert list(s) == model
    assert all(s.index[v] == i for i, v in enumerate(s.items))


# -- stale heap entries are pruned ---------------------------------------------------

BOUND_SLACK = 2200   # generous: a few multiples of the engine's rebuild thresholds


def _heap_sizes(eng, *sessions):
    t = eng.default_tube
    sizes = {"engine.delays": len(eng._delays), "engine.ttrs": len(eng._ttrs),
             "engine.waits": len(eng._waits), "engine.pauses": len(eng._pauses),
             "tube.ready": sum(map(len, t.ready.values())), "tube.delayed": len(t.delayed)}
    for i, s in enumerate(sessions):
        sizes["session%d.deadlines" % i] = len(s.deadlines)
    return sizes


def test_ready_heaps_hold_the_jobs_own_ids_one_heap_per_priority(eng):
    """A ready entry costs a list slot, not an int of its own (tube.py)."""
    s, _ = new_session(eng)
    jobs = [put(eng, s, pri=pri) for pri in (5, 1024, 5, 2 ** 32 - 1, 1024)]
    t = eng.default_tube
    assert sorted(t.ready) == [5, 1024, 2 ** 32 - 1] and t.pris[0] == 5
    for job in jobs:
        assert any(entry is job.id for entry in t.ready[job.pri])
    order = [eng.reserve(s, 0, T0).id for _ in jobs]
    assert order == [jobs[0].id, jobs[2].id, jobs[1].id, jobs[4].id, jobs[3].id]
    eng.release(s, jobs[3].id, 0, 0, T0)        # a new priority, an old id
    eng.release(s, jobs[1].id, 0, 0, T0)
    assert [eng.reserve(s, 0, T0).id for _ in range(2)] == [jobs[1].id, jobs[3].id]


def test_shrink_rebuilds_the_job_index_of_a_drained_backlog_in_place(eng):
    import sys
    s, _ = new_session(eng)
    jobs = [put(eng, s) for _ in range(100_000)]
    for job in jobs[:-10]:
        eng.delete(s, job.id)
    index = eng.jobs
    before = sys.getsizeof(index)
    assert eng.shrink()
    assert eng.jobs is index and eng.default_tube.jobs is index
    assert sys.getsizeof(index) < before // 100
    assert sorted(index) == [job.id for job in jobs[-10:]]
    assert eng.reserve(s, 0, T0) is jobs[-10]
    assert not eng.shrink()                 # nothing oversized left


def test_shrink_leaves_a_full_index_alone(eng):
    s, _ = new_session(eng)
    for _ in range(50_000):
        put(eng, s)
    assert not eng.shrink()


def test_deleting_delayed_jobs_does_not_grow_heaps(eng):
    s, _ = new_session(eng)
    keep = put(eng, s, delay=10 ** 6)
    for i in range(20000):
        j = put(eng, s, delay=1000 + i)
        eng.delete(s, j.id)
    sizes = _heap_sizes(eng, s)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes
    assert eng.default_tube.peek_delayed() is keep
    assert eng.delayed_total == 1


def test_deleting_ready_jobs_does_not_grow_heaps(eng):
    s, _ = new_session(eng)
    keep = put(eng, s, pri=10 ** 9)
    for i in range(20000):
        j = put(eng, s, pri=i % 7)
        eng.delete(s, j.id)
    sizes = _heap_sizes(eng, s)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes
    assert eng.default_tube.peek_ready() is keep
    assert eng.default_tube.ready_count == 1


def test_kicking_delayed_jobs_does_not_grow_heaps(eng):
    s, _ = new_session(eng)
    for i in range(20000):
        j = put(eng, s, delay=500 + i)
        eng.kick_job(j.id, T0)
        eng.delete(s, j.id)
    sizes = _heap_sizes(eng, s)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes


def test_reserve_delete_and_touch_cycles_do_not_grow_heaps(eng):
    s, _ = new_session(eng)
    held = put(eng, s, ttr=10 ** 6)
    eng.reserve(s, 0, T0)
    for i in range(20000):
        j = put(eng, s, ttr=100 + i)
        assert eng.reserve(s, 0, T0) is j
        eng.touch(s, j.id, T0 + i * 0.001)
        eng.touch(s, held.id, T0 + i * 0.001)
        eng.delete(s, j.id)
    sizes = _heap_sizes(eng, s)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes
    assert s.soonest_deadline() == held.deadline


def test_release_reserve_cycles_do_not_grow_heaps(eng):
    s, _ = new_session(eng)
    j = put(eng, s, pri=3)
    for i in range(20000):
        now = T0 + i * 0.001
        assert eng.reserve(s, 0, now) is j
        eng.release(s, j.id, 3, 0, now)
    sizes = _heap_sizes(eng, s)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes


def test_release_reserve_cycles_at_one_instant_do_not_grow_heaps(eng):
    """Reserving the same job again and again at the same clock reading (a coarse
    clock, or a fast client within one tick) pushes identical (deadline, id) entries
    into the TTR heap. Every one of them looks live, so pruning must also drop
    duplicates, or the heap grows without bound and every push re-prunes it (O(n)
    per push)."""
    s, _ = new_session(eng)
    j = put(eng, s, pri=3)
    for i in range(4000):
        assert eng.reserve(s, 0, T0) is j
        eng.release(s, j.id, 3, 0, T0)
    sizes = _heap_sizes(eng, s)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes


def test_touch_at_one_instant_does_not_grow_heaps(eng):
    s, _ = new_session(eng)
    j = put(eng, s, ttr=30)
    eng.reserve(s, 0, T0)
    for i in range(4000):
        eng.touch(s, j.id, T0 + 1)
    sizes = _heap_sizes(eng, s)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes


def test_parked_reserves_answered_by_put_do_not_grow_waits(eng):
    w, wwoken = new_session(eng)
    p, _ = new_session(eng)
    for i in range(20000):
        assert eng.reserve(w, 10 ** 6, T0) is None
        j = put(eng, p)
        assert wwoken[-1] is j
        eng.delete(w, j.id)
    sizes = _heap_sizes(eng, w, p)
    assert all(v < BOUND_SLACK for v in sizes.values()), sizes


def test_repeated_pauses_do_not_grow_heap(eng):
    for i in range(20000):
        eng.pause_tube(DEFAULT_TUBE, 1000 + i, T0)
    assert len(eng._pauses) < BOUND_SLACK


def test_stale_entries_do_not_disturb_timing(eng):
    """After thousands of deleted delayed jobs, a surviving one still matures exactly
    on time and next_wakeup eventually reaches it."""
    s, _ = new_session(eng)
    for i in range(5000):
        j = put(eng, s, delay=1 + (i % 50))
        eng.delete(s, j.id)
    keep = put(eng, s, delay=60)
    advance(eng, T0 + 59.9)
    assert keep.state == DELAYED
    assert eng.next_wakeup() == T0 + 60
    advance(eng, T0 + 60)
    assert keep.state == READY
