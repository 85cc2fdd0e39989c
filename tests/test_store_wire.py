"""qserver nodes on one shared store (`--store redis://...`, protocol.md "Several
nodes"), over the wire against real processes: a job put through one node is
reserved through another, a waiting reserve wakes when another node puts, the
(pri, id) order holds across tubes and nodes, a closed connection's jobs are free
at once and a killed node's at their TTR, and the commands served so far give
beanstalkd's exact bytes. Each test has its own key prefix on one redis-server.
"""

import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ServerProcess, free_port, qserver_argv, start_qserver, start_redis
from test_ext_durability import kill9
from test_events import read_event
from test_ext_wire import on_tube as on
from test_ext_wire import put

BOUND = 10.0                # "soon": a wait ends within this, whatever the host


@pytest.fixture
def nodes(redis_server, request):
    """Two qserver nodes on the store, with a key prefix of this test's own."""
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    started = [start_qserver("--store", url, "--store-prefix", prefix) for _ in range(2)]
    yield started
    for node in started:
        node.stop()


def test_a_job_put_through_one_node_is_reserved_through_the_other(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    job = put(a, b"hello")
    assert b.cmd(b"reserve-with-timeout 0") == b"RESERVED %d 5\r\nhello\r\n" % job
    assert a.cmd(b"delete %d" % job) == b"NOT_FOUND\r\n"       # b holds it
    assert b.cmd(b"delete %d" % job) == b"DELETED\r\n"
    assert a.cmd(b"peek %d" % job) == b"NOT_FOUND\r\n"


def test_a_waiting_reserve_wakes_when_another_node_puts(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    b.send(b"reserve\r\n")
    assert b.nothing_within(0.1)                # it waits
    job = put(a, b"now")
    b.sock.settimeout(BOUND)
    assert b.read_reply() == b"RESERVED %d 3\r\nnow\r\n" % job


def test_the_pri_then_id_order_holds_across_tubes_and_nodes(nodes):
    a, b = nodes[0].client(), nodes[1].client()
    made = []
    for node, tube, pri in [(a, b"x", 5), (b, b"y", 1), (a, b"y", 5), (b, b"x", 1)]:
        assert node.cmd(b"use " + tube).startswith(b"USING")
        made.append((pri, put(node, tube, pri=pri)))
    w = nodes[1].client()
    for tube in (b"x", b"y"):
        assert w.cmd(b"watch " + tube).startswith(b"WATCHING")
    got = [int(w.cmd(b"reserve-with-timeout 0").split()[1]) for _ in made]
    assert got == [job for _, job in sorted(made)]
    assert w.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"


def test_release_bury_kick_touch_and_peeks(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    job = put(a, b"abc", pri=3)
    assert a.cmd(b"peek-ready") == b"FOUND %d 3\r\nabc\r\n" % job
    assert b.cmd(b"reserve") == b"RESERVED %d 3\r\nabc\r\n" % job
    assert b.cmd(b"touch %d" % job) == b"TOUCHED\r\n"
    assert a.cmd(b"touch %d" % job) == b"NOT_FOUND\r\n"
    assert b.cmd(b"release %d 7 3600" % job) == b"RELEASED\r\n"
    assert a.cmd(b"peek-delayed") == b"FOUND %d 3\r\nabc\r\n" % job
    assert a.cmd(b"kick-job %d" % job) == b"KICKED\r\n"
    assert b.cmd(b"reserve") == b"RESERVED %d 3\r\nabc\r\n" % job
    assert b.cmd(b"bury %d 1" % job) == b"BURIED\r\n"
    assert a.cmd(b"peek-buried") == b"FOUND %d 3\r\nabc\r\n" % job
    assert a.cmd(b"peek-ready") == b"NOT_FOUND\r\n"
    assert a.cmd(b"kick 5") == b"KICKED 1\r\n"
    assert a.cmd(b"kick 5") == b"KICKED 0\r\n"
    assert b.cmd(b"peek %d" % job) == b"FOUND %d 3\r\nabc\r\n" % job


def test_a_delayed_job_becomes_ready_no_earlier_than_its_delay(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    started = time.monotonic()
    job = put(a, b"d", delay=1)
    b.sock.settimeout(BOUND)
    assert b.cmd(b"reserve") == b"RESERVED %d 1\r\nd\r\n" % job
    assert time.monotonic() - started >= 1.0 - 0.002


def test_a_closed_connection_frees_its_jobs_at_once(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    job = put(a, b"j")
    assert a.cmd(b"reserve") == b"RESERVED %d 1\r\nj\r\n" % job
    a.close()
    b.sock.settimeout(BOUND)
    assert b.cmd(b"reserve-with-timeout %d" % BOUND) == b"RESERVED %d 1\r\nj\r\n" % job


def test_a_killed_nodes_jobs_come_back_at_their_ttr(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    job = put(a, b"k", ttr=1)
    assert a.cmd(b"reserve") == b"RESERVED %d 1\r\nk\r\n" % job
    reserved_at = time.monotonic()
    kill9(nodes[0])
    b.sock.settimeout(BOUND)
    assert b.cmd(b"reserve-with-timeout %d" % BOUND) == b"RESERVED %d 1\r\nk\r\n" % job
    assert time.monotonic() - reserved_at >= 1.0 - 0.002


def test_a_killed_nodes_jobs_come_back_at_its_lease_end_long_before_their_ttr(
        redis_server, request):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = ("--store-prefix", "lease")
    a_node, b_node = (start_qserver("--store", url, *prefix, "--store-lease", "2")
                      for _ in range(2))
    try:
        a, b, other = on(a_node, b"t"), on(b_node, b"t"), a_node.client()
        assert other.cmd(b"use only-a") == b"USING only-a\r\n"
        job = put(a, b"k", ttr=3600)
        assert a.cmd(b"reserve") == b"RESERVED %d 1\r\nk\r\n" % job
        kill9(a_node)
        killed_at = time.monotonic()
        b.sock.settimeout(BOUND)
        assert b.cmd(b"reserve-with-timeout %d" % BOUND) == b"RESERVED %d 1\r\nk\r\n" % job
        # Its last renewal was at most a beat (1 s) before the kill.
        assert time.monotonic() - killed_at >= 2.0 - 1.0 - 0.002
        assert b.cmd(b"stats-tube only-a") == b"NOT_FOUND\r\n"     # forgotten with it
    finally:
        a_node.stop()
        b_node.stop()


def test_pipelined_commands_are_answered_in_order(nodes):
    a = on(nodes[0], b"t")
    a.send(b"put 0 0 60 1\r\nx\r\nput 0 0 60 1\r\ny\r\npeek-ready\r\n"
           b"reserve-with-timeout 0\r\nlist-tube-used\r\n")
    first = int(re.fullmatch(rb"INSERTED (\d+)\r\n", a.read_line())[1])
    assert a.read_line() == b"INSERTED %d\r\n" % (first + 1)
    assert a.read_reply() == b"FOUND %d 1\r\nx\r\n" % first
    assert a.read_reply() == b"RESERVED %d 1\r\nx\r\n" % first
    assert a.read_line() == b"USING t\r\n"


def test_a_half_closed_client_waiting_in_reserve_hears_timed_out(nodes):
    a = on(nodes[0], b"t")
    a.send(b"reserve\r\n")
    assert a.nothing_within(0.1)
    a.sock.shutdown(socket.SHUT_WR)
    assert a.read_line() == b"TIMED_OUT\r\n"
    assert a.expect_closed()


def test_bad_input_is_answered_at_once(nodes):
    a = nodes[0].client()
    assert a.cmd(b"put 0 0 60 x") == b"BAD_FORMAT\r\n"
    assert a.cmd(b"delete") == b"UNKNOWN_COMMAND\r\n"
    assert a.cmd(b"release 1") == b"BAD_FORMAT\r\n"
    assert a.cmd(b"put 0 0 60 3\r\nabcd") == b"EXPECTED_CRLF\r\n"
    # "d" and the CRLF after it were read as the start of the next line.
    assert a.cmd(b"job-info 1") == b"UNKNOWN_COMMAND\r\n"
    assert a.cmd(b"list-tube-used") == b"USING default\r\n"


def test_a_subscriber_on_one_node_hears_another_nodes_events_and_resumes_anywhere(
        nodes):
    sub = nodes[0].client()
    first = int(re.fullmatch(rb"SUBSCRIBED (\d+)\r\n", sub.cmd(b"subscribe ev now"))[1])
    b = on(nodes[1], b"ev")
    job = put(b, b"x")
    assert b.cmd(b"reserve") == b"RESERVED %d 1\r\nx\r\n" % job
    assert b.cmd(b"delete %d" % job) == b"DELETED\r\n"
    sub.sock.settimeout(BOUND)
    heard = [read_event(sub) for _ in range(3)]
    assert [(e["seq"], e["id"], e["event"]) for e in heard] == \
        [(str(first + n), str(job), name) for n, name in
         enumerate(("put", "reserve", "delete"))]
    # The numbers are the cluster's: resume through the other node.
    again = nodes[1].client()
    assert again.cmd(b"subscribe ev %d" % (first + 1)) == b"SUBSCRIBED %d\r\n" % (first + 1)
    again.sock.settimeout(BOUND)
    assert [read_event(again)["event"] for _ in range(2)] == ["reserve", "delete"]


def test_a_lock_holds_across_nodes(nodes):
    a, b = on(nodes[0], b"l"), on(nodes[1], b"l")
    first = a.cmd(b"put-ex 0 0 60 1 lock=acct\r\nx")
    assert first == b"INSERTED 1\r\n"
    assert b.cmd(b"put-ex 0 0 60 1 lock=acct\r\ny") == b"INSERTED 2\r\n"
    assert b.cmd(b"put 5 0 60 1\r\nz") == b"INSERTED 3\r\n"
    assert a.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 1\r\nx\r\n"
    # Job 2's lock is held by a's reservation: b gets job 3 and job 2 is held.
    assert b.cmd(b"reserve-with-timeout 0") == b"RESERVED 3 1\r\nz\r\n"
    assert b"state: held\n" in b.cmd(b"stats-job 2")
    b.send(b"reserve-with-timeout %d\r\n" % BOUND)
    assert b.nothing_within(0.1)
    assert a.cmd(b"delete 1") == b"DELETED\r\n"
    b.sock.settimeout(BOUND)
    assert b.read_reply() == b"RESERVED 2 1\r\ny\r\n"


# ------------------------------------------------------------------------ the flags

def _run(*flags) -> subprocess.CompletedProcess:
    argv = qserver_argv("-l", "127.0.0.1", "-p", str(free_port()), *flags)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_b_and_store_together_are_refused(tmp_path):
    done = _run("-b", str(tmp_path), "--store", "redis://127.0.0.1:1/0")
    assert done.returncode == 5
    assert "-b and --store cannot be used together" in done.stderr


@pytest.mark.parametrize("url, says", [
    ("http://x", "is not a redis://, rediss:// or redis+sentinel:// URL"),
    ("redis+sentinel://h:26379", "a Sentinel URL names the primary after the hosts"),
    ("redis://h:6379/zero", "the database must be a number")])
def test_other_store_urls_are_refused(url, says):
    done = _run("--store", url)
    assert done.returncode == 5 and says in done.stderr


def test_a_store_that_cannot_be_reached_stops_the_start_with_a_clear_message():
    port = free_port()                          # nothing listens there
    done = _run("--store", f"redis://user:secret@127.0.0.1:{port}/0")
    assert done.returncode == 3
    assert f"cannot use the store redis://user:***@127.0.0.1:{port}/0" in done.stderr
    assert "secret" not in done.stderr


# ------------------------------------------------------- stats, pauses, deadlines

def test_stats_job_and_stats_tube_across_nodes(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    job = put(a, b"abc", pri=1500, ttr=30)
    later = put(a, b"d", delay=3600)
    assert b.cmd(b"reserve") == b"RESERVED %d 3\r\nabc\r\n" % job
    fields = b.yaml(b"stats-job %d" % job)
    assert (fields["id"], fields["tube"], fields["state"], fields["pri"], fields["ttr"],
            fields["reserves"], fields["file"]) == (str(job), "t", "reserved", "1500",
                                                    "30", "1", "0")
    assert 0 < int(fields["time-left"]) <= 29       # never more than what is left
    assert a.yaml(b"stats-job %d" % later)["state"] == "delayed"
    tube = a.yaml(b"stats-tube t")
    assert (tube["current-jobs-ready"], tube["current-jobs-reserved"],
            tube["current-jobs-delayed"], tube["total-jobs"]) == ("0", "1", "1", "2")
    # Connections are counted per node: a's node sees one user of t.
    assert (tube["current-using"], tube["current-watching"]) == ("1", "1")
    assert a.cmd(b"stats-tube nobody") == b"NOT_FOUND\r\n"
    assert a.cmd(b"stats-job 99999") == b"NOT_FOUND\r\n"


def test_stats_and_list_tubes_are_the_clusters(nodes):
    a, b = nodes[0].client(), nodes[1].client()
    assert a.cmd(b"use one") == b"USING one\r\n"
    put(a)
    assert b.cmd(b"use two") == b"USING two\r\n"
    put(b)
    for node in (a, b):
        stats = node.yaml(b"stats")
        assert (stats["current-jobs-ready"], stats["total-jobs"]) == ("2", "2")
    listed = a.cmd(b"list-tubes")
    assert listed.endswith(b"---\n- default\n- one\n- two\n\r\n"), listed


def test_a_tube_lives_while_any_node_refers_to_it_and_is_then_forgotten(nodes):
    a, b = nodes[0].client(), nodes[1].client()
    assert a.cmd(b"use foo") == b"USING foo\r\n"
    job = put(a)
    assert a.cmd(b"pause-tube foo 3600") == b"PAUSED\r\n"
    assert b.cmd(b"watch foo") == b"WATCHING 2\r\n"
    assert a.cmd(b"delete %d" % job) == b"DELETED\r\n"
    assert a.cmd(b"use default") == b"USING default\r\n"
    # b still watches it: the tube and its figures stay.
    kept = a.yaml(b"stats-tube foo")
    assert (kept["total-jobs"], kept["cmd-delete"], kept["pause"]) == ("1", "1", "3600")
    assert b.cmd(b"ignore foo") == b"WATCHING 1\r\n"
    # Nobody refers to it and it has no jobs: gone on every node, as in beanstalkd.
    assert a.cmd(b"stats-tube foo") == b"NOT_FOUND\r\n"
    assert b"- foo\n" not in b.cmd(b"list-tubes")
    assert b.cmd(b"use foo") == b"USING foo\r\n"
    fresh = a.yaml(b"stats-tube foo")
    assert (fresh["total-jobs"], fresh["cmd-delete"], fresh["cmd-pause-tube"],
            fresh["pause"]) == ("0", "0", "0", "0")


def test_a_tube_with_jobs_outlives_the_connections_that_made_it(nodes):
    a = nodes[0].client()
    assert a.cmd(b"use keep") == b"USING keep\r\n"
    job = put(a)
    a.close()
    b = nodes[1].client()
    assert b.yaml(b"stats-tube keep")["total-jobs"] == "1"
    assert b.cmd(b"delete %d" % job) == b"DELETED\r\n"
    assert b.cmd(b"stats-tube keep") == b"NOT_FOUND\r\n"


def test_a_paused_tube_is_skipped_until_its_pause_ends(nodes):
    a, b = on(nodes[0], b"t"), on(nodes[1], b"t")
    job = put(a, b"p")
    assert a.cmd(b"pause-tube t 1") == b"PAUSED\r\n"
    paused_at = time.monotonic()
    assert b.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    b.sock.settimeout(BOUND)
    assert b.cmd(b"reserve") == b"RESERVED %d 1\r\np\r\n" % job
    assert time.monotonic() - paused_at >= 1.0 - 0.002
    assert a.cmd(b"pause-tube nobody 1") == b"NOT_FOUND\r\n"
    assert a.cmd(b"pause-tube t 0") == b"PAUSED\r\n"


def test_deadline_soon_and_reserve_job(nodes):
    a = on(nodes[0], b"t")
    job = put(a, b"soon", ttr=1)
    assert a.cmd(b"reserve") == b"RESERVED %d 4\r\nsoon\r\n" % job
    assert a.cmd(b"reserve-with-timeout 5") == b"DEADLINE_SOON\r\n"
    other = put(a, b"other", delay=3600)
    assert a.cmd(b"reserve-job %d" % other) == b"RESERVED %d 5\r\nother\r\n" % other
    assert a.cmd(b"reserve-job %d" % other) == b"NOT_FOUND\r\n"


def test_drain_mode_refuses_puts(nodes):
    a = on(nodes[0], b"t")
    nodes[0].signal(signal.SIGUSR1)
    deadline = time.monotonic() + BOUND
    while a.cmd(b"put 0 0 60 1\r\nx").startswith(b"INSERTED"):
        assert time.monotonic() < deadline
    assert a.cmd(b"put 0 0 60 1\r\nx") == b"DRAINING\r\n"
    assert a.yaml(b"stats")["draining"] == "true"


# ------------------------------------------------------------------ the store's faults

def _restart_redis(redis, tmp_path, *extra):
    """Kill the redis-server with SIGKILL and start another on the same port and
    directory."""
    kill9(redis)
    return ServerProcess([redis.argv[0], "--port", str(redis.port), "--bind", "127.0.0.1",
                          "--dir", str(tmp_path), "--save", "", "--protected-mode", "no",
                          *extra], redis.port)


def _until_aof_written(port: int) -> None:
    """Until the redis-server has written everything to its append-only file (its
    AOF buffer is empty), bounded."""
    deadline = time.monotonic() + BOUND
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
        while True:
            sock.sendall(b"INFO persistence\r\n")
            reply = sock.recv(65536)        # a bulk string: $<length>\r\n<text>\r\n
            length = int(reply[1:reply.index(b"\r\n")])
            while len(reply) < reply.index(b"\r\n") + 2 + length + 2:
                reply += sock.recv(65536)
            if re.search(rb"\naof_buffer_length:0\r\n", reply):
                return
            assert time.monotonic() < deadline, "the AOF buffer was never written"
            time.sleep(0.01)


def _until_served(c, line: bytes, want: bytes) -> bytes:
    """Send `line` until the reply starts with `want` (the node reconnects by
    itself); only INTERNAL_ERROR may come meanwhile."""
    deadline = time.monotonic() + BOUND
    while True:
        reply = c.cmd(line)
        if reply.startswith(want):
            return reply
        assert reply == b"INTERNAL_ERROR\r\n", reply
        assert time.monotonic() < deadline, "the node did not reconnect"
        time.sleep(0.05)


def test_a_store_restarted_with_aof_always_loses_no_acknowledged_job(tmp_path):
    redis = start_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    node = start_qserver("--store", f"redis://127.0.0.1:{redis.port}/0")
    try:
        c = on(node, b"t")
        ids = [put(c, b"j%d" % n) for n in range(50)]
        assert c.cmd(b"reserve") == b"RESERVED %d 2\r\nj0\r\n" % ids[0]
        assert c.cmd(b"delete %d" % ids[0]) == b"DELETED\r\n"
        redis = _restart_redis(redis, tmp_path, "--appendonly", "yes",
                               "--appendfsync", "always")
        _until_served(c, b"peek %d" % ids[1], b"FOUND")
        for job in ids[1:]:
            assert c.cmd(b"peek %d" % job) == b"FOUND %d %d\r\n%s\r\n" % (
                job, len(b"j%d" % (job - ids[0])), b"j%d" % (job - ids[0]))
        assert c.cmd(b"peek %d" % ids[0]) == b"NOT_FOUND\r\n"
        fresh = put(c)
        assert fresh > ids[-1]                  # the id counter survived too
    finally:
        node.stop()
        redis.stop()


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_extension_state_survives_a_store_killed_with_sigkill(tmp_path, fsync):
    """Policies, attempts and failures, progress, retained results, unique keys,
    tags, cancel flags and lock holds live in Redis: after SIGKILL and a restart
    from the append-only file they are all there. With everysec a SIGKILL loses
    only what Redis had not yet written to the file (a machine crash could lose the
    last second too): the test waits until its AOF buffer is empty."""
    aof = ("--appendonly", "yes", "--appendfsync", fsync)
    redis = start_redis(tmp_path, *aof)
    node = start_qserver("--store", f"redis://127.0.0.1:{redis.port}/0")
    try:
        c = on(node, b"e")
        for name, value in ((b"max-attempts", b"3"), (b"backoff", b"fixed:3600"),
                            (b"retain", b"3600"), (b"lock-limit", b"1")):
            assert c.cmd(b"config-tube e %s %s" % (name, value)) == b"CONFIGURED\r\n"
        assert c.cmd(b"put-ex 0 0 60 1 key=k tag=t\r\na") == b"INSERTED 1\r\n"
        assert c.cmd(b"put-ex 0 0 60 1 lock=L\r\nb") == b"INSERTED 2\r\n"
        assert c.cmd(b"put-ex 0 0 60 1 lock=L tag=t\r\nc") == b"INSERTED 3\r\n"
        assert c.cmd(b"put 5 0 60 1\r\nd") == b"INSERTED 4\r\n"
        assert c.cmd(b"reserve-job 1") == b"RESERVED 1 1\r\na\r\n"
        assert c.cmd(b"fail 1 4\r\nboom") == b"RETRYING 3600\r\n"
        assert c.cmd(b"reserve-with-timeout 0") == b"RESERVED 2 1\r\nb\r\n"
        assert c.cmd(b"progress 2 4\r\nhalf") == b"TOUCHED\r\n"
        # Job 3's lock is taken by job 2: it is held, and job 4 is reserved.
        assert c.cmd(b"reserve-with-timeout 0") == b"RESERVED 4 1\r\nd\r\n"
        assert c.cmd(b"complete 4 2\r\nok") == b"COMPLETED\r\n"
        w = on(node, b"e")
        assert w.cmd(b"put-ex 0 0 60 1 tag=u\r\nf") == b"INSERTED 5\r\n"
        assert w.cmd(b"reserve-job 5") == b"RESERVED 5 1\r\nf\r\n"
        assert c.cmd(b"cancel-tag u") == b"CANCELLED 0 1\r\n"
        before = {job: c.cmd(b"job-info %d" % job) for job in (1, 2, 3, 5)}
        _until_aof_written(redis.port)
        redis = _restart_redis(redis, tmp_path, *aof)
        _until_served(c, b"config-tube e", b"OK ")
        assert b"max-attempts: 3\nbackoff: fixed:3600\n" in c.cmd(b"config-tube e")
        for job, info in before.items():
            after = c.cmd(b"job-info %d" % job)
            # Everything but the times, which move on.
            strip = re.compile(rb"\n(age|time-left): \d+")
            assert strip.sub(b"", after) == strip.sub(b"", info), (job, after)
        assert b"reason: \"boom\"" in before[1] and b"progress: \"half\"" in before[2]
        assert b"state: held" in before[3] and b"cancelled: true" in before[5]
        assert c.cmd(b"peek-result 4") == b"FOUND 4 2\r\nok\r\n"
        assert c.cmd(b"put-ex 0 0 60 1 key=k\r\nz") == b"DUPLICATE 1\r\n"
        assert w.cmd(b"touch 5") == b"CANCELLED\r\n"
        assert c.cmd(b"cancel-tag t") == b"CANCELLED 2 0\r\n"   # jobs 1 and 3
    finally:
        node.stop()
        redis.stop()


def test_a_store_that_went_away_gives_internal_error_then_serves_again(tmp_path):
    redis = start_redis(tmp_path)
    node = start_qserver("--store", f"redis://127.0.0.1:{redis.port}/0")
    try:
        c = on(node, b"t")
        put(c)
        kill9(redis)
        assert c.cmd(b"put 0 0 60 1\r\nx") == b"INTERNAL_ERROR\r\n"
        assert c.cmd(b"list-tube-used") == b"USING t\r\n"   # the connection lives on
        redis = _restart_redis(redis, tmp_path)         # empty: no persistence
        # It reconnects and loads the function library again by itself.
        _until_served(c, b"put 0 0 60 1\r\nx", b"INSERTED")
        assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED")
    finally:
        node.stop()
        redis.stop()


# ------------------------------------------------------------ a node killed under load

PRODUCERS = WORKERS = 20
KILLS = 3


def test_killing_nodes_under_load_loses_no_acknowledged_change(redis_server, request):
    """20 producers and 20 workers on two nodes; one node is killed with SIGKILL and
    started again, three times. Every acknowledged put is still there unless its
    delete was acknowledged, every acknowledged delete is gone, and no id was given
    to two jobs. A command whose reply the kill cut off may have happened or not."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = ("--store-prefix", "kill" + str(free_port()))
    nodes = [start_qserver("--store", url, *prefix) for _ in range(2)]
    lock = threading.Lock()
    put_ok, deleted_ok, unsure, errors = {}, set(), set(), []
    stop = threading.Event()

    def connect(n):
        for attempt in range(200):              # bounded: a node is always up
            node = nodes[(n + attempt) % 2]
            try:
                c = node.client()
                c.sock.settimeout(BOUND)
                assert c.cmd(b"use k") == b"USING k\r\n"
                assert c.cmd(b"watch k") == b"WATCHING 2\r\n"
                return c
            except OSError:
                time.sleep(0.01)
        raise AssertionError("no node to connect to")

    def producer(n):
        c, count = connect(n), 0
        try:
            while not stop.is_set() and count < 100_000:
                body = b"p%d-%d" % (n, count)
                count += 1
                try:
                    reply = c.cmd(b"put 0 0 60 %d\r\n%s" % (len(body), body))
                except (OSError, ConnectionError):
                    c = connect(n)
                    continue
                m = re.fullmatch(rb"INSERTED (\d+)\r\n", reply)
                if m:
                    with lock:
                        assert int(m[1]) not in put_ok, "an id given twice"
                        put_ok[int(m[1])] = body
                else:
                    assert reply == b"INTERNAL_ERROR\r\n", reply
        except BaseException as error:
            errors.append(error)

    def worker(n):
        c = connect(n)
        try:
            for _ in range(100_000):
                if stop.is_set():
                    return
                job = None
                try:
                    reply = c.cmd(b"reserve-with-timeout 1")
                    m = re.match(rb"RESERVED (\d+) ", reply)
                    if not m:
                        continue
                    job = int(m[1])
                    if c.cmd(b"delete %d" % job) == b"DELETED\r\n":
                        with lock:
                            deleted_ok.add(job)
                except (OSError, ConnectionError):
                    if job is not None:         # its delete may or may not have run
                        with lock:
                            unsure.add(job)
                    c = connect(n)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(PRODUCERS)]
    threads += [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    try:
        for t in threads:
            t.start()
        for kill in range(KILLS):
            time.sleep(0.7)
            victim = kill % 2
            kill9(nodes[victim])
            nodes[victim] = start_qserver("--store", url, *prefix)
        # The load goes on until enough was acknowledged, however slow the host.
        deadline = time.monotonic() + BOUND * 3
        while len(put_ok) <= 100 or len(deleted_ok) <= 50:
            assert time.monotonic() < deadline, (len(put_ok), len(deleted_ok))
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(BOUND * 3)
    assert not errors, errors[:3]
    assert all(not t.is_alive() for t in threads)
    c = nodes[0].client()
    try:
        for job, body in put_ok.items():
            reply = c.cmd(b"peek %d" % job)
            if job in unsure:
                continue
            if job in deleted_ok:
                assert reply == b"NOT_FOUND\r\n", (job, reply)
            else:
                assert reply == b"FOUND %d %d\r\n%s\r\n" % (job, len(body), body), job
    finally:
        c.close()
        for node in nodes:
            node.stop()


def test_keys_tags_flushes_and_listings_are_the_clusters(nodes):
    a, b = on(nodes[0], b"s"), on(nodes[1], b"s")
    assert a.cmd(b"put-ex 0 0 60 1 key=k tag=g\r\nx") == b"INSERTED 1\r\n"
    assert b.cmd(b"put-ex 0 0 60 1 key=k\r\ny") == b"DUPLICATE 1\r\n"
    assert b.cmd(b"put-ex 5 0 60 1 tag=g\r\ny") == b"INSERTED 2\r\n"
    assert a.cmd(b"reserve-job 2") == b"RESERVED 2 1\r\ny\r\n"
    assert b.cmd(b"cancel-tag g") == b"CANCELLED 1 1\r\n"       # 1 removed, 2 flagged
    assert a.cmd(b"touch 2") == b"CANCELLED\r\n"
    assert a.cmd(b"release 2 5 0") == b"RELEASED\r\n"
    put(a, b"z", pri=1)
    page = b.cmd(b"list-jobs s ready 0 1")
    assert page.startswith(b"OK ") and b"next: \"r:1:3\"\n" in page and b"- id: 3\n" in page
    assert b"- id: 2\n" in b.cmd(b"list-jobs s ready r:1:3 10")
    assert a.cmd(b"put-ex 0 0 60 1 key=k\r\nx") == b"INSERTED 4\r\n"   # its holder went
    assert b.cmd(b"flush-tube s") == b"FLUSHED 3\r\n"
    for job in (2, 3, 4):
        assert a.cmd(b"peek %d" % job) == b"NOT_FOUND\r\n"
    assert a.cmd(b"put-ex 0 0 60 1 key=k\r\nx") == b"INSERTED 5\r\n"   # flushed: free
    stats = a.yaml(b"stats-ext")
    assert (stats["job-duplicates"], stats["jobs-flushed"], stats["jobs-cancelled"],
            stats["jobs-cancel-flagged"]) == ("1", "3", "1", "1")
