"""Per-key concurrency and the event stream over the wire, against real qserver
subprocesses (protocol.md, "Per-key concurrency", "put-ex", "config-tube",
"list-jobs", "subscribe"): issue 11's done-when cases.

* 20 jobs with `lock=acct-1` in a tube with `lock-limit 2`, reserved by 10 worker
  connections: never more than 2 reserved at once, measured exactly from the
  server's own event stream (the `reserve`, `complete` and `delete` events replayed
  in sequence order) and sampled with `list-jobs <tube> reserved`; all 20 finish.
* A subscriber that drops its connection and resumes from its last seq, again and
  again while other clients keep producing events, misses no event and sees none
  twice.
* Held jobs: `held` in job-info, stats-job and list-jobs, counted in no stats field;
  every way a holder's reservation ends (delete, release, bury, fail, TTR expiry,
  the connection closing) readies the oldest held job, and a waiting reserve gets it.
* After kill -9 and a restart with -b, in each fsync mode, the lock keys of put-ex
  jobs and the lock-limit policy still apply.

Expected replies are spelled out literally. Nothing here asserts a duration: waits
are for something to happen, each bounded with at least 10x room; worker sleeps only
make reservations overlap.
"""

import random
import re
import socket
import threading
import time

import pytest

from conftest import WAIT, Client, start_qserver
from test_events import subscribed
from test_ext_durability import MODES, kill9
from test_ext_wire import configure, info, ok_body, on_tube
from test_steering_wire import put_ex_id

# These tests run on both stores (the others use -b).
ON_BOTH_STORES = pytest.mark.usefixtures("each_store")

RUN_BOUND = 120.0       # the whole 20-job run: well under a second here
PARK_BOUND = 30.0       # a parked reserve's own timeout (it is answered in ms)
HOLDER_TTR = 3         # the holder whose TTR runs out: time enough for the checks
TTR_EXPIRY_READ = 30.0  # reading the answer to a reserve freed by that TTR expiry
FRAME = re.compile(rb"EVENT ([1-9][0-9]*)\r\n")
EVENT_KEYS = ["seq", "time", "id", "tube", "event", "attempt"]


# --------------------------------------------------------------------------- helpers

def read_frame(c: Client):
    """The next frame of a subscribed connection: ("gap", oldest) or the event as a
    dict (seq, id and attempt as int, tube unquoted, event and time as str)."""
    line = c.read_line()
    gap = re.fullmatch(rb"GAP ([1-9][0-9]*)\r\n", line)
    if gap:
        return ("gap", int(gap[1]))
    m = FRAME.fullmatch(line)
    assert m, line
    body = c.read_exact(int(m[1]) + 2)
    assert body.endswith(b"\r\n") and body.startswith(b"---\n"), body
    rows = body[4:-2].decode().split("\n")
    assert rows[-1] == "", body
    fields = dict(row.split(": ", 1) for row in rows[:-1])
    assert list(fields) == EVENT_KEYS, body
    assert re.fullmatch(r"[0-9]+\.[0-9]{3}", fields["time"]), body
    assert fields["tube"][0] == fields["tube"][-1] == '"', body
    return {"seq": int(fields["seq"]), "time": fields["time"], "id": int(fields["id"]),
            "tube": fields["tube"][1:-1], "event": fields["event"],
            "attempt": int(fields["attempt"])}


def read_event(c: Client) -> dict:
    frame = read_frame(c)
    assert isinstance(frame, dict), frame
    return frame


def page_ids(c: Client, tube: bytes, state: bytes) -> list:
    """The ids of one list-jobs page (limit 1000), checking each row's state."""
    body = ok_body(c.cmd(b"list-jobs %s %s 0 1000" % (tube, state)))
    assert body.startswith(b"---\nnext: ~\njobs:"), body
    ids = [int(i) for i in re.findall(rb"^- id: ([0-9]+)$", body, re.M)]
    states = re.findall(rb"^  state: ([a-z]+)$", body, re.M)
    assert len(states) == len(ids), body
    if state != b"all":
        assert set(states) <= {state}, body
    return ids


