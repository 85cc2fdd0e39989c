"""The steering extensions and the log (-b): unique keys, tags, cancelled flags and
flushes survive `kill -9` in every fsync mode and are replayed exactly, also under
load and after compaction; one command's records (a put-ex's JOB and META, a
cancel-tag's DELETEs and METAs) come back all or nothing (protocol.md, "put-ex",
"flush-tube", "cancel-tag", "Extensions and the log (-b)").

Before/after comparisons are byte for byte on the replies, except `age` and
`time-left`, which move with the clock and are normalised.
"""

import contextlib
import functools
import re
import threading
import time

import pytest

from conftest import Client, start_qserver
from test_ext_durability import (MODES, SEGMENT, _churn_until_compacted,
                                 _command_records, _connect, _last_records, _zero_from,
                                 assert_same, kill9, snapshot, without_file)
from test_ext_wire import (EVENT_BOUND, configure, info, on_tube, put, reserve_job,
                           with_body)
from test_steering_wire import (flow_list, inserted, put_ex, put_ex_bytes, put_ex_id,
                                steering_fields)

PRODUCERS = 4
# The load runs until at least this much was acknowledged, then the server is killed.
MIN_PUTS, MIN_FLUSHES, MIN_CANCELS = 1000, 5, 5

# Record types of protocol.md, "Record format" and "Extensions and the log (-b)".
JOB, DELETE, META, FLUSH, GROUP = 1, 3, 7, 8, 9

LONG_KEY = b'"\\' + b"k" * 198                      # 200 bytes, quoted in job-info
LONG_TAGS = [b"t%d" % i + b"x" * 198 for i in range(8)]


# --------------------------------------------------------------------------- state

def build_steering_state(server) -> dict:
    """Jobs in every shape the steering extensions add. Returns what a restart must
    bring back: ids to snapshot, tubes, keys held (tube, key, id), keys free again
    (tube, key) and what each cancel-tag must then answer."""
    c = server.client()
    k = on_tube(server, b"k")
    kr = put_ex_id(k, b"kr", b"key=ready", b"tag=a", b"tag=b", pri=3, ttr=40)
    kd = put_ex_id(k, b"kd", b"key=delayed", b"tag=a", delay=100000)
    kb = put_ex_id(k, b"kb", b"key=buried")
    reserve_job(k, kb, b"kb")
    assert k.cmd(b"bury %d 7" % kb) == b"BURIED\r\n"
    kf = put_ex_id(k, b"kf", b"key=flag", b"tag=c")
    reserve_job(k, kf, b"kf")
    assert k.cmd(b"cancel-tag c") == b"CANCELLED 0 1\r\n"
    assert k.cmd(b"release %d 9 0" % kf) == b"RELEASED\r\n"      # flagged, now ready
    kl = put_ex_id(k, b"kl", b"key=" + LONG_KEY, *(b"tag=" + t for t in LONG_TAGS))
    k2 = on_tube(server, b"k2")
    other = put_ex_id(k2, b"k2", b"key=ready", b"tag=b")       # same key, another tube
    ret = on_tube(server, b"ret")
    configure(c, b"ret", (b"retain", b"3600"))
    kc = put_ex_id(ret, b"kc", b"key=done", b"tag=d")
    reserve_job(ret, kc, b"kc")
    assert ret.cmd(with_body(b"complete", kc, b"res")) == b"COMPLETED\r\n"
    fl = on_tube(server, b"fl")
    f1 = put_ex_id(fl, b"f1", b"key=f1", b"tag=e")
    f2 = put_ex_id(fl, b"f2", b"key=f2", b"tag=e", delay=100000)
    fh = put_ex_id(fl, b"fh", b"key=fh", b"tag=e")
    reserve_job(fl, fh, b"fh")
    assert fl.cmd(b"flush-tube fl") == b"FLUSHED 2\r\n"
    assert fl.cmd(b"release %d 0 0" % fh) == b"RELEASED\r\n"
    cx = on_tube(server, b"cx")
    x1 = put_ex_id(cx, b"x1", b"key=x1", b"tag=gone")
    x2 = put_ex_id(cx, b"x2", b"tag=gone", b"tag=a")
    assert cx.cmd(b"cancel-tag gone") == b"CANCELLED 2 0\r\n"
    plain = put(c, b"plain")
    for conn in (c, k, k2, ret, fl, cx):
        conn.close()
    return {
        "ids": [kr, kd, kb, kf, kl, other, kc, f1, f2, fh, x1, x2, plain],
        "tubes": [b"k", b"k2", b"ret", b"fl", b"cx", b"default"],
        "held": [(b"k", b"ready", kr), (b"k", b"delayed", kd), (b"k", b"buried", kb),
                 (b"k", b"flag", kf), (b"k", LONG_KEY, kl), (b"k2", b"ready", other),
                 (b"ret", b"done", kc), (b"fl", b"fh", fh)],
        "free": [(b"fl", b"f1"), (b"fl", b"f2"), (b"cx", b"x1")],
        "fields": {kr: (b"ready", [b"a", b"b"], False),
                   kd: (b"delayed", [b"a"], False), kb: (b"buried", [], False),
                   kf: (b"flag", [b"c"], True), kl: (LONG_KEY, sorted(LONG_TAGS), False),
                   other: (b"ready", [b"b"], False), kc: (b"done", [b"d"], False),
                   fh: (b"fh", [b"e"], False)},
        "gone": [f1, f2, x1, x2],
        # cancel-tag answers after the restart, in this order.
        "cancels": [(b"gone", b"0 0"), (b"d", b"0 0"), (b"a", b"2 0"), (b"b", b"1 0"),
                    (b"c", b"1 0"), (b"e", b"1 0"), (LONG_TAGS[3], b"1 0"),
                    (LONG_TAGS[0], b"0 0")],
    }


