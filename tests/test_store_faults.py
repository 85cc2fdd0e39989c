"""The shared store's faults (protocol.md, "Several nodes", "Faults"), against real
processes: redis-server killed with SIGKILL under load and started again (AOF,
appendfsync always), a replica promoted by Sentinel under load, and the id fence
that keeps a promoted replica from giving again the ids its old primary gave.

Under load 20 producers and 20 workers run on two qserver nodes; every loop is
bounded and every wait polls for an event. A reply that acknowledges a change
(INSERTED, DELETED, BURIED) must hold afterwards; INTERNAL_ERROR means the outcome
is unknown (protocol.md), and so does a connection cut off before its reply.
"""

import asyncio
import re
import subprocess
import threading
import time

import pytest

from conftest import (ServerProcess, free_port, qserver_argv, redis_command,
                      redis_server_path, start_qserver, start_redis, start_sentinel)
from qserver.store.redis import ID_MARGIN
from test_ext_durability import kill9

BOUND = 10.0                # a wait for something that takes milliseconds
RECOVER = 60.0              # a wait for Sentinel to notice and fail over (seconds)
PRODUCERS = WORKERS = 20
TUBE = b"f"


def poll(what: str, check, bound: float = BOUND, every: float = 0.05):
    """Call `check` until it returns something true (returned); AssertionError
    naming `what` after `bound` seconds. Exceptions count as not yet."""
    deadline = time.monotonic() + bound
    while True:
        try:
            got = check()
        except (OSError, RuntimeError, ConnectionError):
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {bound} s"
        time.sleep(every)


