"""The cyclic garbage collector's policy (collector.py): full passes freeze what
survived them, so with many jobs live a pass looks only at what is new; nothing that
is cyclic garbage gets frozen; and the server's own objects never need the cyclic
collector (they die by refcounting), so freezing them loses nothing.

No test here looks at a clock: they count objects and generations.
"""

import collections
import gc
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import free_port, qserver_argv, wait_for_port
from qserver.client import Client, Duplicate, NotFound, TimedOut
from qserver.collector import Collector
from qserver.engine import Engine
from qserver.job import Job
from qserver.session import Session


class Node:
    """Weak-referenceable, so a test can see whether the collector freed it."""

    __slots__ = ("other", "__weakref__")


@pytest.fixture
def collector():
    gc.collect()
    gc.unfreeze()
    c = Collector(thaw_every=1)
    c.start()
    yield c
    c.stop()
    gc.unfreeze()
    gc.collect()


def _cycle():
    import weakref
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_full_pass_frees_cyclic_garbage_and_freezes_only_what_survived(collector):
    live = [_cycle_pair() for _ in range(1000)]
    dead = _cycle()                  # unreachable from the start
    assert dead() is not None
    frozen_before = gc.get_freeze_count()
    gc.collect()
    assert dead() is None            # freed by the pass, not frozen
    assert collector.full_passes >= 1
    assert gc.get_freeze_count() >= frozen_before + 2000
    assert not gc.get_objects(generation=2)      # everything that survived is frozen
    assert all(gc.is_tracked(pair[0]) for pair in live)


def _cycle_pair():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, b


def test_a_cycle_that_dies_frozen_is_freed_once_the_frozen_are_few(collector):
    pair = _cycle_pair()
    import weakref
    ref = weakref.ref(pair[0])
    gc.collect()                     # pair survives: frozen
    assert gc.get_freeze_count() > 0
    del pair                         # now cyclic garbage, but frozen
    assert ref() is not None
    collector.thaw_below = gc.get_freeze_count() + 1
    gc.collect()                     # few frozen: the pass unfreezes them first
    assert ref() is None
    assert collector.thawed >= 1


def test_with_many_frozen_or_many_jobs_a_pass_leaves_them_frozen(collector):
    pair = _cycle_pair()
    import weakref
    ref = weakref.ref(pair[0])
    gc.collect()
    del pair
    collector.thaw_below = 0         # as with a million objects frozen
    gc.collect()
    assert ref() is not None         # not looked at (freed when the frozen are few)
    collector.thaw_below = gc.get_freeze_count() + 1
    collector.live = lambda: collector.thaw_below   # as with many jobs live: the
    gc.collect()                                    # frozen are not even counted
    assert ref() is not None
    collector.live = lambda: 0
    gc.collect()
    assert ref() is None


def test_stop_gives_the_thresholds_back():
    before = gc.get_threshold()
    c = Collector(middle=6, full_every=3)
    c.start()
    try:
        assert gc.get_threshold()[1:] == (6, 3)
        assert c._on_pass in gc.callbacks
    finally:
        c.stop()
    assert gc.get_threshold() == before
    assert c._on_pass not in gc.callbacks


def test_after_a_bulk_load_of_jobs_passes_visit_only_a_bounded_few(collector):
    """300,000 puts: the automatic passes freeze the jobs as they go, so the
    jobs a full pass would still visit are those put since the last pass, a
    number set by the thresholds and not by how many jobs are live."""
    engine = Engine()
    session = Session()
    engine.attach(session)
    tube = engine.default_tube
    n = 300_000
    for i in range(n):
        engine.put(tube, engine.allocate_id(), 1024, 0, 60, b"x" * 102, 0.0, 0.0)
    assert len(engine.jobs) == n
    assert collector.full_passes > 0
    young, middle, full_every = gc.get_threshold()
    bound = (full_every + 1) * (middle + 1) * (young + 1)
    unfrozen = sum(1 for o in gc.get_objects() if o.__class__ is Job)
    assert unfrozen <= bound < n // 4
    assert gc.get_freeze_count() >= n - bound


# -- the server's objects die by refcounting ----------------------------------------

# Runs qserver; when it exits, unfreezes everything, collects with DEBUG_SAVEALL and
# prints what the cyclic collector found (type names and counts) as JSON on stderr.
# What importing the standard library leaves (ssl's enum classes) is collected first.
WRAPPER = """
import collections, gc, json, sys
import asyncio, ssl, uvloop, qserver.server, qserver.journal
from qserver.cli import main
gc.collect()
sys.argv[0] = "qserver"
rc = main(sys.argv[1:])
gc.unfreeze()
gc.set_debug(gc.DEBUG_SAVEALL)
gc.collect()
found = collections.Counter(type(o).__module__ + "." + type(o).__qualname__
                            for o in gc.garbage)
print("GARBAGE " + json.dumps(found), file=sys.stderr)
sys.exit(rc)
"""


def _serve(*flags):
    port = free_port()
    argv = [sys.executable, "-c", WRAPPER, "-l", "127.0.0.1", "-p", str(port), *flags]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_port(port, proc)
    return proc, port


def _garbage(proc) -> dict:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    line = [l for l in err.decode().splitlines() if l.startswith("GARBAGE ")]
    assert proc.returncode == 0 and line, err.decode()[-2000:]
    return json.loads(line[-1][len("GARBAGE "):])