def check_steering_state(server, state: dict) -> None:
    """Keys, tags and flags behave as before the restart."""
    c = server.client()
    for job, fields in state["fields"].items():
        assert steering_fields(c, job) == fields, job
    for job in state["gone"]:
        assert c.cmd(b"job-info %d" % job) == b"NOT_FOUND\r\n", job
    for tube, key, holder in state["held"]:
        t = on_tube(server, tube)
        assert put_ex(t, b"again", b"key=" + key) == b"DUPLICATE %d\r\n" % holder, key
        t.close()
    newest = max(state["ids"])
    for tube, key in state["free"]:
        t = on_tube(server, tube)
        fresh = put_ex_id(t, b"again", b"key=" + key)
        assert fresh > newest
        assert put_ex(t, b"again", b"key=" + key) == b"DUPLICATE %d\r\n" % fresh
        t.close()
    for tag, counts in state["cancels"]:
        assert c.cmd(b"cancel-tag " + tag) == b"CANCELLED %s\r\n" % counts, tag


# --------------------------------------------------------------------------- replay

@MODES
def test_steering_state_is_replayed_exactly_after_sigkill(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        state = build_steering_state(server)
        before = snapshot(server.client(), state["ids"], state["tubes"])
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        assert_same(before, snapshot(restarted.client(), state["ids"], state["tubes"]))
        check_steering_state(restarted, state)
    finally:
        restarted.stop()


@MODES
def test_jobs_reserved_at_the_kill_come_back_ready_with_their_flags(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = on_tube(server, b"t")
        a = put_ex_id(c, b"a", b"key=a", b"tag=g")
        b = put_ex_id(c, b"b", b"key=b", b"tag=g", b"tag=h")
        reserve_job(c, a, b"a")
        reserve_job(c, b, b"b")
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 2\r\n"
        flushed = put_ex_id(c, b"f", b"key=f", b"tag=h")
        held = put_ex_id(c, b"d", b"key=d", b"tag=h")
        reserve_job(c, held, b"d")
        assert c.cmd(b"flush-tube t") == b"FLUSHED 1\r\n"
        assert steering_fields(c, a) == (b"a", [b"g"], True)
    finally:
        kill9(server)              # a, b and d are reserved by a live connection
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = on_tube(restarted, b"t")
        for job, fields in ((a, (b"a", [b"g"], True)), (b, (b"b", [b"g", b"h"], True)),
                            (held, (b"d", [b"h"], False))):
            assert info(c, job)["state"] == b"ready", job
            assert steering_fields(c, job) == fields, job
        assert c.cmd(b"peek %d" % flushed) == b"NOT_FOUND\r\n"
        assert put_ex(c, b"x", b"key=a") == b"DUPLICATE %d\r\n" % a
        assert put_ex(c, b"x", b"key=d") == b"DUPLICATE %d\r\n" % held
        assert put_ex_id(c, b"x", b"key=f") > held
        # Flagged before the kill, reserved again after it: still cancelled.
        reserve_job(c, a, b"a")
        assert c.cmd(b"touch %d" % a) == b"CANCELLED\r\n"
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 1\r\n"        # b removed, a flagged
        assert c.cmd(b"cancel-tag h") == b"CANCELLED 1 0\r\n"        # held
        assert c.cmd(b"delete %d" % a) == b"DELETED\r\n"
        assert c.yaml(b"stats-tube t")["current-jobs-ready"] == "1"  # the key=f put
    finally:
        restarted.stop()


@MODES
def test_flush_and_cancel_stay_done_after_a_second_restart(tmp_path, mode):
    """A restart rewrites nothing by itself: what the first replay dropped must
    stay dropped when the same log is read again."""
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        state = build_steering_state(server)
    finally:
        kill9(server)
    for _ in range(2):
        again = start_qserver("-b", str(tmp_path), *mode)
        try:
            c = again.client()
            for job in state["gone"]:
                assert c.cmd(b"job-info %d" % job) == b"NOT_FOUND\r\n", job
            for job, fields in state["fields"].items():
                assert steering_fields(c, job) == fields, job
        finally:
            kill9(again)


def test_a_moved_jobs_key_stays_in_its_new_tube_after_sigkill(tmp_path):
    """A dead letter moved to another tube holds its key there, before and after a
    restart, and the tube it left is free of it."""
    server = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        c = on_tube(server, b"t")
        configure(c, b"t", (b"max-attempts", b"1"), (b"dead-letter", b"tube:d"))
        job = put_ex_id(c, b"x", b"key=k", b"tag=g")
        reserve_job(c, job, b"x")
        assert c.cmd(with_body(b"fail", job, b"r")) == b"MOVED d\r\n"
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        d = on_tube(restarted, b"d")
        assert steering_fields(d, job) == (b"k", [b"g"], False)
        assert put_ex(d, b"y", b"key=k") == b"DUPLICATE %d\r\n" % job
        t = on_tube(restarted, b"t")
        assert put_ex_id(t, b"y", b"key=k") > job
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- under load

class SteeringLedger:
    """What the clients sent and what the server acknowledged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}              # body -> (tube, key, tags) of every put-ex sent
        self.acked = {}             # id -> body of every acknowledged INSERTED
        self.refused = set()        # bodies of put-ex sent with a key already taken
        self.flushes = []           # per round: {"ids": [...], "state": ...}
        self.cancels = []           # per round: {"tag", "removed", "flagged", "state"}
        self.errors = []            # unexpected replies

    def count(self, rounds) -> int:
        return sum(1 for r in rounds if r["state"] == "acked")


def _send_put_ex(c: Client, ledger: SteeringLedger, tube: bytes, body: bytes,
                 key: bytes, tags: tuple):
    """One put-ex; returns its id, or None (the reply was not INSERTED)."""
    with ledger.lock:
        ledger.sent[body] = (tube, key, tuple(sorted(tags)))
    c.send(put_ex_bytes(body, b"key=" + key, *(b"tag=" + t for t in tags)))
    reply = c.read_line()
    m = re.fullmatch(rb"INSERTED ([0-9]+)\r\n", reply)
    if m is None:
        ledger.errors.append((body, reply))
        return None
    job = int(m[1])
    with ledger.lock:
        ledger.acked[job] = body
    return job


def _producer(port, ledger, stop, n):
    try:
        c = _connect(port)
        assert c.cmd(b"use keep") == b"USING keep\r\n"
        mine = []
        i = 0
        while not stop.is_set():
            if i % 10 == 9 and mine:
                # A key that is taken: refused, naming its holder.
                job, key = mine[(i * 7) % len(mine)]
                body = b"dup-%d-%d" % (n, i)
                with ledger.lock:
                    ledger.refused.add(body)
                c.send(put_ex_bytes(body, b"key=" + key, b"tag=keep"))
                reply = c.read_line()
                if reply != b"DUPLICATE %d\r\n" % job:
                    ledger.errors.append((body, reply))
                    return
            else:
                key = b"p%d-%d" % (n, i)
                job = _send_put_ex(c, ledger, b"keep", b"keep-%d-%d" % (n, i), key,
                                   (b"keep", b"p%d" % n))
                if job is None:
                    return
                mine.append((job, key))
            i += 1
    except (OSError, ConnectionError, AssertionError):
        pass


def _rounds(port, ledger, stop, tube: bytes, rounds: list, run_round):
    """Rounds of one kind on one connection using `tube` until stopped. Each round's
    record is in `rounds` before it starts; `run_round(c, r, record)` fills it in,
    sets its state to "sent" before the command that ends the round, and returns
    False on an unexpected reply. A round whose last reply came is "acked"."""
    try:
        c = _connect(port)
        assert c.cmd(b"use " + tube) == b"USING " + tube + b"\r\n"
        r = 0
        while not stop.is_set():
            record = {"state": "unsent"}
            with ledger.lock:
                rounds.append(record)
            if not run_round(c, r, record):
                return
            record["state"] = "acked"
            r += 1
    except (OSError, ConnectionError, AssertionError):
        pass


def _flush_round(ledger, c: Client, r: int, record: dict) -> bool:
    """Five jobs with keys and tags, then flush-tube (nobody else uses `fl`)."""
    record["ids"] = []
    for j in range(5):
        job = _send_put_ex(c, ledger, b"fl", b"fl-%d-%d" % (r, j), b"fl%d-%d" % (r, j),
                           (b"fl", b"fl%d" % r))
        if job is None:
            return False
        record["ids"].append(job)
    record["state"] = "sent"
    reply = c.cmd(b"flush-tube fl")
    if reply != b"FLUSHED 5\r\n":
        ledger.errors.append((b"flush", r, reply))
        return False
    return True


def _cancel_round(ledger, c: Client, r: int, record: dict) -> bool:
    """Four jobs with a tag of their own, two of them reserved, then cancel-tag."""
    tag = b"c%d" % r
    record.update(tag=tag, removed=[], flagged=[])
    for j in range(4):
        job = _send_put_ex(c, ledger, b"cx", b"cx-%d-%d" % (r, j), b"c%d-%d" % (r, j),
                           (tag, b"cx"))
        if job is None:
            return False
        record["flagged" if j < 2 else "removed"].append(job)
    for job in record["flagged"]:
        reply = c.cmd(b"reserve-job %d" % job)
        if not reply.startswith(b"RESERVED %d " % job):
            ledger.errors.append((b"reserve-job", job, reply))
            return False
    record["state"] = "sent"
    reply = c.cmd(b"cancel-tag " + tag)
    if reply != b"CANCELLED 2 2\r\n":
        ledger.errors.append((b"cancel", r, reply))
        return False
    return True


def _run_load_then_kill(server) -> SteeringLedger:
    ledger = SteeringLedger()
    stop = threading.Event()
    port = server.port
    threads = [threading.Thread(target=_producer, args=(port, ledger, stop, n))
               for n in range(PRODUCERS)]
    threads += [threading.Thread(target=_rounds, args=(
        port, ledger, stop, tube, rounds, functools.partial(run_round, ledger)))
        for tube, rounds, run_round in ((b"fl", ledger.flushes, _flush_round),
                                        (b"cx", ledger.cancels, _cancel_round))]
    for t in threads:
        t.start()
    try:
        # The kill comes in the middle of the load, once every kind of change was
        # acknowledged a few times.
        deadline = time.monotonic() + EVENT_BOUND
        while (len(ledger.acked) < MIN_PUTS or ledger.count(ledger.flushes) < MIN_FLUSHES
               or ledger.count(ledger.cancels) < MIN_CANCELS):
            assert not ledger.errors, ledger.errors[:5]
            assert all(t.is_alive() for t in threads), "a load thread stopped early"
            assert time.monotonic() < deadline, "the load did not get going"
            time.sleep(0.01)
    finally:
        kill9(server)
        stop.set()
        for t in threads:
            t.join(15)
            assert not t.is_alive()
    return ledger


def _scan(c: Client, last: int) -> dict:
    """id -> body of every live job with an id up to `last` (peek, pipelined)."""
    found = {}
    for start in range(1, last + 1, 200):
        ids = range(start, min(start + 200, last + 1))
        c.send(b"".join(b"peek %d\r\n" % job for job in ids))
        for job in ids:
            reply = c.read_reply()
            if reply != b"NOT_FOUND\r\n":
                m = re.fullmatch(rb"FOUND %d ([0-9]+)\r\n(.*)\r\n" % job, reply, re.S)
                assert m and int(m[1]) == len(m[2]), reply
                found[job] = m[2]
    return found


def _record(c: Client, job: int) -> tuple:
    """(tube, key, sorted tags, cancelled, state) from job-info."""
    record = info(c, job)
    key = None if record["key"] == b"~" else record["key"]
    return (record["tube"], key, tuple(sorted(flow_list(record["tags"]))),
            record["cancelled"] == b"true", record["state"])


def _check_ledger(c: Client, ledger: SteeringLedger) -> None:
    assert not ledger.errors, ledger.errors[:5]
    probe = inserted(c.cmd(b"put 0 0 60 5\r\nprobe"))
    assert probe > max(ledger.acked)
    live = _scan(c, probe - 1)
    records = {job: _record(c, job) for job in live}
    # Every job there is a put-ex that was sent, whole: its tube, key and tags as
    # sent (never a job without its key), and acknowledged ones under their id.
    for job, body in live.items():
        assert body not in ledger.refused, (job, body)
        assert body in ledger.sent, (job, body)
        tube, key, tags, _, _ = records[job]
        assert (tube, key, tags) == ledger.sent[body], job
        if job in ledger.acked:
            assert ledger.acked[job] == body, job
    flagged = set()
    for round_ in ledger.cancels:
        if round_["state"] == "acked":
            flagged.update(round_["flagged"])
    # Acknowledged puts in `keep` are all there, with their keys held.
    keep = [(job, body) for job, body in ledger.acked.items()
            if ledger.sent[body][0] == b"keep"]
    for job, _ in keep:
        assert job in live, job
    for start in range(0, len(keep), 200):
        chunk = keep[start:start + 200]
        c.send(b"use keep\r\n" + b"".join(
            put_ex_bytes(b"again", b"key=" + ledger.sent[body][1]) for _, body in chunk))
        assert c.read_line() == b"USING keep\r\n"
        for job, _ in chunk:
            assert c.read_line() == b"DUPLICATE %d\r\n" % job
    # Flushes: acknowledged ones are done, the one cut short is all or nothing.
    for round_ in ledger.flushes:
        present = [job in live for job in round_["ids"]]
        if round_["state"] == "acked":
            assert not any(present), round_
        elif round_["state"] == "sent":
            assert all(present) or not any(present), round_
        else:
            assert all(present), round_
    # Cancels likewise; flags only where a cancel-tag found the job reserved.
    for round_ in ledger.cancels:
        removed = [job in live for job in round_["removed"]]
        flags = [records[job][3] for job in round_["flagged"] if job in live]
        assert all(job in live for job in round_["flagged"]), round_
        if round_["state"] == "acked":
            assert not any(removed) and all(flags), round_
        elif round_["state"] == "sent":
            assert (not any(removed) and all(flags)) or (all(removed) and not any(flags)), \
                round_
        else:
            assert all(removed) and not any(flags), round_
    for job, (_, _, _, cancelled, state) in records.items():
        if cancelled:
            assert any(job in r["flagged"] for r in ledger.cancels
                       if r["state"] != "unsent"), job
            assert state == b"ready", job       # reserved at the kill, ready again
    assert c.yaml(b"stats")["current-jobs-reserved"] == "0"
    # After the restart an acknowledged cancel's flagged jobs are ready: a new
    # cancel-tag removes them.
    done = [r for r in ledger.cancels if r["state"] == "acked"]
    assert c.cmd(b"cancel-tag " + done[0]["tag"]) == b"CANCELLED 2 0\r\n"
    print(f"\nchecked {len(ledger.acked)} acknowledged puts, {len(live)} live jobs, "
          f"{ledger.count(ledger.flushes)} flushes, {len(done)} cancels")


@MODES
def test_sigkill_under_load_loses_no_acknowledged_steering_change(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        ledger = _run_load_then_kill(server)
    finally:
        server.stop()
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        _check_ledger(restarted.client(), ledger)
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- compaction

@MODES
def test_compaction_keeps_keys_tags_and_flags(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), *mode)
    try:
        state = build_steering_state(server)
        c = server.client()
        first = int(c.yaml(b"stats")["binlog-current-index"])
        before = snapshot(c, state["ids"], state["tubes"])
        _churn_until_compacted(c, first)
        # Every segment written while the state was built is gone now.
        assert int(c.yaml(b"stats")["binlog-oldest-index"]) > first
        during = snapshot(c, state["ids"], state["tubes"])
        assert_same(without_file(before), without_file(during))
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), *mode)
    try:
        assert_same(during, snapshot(restarted.client(), state["ids"], state["tubes"]))
        check_steering_state(restarted, state)
    finally:
        restarted.stop()


def test_compaction_after_a_flag_keeps_the_flag(tmp_path):
    """A job whose JOB record is old and whose META record (the flag) is newer:
    the sweep rewrites both."""
    server = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), "-F")
    try:
        c = on_tube(server, b"t")
        job = put_ex_id(c, b"x", b"key=k", b"tag=g")
        first = int(c.yaml(b"stats")["binlog-current-index"])
        churn = server.client()
        _churn_until_compacted(churn, first)
        reserve_job(c, job, b"x")
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 1\r\n"
        assert c.cmd(b"release %d 0 0" % job) == b"RELEASED\r\n"
        _churn_until_compacted(churn, int(churn.yaml(b"stats")["binlog-current-index"]))
        assert steering_fields(c, job) == (b"k", [b"g"], True)
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), "-F")
    try:
        c = on_tube(restarted, b"t")
        assert steering_fields(c, job) == (b"k", [b"g"], True)
        assert put_ex(c, b"y", b"key=k") == b"DUPLICATE %d\r\n" % job
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 0\r\n"
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- torn commands
# Each test runs one command against a -F server, kills it, optionally zeroes the
# log from one of the command's records on (as if the process had died before
# writing it), and looks at what a restart makes of it.

def _run_then_kill(tmp_path, steps):
    """`steps(connection using and watching t)` against a fresh server, then kill -9;
    returns what `steps` returned."""
    server = start_qserver("-b", str(tmp_path), "-F")
    try:
        return steps(on_tube(server, b"t"))
    finally:
        kill9(server)


@contextlib.contextmanager
def _restarted(tmp_path):
    """A connection on tube t to a server restarted on the log."""
    server = start_qserver("-b", str(tmp_path), "-F")
    try:
        yield on_tube(server, b"t")
    finally:
        server.stop()


def _put_ex(c: Client) -> tuple:
    before = put_ex_id(c, b"before", b"key=before")
    return before, put_ex_id(c, b"body", b"key=k", b"tag=g", b"tag=h")


@pytest.mark.parametrize("cut", [META, JOB], ids=["killed-before-META",
                                                  "killed-before-JOB"])
def test_a_put_ex_cut_short_by_the_kill_is_gone_entirely(tmp_path, cut):
    before, job = _run_then_kill(tmp_path, _put_ex)
    path, offsets = _command_records(tmp_path, [GROUP, JOB, META])
    _zero_from(path, offsets[cut])
    with _restarted(tmp_path) as c:
        for command in (b"peek %d", b"job-info %d"):
            assert c.cmd(command % job) == b"NOT_FOUND\r\n", "a job without its options"
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 0\r\n"
        assert c.yaml(b"stats-tube t")["current-jobs-ready"] == "1"
        assert put_ex(c, b"x", b"key=before") == b"DUPLICATE %d\r\n" % before
        assert put_ex(c, b"x", b"key=k").startswith(b"INSERTED ")


def test_an_uncut_put_ex_replays_with_its_options(tmp_path):
    """The control for the test above: the same log, not cut."""
    _, job = _run_then_kill(tmp_path, _put_ex)
    _command_records(tmp_path, [GROUP, JOB, META])
    with _restarted(tmp_path) as c:
        assert c.cmd(b"peek %d" % job) == b"FOUND %d 4\r\nbody\r\n" % job
        assert steering_fields(c, job) == (b"k", [b"g", b"h"], False)
        assert put_ex(c, b"x", b"key=k") == b"DUPLICATE %d\r\n" % job
        assert c.cmd(b"cancel-tag h") == b"CANCELLED 1 0\r\n"


def _cancel(c: Client) -> tuple:
    """Two jobs with the tag removed and one flagged, in one cancel-tag."""
    first = put_ex_id(c, b"one", b"tag=g")
    held = put_ex_id(c, b"two", b"tag=g")
    last = put_ex_id(c, b"three", b"tag=g")
    reserve_job(c, held, b"two")
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 2 1\r\n"
    return first, held, last


def _cancel_records(tmp_path) -> tuple:
    """(path, offsets) of the cancel-tag's records: a GROUP, then two DELETEs and a
    META in some order."""
    path, found = _last_records(tmp_path)
    assert found[-4][1] == GROUP, found[-4:]
    assert sorted(kind for _, kind in found[-3:]) == [DELETE, DELETE, META], found[-4:]
    return path, [offset for offset, _ in found[-3:]]


@pytest.mark.parametrize("cut", [1, 2], ids=["killed-before-the-2nd",
                                             "killed-before-the-3rd"])
def test_a_cancel_tag_cut_short_by_the_kill_is_all_or_nothing(tmp_path, cut):
    first, held, last = _run_then_kill(tmp_path, _cancel)
    path, offsets = _cancel_records(tmp_path)
    _zero_from(path, offsets[cut])
    with _restarted(tmp_path) as c:
        for job, body in ((first, b"one"), (held, b"two"), (last, b"three")):
            assert c.cmd(b"peek %d" % job) == b"FOUND %d %d\r\n%s\r\n" % (
                job, len(body), body), job
            assert steering_fields(c, job) == (None, [b"g"], False), job
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 3 0\r\n"


def test_an_uncut_cancel_tag_replays_whole(tmp_path):
    first, held, last = _run_then_kill(tmp_path, _cancel)
    _cancel_records(tmp_path)
    with _restarted(tmp_path) as c:
        assert c.cmd(b"peek %d" % first) == b"NOT_FOUND\r\n"
        assert c.cmd(b"peek %d" % last) == b"NOT_FOUND\r\n"
        assert steering_fields(c, held) == (None, [b"g"], True)
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 0\r\n"


def _flush(c: Client) -> list:
    ids = [put_ex_id(c, b"f%d" % i, b"key=f%d" % i) for i in range(3)]
    ids.append(put(c, b"plain", delay=100000))
    assert c.cmd(b"flush-tube t") == b"FLUSHED 4\r\n"
    return ids


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "killed-before-FLUSH"])
def test_a_flush_is_one_record(tmp_path, cut):
    ids = _run_then_kill(tmp_path, _flush)
    path, offsets = _command_records(tmp_path, [FLUSH])
    if cut:
        _zero_from(path, offsets[FLUSH])
    with _restarted(tmp_path) as c:
        present = [c.cmd(b"peek %d" % job) != b"NOT_FOUND\r\n" for job in ids]
        assert present == [cut] * 4
        reply = put_ex(c, b"x", b"key=f0")
        if cut:
            assert reply == b"DUPLICATE %d\r\n" % ids[0]
        else:
            assert reply.startswith(b"INSERTED ")
