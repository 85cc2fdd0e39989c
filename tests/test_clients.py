"""Real client libraries (greenstalk 2.1.1, pystalk 0.9.1) in producer/worker flows.

Every flow is parametrized over both servers, so the same code is shown to pass against
the reference beanstalkd and against qserver. greenstalk also runs over a unix socket
(`-l unix:PATH`). Every wait is bounded: reserves use timeouts, threads are joined with
timeouts, and sockets carry timeouts.

The upstream client suites are not run from here: the sdists of greenstalk 2.1.1 and
pystalk 0.9.1 on PyPI ship no tests (greenstalk's tests/test_greenstalk.py and pystalk's
tests/integration/ live only in their git repositories).
"""

import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter

import pytest

from conftest import (WAIT, ServerProcess, assert_on_time, beanstalkd_path, qserver_argv,
                      start_beanstalkd, start_qserver, start_redis)

greenstalk = pytest.importorskip("greenstalk")
pystalk = pytest.importorskip("pystalk")

# qserver-store: a qserver node keeping its jobs in a redis-server of its own
# (--store; protocol.md, "Several nodes").
SERVERS = ["beanstalkd", "qserver", "qserver-store"]
JOIN_TIMEOUT = 20.0


# -- fixtures -------------------------------------------------------------------------

def _start(kind, transport, tmp):
    """Start `kind` on TCP or on a unix socket (in `tmp`); returns (server, the
    redis-server it uses or None)."""
    redis = store = None
    if kind == "qserver-store":
        redis = start_redis(tmp)
        store = ("--store", f"redis://127.0.0.1:{redis.port}/0")
    try:
        if transport == "tcp":
            if kind == "beanstalkd":
                return start_beanstalkd(), redis
            return start_qserver(*(store or ())), redis
        path = os.path.join(tmp, "s.sock")
        if kind == "beanstalkd":
            argv = [beanstalkd_path(), "-l", "unix:" + path]
        else:
            argv = qserver_argv("-l", "unix:" + path, *(store or ()))
        return ServerProcess(argv, unix_path=path), redis
    except BaseException:
        if redis is not None:
            redis.stop()
        raise


def _serve(kind, transport):
    # A short directory: unix socket paths are limited to 107 bytes.
    tmp = tempfile.mkdtemp(prefix="qsc", dir="/tmp")
    server, redis = _start(kind, transport, tmp)
    try:
        yield server
    finally:
        server.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=SERVERS)
def tcp_server(request):
    yield from _serve(request.param, "tcp")


@pytest.fixture(params=SERVERS)
def unix_server(request):
    yield from _serve(request.param, "unix")


