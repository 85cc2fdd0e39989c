"""flush-tube of a big tube over the wire (protocol.md, "flush-tube"): the flush
runs a slice per loop turn, its client hears `FLUSHED <n>` when it is logged, and
the client's later commands wait for that reply; a client that leaves or half-closes
does not stop the flush; and `kill -9` or SIGTERM in the middle of one leaves all of
its jobs or none, in every fsync mode.

The tubes hold tens of thousands of jobs so that a flush takes several slices; the
assertions hold however many slices it took, and nothing here asserts a duration.
"""

import re
import signal
import socket
import time

import pytest

from conftest import Client, start_qserver
from test_ext_durability import MODES, kill9
from test_ext_wire import EVENT_BOUND, on_tube
from test_steering_wire import inserted, put_ex, put_ex_id

BIG = 40_000


def fill(c: Client, count: int, delayed_every: int = 4) -> int:
    """Pipeline `count` puts into the connection's tube (every `delayed_every`-th
    delayed); returns the last id."""
    last = 0
    for start in range(0, count, 5000):
        batch = range(start, min(count, start + 5000))
        c.send(b"".join(b"put %d %d 60 1\r\nx\r\n" % (i % 100, 3600 if i % delayed_every == 0
                                                             else 0) for i in batch))
        for _ in batch:
            last = inserted(c.read_line())
    return last


def stat(c: Client, command: bytes, key: str) -> int:
    return int(c.yaml(command)[key])


def wait_for_stat(c: Client, command: bytes, key: str, value: int) -> None:
    deadline = time.monotonic() + EVENT_BOUND
    while stat(c, command, key) != value:
        assert time.monotonic() < deadline, (command, key, value)
        time.sleep(0.01)


def test_the_commands_after_a_big_flush_wait_for_its_reply(qserver):
    c = on_tube(qserver, b"t")
    fill(c, BIG)
    c.send(b"flush-tube t\r\nstats-tube t\r\nput 0 0 60 1\r\ny\r\npeek-ready\r\n")
    assert c.read_line() == b"FLUSHED %d\r\n" % BIG
    tube = c.read_reply()
    assert b"\ncurrent-jobs-ready: 0\n" in tube and b"\ncurrent-jobs-delayed: 0\n" in tube
    fresh = inserted(c.read_line())
    assert c.read_reply() == b"FOUND %d 1\r\ny\r\n" % fresh
    assert stat(c, b"stats-ext", "jobs-flushed") == BIG
    assert stat(c, b"stats", "current-jobs-ready") == 1