def listed(c: Client, tube: bytes) -> list:
    """(id, state) of every job of the tube, in list-jobs' `all` order."""
    body = ok_body(c.cmd(b"list-jobs %s all 0 1000" % tube))
    return [(int(i), s.decode()) for i, s in
            re.findall(rb"^- id: ([0-9]+)\n  state: ([a-z]+)$", body, re.M)]


def tube_counts(c: Client, tube: bytes) -> tuple:
    """stats-tube's (urgent, ready, reserved, delayed, buried, total-jobs)."""
    stats = c.yaml(b"stats-tube " + tube)
    return tuple(int(stats[k]) for k in (
        "current-jobs-urgent", "current-jobs-ready", "current-jobs-reserved",
        "current-jobs-delayed", "current-jobs-buried", "total-jobs"))


def state_of(c: Client, job_id: int) -> tuple:
    """(job-info state, stats-job state)."""
    return (c.yaml(b"job-info %d" % job_id)["state"],
            c.yaml(b"stats-job %d" % job_id)["state"])


def reserved_reply(job_id: int, body: bytes) -> bytes:
    return b"RESERVED %d %d\r\n%s\r\n" % (job_id, len(body), body)


def until(predicate, what: str, bound: float = WAIT) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def worker(server, tube: bytes) -> Client:
    """A connection watching only `tube`."""
    return on_tube(server, tube)


# --------------------------------------------------- 20 jobs, lock-limit 2, 10 workers

JOBS, FIRST, WORKERS, LIMIT = 20, 10, 10, 2


