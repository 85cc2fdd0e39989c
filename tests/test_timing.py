"""Timer accuracy over the wire, against a real qserver subprocess.

Each test measures, with time.monotonic() on the client side, how long after the
triggering command an answer arrives, counting from a moment no later than the one
the server counts from. beanstalkd's timers are second-granular deadlines; we require
the answer no earlier than the deadline (exactly, up to conftest.EARLY) and at most
conftest.LATE after it, room a slow or busy host cannot use up. "At once" means
within conftest.SOON, well below the shortest timer it is told apart from. Every
blocking read is bounded (the conftest Client times out after 5 s), so a broken
timer fails a test instead of hanging it.
"""

import socket
import time

import pytest

from conftest import EARLY, LATE, SOON, assert_on_time, start_qserver


@pytest.fixture
def server():
    s = start_qserver()
    # The server binds before it imports the rest of itself, so its first reply can
    # take tens of milliseconds. Warm it up so the tests measure timers, not start-up.
    warm = s.client()
    try:
        assert warm.cmd(b"list-tube-used") == b"USING default\r\n"
    finally:
        warm.close()
    yield s
    s.stop()


@pytest.fixture
def clients(server):
    made = []

    def make():
        c = server.client()
        made.append(c)
        # one round trip, so the connection is set up before anything is timed
        assert c.cmd(b"list-tube-used") == b"USING default\r\n"
        return c

    yield make
    for c in made:
        c.close()


def timed_reply(client, data: bytes = None, since: float = None):
    """Send `data` (if any), wait for one whole reply; return (reply, seconds).

    Seconds are counted from `since` if given, else from just before sending."""
    start = time.monotonic() if since is None else since
    if data is not None:
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        client.send(data)
    reply = client.read_reply()
    return reply, time.monotonic() - start


def put(client, body=b"x", pri=0, delay=0, ttr=60) -> int:
    reply = client.cmd(b"put %d %d %d %d\r\n%s" % (pri, delay, ttr, len(body), body))
    assert reply.startswith(b"INSERTED "), reply
    return int(reply.split()[1])


def reserved_id(reply: bytes) -> int:
    assert reply.startswith(b"RESERVED "), reply
    return int(reply.split()[1])


# -- reserve timeouts ------------------------------------------------------------

def test_reserve_with_timeout_one_second(clients):
    c = clients()
    reply, elapsed = timed_reply(c, b"reserve-with-timeout 1")
    assert reply == b"TIMED_OUT\r\n"
    assert_on_time(elapsed, 1.0, "reserve-with-timeout 1")


def test_reserve_with_timeout_zero_answers_at_once(clients):
    c = clients()
    reply, elapsed = timed_reply(c, b"reserve-with-timeout 0")
    assert reply == b"TIMED_OUT\r\n"
    assert elapsed < SOON, f"TIMED_OUT took {elapsed:.4f} s"
    job = put(c)
    reply, elapsed = timed_reply(c, b"reserve-with-timeout 0")
    assert reserved_id(reply) == job
    assert elapsed < SOON


def test_two_concurrent_reserve_timeouts(clients):
    """Two waiting connections with different timeouts each time out on time."""
    a, b = clients(), clients()
    start = time.monotonic()
    a.send(b"reserve-with-timeout 2\r\n")
    b.send(b"reserve-with-timeout 1\r\n")
    reply, elapsed = timed_reply(b, since=start)
    assert reply == b"TIMED_OUT\r\n"
    assert_on_time(elapsed, 1.0, "reserve-with-timeout 1 (beside a 2 s one)")
    reply, elapsed = timed_reply(a, since=start)
    assert reply == b"TIMED_OUT\r\n"
    assert_on_time(elapsed, 2.0, "reserve-with-timeout 2 (beside a 1 s one)")


# -- delays ----------------------------------------------------------------------

def test_delayed_put_becomes_reservable_after_one_second(clients):
    producer, worker = clients(), clients()
    worker.send(b"reserve-with-timeout 5\r\n")
    assert worker.nothing_within(0.05)
    start = time.monotonic()
    job = put(producer, delay=1)
    reply, elapsed = timed_reply(worker, since=start)
    assert reserved_id(reply) == job
    assert_on_time(elapsed, 1.0, "put with delay 1 -> RESERVED")