@pytest.fixture(params=[(k, t) for t in ("tcp", "unix") for k in SERVERS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def any_server(request):
    """Both servers on both transports, for greenstalk: yields (server, address)."""
    kind, transport = request.param
    for server in _serve(kind, transport):
        address = server.unix_path if transport == "unix" else ("127.0.0.1", server.port)
        yield server, address


def gclient(address, **kw) -> "greenstalk.Client":
    client = greenstalk.Client(address, **kw)
    client._sock.settimeout(10)  # a hung server fails the test instead of hanging it
    return client


def pclient(server) -> "pystalk.BeanstalkClient":
    return pystalk.BeanstalkClient("127.0.0.1", server.port, socket_timeout=10,
                                   auto_decode=True)


def run_threads(targets):
    """Run callables in threads; re-raise the first exception; bounded join."""
    errors = []

    def wrap(fn):
        def inner():
            try:
                fn()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
        return inner

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads did not finish in time"
    if errors:
        raise errors[0]


# -- greenstalk -----------------------------------------------------------------------

PRODUCERS = 4
JOBS_PER_PRODUCER = 30
TUBES = ("alpha", "beta")


def test_greenstalk_producers_and_workers(any_server):
    """Several producer threads put into two tubes; workers delete, release once, bury."""
    server, address = any_server
    expected = {}          # body -> tube
    lock = threading.Lock()

    def producer(n):
        def run():
            with gclient(address) as c:
                for i in range(JOBS_PER_PRODUCER):
                    tube = TUBES[i % 2]
                    c.use(tube)
                    body = f"p{n}-{i}"
                    if i % 5 == 3:              # lands in both tubes
                        body += "-bury"
                    elif i % 7 == 0:
                        body += "-retry"
                    c.put(body, priority=(i * 37) % 1000, delay=0, ttr=60)
                    with lock:
                        expected[body] = tube
        return run

    run_threads([producer(n) for n in range(PRODUCERS)])
    total = PRODUCERS * JOBS_PER_PRODUCER
    assert len(expected) == total

    with gclient(address) as c:
        s = c.stats()
        assert s["current-jobs-ready"] == total
        assert s["total-jobs"] == total
        assert s["cmd-put"] == total
        for tube in TUBES:
            st = c.stats_tube(tube)
            assert st["current-jobs-ready"] == total // 2
            assert st["total-jobs"] == total // 2

    deleted = Counter()
    buried = []
    released = set()

    def worker():
        with gclient(address, watch=list(TUBES)) as c:
            while True:
                try:
                    job = c.reserve(timeout=1)
                except greenstalk.TimedOutError:
                    return
                tube = c.stats_job(job)["tube"]
                assert tube == expected[job.body]
                if job.body.endswith("-bury"):
                    c.bury(job, priority=5)
                    with lock:
                        buried.append(job.id)
                elif job.body.endswith("-retry") and job.body not in released:
                    with lock:
                        released.add(job.body)
                    c.release(job, priority=1, delay=0)
                else:
                    c.delete(job)
                    with lock:
                        deleted[job.body] += 1

    run_threads([worker for _ in range(3)])

    bury_bodies = {b for b in expected if b.endswith("-bury")}
    retry_bodies = {b for b in expected if b.endswith("-retry")}
    assert set(deleted) == set(expected) - bury_bodies
    assert all(count == 1 for count in deleted.values())
    assert released == retry_bodies
    assert len(buried) == len(bury_bodies)

    with gclient(address) as c:
        s = c.stats()
        assert s["current-jobs-ready"] == 0
        assert s["current-jobs-reserved"] == 0
        assert s["current-jobs-buried"] == len(bury_bodies)
        assert s["cmd-delete"] == len(deleted)
        assert s["cmd-release"] == len(retry_bodies)
        assert s["cmd-bury"] == len(bury_bodies)
        # buried jobs are kicked per tube (the used one)
        kicked = 0
        for tube in TUBES:
            c.use(tube)
            in_tube = c.stats_tube(tube)["current-jobs-buried"]
            assert in_tube == sum(1 for b in bury_bodies if expected[b] == tube)
            assert in_tube > 0
            peeked = c.peek_buried()
            assert peeked.body.endswith("-bury")
            assert c.stats_job(peeked)["pri"] == 5
            assert c.kick(1000) == in_tube
            kicked += in_tube
            with pytest.raises(greenstalk.NotFoundError):
                c.peek_buried()
        assert kicked == len(bury_bodies)
        c.watch("alpha")
        c.watch("beta")
        got = 0
        while True:
            try:
                job = c.reserve(timeout=0)
            except greenstalk.TimedOutError:
                break
            assert c.stats_job(job)["kicks"] == 1
            c.delete(job)
            got += 1
        assert got == len(bury_bodies)
        s = c.stats()
        assert s["current-jobs-buried"] == 0
        assert s["current-jobs-ready"] == 0


def test_greenstalk_priority_order_across_tubes(any_server):
    """A worker watching two tubes gets jobs in global (priority, id) order."""
    _, address = any_server
    puts = []
    with gclient(address) as c:
        for i, pri in enumerate([500, 3, 2**32 - 1, 0, 3, 1024, 0, 77]):
            tube = TUBES[i % 2]
            c.use(tube)
            puts.append((pri, c.put(f"{tube}:{pri}", priority=pri), f"{tube}:{pri}"))
    with gclient(address, watch=list(TUBES)) as w:
        got = []
        for _ in puts:
            job = w.reserve(timeout=0)
            got.append((w.stats_job(job)["pri"], job.id, job.body))
            w.delete(job)
        with pytest.raises(greenstalk.TimedOutError):
            w.reserve(timeout=0)
    assert got == sorted(puts)


def test_greenstalk_peek_kick_and_stats(any_server):
    _, address = any_server
    with gclient(address, use="gamma", watch="gamma") as c:
        delayed = c.put("later", delay=3600, priority=9)
        ready = c.put("now", priority=10)
        assert c.peek_delayed().id == delayed
        assert c.peek_ready().id == ready
        assert c.peek(delayed).body == "later"
        sj = c.stats_job(delayed)
        assert sj["state"] == "delayed" and sj["tube"] == "gamma" and sj["pri"] == 9
        assert 3590 <= sj["time-left"] <= 3600
        c.kick_job(delayed)
        assert c.stats_job(delayed)["state"] == "ready"
        job = c.reserve(timeout=0)
        assert job.id == delayed            # priority 9 beats 10
        c.bury(job)
        assert c.peek_buried().id == delayed
        st = c.stats_tube("gamma")
        assert (st["current-jobs-ready"], st["current-jobs-buried"]) == (1, 1)
        assert c.kick(5) == 1
        assert c.stats_job(delayed)["kicks"] == 2     # kick-job, then kick
        with pytest.raises(greenstalk.NotFoundError):
            c.peek_buried()
        assert c.kick(5) == 0
        with pytest.raises(greenstalk.NotFoundError):
            c.peek(delayed + 1000)
        assert set(c.tubes()) >= {"default", "gamma"}
        assert c.using() == "gamma"
        assert set(c.watching()) == {"gamma"}
        for _ in range(2):
            c.delete(c.reserve(timeout=0))
        with pytest.raises(greenstalk.NotFoundError):
            c.stats_job(delayed)


def test_greenstalk_pause_tube(any_server):
    _, address = any_server
    with gclient(address, use="paused", watch="paused") as c:
        c.put("x")
        start = time.monotonic()        # before the server starts counting the pause
        c.pause_tube("paused", 1)
        st = c.stats_tube("paused")
        assert st["pause"] == 1
        assert st["cmd-pause-tube"] == 1
        with pytest.raises(greenstalk.TimedOutError):
            c.reserve(timeout=0)
        job = c.reserve(timeout=3)
        elapsed = time.monotonic() - start
        assert job.body == "x"
        assert_on_time(elapsed, 1.0, "reserve on a tube paused for 1 s")
        c.delete(job)


def test_greenstalk_ttr_deadline_soon_and_touch(tcp_server):
    address = ("127.0.0.1", tcp_server.port)
    with gclient(address) as c:
        c.put("ttr", ttr=2)
        start = time.monotonic()        # before the reserve that sets the deadline
        job = c.reserve(timeout=0)
        with pytest.raises(greenstalk.DeadlineSoonError):
            c.reserve(timeout=5)
        elapsed = time.monotonic() - start
        assert_on_time(elapsed, 1.0, "DEADLINE_SOON for a TTR 2 job (deadline - 1 s)")
        c.touch(job)
        assert c.stats_job(job)["time-left"] >= 1
        c.release(job)
        assert c.reserve(timeout=0).id == job.id


def test_greenstalk_other_worker_cannot_delete_reserved(tcp_server):
    address = ("127.0.0.1", tcp_server.port)
    with gclient(address) as a, gclient(address) as b:
        jid = a.put("mine")
        job = a.reserve(timeout=0)
        with pytest.raises(greenstalk.NotFoundError):
            b.delete(jid)
        with pytest.raises(greenstalk.NotFoundError):
            b.release(job)
        a.delete(job)


def test_greenstalk_binary_and_too_big(tcp_server):
    address = ("127.0.0.1", tcp_server.port)
    with gclient(address, encoding=None) as c:
        body = bytes(range(256)) * 16 + b"\r\n"
        c.put(body)
        assert c.reserve(timeout=0).body == body
        with pytest.raises(greenstalk.JobTooBigError):
            c.put(bytes(2**16))
        c.put(b"still fine")    # the connection stays usable
        assert c.peek_ready().body == b"still fine"


def test_greenstalk_drain_mode(unix_server):
    with gclient(unix_server.unix_path, encoding=None) as c:
        assert c.put(b"first") == 1
        assert c.stats()["draining"] == "false"
        unix_server.signal(signal.SIGUSR1)
        deadline = time.monotonic() + WAIT
        while c.stats()["draining"] != "true":
            assert time.monotonic() < deadline, "stats never showed draining: true"
            time.sleep(0.01)
        with pytest.raises(greenstalk.DrainingError):
            c.put(b"second")
        job = c.reserve(timeout=0)        # other commands carry on
        assert job.body == b"first"
        c.delete(job)


# -- pystalk --------------------------------------------------------------------------

def test_pystalk_producers_and_workers(tcp_server):
    total = PRODUCERS * JOBS_PER_PRODUCER
    lock = threading.Lock()
    produced = {}
    tube_of = {}

    def producer(n):
        def run():
            client = pclient(tcp_server)
            try:
                for i in range(JOBS_PER_PRODUCER):
                    tube = TUBES[i % 2]
                    body = f"p{n}-{i}" + ("-bury" if i % 5 == 3 else "")
                    status, jid = client.put_job_into(tube, body, pri=(i * 13) % 300)
                    assert status == b"INSERTED"
                    with lock:
                        produced[jid] = body
                        tube_of[jid] = tube
            finally:
                client.close()
        return run

    run_threads([producer(n) for n in range(PRODUCERS)])
    assert len(produced) == total

    monitor = pclient(tcp_server)
    try:
        stats = monitor.stats()           # parsed by PyYAML
        assert stats["current-jobs-ready"] == total
        assert stats["total-jobs"] == total
        assert stats["draining"] is False
        assert isinstance(stats["version"], str)
        assert set(monitor.list_tubes()) >= {"default", *TUBES}
        for tube in TUBES:
            assert monitor.stats_tube(tube)["current-jobs-ready"] == total // 2
    finally:
        monitor.close()

    done = Counter()
    buried = []
    released = set()

    def worker():
        client = pclient(tcp_server)
        try:
            client.watchlist = set(TUBES)
            while True:
                try:
                    job = client.reserve_job(timeout=1)
                except pystalk.BeanstalkError as error:
                    assert error.message == "TIMED_OUT"
                    return
                assert job.job_data == produced[job.job_id]
                if job.job_data.endswith("-bury"):
                    assert client.bury_job(job.job_id, pri=7) == b"BURIED"
                    with lock:
                        buried.append(job.job_id)
                elif job.job_id % 5 == 0 and job.job_id not in released:
                    with lock:
                        released.add(job.job_id)
                    assert client.release_job(job.job_id, pri=2) == b"RELEASED"
                else:
                    client.delete_job(job.job_id)
                    with lock:
                        done[job.job_id] += 1
        finally:
            client.close()

    run_threads([worker for _ in range(3)])

    bury_ids = {jid for jid, body in produced.items() if body.endswith("-bury")}
    assert set(buried) == bury_ids and len(buried) == len(bury_ids)
    assert set(done) == set(produced) - bury_ids
    assert all(v == 1 for v in done.values())

    client = pclient(tcp_server)
    try:
        stats = client.stats()
        assert stats["current-jobs-buried"] == len(bury_ids)
        assert stats["current-jobs-reserved"] == 0
        assert stats["cmd-release"] == len(released)
        peeked = []
        for tube in TUBES:
            client.use(tube)
            peeked += [job.job_id for job in _take(client.peek_buried_iter(), 1)]
            status, count = client.kick_jobs(1000)
            assert status == b"KICKED"
            assert count == sum(1 for j in bury_ids if tube_of[j] == tube) > 0
        assert set(peeked) <= bury_ids and len(peeked) == 2
        client.watchlist = set(TUBES)
        drained = [job.job_id for job in client.reserve_iter()]
        assert sorted(drained) == sorted(bury_ids)
        for jid in drained:
            assert client.stats_job(jid)["kicks"] == 1
            client.delete_job(jid)
        assert client.stats()["current-jobs-ready"] == 0
    finally:
        client.close()


def _take(iterator, n):
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == n:
            break
    return out


def test_pystalk_peek_pause_and_stats(tcp_server):
    client = pclient(tcp_server)
    try:
        client.use("ptube")
        client.watch("ptube")
        assert client.watchlist == {"ptube"}
        _, delayed = client.put_job("d", pri=1, delay=3600)
        _, ready1 = client.put_job("r1", pri=20)
        _, ready2 = client.put_job("r2", pri=10)
        assert client.peek_ready().job_id == ready2
        assert client.peek_delayed().job_id == delayed
        assert [j.job_id for j in _take(client.peek_delayed_iter(), 1)] == [delayed]
        sj = client.stats_job(delayed)
        assert sj["state"] == "delayed" and sj["tube"] == "ptube" and sj["pri"] == 1
        client.kick_job(delayed)
        assert client.stats_job(delayed)["state"] == "ready"

        assert client.pause_tube("ptube", 1) == b"PAUSED"
        st = client.stats_tube("ptube")
        assert st["pause"] == 1 and st["current-jobs-ready"] == 3
        with pytest.raises(pystalk.BeanstalkError) as info:
            client.reserve_job(timeout=0)
        assert info.value.message == "TIMED_OUT"
        assert client.unpause_tube("ptube") == b"PAUSED"
        assert client.stats_tube("ptube")["pause"] == 0

        order = [job.job_id for job in client.reserve_iter()]
        assert order == [delayed, ready2, ready1]
        for jid in order:
            client.delete_job(jid)
        with pytest.raises(pystalk.BeanstalkError) as info:
            client.delete_job(order[0])
        assert info.value.message == "NOT_FOUND"
        stats = client.stats()
        assert stats["cmd-pause-tube"] == 2
        assert stats["cmd-kick"] == 0         # kick-job is not counted as cmd-kick (1.12)
        assert stats["current-jobs-delayed"] == 0
    finally:
        client.close()


def test_pystalk_reconnect_restores_use_and_watch(tcp_server):
    """pystalk re-establishes use/watch after close(); a closed connection's job returns."""
    client = pclient(tcp_server)
    other = pclient(tcp_server)
    try:
        client.use("rc")
        client.watch("rc")
        client.put_job("one")
        job = client.reserve_job(timeout=0)
        client.close()                       # reserved job goes back to ready at once
        other.watch("rc")
        again = other.reserve_job(timeout=1)
        assert again.job_id == job.job_id
        assert other.stats_job(again.job_id)["reserves"] == 2
        other.delete_job(again.job_id)
        client.put_job("two")                # reconnects, re-uses "rc"
        assert client.stats_tube("rc")["current-jobs-ready"] == 1
        assert client.reserve_job(timeout=0).job_data == "two"
    finally:
        client.close()
        other.close()