@ON_BOTH_STORES
def test_20_jobs_of_one_lock_with_lock_limit_2_and_10_workers(qserver):
    """Ten jobs are put first; the first two reservations wait at a gate until the
    other 8 are seen held (so the limit is reached for sure), then everything runs
    freely while the other ten jobs are put one by one (so reserves also meet fresh
    ready jobs of the lock, not only readied held ones). The event stream, replayed
    in seq order, shows at most 2 reserved at once, the jobs reserved in id order
    (the oldest held one is readied each time) and each finished exactly once."""
    sub = qserver.client()
    base = subscribed(sub, b"subscribe locks now")
    c = on_tube(qserver, b"locks")
    configure(c, b"locks", (b"lock-limit", b"2"))
    ids = [put_ex_id(c, b"job-%d" % n, b"lock=acct-1", ttr=int(RUN_BOUND))
           for n in range(FIRST)]
    assert ids == list(range(1, FIRST + 1))

    gate = threading.Event()
    finished = []               # ids, as each worker finishes them
    errors = []
    samples = []                # reserved counts: list-jobs reserved and stats-tube
    stop_sampling = threading.Event()

    def work(n: int) -> None:
        rng = random.Random(n)
        w = worker(qserver, b"locks")
        try:
            deadline = time.monotonic() + RUN_BOUND
            while len(finished) < JOBS and time.monotonic() < deadline:
                reply = w.cmd(b"reserve-with-timeout 1")
                if reply == b"TIMED_OUT\r\n":
                    continue
                m = re.fullmatch(rb"RESERVED ([0-9]+) ([0-9]+)\r\n(job-[0-9]+)\r\n",
                                 reply)
                assert m, reply
                job = int(m[1])
                gate.wait(RUN_BOUND)     # the main thread always opens it
                time.sleep(rng.uniform(0, 0.01))      # let reservations overlap
                if job % 5 == 0:
                    assert w.cmd(b"delete %d" % job) == b"DELETED\r\n"
                else:
                    assert w.cmd(b"complete %d 2\r\nok" % job) == b"COMPLETED\r\n"
                finished.append(job)
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            w.close()

    def sample() -> None:
        s = qserver.client()
        try:
            for _ in range(1_000_000):
                if stop_sampling.is_set():
                    return
                samples.append(len(page_ids(s, b"locks", b"reserved")))
                samples.append(tube_counts(s, b"locks")[2])
                time.sleep(0.002)
        except BaseException as error:
            errors.append(error)
        finally:
            s.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(WORKERS)]
    sampler = threading.Thread(target=sample)
    for t in threads + [sampler]:
        t.start()
    try:
        # Two jobs reserved, the other 8 held by the next reserve that came.
        until(lambda: len(page_ids(c, b"locks", b"held")) == FIRST - LIMIT,
              "8 held jobs")
        assert sorted(page_ids(c, b"locks", b"reserved")) == [1, 2]
        assert page_ids(c, b"locks", b"held") == list(range(3, FIRST + 1))  # by id
        assert page_ids(c, b"locks", b"ready") == []
        assert listed(c, b"locks")[2:] == [(i, "held") for i in range(3, FIRST + 1)]
        assert state_of(c, 3) == ("held", "held")
        assert state_of(c, FIRST) == ("held", "held")
        # held jobs are counted in no stats-tube field (urgent and ready neither)
        assert tube_counts(c, b"locks") == (0, 0, 2, 0, 0, FIRST)
        stats = c.yaml(b"stats")
        assert (stats["current-jobs-ready"], stats["current-jobs-reserved"],
                stats["current-jobs-urgent"]) == ("0", "2", "0")
        assert c.cmd(b"reserve-job 3") == b"NOT_FOUND\r\n"      # held
        gate.set()
        rng = random.Random(20)
        for n in range(FIRST, JOBS):
            time.sleep(rng.uniform(0, 0.01))
            ids.append(put_ex_id(c, b"job-%d" % n, b"lock=acct-1", ttr=int(RUN_BOUND)))
        assert ids == list(range(1, JOBS + 1))
    finally:
        gate.set()
        for t in threads:
            t.join(RUN_BOUND + WAIT)
        stop_sampling.set()
        sampler.join(WAIT)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads + [sampler])
    assert sorted(finished) == ids

    # A marker put after everything: the stream up to it is the whole story.
    assert c.cmd(b"put 0 0 60 6\r\nmarker") == b"INSERTED 21\r\n"
    events = []
    for _ in range(10 * JOBS + 100):
        events.append(read_event(sub))
        if events[-1]["id"] == 21:
            break
    assert events[-1]["event"] == "put" and events[-1]["id"] == 21
    events.pop()
    assert [e["seq"] for e in events] == list(range(base, base + len(events)))
    assert {e["tube"] for e in events} == {"locks"}
    names = [e["event"] for e in events]
    counts = {name: names.count(name) for name in set(names)}
    assert counts.pop("held", 0) >= FIRST - LIMIT
    assert counts == {"put": JOBS, "reserve": JOBS, "complete": JOBS - 4, "delete": 4}
    first_end = min(i for i, name in enumerate(names) if name in ("complete", "delete"))
    assert [e["id"] for e in events[:first_end] if e["event"] == "held"] == \
        list(range(3, FIRST + 1))
    assert {e["id"] for e in events if e["event"] == "held"} <= set(ids[LIMIT:])

    reserved, peak = set(), 0
    for e in events:
        if e["event"] == "reserve":
            assert e["id"] not in reserved, e
            reserved.add(e["id"])
            peak = max(peak, len(reserved))
        elif e["event"] in ("complete", "delete"):
            assert e["id"] in reserved, e
            reserved.remove(e["id"])
    assert peak == LIMIT and reserved == set()
    assert len(samples) >= 2 and max(samples) <= LIMIT
    # The oldest held job is readied each time: reservations come in id order.
    assert [e["id"] for e in events if e["event"] == "reserve"] == ids

    assert page_ids(c, b"locks", b"held") == [] and listed(c, b"locks") == [(21, "ready")]
    ext = c.yaml(b"stats-ext")
    assert ext["job-completions"] == str(JOBS - 4)
    assert c.yaml(b"stats-tube locks")["cmd-delete"] == str(JOBS)


