"""The lifecycle extensions and the log (-b): policies, attempts, failures, progress,
results and retained records survive `kill -9` in every fsync mode and are replayed
exactly, also under load and after compaction; retained records still expire and
do not come back (protocol.md, "Extensions and the log").

Before/after comparisons are byte for byte on the replies, except `age` and
`time-left`, which move with the clock and are normalised.
"""

import os
import random
import re
import signal
import socket
import struct
import threading
import time

import pytest

from conftest import Client, start_qserver
from test_ext_wire import (EVENT_BOUND, _deliveries_until_buried, configure, info,
                           ok_body, on_tube, put, reserve_job, wait_for_state, with_body)

MODES = pytest.mark.parametrize("mode", [["-f", "0"], ["-f", "50"], ["-F"]],
                                ids=["fsync-always", "fsync-50ms", "no-fsync"])
PRODUCERS = 6
WORKERS = 8
LOAD_SECONDS = 1.5


# --------------------------------------------------------------------------- helpers

def kill9(server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    server.stop()


def normalised(reply: bytes) -> bytes:
    """A job-info reply with `age` and `time-left` blanked (other replies as they are)."""
    if not reply.startswith(b"OK "):
        return reply
    return re.sub(rb"\n(age|time-left): [0-9]+\n", rb"\n\1: *\n", ok_body(reply))


def without_file(shot: dict) -> dict:
    """A snapshot with job-info's `file` blanked: compaction moves records to newer
    segments, and `file` names the segment."""
    return {key: re.sub(rb"\nfile: [0-9]+\n", b"\nfile: *\n", value)
            if key.startswith(b"job-info") else value for key, value in shot.items()}


def snapshot(c: Client, ids, tubes) -> dict:
    shot = {}
    for tube in tubes:
        shot[b"config-tube " + tube] = c.cmd(b"config-tube " + tube)
    for job in ids:
        for command in (b"job-info %d", b"peek-result %d", b"peek %d"):
            shot[command % job] = normalised(c.cmd(command % job))
    ext = c.yaml(b"stats-ext")
    shot[b"gauges"] = (ext["current-retained"], ext["configured-tubes"])
    return shot


def assert_same(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for key in before:
        assert after[key] == before[key], key


def fail(c: Client, job: int, reason: bytes) -> bytes:
    return c.cmd(with_body(b"fail", job, reason))


def build_state(server) -> tuple:
    """Jobs and tubes in every shape the extensions add; returns (ids, tubes)."""
    c = server.client()
    ids = []
    # A retry waiting out a long fixed backoff, with progress and a binary reason.
    configure(c, b"retry", (b"max-attempts", b"5"), (b"backoff", b"fixed:100000"),
              (b"retain", b"3600"))
    r = on_tube(server, b"retry")
    a = put(r, b"job A", pri=11, ttr=30)
    reserve_job(r, a, b"job A")
    assert r.cmd(with_body(b"progress", a, b"p\x00A \"q\"")) == b"TOUCHED\r\n"
    assert fail(r, a, b"why\xff\r\n") == b"RETRYING 100000\r\n"
    ids.append(a)
    # Exponential backoff, then moved to a dead-letter tube (attempts reset there).
    configure(c, b"exp", (b"max-attempts", b"2"), (b"backoff", b"exp:5:300"),
              (b"dead-letter", b"tube:exp-dead"))
    e = on_tube(server, b"exp")
    b = put(e, b"job B", pri=12)
    reserve_job(e, b, b"job B")
    assert re.fullmatch(rb"RETRYING [345]\r\n", fail(e, b, b"b1"))
    reserve_job(e, b, b"job B")
    assert fail(e, b, b"b2") == b"MOVED exp-dead\r\n"
    ids.append(b)
    # Buried as a dead letter.
    configure(c, b"bury", (b"max-attempts", b"1"))
    u = on_tube(server, b"bury")
    cj = put(u, b"job C")
    reserve_job(u, cj, b"job C")
    assert fail(u, cj, b"c1") == b"BURIED\r\n"
    ids.append(cj)
    # Completed and retained, with a binary result and with an empty one.
    configure(c, b"done", (b"retain", b"3600"))
    d = on_tube(server, b"done")
    d1, d2 = put(d, b"job D1"), put(d, b"job D2")
    reserve_job(d, d1, b"job D1")
    assert d.cmd(with_body(b"progress", d1, b"90%")) == b"TOUCHED\r\n"
    assert d.cmd(with_body(b"complete", d1, b"\x00\r\nresult\xff")) == b"COMPLETED\r\n"
    reserve_job(d, d2, b"job D2")
    assert d.cmd(with_body(b"complete", d2, b"")) == b"COMPLETED\r\n"
    ids += [d1, d2]
    # Dead (dead-letter delete) and retained.
    configure(c, b"dead", (b"max-attempts", b"1"), (b"dead-letter", b"delete"),
              (b"retain", b"3600"))
    x = on_tube(server, b"dead")
    ej = put(x, b"job E")
    reserve_job(x, ej, b"job E")
    assert fail(x, ej, b"fatal") == b"DELETED\r\n"
    ids.append(ej)
    # Completed without retain: nothing is kept, before or after.
    configure(c, b"noret", (b"retain", b"0"))
    n = on_tube(server, b"noret")
    f = put(n, b"job F")
    reserve_job(n, f, b"job F")
    assert n.cmd(with_body(b"complete", f, b"lost")) == b"COMPLETED\r\n"
    ids.append(f)
    # No policy: fail buries and keeps the reason; progress stays after a release.
    g, h = put(c, b"job G"), put(c, b"job H")
    reserve_job(c, g, b"job G")
    assert fail(c, g, b"plain") == b"BURIED\r\n"
    reserve_job(c, h, b"job H")
    assert c.cmd(with_body(b"progress", h, b"step 2")) == b"TOUCHED\r\n"
    assert c.cmd(b"release %d 5 0" % h) == b"RELEASED\r\n"
    ids += [g, h]
    # A policy on a tube that has no jobs and no clients.
    configure(c, b"idle", (b"retain", b"7"), (b"dead-letter", b"tube:elsewhere"),
              (b"backoff", b"exp:1:2"), (b"max-attempts", b"4294967295"))
    tubes = [b"retry", b"exp", b"exp-dead", b"bury", b"done", b"dead", b"noret",
             b"default", b"idle", b"never"]
    for conn in (r, e, u, d, x, n, c):
        conn.close()
    return ids, tubes


# --------------------------------------------------------------------------- replay

@MODES
def test_lifecycle_state_is_replayed_exactly_after_sigkill(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        ids, tubes = build_state(server)
        before = snapshot(server.client(), ids, tubes)
    finally:
        kill9(server)
    assert before[b"gauges"] == ("3", "7")
    # With -b a retained record names the segment holding it.
    assert re.search(rb"\nstate: completed\n(.*\n)*file: [1-9]",
                     before[b"job-info %d" % ids[3]])
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = restarted.client()
        assert_same(before, snapshot(c, ids, tubes))
        # Replayed policies are in force, not just shown: a new job in `bury`
        # (max-attempts 1) is a dead letter at its first failure.
        u = on_tube(restarted, b"bury")
        job = put(u)
        reserve_job(u, job)
        assert fail(u, job, b"again") == b"BURIED\r\n"
        assert info(c, job)["max-attempts"] == b"1"
    finally:
        restarted.stop()


@MODES
def test_progress_of_a_job_reserved_at_the_kill_is_kept(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = on_tube(server, b"t")
        configure(c, b"t", (b"max-attempts", b"3"))
        job = put(c, b"busy")
        reserve_job(c, job, b"busy")
        assert fail(c, job, b"first") == b"RETRYING 0\r\n"
        reserve_job(c, job, b"busy")
        assert c.cmd(with_body(b"progress", job, b"last words")) == b"TOUCHED\r\n"
        before = info(c, job)
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        after = info(restarted.client(), job)
        assert (before["state"], after["state"]) == (b"reserved", b"ready")
        # (`reserves` is as of the last logged change: a reserve is not logged.)
        for key in ("progress", "attempts", "failures", "max-attempts", "pri", "ttr"):
            assert after[key] == before[key], key
    finally:
        restarted.stop()


@MODES
def test_189_buried_after_three_ttr_expiries_stays_buried_after_sigkill(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = on_tube(server, b"t189")
        configure(c, b"t189", (b"max-attempts", b"3"))
        job = put(c, ttr=1)
        workers = _deliveries_until_buried(server, b"t189", job, leave=lambda w: None)
        assert len(workers) == 3
        record = wait_for_state(c, job, b"buried")
        assert (record["attempts"], record["timeouts"], record["reserves"]) == \
            (b"3", b"3", b"3")
        assert [r for _, r in record["failures"]] == [b"TTR expired"] * 3
        before = normalised(c.cmd(b"job-info %d" % job))
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = restarted.client()
        assert normalised(c.cmd(b"job-info %d" % job)) == before
        assert c.cmd(b"peek-buried") == b"NOT_FOUND\r\n"          # default is empty
        w = on_tube(restarted, b"t189")
        assert w.cmd(b"peek-buried") == b"FOUND %d 3\r\njob\r\n" % job
        assert w.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- under load

class Ledger:
    """What the clients sent and what the server acknowledged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bodies = {}            # acknowledged put: id -> body
        self.fails_sent = {}        # id -> set of reasons sent
        self.fails_acked = {}       # id -> set of reasons acknowledged
        self.buried = set()         # acknowledged BURIED (attempts used up)
        self.results_sent = {}      # id -> result sent with complete
        self.completed = set()      # acknowledged COMPLETED
        self.progress_sent = {}     # id -> {data: send order}
        self.progress_acked = {}    # id -> highest send order acknowledged
        self.retain_sent = []       # config-tube values sent, in order
        self.retain_acked = []
        self.errors = []            # unexpected replies


def _connect(port) -> Client:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = Client(sock)
    return c


def _producer(port, ledger, stop, n):
    try:
        c = _connect(port)
        assert c.cmd(b"use load") == b"USING load\r\n"
        i = 0
        while not stop.is_set():
            body = b"p%d-%d" % (n, i)
            c.send(b"put 100 0 60 %d\r\n%s\r\n" % (len(body), body))
            reply = c.read_line()
            m = re.fullmatch(rb"INSERTED (\d+)\r\n", reply)
            if m is None:
                ledger.errors.append(reply)
                return
            with ledger.lock:
                ledger.bodies[int(m[1])] = body
            i += 1
    except (OSError, ConnectionError, AssertionError):
        pass


def _worker(port, ledger, stop, n):
    rand = random.Random(n)
    try:
        c = _connect(port)
        assert c.cmd(b"watch load") == b"WATCHING 2\r\n"
        while not stop.is_set():
            c.send(b"reserve-with-timeout 1\r\n")
            reply = c.read_line()
            if not reply.startswith(b"RESERVED"):
                continue
            job, size = map(int, reply.split()[1:3])
            c.read_exact(size + 2)
            # progress: its send order is a monotonic clock reading, so later
            # holders' progress always sorts after earlier ones'.
            order = time.monotonic_ns()
            data = b"w%d-%d" % (n, order)
            with ledger.lock:
                ledger.progress_sent.setdefault(job, {})[data] = order
            c.send(with_body(b"progress", job, data))
            reply = c.read_line()
            if reply != b"TOUCHED\r\n":
                ledger.errors.append((b"progress", job, reply))
                return
            with ledger.lock:
                acked = ledger.progress_acked
                acked[job] = max(acked.get(job, 0), order)
            if rand.random() < 0.6:
                reason = b"r%d-%d" % (n, time.monotonic_ns())
                with ledger.lock:
                    ledger.fails_sent.setdefault(job, set()).add(reason)
                c.send(with_body(b"fail", job, reason))
                reply = c.read_line()
                if reply not in (b"RETRYING 0\r\n", b"BURIED\r\n"):
                    ledger.errors.append((b"fail", job, reply))
                    return
                with ledger.lock:
                    ledger.fails_acked.setdefault(job, set()).add(reason)
                    if reply == b"BURIED\r\n":
                        ledger.buried.add(job)
            else:
                result = b"res-%d-\x00\xff" % job
                with ledger.lock:
                    ledger.results_sent[job] = result
                c.send(with_body(b"complete", job, result))
                reply = c.read_line()
                if reply != b"COMPLETED\r\n":
                    ledger.errors.append((b"complete", job, reply))
                    return
                with ledger.lock:
                    ledger.completed.add(job)
    except (OSError, ConnectionError, AssertionError):
        pass


def _configurer(port, ledger, stop):
    try:
        c = _connect(port)
        value = 0
        while not stop.is_set():
            value += 1
            ledger.retain_sent.append(value)
            reply = c.cmd(b"config-tube knob retain %d" % value)
            if reply != b"CONFIGURED\r\n":
                ledger.errors.append((b"config-tube", reply))
                return
            ledger.retain_acked.append(value)
    except (OSError, ConnectionError):
        pass


def _run_load_then_kill(server) -> Ledger:
    ledger = Ledger()
    stop = threading.Event()
    port = server.port
    threads = [threading.Thread(target=_producer, args=(port, ledger, stop, n))
               for n in range(PRODUCERS)]
    threads += [threading.Thread(target=_worker, args=(port, ledger, stop, n))
                for n in range(WORKERS)]
    threads.append(threading.Thread(target=_configurer, args=(port, ledger, stop)))
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS)         # the load runs; the kill comes in the middle of it
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    return ledger


def _check_ledger(c: Client, ledger: Ledger) -> None:
    assert not ledger.errors, ledger.errors[:5]
    assert ledger.bodies and ledger.completed and ledger.buried and ledger.retain_acked, \
        "the load did not reach every kind of acknowledged change"
    for job, body in ledger.bodies.items():
        if job in ledger.results_sent and job not in ledger.completed:
            # A complete the kill cut short: nothing was acknowledged, so Durability
            # promises nothing here. Whether it is all or nothing is
            # test_a_command_cut_short_by_the_kill_is_all_or_nothing's business.
            continue
        record = info(c, job)           # live or retained (retain 3600): never gone
        if job in ledger.completed:
            assert record["state"] == b"completed", job
            result = ledger.results_sent[job]
            assert c.cmd(b"peek-result %d" % job) == \
                b"FOUND %d %d\r\n%s\r\n" % (job, len(result), result), job
        else:
            assert c.cmd(b"peek %d" % job) == \
                b"FOUND %d %d\r\n%s\r\n" % (job, len(body), body), job
        reasons = {r for _, r in record["failures"]}
        assert ledger.fails_acked.get(job, set()) <= reasons, job
        assert reasons <= ledger.fails_sent.get(job, set()), job
        assert record["attempts"] == b"%d" % len(reasons), job
        if job in ledger.buried:
            assert (record["state"], record["attempts"]) == (b"buried", b"3"), job
        sent = ledger.progress_sent.get(job, {})
        if record["progress"] == b"~":
            assert job not in ledger.progress_acked, job
        else:
            assert record["progress"] in sent, job
            assert sent[record["progress"]] >= ledger.progress_acked.get(job, 0), job
    knob = c.cmd(b"config-tube knob")
    retain = int(re.search(rb"\nretain: ([0-9]+)\n", knob)[1])
    assert ledger.retain_acked[-1] <= retain <= ledger.retain_sent[-1]
    highest = max(ledger.bodies)
    assert int(c.cmd(b"put 0 0 1 1\r\nx").split()[1]) > highest
    print(f"\nchecked {len(ledger.bodies)} jobs: {len(ledger.completed)} completed, "
          f"{sum(map(len, ledger.fails_acked.values()))} fails, {len(ledger.buried)} "
          f"buried, {len(ledger.progress_acked)} with progress acknowledged")


@MODES
def test_sigkill_under_load_loses_no_acknowledged_lifecycle_change(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        configure(server.client(), b"load", (b"max-attempts", b"3"),
                  (b"backoff", b"none"), (b"retain", b"3600"))
        ledger = _run_load_then_kill(server)
    finally:
        server.stop()
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = restarted.client()
        _check_ledger(c, ledger)
        assert c.cmd(b"config-tube load").count(b"max-attempts: 3\n") == 1
        assert c.yaml(b"stats")["current-jobs-reserved"] == "0"
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- torn commands

# Record types of protocol.md, "Extensions and the log" (and "Record format").
DELETE, LIFECYCLE, FINISHED = 3, 5, 6


def _last_records(directory) -> tuple:
    """(path, [(offset, type)]) of the records in the newest log segment, read by the
    framing of protocol.md, "Record format": a 16-byte header, then u32 length,
    u32 crc, payload; a zero length ends the data."""
    names = [n for n in os.listdir(directory) if n.startswith("qlog.")]
    path = os.path.join(directory, max(names, key=lambda n: int(n.split(".")[1])))
    with open(path, "rb") as f:
        data = f.read()
    found, pos = [], 16
    while pos + 8 <= len(data):
        length, _ = struct.unpack_from("<II", data, pos)
        if length == 0:
            break
        found.append((pos, data[pos + 8]))
        pos += 8 + length
    return path, found


def _command_records(directory, kinds: list) -> tuple:
    """(path, {type: offset}) of the last command's records, checked to be `kinds`
    in this order at the end of the newest segment."""
    path, found = _last_records(directory)
    assert [kind for _, kind in found[-len(kinds):]] == kinds, found[-len(kinds):]
    return path, {kind: offset for offset, kind in found[-len(kinds):]}


def _zero_from(path, offset) -> None:
    """The log as if the process died before writing anything from `offset` on
    (segments are preallocated with zeros)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(size - offset))


def _complete_then_kill(tmp_path) -> int:
    server = start_qserver("-b", str(tmp_path), "-F")
    try:
        c = on_tube(server, b"t")
        configure(c, b"t", (b"retain", b"3600"))
        job = put(c, b"body")
        reserve_job(c, job, b"body")
        assert c.cmd(with_body(b"progress", job, b"p")) == b"TOUCHED\r\n"
        assert c.cmd(with_body(b"complete", job, b"the result")) == b"COMPLETED\r\n"
    finally:
        kill9(server)
    return job


@pytest.mark.parametrize("cut", [FINISHED, LIFECYCLE],
                         ids=["killed-before-FINISHED", "killed-before-LIFECYCLE"])
def test_a_command_cut_short_by_the_kill_is_all_or_nothing(tmp_path, cut):
    job = _complete_then_kill(tmp_path)
    path, offsets = _command_records(tmp_path, [DELETE, FINISHED, LIFECYCLE])
    _zero_from(path, offsets[cut])
    restarted = start_qserver("-b", str(tmp_path), "-F")
    try:
        c = restarted.client()
        reply = c.cmd(b"job-info %d" % job)
        assert reply.startswith(b"OK "), "the job is gone and no record was kept"
        if info(c, job)["state"] == b"completed":         # all of the complete...
            assert c.cmd(b"peek-result %d" % job) == b"FOUND %d 10\r\nthe result\r\n" % job
        else:                                             # ...or none of it
            assert c.cmd(b"peek %d" % job) == b"FOUND %d 4\r\nbody\r\n" % job
    finally:
        restarted.stop()


def test_an_uncut_complete_replays_with_its_result(tmp_path):
    """The control for the test above: the same log, not cut."""
    job = _complete_then_kill(tmp_path)
    _command_records(tmp_path, [DELETE, FINISHED, LIFECYCLE])    # the records are there
    restarted = start_qserver("-b", str(tmp_path), "-F")
    try:
        c = restarted.client()
        assert info(c, job)["state"] == b"completed"
        assert c.cmd(b"peek-result %d" % job) == b"FOUND %d 10\r\nthe result\r\n" % job
    finally:
        restarted.stop()


# --------------------------------------------------------------------------- expiry

def _complete_with_retain(server, tube: bytes, retain: bytes, result: bytes) -> int:
    c = on_tube(server, tube)
    configure(c, tube, (b"retain", retain))
    job = put(c)
    reserve_job(c, job)
    assert c.cmd(with_body(b"complete", job, result)) == b"COMPLETED\r\n"
    assert c.cmd(b"peek-result %d" % job) == \
        b"FOUND %d %d\r\n%s\r\n" % (job, len(result), result)
    c.close()
    return job


def _wait_until_gone(c: Client, job: int) -> None:
    deadline = time.monotonic() + EVENT_BOUND
    while c.cmd(b"job-info %d" % job) != b"NOT_FOUND\r\n":
        assert time.monotonic() < deadline, "the retained record never expired"
        time.sleep(0.05)


@MODES
def test_expired_record_does_not_come_back_after_sigkill(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        short = _complete_with_retain(server, b"short", b"1", b"brief")
        long = _complete_with_retain(server, b"long", b"3600", b"kept")
        c = server.client()
        _wait_until_gone(c, short)
        assert c.cmd(b"peek-result %d" % short) == b"NOT_FOUND\r\n"
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = restarted.client()
        for command in (b"job-info %d", b"peek-result %d"):
            assert c.cmd(command % short) == b"NOT_FOUND\r\n"
        assert c.cmd(b"peek-result %d" % long) == b"FOUND %d 4\r\nkept\r\n" % long
        assert c.yaml(b"stats-ext")["current-retained"] == "1"
    finally:
        restarted.stop()


def test_record_that_expires_while_the_server_is_down_is_dropped(tmp_path):
    server = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        job = _complete_with_retain(server, b"short", b"2", b"brief")
        done_at = time.time()
    finally:
        kill9(server)
    deadline = time.monotonic() + EVENT_BOUND
    while time.time() < done_at + 3:          # the record's wall-clock expiry passes
        assert time.monotonic() < deadline
        time.sleep(0.1)
    restarted = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        c = restarted.client()
        for command in (b"job-info %d", b"peek-result %d"):
            assert c.cmd(command % job) == b"NOT_FOUND\r\n"
        assert c.yaml(b"stats-ext")["current-retained"] == "0"
    finally:
        restarted.stop()


def test_record_is_readable_after_restart_until_it_expires(tmp_path):
    server = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        job = _complete_with_retain(server, b"mid", b"3", b"soon gone")
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        c = restarted.client()
        # Either still retained (then with its result) or already expired; the
        # restart never extends it.
        first = c.cmd(b"peek-result %d" % job)
        assert first in (b"FOUND %d 9\r\nsoon gone\r\n" % job, b"NOT_FOUND\r\n")
        _wait_until_gone(c, job)
    finally:
        restarted.stop()
    again = start_qserver("-b", str(tmp_path), "-f", "0")
    try:
        assert again.client().cmd(b"job-info %d" % job) == b"NOT_FOUND\r\n"
    finally:
        again.stop()


# --------------------------------------------------------------------------- compaction

SEGMENT = 64 * 1024


def _churn_until_compacted(c: Client, above: int) -> int:
    """Put and delete jobs until binlog-oldest-index passes `above` (compaction
    rewrote everything older and removed it); returns the new oldest index."""
    body = b"x" * 200
    for _ in range(400):                    # bounded: a few dozen rounds are needed
        c.send(b"".join(b"put 0 0 60 200\r\n%s\r\n" % body for _ in range(100)))
        ids = [int(c.read_line().split()[1]) for _ in range(100)]
        c.send(b"".join(b"delete %d\r\n" % i for i in ids))
        for _ in ids:
            assert c.read_line() == b"DELETED\r\n"
        oldest = int(c.yaml(b"stats")["binlog-oldest-index"])
        if oldest > above:
            return oldest
    raise AssertionError("compaction never removed the old segments")


@MODES
def test_compaction_keeps_policies_histories_and_retained_records(tmp_path, mode):
    server = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), *mode)
    try:
        ids, tubes = build_state(server)
        c = server.client()
        first = int(c.yaml(b"stats")["binlog-current-index"])
        before = snapshot(c, ids, tubes)
        _churn_until_compacted(c, first)
        assert int(c.yaml(b"stats")["binlog-records-migrated"]) >= 1
        during = snapshot(c, ids, tubes)
        assert_same(without_file(before), without_file(during))
        moved = [key for key in during if key.startswith(b"job-info")
                 and during[key] != before[key]]
        assert moved, "compaction rewrote none of the jobs and records"
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), *mode)
    try:
        assert_same(during, snapshot(restarted.client(), ids, tubes))
    finally:
        restarted.stop()


def test_compaction_drops_expired_records_and_keeps_the_rest(tmp_path):
    server = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), "-F")
    try:
        short = _complete_with_retain(server, b"short", b"2", b"brief")
        long = _complete_with_retain(server, b"long", b"3600", b"kept")
        c = server.client()
        oldest = _churn_until_compacted(c, int(c.yaml(b"stats")["binlog-current-index"]))
        # The short record was rewritten by that sweep; it expires all the same...
        _wait_until_gone(c, short)
        # ...and a later sweep leaves it behind.
        _churn_until_compacted(c, int(c.yaml(b"stats")["binlog-current-index"]))
        assert int(c.yaml(b"stats")["binlog-oldest-index"]) > oldest
        assert c.cmd(b"peek-result %d" % long) == b"FOUND %d 4\r\nkept\r\n" % long
    finally:
        kill9(server)
    restarted = start_qserver("-b", str(tmp_path), "-s", str(SEGMENT), "-F")
    try:
        c = restarted.client()
        assert c.cmd(b"job-info %d" % short) == b"NOT_FOUND\r\n"
        assert c.cmd(b"peek-result %d" % short) == b"NOT_FOUND\r\n"
        assert c.cmd(b"peek-result %d" % long) == b"FOUND %d 4\r\nkept\r\n" % long
        assert c.cmd(b"config-tube short").count(b"retain: 2\n") == 1
    finally:
        restarted.stop()