class Load:
    """Producers putting and workers reserving then deleting (or, one job in ten,
    burying) on the nodes in `nodes` (a list the test may change as it goes),
    recording what the nodes acknowledged. `lossy`: the store may lose acknowledged
    changes (asynchronous replication), so a delete or bury may find its job's
    reservation gone (NOT_FOUND)."""

    def __init__(self, nodes, lossy: bool = False):
        self.nodes = nodes
        self.lossy = lossy
        self.lock = threading.Lock()
        self.put_ok = {}                # id -> body, INSERTED
        self.put_order = []             # the same ids in the order acknowledged
        self.deleted_ok = set()         # DELETED
        self.buried_ok = set()          # BURIED
        self.unsure = set()             # its delete or bury's outcome is unknown
        self.internal_errors = 0
        self.problems = []              # anything a node should never answer
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._producer, args=(n,))
                        for n in range(PRODUCERS)]
        self.threads += [threading.Thread(target=self._worker, args=(n,))
                         for n in range(WORKERS)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(BOUND * 3)

    def counts(self) -> tuple:
        with self.lock:
            return len(self.put_ok), len(self.deleted_ok) + len(self.buried_ok)

    def progresses(self, what: str, bound: float = RECOVER, puts: int = 100,
                   done: int = 50, min_id: int = 0) -> None:
        """Wait until `puts` more puts (with ids from `min_id` on) and `done` more
        deletes or buries have been acknowledged from now: the nodes serve."""
        start, done0 = len(self.put_order), self.counts()[1]

        def enough():
            fresh = sum(1 for job in self.put_order[start:] if job >= min_id)
            return fresh >= puts and self.counts()[1] >= done0 + done
        poll(what, enough, bound)

    def last_id(self) -> int:
        with self.lock:
            return max(self.put_ok, default=0)

    def _connect(self, n):
        for attempt in range(200):              # bounded: a node is always up
            node = self.nodes[(n + attempt) % len(self.nodes)]
            try:
                c = node.client()
                c.sock.settimeout(BOUND * 2)
                assert c.cmd(b"use " + TUBE) == b"USING " + TUBE + b"\r\n"
                assert c.cmd(b"watch " + TUBE) == b"WATCHING 2\r\n"
                return c
            except (OSError, ConnectionError):
                time.sleep(0.01)
        raise AssertionError("no node to connect to")

    def _unexpected(self, what, reply) -> None:
        if reply == b"INTERNAL_ERROR\r\n":
            with self.lock:
                self.internal_errors += 1
            time.sleep(0.01)                    # the store is away: no busy loop
        else:
            self.problems.append((what, reply))

    def _producer(self, n):
        c = self._connect(n)
        try:
            for count in range(100_000):
                if self.stop.is_set():
                    return
                body = b"p%d-%d" % (n, count)
                try:
                    reply = c.cmd(b"put 0 0 60 %d\r\n%s" % (len(body), body))
                except (OSError, ConnectionError):
                    c.close()
                    c = self._connect(n)
                    continue
                m = re.fullmatch(rb"INSERTED (\d+)\r\n", reply)
                if m:
                    with self.lock:
                        if int(m[1]) in self.put_ok:
                            self.problems.append(("an id given twice", int(m[1])))
                        self.put_ok[int(m[1])] = body
                        self.put_order.append(int(m[1]))
                else:
                    self._unexpected("put", reply)
        except BaseException as error:
            self.problems.append(error)

    def _worker(self, n):
        c = self._connect(n)
        try:
            for _ in range(100_000):
                if self.stop.is_set():
                    return
                job = None
                try:
                    reply = c.cmd(b"reserve-with-timeout 1")
                    m = re.match(rb"RESERVED (\d+) ", reply)
                    if not m:
                        if reply != b"TIMED_OUT\r\n":
                            self._unexpected("reserve", reply)
                        continue
                    job = int(m[1])
                    if job % 10 == 0:
                        reply, want, done = c.cmd(b"bury %d 0" % job), b"BURIED\r\n", \
                            self.buried_ok
                    else:
                        reply, want, done = c.cmd(b"delete %d" % job), b"DELETED\r\n", \
                            self.deleted_ok
                    with self.lock:
                        (done if reply == want else self.unsure).add(job)
                    if reply != want and not (self.lossy and reply == b"NOT_FOUND\r\n"):
                        self._unexpected("bury or delete", reply)
                except (OSError, ConnectionError):
                    if job is not None:         # its delete may or may not have run
                        with self.lock:
                            self.unsure.add(job)
                    c.close()
                    c = self._connect(n)
        except BaseException as error:
            self.problems.append(error)

    def lost(self, node) -> list:
        """The acknowledged changes the store no longer shows: a put whose job is
        gone (or has another body) though its delete was not acknowledged, a
        deleted job still there, a buried job in another state."""
        lost = []
        c = node.client()
        c.sock.settimeout(BOUND * 2)
        try:
            for job, body in sorted(self.put_ok.items()):
                if job in self.unsure:
                    continue
                reply = c.cmd(b"peek %d" % job)
                if job in self.deleted_ok:
                    if reply != b"NOT_FOUND\r\n":
                        lost.append(("delete", job, reply))
                elif reply != b"FOUND %d %d\r\n%s\r\n" % (job, len(body), body):
                    lost.append(("put", job, reply))
                elif job in self.buried_ok and \
                        c.yaml(b"stats-job %d" % job)["state"] != "buried":
                    lost.append(("bury", job, reply))
        finally:
            c.close()
        return lost

    def check_nothing_acknowledged_was_lost(self, node) -> None:
        """Each acknowledged put is there with its body unless its delete was
        acknowledged, and buried if its bury was; an acknowledged delete's job is
        gone."""
        lost = self.lost(node)
        assert not lost, (len(lost), lost[:5])

    def report(self) -> str:
        return (f"acknowledged: {len(self.put_ok)} puts, {len(self.deleted_ok)} "
                f"deletes, {len(self.buried_ok)} buries; {len(self.unsure)} unsure, "
                f"{self.internal_errors} INTERNAL_ERROR")


def start_nodes(*flags, count: int = 2) -> list:
    """`count` qserver nodes with `flags`, each serving (it answers only once its
    store is connected: the listener is bound before)."""
    nodes = []
    try:
        for _ in range(count):
            nodes.append(start_qserver(*flags))
            c = nodes[-1].client()
            c.sock.settimeout(BOUND * 2)
            assert c.cmd(b"list-tube-used") == b"USING default\r\n"
            c.close()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def assert_alive_without_tracebacks(nodes) -> None:
    for node in nodes:
        assert node.proc.poll() is None, node.stderr_text()[-2000:]
        assert "Traceback" not in node.stderr_text(), node.stderr_text()[-4000:]


# ----------------------------------------------------------- redis-server killed

REDIS_KILLS = 3


def _redis_aof(directory, port=None):
    """A redis-server with appendonly yes and appendfsync always; on `port` and
    `directory` again after a kill."""
    extra = ("--appendonly", "yes", "--appendfsync", "always")
    if port is None:
        return start_redis(directory, *extra)
    return ServerProcess([redis_server_path(), "--port", str(port), "--bind",
                          "127.0.0.1", "--dir", str(directory), "--save", "",
                          "--protected-mode", "no", *extra], port)


def _subdir(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    return path


def test_killing_redis_under_load_loses_no_acknowledged_change(tmp_path):
    """redis-server (appendonly yes, appendfsync always) is killed with SIGKILL and
    started again on the same port and directory, three times, under 20 producers
    and 20 workers on two nodes: the nodes answer INTERNAL_ERROR meanwhile, connect
    again by themselves and serve; nothing acknowledged is lost, no id is given
    twice, and no node exits or logs a traceback."""
    redis = _redis_aof(tmp_path)
    url = f"redis://127.0.0.1:{redis.port}/0"
    nodes = start_nodes("--store", url)
    try:
        with Load(nodes) as load:
            load.progresses("load before the first kill")
            for kill in range(REDIS_KILLS):
                errors_before = load.internal_errors
                kill9(redis)
                poll("INTERNAL_ERROR while Redis is down",
                     lambda: load.internal_errors > errors_before)
                redis = _redis_aof(tmp_path, redis.port)
                load.progresses(f"load after restart {kill + 1}")
        assert not load.problems, load.problems[:5]
        assert all(not t.is_alive() for t in load.threads)
        assert_alive_without_tracebacks(nodes)
        load.check_nothing_acknowledged_was_lost(nodes[0])
        print(load.report())
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


# --------------------------------------------------------------------- the id fence

def test_a_primary_that_lost_the_last_ids_does_not_give_them_again(tmp_path):
    """A replica cut off before the primary's last puts, then used as the primary
    (as a failover would): its id counter is behind, so the first connection to it
    makes the counter jump by ID_MARGIN, once, and no id is given twice."""
    from qserver.store.redis import RedisStore
    primary = start_redis(_subdir(tmp_path, "p"))
    replica = start_redis(_subdir(tmp_path, "r"), "--replicaof", "127.0.0.1",
                          str(primary.port))

    async def scenario():
        old = await RedisStore.connect(f"redis://127.0.0.1:{primary.port}/0", "fence")
        first = [await old.put("t", 0, 0, 60, b"x") for _ in range(3)]
        offset = redis_command(primary.port, "INFO", "replication")
        want = int(re.search(r"master_repl_offset:(\d+)", offset)[1])
        poll("the replica has the first puts", lambda: int(re.search(
            r"slave_repl_offset:(\d+)",
            redis_command(replica.port, "INFO", "replication"))[1]) >= want)
        assert redis_command(replica.port, "REPLICAOF", "NO", "ONE") == "OK"
        lost = [await old.put("t", 0, 0, 60, b"lost") for _ in range(3)]
        await old.close()
        new = await RedisStore.connect(f"redis://127.0.0.1:{replica.port}/0", "fence")
        again = await RedisStore.connect(f"redis://127.0.0.1:{replica.port}/0", "fence")
        after = [await new.put("t", 0, 0, 60, b"y"), await again.put("t", 0, 0, 60, b"z")]
        await new.close()
        await again.close()
        return first, lost, after

    try:
        first, lost, after = asyncio.run(scenario())
    finally:
        primary.stop()
        replica.stop()
    assert lost == [first[-1] + 1, first[-1] + 2, first[-1] + 3]
    # Without the fence the next id would be first[-1] + 1, one of the lost ones.
    assert after == [first[-1] + ID_MARGIN + 1, first[-1] + ID_MARGIN + 2]


def test_a_restarted_redis_jumps_the_ids_once_for_all_nodes(tmp_path):
    """A restart gives Redis a new replication id: the first node to connect again
    makes the counter jump, the other one finds the jump made."""
    redis = _redis_aof(tmp_path)
    url = f"redis://127.0.0.1:{redis.port}/0"
    nodes = start_nodes("--store", url)
    try:
        a, b = nodes[0].client(), nodes[1].client()
        before = int(a.cmd(b"put 0 0 60 1\r\na").split()[1])
        kill9(redis)
        redis = _redis_aof(tmp_path, redis.port)
        ids = []
        for c in (a, b, a, b):
            reply = poll("a put after the restart",
                         lambda: re.fullmatch(rb"INSERTED (\d+)\r\n",
                                              c.cmd(b"put 0 0 60 1\r\nb")))
            ids.append(int(reply[1]))
        assert ids == [before + ID_MARGIN + n for n in (1, 2, 3, 4)]
        assert_alive_without_tracebacks(nodes)
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


# ------------------------------------------------------------------- Sentinel failover

MASTER = "mymaster"


class Replicated:
    """A primary, a replica and a sentinel (quorum 1, down after 1 s), each on a
    free port in a directory of its own, stopped by PID."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.servers = {}               # port -> ServerProcess of a redis-server
        a, b = _subdir(tmp_path, "a"), _subdir(tmp_path, "b")
        primary = start_redis(a, "--logfile", str(a / "redis.log"))
        self.servers[primary.port] = primary
        replica = start_redis(b, "--logfile", str(b / "redis.log"), "--replicaof",
                              "127.0.0.1", str(primary.port))
        self.servers[replica.port] = replica
        # Short enough for a test, long enough that a busy host is not taken for
        # a dead one (a needless failover, perhaps to a replica still syncing).
        self.sentinel = start_sentinel(_subdir(tmp_path, "s"), primary.port, MASTER,
                                       down_after_ms=2000, failover_timeout_ms=10_000)
        self.wait_until_in_sync(replica.port, primary.port)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{MASTER}/0"

    def sentinel_says(self, *args):
        return redis_command(self.sentinel.port, "SENTINEL", *args)

    def primary_port(self) -> int:
        return int(self.sentinel_says("get-master-addr-by-name", MASTER)[1])

    def wait_until_in_sync(self, replica: int, primary: int) -> None:
        """The replica replicates `primary` and the sentinel knows it as a replica
        it could promote."""
        def ready():
            info = redis_command(replica, "INFO", "replication")
            if f"master_port:{primary}" not in info or \
                    "master_link_status:up" not in info:
                return False
            known = self.sentinel_says("replicas", MASTER)
            return any(dict(zip(r[::2], r[1::2]))["port"] == str(replica) and
                       "s_down" not in dict(zip(r[::2], r[1::2]))["flags"]
                       for r in known)
        poll(f"{replica} replicates {primary}", ready, RECOVER)

    def wait_for_new_primary(self, old: int) -> int:
        """The sentinel names another primary, has finished the failover (one that
        times out is undone), and the new primary says it is one."""
        def moved():
            reply = self.sentinel_says("master", MASTER)
            fields = dict(zip(reply[::2], reply[1::2]))
            port = int(fields["port"])
            return port if port != old and "failover" not in fields["flags"] and \
                redis_command(port, "ROLE")[0] == "master" else None
        return poll("the sentinel names a new primary", moved, RECOVER)

    def stop(self) -> None:
        self.sentinel.stop()
        for server in self.servers.values():
            server.stop()


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_nodes_follow_a_sentinel_failover_under_load(tmp_path, wait_replicas):
    """Two nodes on redis+sentinel:// under 20 producers and 20 workers. First
    SENTINEL FAILOVER promotes the replica (the old primary becomes its replica),
    then the new primary is killed with SIGKILL and the sentinel promotes the other
    one (the killed one comes back as its replica). After each, the nodes serve
    again by themselves, and no node exits. No id is ever given twice (the fence);
    with --store-wait-replicas 1 nothing acknowledged is lost either."""
    redis = Replicated(tmp_path)
    nodes = []
    try:
        nodes = start_nodes("--store", redis.url, "--store-wait-replicas",
                            str(wait_replicas))
        with Load(nodes, lossy=not wait_replicas) as load:
            load.progresses("load before the failover")
            first = redis.primary_port()
            started = time.monotonic()
            assert redis.sentinel_says("failover", MASTER) == "OK"
            second = redis.wait_for_new_primary(first)
            # Ids past the jump come from the new primary (the fence): the nodes
            # serve from it, not from the old one, still alive. The new primary's
            # counter may lag the last acknowledged id (asynchronous replication),
            # so the bar is half the jump: far above any lag, far above any id the
            # old primary could give.
            load.progresses("load after SENTINEL FAILOVER",
                            min_id=load.last_id() + ID_MARGIN // 2)
            served = time.monotonic() - started
            redis.wait_until_in_sync(first, second)
            started = time.monotonic()
            last = load.last_id()
            kill9(redis.servers[second])
            third = redis.wait_for_new_primary(second)
            assert third == first
            promoted = time.monotonic() - started
            # The killed primary comes back as a replica (its files say nothing
            # of it: no persistence), so that WAIT 1 can be met again.
            b = tmp_path / "b"
            redis.servers[second] = ServerProcess(
                [redis_server_path(), "--port", str(second), "--bind", "127.0.0.1",
                 "--dir", str(b), "--save", "", "--appendonly", "no", "--protected-mode",
                 "no", "--logfile", str(b / "redis.log"), "--replicaof", "127.0.0.1",
                 str(third)], second)
            load.progresses("load after the primary was killed",
                            min_id=last + ID_MARGIN // 2)
            served_again = time.monotonic() - started
        assert not load.problems, load.problems[:5]
        assert all(not t.is_alive() for t in load.threads)
        assert_alive_without_tracebacks(nodes)
        if wait_replicas:
            load.check_nothing_acknowledged_was_lost(nodes[0])
        # Reported, not asserted (visible with pytest -s).
        lost = load.lost(nodes[0]) if not wait_replicas else []
        print(f"{load.report()}; acknowledged changes lost: {len(lost)}; "
              f"served again {served:.1f} s after SENTINEL FAILOVER; after the kill, "
              f"promoted in {promoted:.1f} s, served again in {served_again:.1f} s")
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


# ------------------------------------------------------------------ small pieces

def test_a_sentinel_url_whose_sentinels_cannot_be_reached_stops_the_start():
    port = free_port()                          # nothing listens there
    done = subprocess.run(qserver_argv("-l", "127.0.0.1", "-p", str(free_port()),
                                       "--store", f"redis+sentinel://u:secret@127.0.0.1:"
                                       f"{port}/mymaster/0"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert "no sentinel gave the primary" in done.stderr
    assert "secret" not in done.stderr


async def test_a_silent_subscription_is_pinged_then_made_again(monkeypatch):
    """A store that keeps the wake-up connection open but stops answering (a host
    gone without a FIN) is found out by a PING and subscribed to again."""
    from qserver.store import redis as store_redis
    monkeypatch.setattr(store_redis, "KEEPALIVE_SECONDS", 0.1)
    seen = []                                   # what each connection received

    async def mute(reader, writer):
        got = bytearray()
        seen.append(got)
        data = await reader.read(1000)          # SUBSCRIBE: confirmed, then silence
        got += data
        writer.write(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nw\r\n:1\r\n")
        while data:
            data = await reader.read(1000)
            got += data
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wakeups = store_redis.Wakeups({"host": "127.0.0.1", "port": port}, "w")
    try:
        await wakeups.start()
        deadline = time.monotonic() + BOUND
        while len(seen) < 2:
            assert time.monotonic() < deadline, "not subscribed again"
            await asyncio.sleep(0.05)
        assert b"PING" in seen[0]
    finally:
        await wakeups.close()
        server.close()


def test_without_enough_replicas_a_change_answers_internal_error_yet_was_applied(
        redis_server):
    """--store-wait-replicas 1 on a store with no replica: WAIT hears from none
    within its timeout, so the put answers INTERNAL_ERROR; it was applied on the
    primary all the same (its outcome is unknown, not "failed")."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = ("--store-prefix", "nowait")
    (plain,) = start_nodes("--store", url, *prefix, count=1)
    waiting = None
    try:
        (waiting,) = start_nodes("--store", url, *prefix, "--store-wait-replicas", "1",
                                 count=1)
        w, p = waiting.client(), plain.client()
        w.sock.settimeout(BOUND)
        assert w.cmd(b"use x") == b"USING x\r\n"
        assert w.cmd(b"put 0 0 60 7\r\nwaiting") == b"INTERNAL_ERROR\r\n"
        assert p.cmd(b"use x") == b"USING x\r\n"
        assert re.fullmatch(rb"FOUND \d+ 7\r\nwaiting\r\n", p.cmd(b"peek-ready"))
    finally:
        if waiting is not None:
            waiting.stop()
        plain.stop()


@pytest.mark.parametrize("url, settings", [
    ("redis://u:p%40ss@h:7000/2", {"host": "h", "port": 7000, "db": 2, "username": "u",
                                   "password": "p@ss", "tls": False, "sentinels": None}),
    ("rediss://secret@h", {"host": "h", "port": 6379, "db": 0, "username": None,
                           "password": "secret", "tls": True}),
    ("redis+sentinel://s1,s2:26380/mymaster/3",
     {"sentinels": [("s1", 26379), ("s2", 26380)], "master": "mymaster", "db": 3,
      "tls": False}),
    ("rediss+sentinel://:pw@[::1]:26379/m", {"sentinels": [("::1", 26379)],
                                             "master": "m", "password": "pw",
                                             "tls": True})])
def test_store_urls_are_read(url, settings):
    from qserver.store import parse_url
    got = parse_url(url)
    assert {name: got[name] for name in settings} == settings


def test_the_store_flags_reach_the_config():
    from qserver.cli import parse_config
    config = parse_config(["--store", "redis+sentinel://h:26379/m/0",
                           "--store-wait-replicas", "2"])
    assert (config.store, config.store_wait_replicas) == \
        ("redis+sentinel://h:26379/m/0", 2)
    assert parse_config([]).store_wait_replicas == 0