@ON_BOTH_STORES
def test_jobs_without_the_lock_are_served_while_it_is_full(qserver):
    """Global (pri, id) order among the jobs that may be reserved: a held job is
    skipped, other keys and lock-less jobs come in their order."""
    c = on_tube(qserver, b"t")
    a = put_ex_id(c, b"a", b"lock=k1", pri=1)
    b = put_ex_id(c, b"b", b"lock=k1", pri=2)
    other = put_ex_id(c, b"o", b"lock=k2", pri=3)
    plain = put_ex_id(c, b"p", pri=4)
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(a, b"a")
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(other, b"o")
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(plain, b"p")
    assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert state_of(c, b) == ("held", "held")
    assert listed(c, b"t") == [(a, "reserved"), (other, "reserved"), (plain, "reserved"),
                               (b, "held")]


# ------------------------------------------------------ resuming the event stream

PRODUCERS = 3
MAX_ROUNDS = 5000           # per producer: 15,000 events at most, well inside the window
RECONNECTS = 8


@ON_BOTH_STORES
def test_a_subscriber_that_reconnects_misses_no_event_and_sees_none_twice(qserver):
    """The subscriber drops its connection every few dozen events, unread frames
    and all, and subscribes again from the last seq it read plus 1, while producers
    keep putting, reserving and finishing jobs; producers stop only after the last
    reconnect. Every event comes exactly once, in seq order, and they match what
    the producers did."""
    sub = qserver.client()
    base = subscribed(sub, b"subscribe * now")
    stop = threading.Event()
    done = [[] for _ in range(PRODUCERS)]       # (id, ending) per producer
    errors = []

    def produce(n: int) -> None:
        tube = b"p%d" % n
        p = on_tube(qserver, tube)
        try:
            for r in range(MAX_ROUNDS):
                if stop.is_set():
                    return
                job = put_ex_id(p, b"x", b"tag=t%d" % n)
                assert p.cmd(b"reserve-with-timeout 0") == reserved_reply(job, b"x")
                if r % 2:
                    assert p.cmd(b"delete %d" % job) == b"DELETED\r\n"
                    done[n].append((job, "delete"))
                else:
                    assert p.cmd(b"complete %d 0\r\n\r\n" % job) == b"COMPLETED\r\n"
                    done[n].append((job, "complete"))
        except BaseException as error:
            errors.append(error)
        finally:
            p.close()

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(PRODUCERS)]
    for t in threads:
        t.start()
    rng = random.Random(11)
    events = []
    reconnects = 0
    try:
        # Read a few dozen events, drop the connection, resume; RECONNECTS times.
        for _ in range(RECONNECTS):
            for _ in range(rng.randint(1, 60)):
                events.append(read_event(sub))
            if reconnects % 2:
                sub.sock.shutdown(socket.SHUT_RDWR)
            sub.close()             # frames already received but unread are lost
            resume = events[-1]["seq"] + 1
            sub = qserver.client()
            assert sub.cmd(b"subscribe * %d" % resume) == b"SUBSCRIBED %d\r\n" % resume
            reconnects += 1
    finally:
        stop.set()
        for t in threads:
            t.join(RUN_BOUND)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert all(done), "every producer ran"

    c = qserver.client()
    marker = inserted_marker(c)
    for _ in range(3 * PRODUCERS * MAX_ROUNDS + 10):
        frame = read_frame(sub)
        assert isinstance(frame, dict), frame           # no GAP
        events.append(frame)
        if frame["id"] == marker and frame["event"] == "put":
            break
    assert events[-1]["id"] == marker
    events.pop()
    assert reconnects == RECONNECTS
    assert [e["seq"] for e in events] == list(range(base, base + len(events)))
    got = sorted((e["tube"], e["id"], e["event"]) for e in events)
    expected = sorted((f"p{n}", job, name) for n in range(PRODUCERS)
                      for job, ending in done[n] for name in ("put", "reserve", ending))
    assert got == expected
    # and for each job in its order
    order = {}
    for e in events:
        order.setdefault(e["id"], []).append(e["event"])
    for n in range(PRODUCERS):
        for job, ending in done[n]:
            assert order[job] == ["put", "reserve", ending], job