def _exercise(port: int) -> None:
    """Connections that come and go doing a bit of everything, some closing with
    jobs reserved or a reserve parked."""
    for round_ in range(20):
        tube = f"t{round_ % 3}"
        with Client(port=port, timeout=10) as producer, \
                Client(port=port, timeout=10) as worker:
            producer.use(tube)
            worker.watch(tube)
            worker.ignore("default")
            ids = [producer.put(b"body %d" % i, delay=i % 2 * 30) for i in range(6)]
            producer.put_ex(b"keyed", key=f"k{round_}", tags=["t", f"r{round_}"],
                            lock=f"l{round_ % 2}")
            with pytest.raises(Duplicate):
                producer.put_ex(b"again", key=f"k{round_}")
            job = worker.reserve_with_timeout(0)
            worker.touch(job.id)
            worker.release(job.id, delay=0)
            job = worker.reserve_with_timeout(0)
            worker.bury(job.id)
            producer.kick(1)
            job = worker.reserve_with_timeout(0)
            worker.delete(job.id)
            producer.stats_job(ids[1])
            producer.peek(ids[1])
            producer.kick_job(ids[1])
            producer.pause_tube(tube, 0)
            producer.stats_tube(tube)
            producer.list_jobs(tube, "ready")
            if round_ % 4 == 0:
                producer.config_tube_set(tube, "max-attempts", 2)
                producer.config_tube_set(tube, "retain", 60)
                job = _reserve(worker)
                if job is not None:
                    worker.fail(job.id, b"no")
                job = _reserve(worker)
                if job is not None:
                    worker.complete(job.id, b"done")
                    producer.job_info(job.id)
                    producer.peek_result(job.id)
            if round_ % 5 == 0:
                producer.cancel_tag("t")
                producer.flush_tube(tube)
            _reserve(worker)            # closes holding this one, if any
            with pytest.raises(NotFound):
                worker.delete(10 ** 9)
        with Client(port=port, timeout=10) as idle:
            idle.watch("empty")
            idle.ignore("default")
            with pytest.raises(TimedOut):
                idle.reserve_with_timeout(0)
        subscriber = Client(port=port, timeout=10)
        stream = subscriber.subscribe("*")
        with Client(port=port, timeout=10) as producer:
            producer.put(b"seen")
        next(stream)
        stream.close()
        subscriber.close()


def _reserve(worker):
    try:
        return worker.reserve_with_timeout(0)
    except TimedOut:
        return None


def _idle_garbage(*flags) -> collections.Counter:
    """What a server that served nothing leaves when it exits: the garbage its
    command line's parsing made, which no full pass had a reason to free yet."""
    proc, _ = _serve(*flags)
    return collections.Counter(_garbage(proc))


def _beyond(garbage: dict, idle: collections.Counter) -> dict:
    return dict(collections.Counter(garbage) - idle)


def test_the_server_leaves_no_cyclic_garbage_in_memory():
    idle = _idle_garbage()
    proc, port = _serve()
    try:
        _exercise(port)
    finally:
        garbage = _garbage(proc)
    assert _beyond(garbage, idle) == {}


def test_the_server_leaves_no_cyclic_garbage_with_a_log_nor_after_a_replay(tmp_path):
    """With -b, and after a restart: the replay runs with the collector off and
    freezes what it made without a pass, so it must make no cyclic garbage."""
    for name in ("idle", "log"):
        (tmp_path / name).mkdir()
    idle = _idle_garbage("-b", str(tmp_path / "idle"))
    proc, port = _serve("-b", str(tmp_path / "log"))
    try:
        _exercise(port)
    finally:
        garbage = _garbage(proc)
    assert _beyond(garbage, idle) == {}
    proc, port = _serve("-b", str(tmp_path / "log"))
    try:
        with Client(port=port, timeout=10) as c:
            assert c.stats()["current-jobs-ready"] > 0
    finally:
        garbage = _garbage(proc)
    assert _beyond(garbage, idle) == {}


# -- memory goes back after a drain ---------------------------------------------------

def test_rss_falls_back_after_a_large_backlog_drains():
    """400,000 jobs put and deleted: the server's housekeeping (every 5 s) shrinks
    the job index and trims malloc, so its RSS comes back within 2x of what it was
    empty, after a first 5,000 jobs touched the pages of the code that serves them
    (beanstalkd keeps it all). Waits at most 60 s (the timer fires within 5)."""
    from conftest import rss
    port = free_port()
    proc = subprocess.Popen(qserver_argv("-l", "127.0.0.1", "-p", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        n, batch = 400_000, 5_000
        for command in (PUT, DELETE):               # the code's pages, touched once
            _pipeline(port, command, 1, batch, batch)
        empty = rss(proc.pid)
        _pipeline(port, PUT, batch + 1, n, batch)
        full = rss(proc.pid)
        _pipeline(port, DELETE, batch + 1, n, batch)
        assert full > 2 * empty             # the jobs did take memory
        deadline = time.monotonic() + 60
        while rss(proc.pid) > 2 * empty and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rss(proc.pid) <= 2 * empty, (empty, full, rss(proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)


PUT = b"put 0 0 60 100\r\n" + b"x" * 100 + b"\r\n"
DELETE = b"delete %d\r\n"


def _pipeline(port: int, command: bytes, first: int, n: int, batch: int) -> None:
    """n puts, or deletes of ids first .. first + n - 1, in pipelined batches."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for start in range(first, first + n, batch):
            ids = range(start, start + batch)
            sock.sendall(command * batch if command is PUT
                         else b"".join(command % i for i in ids))
            _read_lines(sock, batch)


def _read_lines(sock, count: int) -> None:
    seen = 0
    while seen < count:
        chunk = sock.recv(1 << 16)
        assert chunk, "server closed"
        seen += chunk.count(b"\n")