def test_delayed_put_peek_ready_timing(clients):
    """Without any waiting reserve, the job is ready (peek-ready) from 1 s on.

    The server handles each peek at some moment between sending it and the reply, so
    the test polls: a FOUND must not come back before 1 s after the put was sent, and
    no NOT_FOUND may answer a peek sent later than LATE after the delay ended."""
    c = clients()
    start = time.monotonic()
    job = put(c, delay=1)
    put_answered = time.monotonic()
    assert c.cmd(b"peek-ready") == b"NOT_FOUND\r\n"
    not_found = 1
    for _ in range(1000):                       # polls ~10 ms apart: bounded
        sent = time.monotonic()
        reply = c.cmd(b"peek-ready")
        answered = time.monotonic()
        if reply != b"NOT_FOUND\r\n":
            break
        not_found += 1
        assert sent <= put_answered + 1.0 + LATE, "still delayed long after 1 s"
        time.sleep(0.01)
    assert reply.startswith(b"FOUND %d " % job), reply
    print(f"peek-ready found the delay-1 job {answered - start:.4f} s after the put, "
          f"after {not_found} NOT_FOUND")
    assert answered - start >= 1.0 - EARLY, "ready before its delay of 1 s"


# -- TTR -------------------------------------------------------------------------

def test_ttr_expiry_makes_job_ready_on_time(clients):
    holder, watcher = clients(), clients()
    job = put(holder, ttr=2)
    start = time.monotonic()
    reply = holder.cmd(b"reserve")
    assert reserved_id(reply) == job
    watcher.send(b"reserve-with-timeout 5\r\n")
    reply, elapsed = timed_reply(watcher, since=start)
    assert reserved_id(reply) == job
    assert_on_time(elapsed, 2.0, "TTR 2 expiry -> job handed to a waiting reserve")
    stats = watcher.yaml(b"stats-job %d" % job)
    assert stats["timeouts"] == "1"
    assert holder.cmd(b"delete %d" % job) == b"NOT_FOUND\r\n"


def test_deadline_soon_while_waiting(clients):
    c = clients()
    job = put(c, ttr=3)
    start = time.monotonic()        # before the reserve that sets the TTR deadline
    assert reserved_id(c.cmd(b"reserve")) == job
    reply, elapsed = timed_reply(c, b"reserve", since=start)
    assert reply == b"DEADLINE_SOON\r\n"
    assert_on_time(elapsed, 2.0, "DEADLINE_SOON for a TTR 3 job (deadline - 1 s)")
    assert c.cmd(b"delete %d" % job) == b"DELETED\r\n"


def test_deadline_soon_at_once_with_ttr_one(clients):
    c = clients()
    put(c, ttr=1)
    c.cmd(b"reserve")
    reply, elapsed = timed_reply(c, b"reserve-with-timeout 10")
    assert reply == b"DEADLINE_SOON\r\n"
    assert elapsed < SOON


def test_lost_ttr_bug_not_copied_over_the_wire(clients):
    """beanstalkd #380/#262: after a timer-path DEADLINE_SOON and a delete, the other
    reserved job never times out. Here it must be handed on at its deadline."""
    c, watcher = clients(), clients()
    a = put(c, b"A", ttr=2)
    b = put(c, b"B", ttr=3)
    start = time.monotonic()
    assert reserved_id(c.cmd(b"reserve")) == a
    assert reserved_id(c.cmd(b"reserve")) == b
    reply, elapsed = timed_reply(c, b"reserve-with-timeout 3", since=start)
    assert reply == b"DEADLINE_SOON\r\n"
    assert_on_time(elapsed, 1.0, "DEADLINE_SOON for the TTR 2 job")
    assert c.cmd(b"delete %d" % a) == b"DELETED\r\n"
    watcher.send(b"reserve-with-timeout 5\r\n")
    reply, elapsed = timed_reply(watcher, since=start)
    assert reserved_id(reply) == b
    assert_on_time(elapsed, 3.0, "TTR 3 expiry of the remaining job")


# -- pause -----------------------------------------------------------------------

def test_pause_tube_delays_waiting_reserve(clients):
    producer, worker = clients(), clients()
    worker.send(b"reserve-with-timeout 5\r\n")
    assert worker.nothing_within(0.05)
    start = time.monotonic()
    assert producer.cmd(b"pause-tube default 1") == b"PAUSED\r\n"
    job = put(producer)
    reply, elapsed = timed_reply(worker, since=start)
    assert reserved_id(reply) == job
    assert_on_time(elapsed, 1.0, "pause-tube 1 -> waiting reserve answered")