def inserted_marker(c: Client) -> int:
    assert c.cmd(b"use marker") == b"USING marker\r\n"
    reply = c.cmd(b"put 0 0 60 1\r\nm")
    m = re.fullmatch(rb"INSERTED ([0-9]+)\r\n", reply)
    assert m, reply
    return int(m[1])


# ------------------------------------------------------- held jobs and their holders

ENDINGS = ["delete", "release", "bury", "fail", "ttr", "close"]


def _hold_two(server, tube: bytes, holder_ttr: int):
    """A holds the lock (limit 1); B (pri 5) is held first, then C (pri 1, a better
    priority) is held too: the oldest held is B. Returns (observer, holder
    connection, waiter connection, a, b, c)."""
    c = on_tube(server, tube)
    # A counted failure delays the holder 600 s, so it does not compete with B.
    configure(c, tube, (b"lock-limit", b"1"), (b"backoff", b"fixed:600"))
    a = put_ex_id(c, b"a", b"lock=acct-1", pri=0, ttr=holder_ttr)
    holder = worker(server, tube)
    assert holder.cmd(b"reserve-with-timeout 0") == reserved_reply(a, b"a")
    waiter = worker(server, tube)
    b = put_ex_id(c, b"b", b"lock=acct-1", pri=5)
    assert waiter.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"    # B held
    cc = put_ex_id(c, b"c", b"lock=acct-1", pri=1)
    assert waiter.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"    # C held
    return c, holder, waiter, a, b, cc


@ON_BOTH_STORES
@pytest.mark.parametrize("ending", ENDINGS)
def test_a_holder_ending_readies_the_oldest_held_job_for_a_waiting_reserve(
        qserver, ending):
    c, holder, waiter, a, b, cc = _hold_two(qserver, b"t",
                                            HOLDER_TTR if ending == "ttr" else 120)
    assert state_of(c, b) == ("held", "held") and state_of(c, cc) == ("held", "held")
    assert state_of(c, a) == ("reserved", "reserved")
    assert page_ids(c, b"t", b"held") == [b, cc]
    assert listed(c, b"t") == [(a, "reserved"), (b, "held"), (cc, "held")]
    assert tube_counts(c, b"t") == (0, 0, 1, 0, 0, 3)
    assert c.cmd(b"peek %d" % b) == b"FOUND %d 1\r\nb\r\n" % b
    assert c.cmd(b"reserve-job %d" % b) == b"NOT_FOUND\r\n"

    waiter.send(b"reserve-with-timeout %d\r\n" % PARK_BOUND)
    until(lambda: c.yaml(b"stats-tube t")["current-waiting"] == "1", "a parked reserve")
    if ending == "delete":
        assert holder.cmd(b"delete %d" % a) == b"DELETED\r\n"
    elif ending == "release":
        assert holder.cmd(b"release %d 0 600" % a) == b"RELEASED\r\n"
    elif ending == "bury":
        assert holder.cmd(b"bury %d 0" % a) == b"BURIED\r\n"
    elif ending == "fail":
        assert holder.cmd(b"fail %d 4\r\nboom" % a) == b"RETRYING 600\r\n"
    elif ending == "close":
        holder.close()
    if ending == "ttr":
        waiter.sock.settimeout(TTR_EXPIRY_READ)
    assert waiter.read_reply() == reserved_reply(b, b"b")
    assert state_of(c, b) == ("reserved", "reserved")
    assert state_of(c, cc) == ("held", "held")
    assert page_ids(c, b"t", b"held") == [cc]

    record = info(c, a) if ending != "delete" else None
    if ending == "delete":
        assert c.cmd(b"job-info %d" % a) == b"NOT_FOUND\r\n"
    elif ending == "bury":
        assert record["state"] == b"buried"
    else:
        assert record["state"] == b"delayed"
        reasons = {"release": [], "fail": [b"boom"], "ttr": [b"TTR expired"],
                   "close": [b"connection closed"]}[ending]
        assert [reason for _, reason in record["failures"]] == reasons
        assert record["attempts"] == b"%d" % len(reasons)

    # B's reservation ending readies C in turn.
    assert waiter.cmd(b"delete %d" % b) == b"DELETED\r\n"
    assert waiter.cmd(b"reserve-with-timeout 0") == reserved_reply(cc, b"c")
    assert page_ids(c, b"t", b"held") == []
    for conn in (holder, waiter, c):
        conn.close()