def test_a_half_closed_client_still_hears_its_flush(qserver):
    c = on_tube(qserver, b"t")
    fill(c, BIG)
    c.send(b"flush-tube t\r\nstats-tube nobody\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.read_line() == b"FLUSHED %d\r\n" % BIG
    assert c.read_line() == b"NOT_FOUND\r\n"
    assert c.expect_closed()


def test_a_flush_goes_on_when_its_client_leaves(qserver):
    c = on_tube(qserver, b"t")
    fill(c, BIG)
    c.send(b"flush-tube t\r\n")
    c.close()
    other = qserver.client()
    wait_for_stat(other, b"stats-ext", "jobs-flushed", BIG)
    assert stat(other, b"stats", "current-jobs-ready") == 0
    assert other.cmd(b"stats-tube t") == b"NOT_FOUND\r\n"      # unused, so dropped


def start_keyed_flush(server) -> tuple:
    """Tube t: one job with key k, then BIG plain ones; flush-tube sent on one
    connection, and once another sees the tube empty, it checks that the keyed job
    is gone for it and puts a job with key k. Returns (flushing connection, other
    connection, keyed id, new id)."""
    c = on_tube(server, b"t")
    keyed = put_ex_id(c, b"old", b"key=k")
    fill(c, BIG)
    other = on_tube(server, b"t")
    c.send(b"flush-tube t\r\n")
    wait_for_stat(other, b"stats-tube t", "current-jobs-ready", 0)
    # Whether or not the flush is still forgetting jobs, they are gone for everyone.
    assert other.cmd(b"peek %d" % keyed) == b"NOT_FOUND\r\n"
    assert other.cmd(b"delete %d" % keyed) == b"NOT_FOUND\r\n"
    return c, other, keyed, put_ex_id(other, b"new", b"key=k")


def test_others_see_the_tube_empty_and_its_keys_free_while_it_flushes(qserver):
    c, other, _, fresh = start_keyed_flush(qserver)
    assert other.cmd(b"peek-ready") == b"FOUND %d 3\r\nnew\r\n" % fresh
    flushed = int(re.fullmatch(rb"FLUSHED (\d+)\r\n", c.read_line())[1])
    assert flushed == BIG + 1
    assert put_ex(other, b"again", b"key=k") == b"DUPLICATE %d\r\n" % fresh


# ------------------------------------------------------------------ the log (-b)

def _flush_then(tmp_path, mode, stop) -> tuple:
    """A big tube with one keyed job, a flush started, a put-ex taking over the key
    once the tube looks empty, then `stop(server)`. Returns (keyed id, new id,
    whether FLUSHED was heard before the stop)."""
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        c, _, keyed, fresh = start_keyed_flush(server)
        heard = not c.nothing_within(0.001)
        stop(server)
        return keyed, fresh, heard
    finally:
        server.stop()


def _check_restarted(tmp_path, keyed: int, fresh: int, all_gone: bool | None) -> None:
    server = start_qserver("-b", str(tmp_path), "-F")
    try:
        c = on_tube(server, b"t")
        ready = stat(c, b"stats-tube t", "current-jobs-ready")
        delayed = stat(c, b"stats-tube t", "current-jobs-delayed")
        # All or nothing: the flushed jobs are all back, or none is.
        assert (ready + delayed) in (1, BIG + 1), (ready, delayed)
        if all_gone:
            assert (ready, delayed) == (1, 0)
        # The old keyed job went with its own DELETE when the key was taken over.
        assert c.cmd(b"peek %d" % keyed) == b"NOT_FOUND\r\n"
        assert c.cmd(b"peek %d" % fresh) == b"FOUND %d 3\r\nnew\r\n" % fresh
        assert put_ex(c, b"again", b"key=k") == b"DUPLICATE %d\r\n" % fresh
    finally:
        server.stop()


@MODES
def test_kill_9_during_a_big_flush_leaves_all_of_its_jobs_or_none(tmp_path, mode):
    keyed, fresh, heard = _flush_then(tmp_path, mode, kill9)
    print("FLUSHED heard before the kill:", heard)
    _check_restarted(tmp_path, keyed, fresh, all_gone=heard or None)


@MODES
def test_kill_9_right_after_flush_tube_is_sent(tmp_path, mode):
    """Killed at once: most often while the flush collects its jobs (nothing is
    logged: all come back), sometimes after its record (all gone); never part."""
    server = start_qserver("-b", str(tmp_path), *mode)
    try:
        c = on_tube(server, b"t")
        keyed = put_ex_id(c, b"old", b"key=k")
        fill(c, BIG)
        c.send(b"flush-tube t\r\n")
        kill9(server)
        try:                                # whatever came before the connection died
            heard = c.read_line().startswith(b"FLUSHED")
        except (ConnectionError, OSError):
            heard = False
    finally:
        server.stop()
    server = start_qserver("-b", str(tmp_path), "-F")
    try:
        c = on_tube(server, b"t")
        jobs = (stat(c, b"stats-tube t", "current-jobs-ready")
                + stat(c, b"stats-tube t", "current-jobs-delayed"))
        print("FLUSHED heard before the kill:", heard, "jobs after the restart:", jobs)
        assert jobs in (0, BIG + 1)
        if heard:
            assert jobs == 0
        if jobs:
            assert c.cmd(b"peek %d" % keyed) == b"FOUND %d 3\r\nold\r\n" % keyed
            assert put_ex(c, b"again", b"key=k") == b"DUPLICATE %d\r\n" % keyed
        else:
            assert put_ex_id(c, b"again", b"key=k") > keyed + BIG
    finally:
        server.stop()


@MODES
def test_sigterm_during_a_big_flush_completes_and_logs_it(tmp_path, mode):
    def terminate(server):
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(EVENT_BOUND) == 0

    keyed, fresh, _ = _flush_then(tmp_path, mode, terminate)
    _check_restarted(tmp_path, keyed, fresh, all_gone=True)