def test_pause_tube_delays_new_reserve(clients):
    producer, worker = clients(), clients()
    job = put(producer)
    start = time.monotonic()
    assert producer.cmd(b"pause-tube default 1") == b"PAUSED\r\n"
    reply, elapsed = timed_reply(worker, b"reserve")
    elapsed = time.monotonic() - start
    assert reserved_id(reply) == job
    assert_on_time(elapsed, 1.0, "reserve on a tube paused for 1 s")


def test_pause_tube_zero_wakes_waiting_reserve_at_once(clients):
    producer, worker = clients(), clients()
    assert producer.cmd(b"pause-tube default 60") == b"PAUSED\r\n"
    job = put(producer)
    worker.send(b"reserve-with-timeout 5\r\n")
    assert worker.nothing_within(0.2)
    start = time.monotonic()
    assert producer.cmd(b"pause-tube default 0") == b"PAUSED\r\n"
    reply, elapsed = timed_reply(worker, since=start)
    assert reserved_id(reply) == job
    assert elapsed < SOON, f"un-pause took {elapsed:.4f} s"


# -- connections going away --------------------------------------------------------

@pytest.mark.parametrize("how", ["quit", "close", "shutdown"])
def test_closing_connection_hands_reserved_job_on_at_once(clients, how):
    holder, waiter = clients(), clients()
    job = put(holder, ttr=60)
    assert reserved_id(holder.cmd(b"reserve")) == job
    waiter.send(b"reserve-with-timeout 5\r\n")
    assert waiter.nothing_within(0.1)
    start = time.monotonic()
    if how == "quit":
        holder.send(b"quit\r\n")
    elif how == "close":
        holder.close()
    else:
        holder.sock.shutdown(socket.SHUT_RDWR)
    reply, elapsed = timed_reply(waiter, since=start)
    assert reserved_id(reply) == job
    assert elapsed < SOON, f"job handed on after {elapsed:.4f} s ({how})"
    stats = waiter.yaml(b"stats-job %d" % job)
    assert stats["timeouts"] == "0"
    assert stats["reserves"] == "2"


def test_half_close_while_waiting_gives_timed_out(clients):
    c = clients()
    c.send(b"reserve\r\n")
    assert c.nothing_within(0.1)
    start = time.monotonic()
    c.sock.shutdown(socket.SHUT_WR)
    reply, elapsed = timed_reply(c, since=start)
    assert reply == b"TIMED_OUT\r\n"
    assert elapsed < SOON


# -- pipelining behind a blocking reserve ------------------------------------------

def test_commands_after_blocking_reserve_wait_for_it(clients):
    worker, producer = clients(), clients()
    worker.send(b"reserve\r\nlist-tube-used\r\n")
    assert worker.nothing_within(0.3)
    job = put(producer, b"hello")
    reply, elapsed = timed_reply(worker)
    assert reply == b"RESERVED %d 5\r\nhello\r\n" % job
    assert elapsed < SOON
    assert worker.read_reply() == b"USING default\r\n"


def test_commands_after_reserve_timeout_wait_for_it(clients):
    c = clients()
    start = time.monotonic()
    c.send(b"reserve-with-timeout 1\r\nlist-tube-used\r\nuse foo\r\n")
    assert c.nothing_within(0.5)
    reply, elapsed = timed_reply(c, since=start)
    assert reply == b"TIMED_OUT\r\n"
    assert_on_time(elapsed, 1.0, "pipelined reserve-with-timeout 1")
    assert c.read_reply() == b"USING default\r\n"
    assert c.read_reply() == b"USING foo\r\n"


def test_pipelined_reserves_answered_in_order(clients):
    worker, producer = clients(), clients()
    worker.send(b"reserve\r\nreserve\r\nlist-tube-used\r\n")
    assert worker.nothing_within(0.2)
    j1 = put(producer, b"one")
    assert worker.read_reply() == b"RESERVED %d 3\r\none\r\n" % j1
    assert worker.nothing_within(0.2)
    j2 = put(producer, b"two")
    assert worker.read_reply() == b"RESERVED %d 3\r\ntwo\r\n" % j2
    assert worker.read_reply() == b"USING default\r\n"