@ON_BOTH_STORES
def test_a_released_holder_with_a_better_priority_is_reserved_first(qserver):
    """Released ready again, the holder competes with the job its release readied:
    (pri, id) order decides, and the readied job is held again by the next reserve
    that finds the lock full."""
    c = on_tube(qserver, b"u")
    a = put_ex_id(c, b"a", b"lock=k", pri=0)
    b = put_ex_id(c, b"b", b"lock=k", pri=5)
    holder, waiter = worker(qserver, b"u"), worker(qserver, b"u")
    assert holder.cmd(b"reserve-with-timeout 0") == reserved_reply(a, b"a")
    assert waiter.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert state_of(c, b) == ("held", "held")
    waiter.send(b"reserve-with-timeout %d\r\n" % PARK_BOUND)
    until(lambda: c.yaml(b"stats-tube u")["current-waiting"] == "1", "a parked reserve")
    assert holder.cmd(b"release %d 0 0" % a) == b"RELEASED\r\n"
    assert waiter.read_reply() == reserved_reply(a, b"a")
    assert state_of(c, b) == ("ready", "ready")
    assert holder.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert state_of(c, b) == ("held", "held")
    assert waiter.cmd(b"delete %d" % a) == b"DELETED\r\n"
    assert holder.cmd(b"reserve-with-timeout 0") == reserved_reply(b, b"b")


@ON_BOTH_STORES
def test_held_jobs_can_be_peeked_deleted_flushed_and_cancelled(qserver):
    c = on_tube(qserver, b"h")
    a = put_ex_id(c, b"a", b"lock=k")
    held = [put_ex_id(c, b"x%d" % n, b"lock=k", b"tag=g%d" % (n % 2)) for n in range(4)]
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(a, b"a")
    assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert page_ids(c, b"h", b"held") == held
    assert c.cmd(b"peek %d" % held[0]) == b"FOUND %d 2\r\nx0\r\n" % held[0]
    assert c.cmd(b"delete %d" % held[0]) == b"DELETED\r\n"
    assert c.cmd(b"cancel-tag g1") == b"CANCELLED 2 0\r\n"       # held[1] and held[3]
    assert page_ids(c, b"h", b"held") == [held[2]]
    assert c.cmd(b"flush-tube h") == b"FLUSHED 1\r\n"            # held[2]; A stays
    assert listed(c, b"h") == [(a, "reserved")]
    # nothing is held any more: the lock's next job is reserved at once
    nxt = put_ex_id(c, b"n", b"lock=k")
    assert c.cmd(b"delete %d" % a) == b"DELETED\r\n"
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(nxt, b"n")


@ON_BOTH_STORES
def test_lock_limit_is_read_back_and_a_change_applies_to_the_next_reservation(qserver):
    c = on_tube(qserver, b"lim")
    assert c.cmd(b"config-tube lim") == yaml_ok(
        b'---\nname: "lim"\nconfigured: false\nmax-attempts: 0\nbackoff: none\n'
        b'dead-letter: "bury"\nretain: 0\nlock-limit: 1\n')
    for bad in (b"0", b"-1", b"x", b"4294967296"):
        assert c.cmd(b"config-tube lim lock-limit " + bad) == b"BAD_FORMAT\r\n", bad
    jobs = [put_ex_id(c, b"j%d" % n, b"lock=k") for n in range(3)]
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(jobs[0], b"j0")
    configure(c, b"lim", (b"lock-limit", b"2"))
    assert c.cmd(b"config-tube lim").endswith(b"\nlock-limit: 2\n\r\n")
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(jobs[1], b"j1")
    assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert state_of(c, jobs[2]) == ("held", "held")
    configure(c, b"lim", (b"lock-limit", b"1"))
    # One holder ends but the other still fills the lowered limit.
    assert c.cmd(b"delete %d" % jobs[0]) == b"DELETED\r\n"
    assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert state_of(c, jobs[2]) == ("held", "held")
    assert c.cmd(b"delete %d" % jobs[1]) == b"DELETED\r\n"
    assert c.cmd(b"reserve-with-timeout 0") == reserved_reply(jobs[2], b"j2")


def yaml_ok(body: bytes) -> bytes:
    return b"OK %d\r\n%s\r\n" % (len(body), body)


# ------------------------------------------------------------- kill -9 and restart

@MODES
def test_lock_keys_and_lock_limit_apply_after_sigkill(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = on_tube(server, b"t")
        configure(c, b"t", (b"lock-limit", b"3"), (b"lock-limit", b"2"))  # latest wins
        ids = [put_ex_id(c, b"a%d" % n, b"lock=acct-1") for n in range(4)]
        other = put_ex_id(c, b"b", b"lock=acct-2", b"key=k")
        w = worker(server, b"t")
        assert w.cmd(b"reserve-with-timeout 0") == reserved_reply(ids[0], b"a0")
        assert w.cmd(b"reserve-with-timeout 0") == reserved_reply(ids[1], b"a1")
        assert w.cmd(b"reserve-with-timeout 0") == reserved_reply(other, b"b")
        assert w.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
        assert page_ids(c, b"t", b"held") == ids[2:]
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = on_tube(restarted, b"t")
        assert c.cmd(b"config-tube t") == yaml_ok(
            b'---\nname: "t"\nconfigured: true\nmax-attempts: 0\nbackoff: none\n'
            b'dead-letter: "bury"\nretain: 0\nlock-limit: 2\n')
        # Held is not logged, reservations end with the process: all ready again.
        assert listed(c, b"t") == [(i, "ready") for i in ids + [other]]
        workers = [worker(restarted, b"t") for _ in range(4)]
        assert workers[0].cmd(b"reserve-with-timeout 0") == reserved_reply(ids[0], b"a0")
        assert workers[1].cmd(b"reserve-with-timeout 0") == reserved_reply(ids[1], b"a1")
        assert workers[2].cmd(b"reserve-with-timeout 0") == reserved_reply(other, b"b")
        assert workers[3].cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
        assert page_ids(c, b"t", b"held") == ids[2:]
        assert state_of(c, ids[2]) == ("held", "held")
        workers[3].send(b"reserve-with-timeout %d\r\n" % PARK_BOUND)
        until(lambda: c.yaml(b"stats-tube t")["current-waiting"] == "1",
              "a parked reserve")
        assert workers[0].cmd(b"complete %d 0\r\n\r\n" % ids[0]) == b"COMPLETED\r\n"
        assert workers[3].read_reply() == reserved_reply(ids[2], b"a2")
        assert page_ids(c, b"t", b"held") == [ids[3]]
        # the key came back too
        assert c.cmd(b"put-ex 0 0 60 1 key=k\r\nx") == b"DUPLICATE %d\r\n" % other
        for conn in workers + [c]:
            conn.close()
    finally:
        restarted.stop()
