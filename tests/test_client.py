"""qserver.client against real servers, and its reply parsing against literal bytes.

* The beanstalkd commands run against qserver and against the reference beanstalkd
  (parametrized), with the async client and with the blocking one.
* The extensions (config-tube, fail, complete, progress, job-info, peek-result,
  stats-ext) and the worker loop run against qserver.
* Replies no real server sends on demand (BURIED to a put, a garbled body, a reply
  that never comes) come from a scripted fake server.

No test asserts a duration. Every wait is bounded: each client has a reply timeout,
reserves use timeouts, and polling loops have a fixed number of turns.
"""

import asyncio
import os
import shutil
import signal
import tempfile
import threading

import pytest

from conftest import (ServerProcess, free_port, qserver_argv, start_beanstalkd,
                      start_qserver)

from qserver.client import (AsyncClient, BadFormat, Buried, Client, DeadlineSoon,
                            Draining, ExpectedCrlf, FailAction, FailResult,
                            InternalError, Job, JobTooBig, NotFound, NotIgnored,
                            OutOfMemory, QueueClientError, QueueConnectionError,
                            ServerError, TimedOut, UnexpectedReply, UnknownCommand,
                            parse_yaml)

TIMEOUT = 10.0          # every reply, generously
POLL_TURNS = 300        # polling loops: at most this many turns of POLL_PAUSE
POLL_PAUSE = 0.1


def _start(kind: str, *extra: str) -> ServerProcess:
    return start_qserver(*extra) if kind == "qserver" else start_beanstalkd(*extra)


@pytest.fixture(params=["qserver", "beanstalkd"])
def server(request):
    s = _start(request.param)
    yield s
    s.stop()


@pytest.fixture
def qs():
    s = start_qserver()
    yield s
    s.stop()


def aclient(server: ServerProcess) -> AsyncClient:
    return AsyncClient(port=server.port, timeout=TIMEOUT)


async def until(predicate, what: str) -> None:
    """Poll an async predicate until it holds, a bounded number of turns."""
    for _ in range(POLL_TURNS):
        if await predicate():
            return
        await asyncio.sleep(POLL_PAUSE)
    raise AssertionError(f"never happened: {what}")


# -- parsing: literal bytes as the servers send them ----------------------------------

JOB_INFO = (b"---\nid: 12\ntube: \"emails\"\nstate: buried\npri: 100\nage: 95\n"
            b"delay: 0\nttr: 60\ntime-left: 0\nfile: 0\nreserves: 3\ntimeouts: 3\n"
            b"releases: 0\nburies: 1\nkicks: 0\nattempts: 3\nmax-attempts: 3\n"
            b"progress: ~\nresult-bytes: 0\nfailures:\n"
            b"- time: 1764626400\n  reason: \"TTR expired\"\n"
            b"- time: 1764626461\n  reason: \"TTR expired\"\n"
            b"- time: 1764626522\n  reason: \"TTR expired\"\n")


def test_parse_job_info_example_of_protocol_md():
    info = parse_yaml(JOB_INFO, ("tube", "state"))
    assert list(info)[:3] == ["id", "tube", "state"]
    assert info["id"] == 12 and info["tube"] == "emails" and info["state"] == "buried"
    assert info["progress"] is None and info["max-attempts"] == 3
    assert info["failures"] == [{"time": 1764626400, "reason": "TTR expired"},
                                {"time": 1764626461, "reason": "TTR expired"},
                                {"time": 1764626522, "reason": "TTR expired"}]
    assert list(info)[-1] == "failures"


def test_parse_config_tube_example_of_protocol_md():
    text = (b'---\nname: "emails"\nconfigured: true\nmax-attempts: 3\n'
            b'backoff: exp:5:300\ndead-letter: "tube:emails-dead"\nretain: 3600\n')
    assert parse_yaml(text, ("name", "backoff", "dead-letter")) == {
        "name": "emails", "configured": True, "max-attempts": 3,
        "backoff": "exp:5:300", "dead-letter": "tube:emails-dead", "retain": 3600}


def test_parse_quoted_escapes_and_empty_failures():
    text = (b'---\ntube: "a\\\\b\\"c"\nprogress: "\\xff\\x00 50%"\n'
            b'failures: []\nresult-bytes: 7\n')
    parsed = parse_yaml(text)
    assert parsed["tube"] == 'a\\b"c'
    assert parsed["progress"] == "\xff\x00 50%"     # one character per byte
    assert parsed["failures"] == [] and parsed["result-bytes"] == 7


def test_parse_both_beanstalkd_versions_and_lists():
    old = parse_yaml(b"---\nname: 123\nversion: 1.12\nrusage-utime: 0.004000\n"
                     b"draining: false\nid: 0123456789012345\n",
                     ("name", "version", "id"))
    assert old == {"name": "123", "version": "1.12", "rusage-utime": 0.004,
                   "draining": False, "id": "0123456789012345"}
    new = parse_yaml(b'---\nname: "123"\nversion: "0.1.0"\ncurrent-jobs-ready: 3\n')
    assert new == {"name": "123", "version": "0.1.0", "current-jobs-ready": 3}
    assert parse_yaml(b"---\n- default\n- 123\n- \"x\"\n") == ["default", "123", "x"]
    assert parse_yaml("---\n") == {}


def test_error_classes_are_distinct():
    assert issubclass(QueueConnectionError, ConnectionError)
    assert issubclass(QueueConnectionError, QueueClientError)
    assert not issubclass(QueueConnectionError, ServerError)
    assert not issubclass(ServerError, ConnectionError)
    classes = [NotFound, BadFormat, JobTooBig, Draining, DeadlineSoon, TimedOut, Buried,
               ExpectedCrlf, OutOfMemory, InternalError, UnknownCommand, NotIgnored,
               UnexpectedReply]
    assert all(issubclass(c, ServerError) for c in classes)
    assert len({c.word for c in classes}) == len(classes)
    error = NotFound("delete", "NOT_FOUND")
    assert str(error) == "delete: NOT_FOUND" and error.command == "delete"


def test_arguments_cannot_smuggle_a_command():
    client = AsyncClient()
    for bad in ("a\r\nput 0 0 1 1", "a\nb"):
        with pytest.raises(ValueError):
            asyncio.run(client.use(bad))
    with pytest.raises(ValueError):
        asyncio.run(client.delete(-1))
    with pytest.raises(TypeError):
        asyncio.run(client.put(12))


# -- a scripted server ------------------------------------------------------------------

BODY_COMMANDS = {b"put", b"fail", b"complete", b"progress"}


class FakeServer:
    """Answers the n-th command with replies[n] (None: never answer); records lines."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.lines = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()

    async def _serve(self, reader, writer):
        try:
            while self.replies:
                line = (await reader.readuntil(b"\r\n"))[:-2]
                self.lines.append(line)
                if line.split(b" ")[0] in BODY_COMMANDS:
                    await reader.readexactly(int(line.split(b" ")[-1]) + 2)
                reply = self.replies.pop(0)
                if reply is None:
                    await reader.read()         # until the client goes away
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.mark.parametrize("reply, error", [
    (b"NOT_FOUND\r\n", NotFound), (b"BAD_FORMAT\r\n", BadFormat),
    (b"JOB_TOO_BIG\r\n", JobTooBig), (b"DRAINING\r\n", Draining),
    (b"EXPECTED_CRLF\r\n", ExpectedCrlf), (b"OUT_OF_MEMORY\r\n", OutOfMemory),
    (b"INTERNAL_ERROR\r\n", InternalError), (b"UNKNOWN_COMMAND\r\n", UnknownCommand),
    (b"INSERTED\r\n", UnexpectedReply), (b"FOUND 1 1\r\nx\r\n", UnexpectedReply)])
async def test_each_error_reply_has_its_class(reply, error):
    async with FakeServer([reply, b"INSERTED 9\r\n"]) as fake:
        async with AsyncClient(port=fake.port, timeout=TIMEOUT) as q:
            with pytest.raises(error) as info:
                await q.put(b"hello", pri=1, delay=2, ttr=3)
            assert type(info.value) is error
            assert info.value.reply == reply.split(b"\r\n")[0].decode()
            assert await q.put(b"next") == 9        # the pipe is still in step
    assert fake.lines[0] == b"put 1 2 3 5"


async def test_buried_carries_the_job_id():
    async with FakeServer([b"BURIED 7\r\n", b"BURIED\r\n"]) as fake:
        async with AsyncClient(port=fake.port, timeout=TIMEOUT) as q:
            with pytest.raises(Buried) as info:
                await q.put(b"x")
            assert info.value.job_id == 7
            with pytest.raises(Buried) as info:
                await q.release(7, pri=1, delay=0)
            assert info.value.job_id is None


async def test_fail_replies_become_typed_results():
    replies = [b"RETRYING 30\r\n", b"RETRYING 0\r\n", b"BURIED\r\n", b"MOVED dead\r\n",
               b"DELETED\r\n", b"NOT_FOUND\r\n"]
    async with FakeServer(replies) as fake:
        async with AsyncClient(port=fake.port, timeout=TIMEOUT) as q:
            assert await q.fail(1, "why") == FailResult(FailAction.RETRYING, delay=30)
            assert await q.fail(1, b"") == FailResult(FailAction.RETRYING, delay=0)
            assert await q.fail(1) == FailResult(FailAction.BURIED)
            assert await q.fail(1) == FailResult(FailAction.MOVED, tube="dead")
            assert await q.fail(1) == FailResult(FailAction.DELETED)
            with pytest.raises(NotFound):
                await q.fail(1)
    assert fake.lines[0] == b"fail 1 3" and fake.lines[1] == b"fail 1 0"


@pytest.mark.parametrize("reply", [b"FOUND 1 5\r\nhelloXY", b"FOUND 1 x\r\n"])
async def test_a_garbled_reply_is_a_connection_error(reply):
    async with FakeServer([reply]) as fake:
        async with AsyncClient(port=fake.port, timeout=TIMEOUT) as q:
            with pytest.raises(QueueConnectionError):
                await q.peek(1)
            assert q.closed
            with pytest.raises(QueueConnectionError):
                await q.peek(1)


async def test_a_reply_that_never_comes_times_out_and_closes():
    async with FakeServer([None]) as fake:
        async with AsyncClient(port=fake.port, timeout=0.2) as q:
            with pytest.raises(QueueConnectionError, match="no reply"):
                await q.stats()
            assert q.closed


# -- the beanstalkd commands, on both servers -------------------------------------------

async def test_tubes_put_reserve_delete(server):
    async with aclient(server) as q:
        assert await q.list_tube_used() == "default"
        assert await q.use("emails") == "emails"
        assert await q.list_tube_used() == "emails"
        assert await q.watch("emails") == 2
        assert await q.watch("emails") == 2
        assert await q.list_tubes_watched() == ["default", "emails"]
        assert await q.ignore("default") == 1
        with pytest.raises(NotIgnored):
            await q.ignore("emails")
        assert set(await q.list_tubes()) == {"default", "emails"}
        first = await q.put(b"hello\r\nworld\x00", pri=5, ttr=30)
        second = await q.put("héllo", pri=7)
        assert second == first + 1
        assert await q.reserve() == Job(first, b"hello\r\nworld\x00")
        stats = await q.stats_job(first)
        assert stats["state"] == "reserved" and stats["tube"] == "emails"
        assert stats["pri"] == 5 and stats["ttr"] == 30 and stats["reserves"] == 1
        await q.delete(first)
        with pytest.raises(NotFound):
            await q.delete(first)
        assert await q.reserve_with_timeout(0) == Job(second, "héllo".encode())
        with pytest.raises(TimedOut):
            await q.reserve_with_timeout(0)


async def test_peek_bury_kick_release_touch(server):
    async with aclient(server) as q:
        await q.use("t")
        await q.watch("t")
        await q.ignore("default")
        a = await q.put(b"a", pri=1)
        b = await q.put(b"b", pri=2)
        c = await q.put(b"c", delay=100)
        assert await q.peek_ready() == Job(a, b"a")
        assert await q.peek_delayed() == Job(c, b"c")
        with pytest.raises(NotFound):
            await q.peek_buried()
        job = await q.reserve_with_timeout(0)
        assert job.id == a
        await q.touch(a)
        await q.bury(a, pri=9)
        assert await q.peek_buried() == Job(a, b"a")
        assert (await q.stats_job(a))["pri"] == 9
        assert await q.kick(10) == 1                 # buried before delayed
        assert (await q.stats_job(a))["state"] == "ready"
        await q.kick_job(c)
        assert (await q.stats_job(c))["state"] == "ready"
        with pytest.raises(NotFound):
            await q.kick_job(c)
        assert (await q.reserve_job(b)).body == b"b"
        await q.release(b, pri=3, delay=100)
        assert (await q.stats_job(b))["state"] == "delayed"
        assert await q.peek(b) == Job(b, b"b")
        with pytest.raises(NotFound):
            await q.touch(b)
        stats = await q.stats_job(b)
        assert (stats["pri"], stats["delay"], stats["releases"]) == (3, 100, 1)
        assert (await q.stats_job(a))["kicks"] == 1


async def test_stats_and_pause(server):
    async with aclient(server) as q:
        await q.use("p")
        await q.put(b"x", pri=10)
        stats = await q.stats()
        assert stats["current-jobs-ready"] == 1 and stats["current-jobs-urgent"] == 1
        assert isinstance(stats["version"], str) and isinstance(stats["id"], str)
        assert isinstance(stats["draining"], bool)
        assert isinstance(stats["rusage-utime"], float)
        await q.pause_tube("p", 30)
        tube = await q.stats_tube("p")
        assert tube["name"] == "p" and tube["pause"] == 30
        assert tube["current-jobs-ready"] == 1 and tube["cmd-pause-tube"] == 1
        with pytest.raises(NotFound):
            await q.pause_tube("nothing", 1)
        with pytest.raises(NotFound):
            await q.stats_tube("nothing")
        with pytest.raises(BadFormat):
            await q.use("-leading-dash")


async def test_deadline_soon(server):
    async with aclient(server) as q:
        job_id = await q.put(b"x", ttr=1)
        assert (await q.reserve()).id == job_id
        # with ttr 1 the safety margin starts at once (protocol.md, "DEADLINE_SOON")
        with pytest.raises(DeadlineSoon):
            await q.reserve_with_timeout(10)


async def test_commands_take_turns_on_one_connection(server):
    async with aclient(server) as q:
        await q.use("turns")
        ids = await asyncio.gather(*(q.put(b"%d" % i) for i in range(50)))
        assert sorted(ids) == list(range(1, 51))
        bodies = await asyncio.gather(*(q.peek(i) for i in ids))
        assert [int(job.body) for job in bodies] == list(range(50))
        assert (await q.stats_tube("turns"))["current-jobs-ready"] == 50


async def test_extension_commands_are_unknown_to_beanstalkd(beanstalkd):
    async with aclient(beanstalkd) as q:
        with pytest.raises(UnknownCommand):
            await q.job_info(1)
        with pytest.raises(UnknownCommand):
            await q.config_tube_get("default")
        assert await q.list_tube_used() == "default"


@pytest.mark.parametrize("kind", ["qserver", "beanstalkd"])
async def test_job_too_big(kind):
    s = _start(kind, "-z", "10")
    try:
        async with aclient(s) as q:
            with pytest.raises(JobTooBig):
                await q.put(b"x" * 11)
            assert await q.put(b"x" * 10) == 1
    finally:
        s.stop()


async def test_draining(server):
    async with aclient(server) as q:
        assert await q.put(b"before") == 1
        server.signal(signal.SIGUSR1)

        async def draining():
            try:
                await q.put(b"x")
            except Draining:
                return True
            return False
        await until(draining, "DRAINING after SIGUSR1")
        assert (await q.stats())["draining"] is True


async def test_connection_errors(server):
    with pytest.raises(QueueConnectionError, match="cannot connect") as info:
        await AsyncClient(port=free_port(), timeout=TIMEOUT).connect()
    assert isinstance(info.value, ConnectionError)
    q = await aclient(server).connect()
    await q.quit()
    assert q.closed
    with pytest.raises(QueueConnectionError):
        await q.stats()
    q = await aclient(server).connect()
    assert await q.put(b"x") == 1
    server.stop()
    with pytest.raises(QueueConnectionError):
        await q.stats()
    await q.close()


async def test_cancelling_a_waiting_reserve_closes_the_connection(server):
    async with aclient(server) as q, aclient(server) as observer:
        task = asyncio.create_task(q.reserve())

        async def waiting():
            return (await observer.stats())["current-waiting"] == 1
        await until(waiting, "the reserve waits")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert q.closed
        with pytest.raises(QueueConnectionError):
            await q.put(b"x")
        # the server saw the close: the job goes to nobody
        assert await observer.put(b"y") == 1

        async def nobody_waits():
            return (await observer.stats())["current-waiting"] == 0
        await until(nobody_waits, "the server drops the waiter")
        assert (await observer.stats_job(1))["state"] == "ready"


def test_blocking_client(server):
    with Client(port=server.port, timeout=TIMEOUT) as c:
        assert c.use("b") == "b"
        assert c.watch("b") == 2
        job_id = c.put(b"payload", pri=3)
        assert c.reserve_with_timeout(0) == Job(job_id, b"payload")
        c.release(job_id, pri=4)
        assert c.reserve().id == job_id
        c.bury(job_id)
        assert c.peek_buried().id == job_id
        assert c.kick(1) == 1
        assert c.stats_job(job_id)["kicks"] == 1
        assert c.stats_tube("b")["current-jobs-ready"] == 1
        assert c.stats()["current-jobs-ready"] == 1
        assert c.list_tubes_watched() == ["default", "b"]
        assert c.ignore("default") == 1
        c.delete(job_id)
        with pytest.raises(TimedOut):
            c.reserve_with_timeout(0)
        with pytest.raises(NotFound):
            c.peek(job_id)
        # several threads share one client; commands take turns
        ids = []
        threads = [threading.Thread(target=lambda: ids.append(c.put(b"t")))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert sorted(ids) == list(range(job_id + 1, job_id + 9))
    assert c.closed
    with pytest.raises(QueueConnectionError):
        c.stats()
    with pytest.raises(QueueConnectionError):
        Client(port=free_port(), timeout=TIMEOUT)


def test_blocking_client_over_a_unix_socket():
    directory = tempfile.mkdtemp(prefix="qcl", dir="/tmp")
    path = os.path.join(directory, "q.sock")
    s = ServerProcess(qserver_argv("-l", "unix:" + path), unix_path=path)
    try:
        with Client(unix_path=path, timeout=TIMEOUT) as c:
            assert c.put(b"over unix") == 1
            assert c.peek(1).body == b"over unix"
            c.quit()
            assert c.closed
    finally:
        s.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- the extensions, on qserver ---------------------------------------------------------

def lifecycle_policy(policy) -> dict:
    """The lifecycle part of a config-tube reply, in order (later extensions add
    their own values after it)."""
    keys = ["name", "configured", "max-attempts", "backoff", "dead-letter", "retain"]
    assert list(policy)[:len(keys)] == keys
    return {key: policy[key] for key in keys}


async def test_config_tube(qs):
    async with aclient(qs) as q:
        assert lifecycle_policy(await q.config_tube_get("emails")) == {
            "name": "emails", "configured": False, "max-attempts": 0,
            "backoff": "none", "dead-letter": "bury", "retain": 0}
        await q.config_tube_set("emails", "max-attempts", 3)
        await q.config_tube_set("emails", "backoff", "exp:5:300")
        await q.config_tube_set("emails", "dead-letter", "tube:emails-dead")
        await q.config_tube_set("emails", "retain", 3600)
        assert lifecycle_policy(await q.config_tube_get("emails")) == {
            "name": "emails", "configured": True, "max-attempts": 3,
            "backoff": "exp:5:300", "dead-letter": "tube:emails-dead", "retain": 3600}
        for name, value in (("colour", "red"), ("max-attempts", "x"),
                            ("backoff", "exp:0:1"), ("dead-letter", "tube:emails")):
            with pytest.raises(BadFormat):
                await q.config_tube_set("emails", name, value)
        assert (await q.config_tube_get("emails"))["max-attempts"] == 3


async def test_fail_without_policy_buries_and_keeps_the_reason(qs):
    async with aclient(qs) as q:
        job_id = await q.put(b"x")
        with pytest.raises(NotFound):           # not reserved by this connection
            await q.fail(job_id, "no")
        await q.reserve()
        assert await q.fail(job_id, 'bad "input"\n\xff') == FailResult(FailAction.BURIED)
        info = await q.job_info(job_id)
        assert info["state"] == "buried" and info["attempts"] == 1
        assert info["max-attempts"] == 0 and info["progress"] is None
        assert [f["reason"] for f in info["failures"]] == ['bad "input"\n\xff'.encode()]
        assert isinstance(info["failures"][0]["time"], int)


async def test_retries_then_dead_letters(qs):
    async with aclient(qs) as q:
        await q.config_tube_set("r", "max-attempts", 2)
        await q.config_tube_set("r", "dead-letter", "tube:r-dead")
        await q.use("r")
        await q.watch("r")
        job_id = await q.put(b"job")
        await q.reserve_job(job_id)
        assert await q.fail(job_id, "one") == FailResult(FailAction.RETRYING, delay=0)
        assert (await q.job_info(job_id))["state"] == "ready"
        await q.reserve_job(job_id)
        assert await q.fail(job_id, "two") == FailResult(FailAction.MOVED, tube="r-dead")
        info = await q.job_info(job_id)
        assert (info["tube"], info["state"], info["attempts"]) == ("r-dead", "ready", 0)
        assert [f["reason"] for f in info["failures"]] == [b"one", b"two"]

        await q.config_tube_set("f", "backoff", "fixed:30")
        await q.use("f")
        job_id = await q.put(b"job")
        await q.reserve_job(job_id)
        assert await q.fail(job_id) == FailResult(FailAction.RETRYING, delay=30)
        assert (await q.stats_job(job_id))["state"] == "delayed"

        await q.config_tube_set("d", "max-attempts", 1)
        await q.config_tube_set("d", "dead-letter", "delete")
        await q.config_tube_set("d", "retain", 600)
        await q.use("d")
        job_id = await q.put(b"job")
        await q.reserve_job(job_id)
        assert await q.fail(job_id, "gone") == FailResult(FailAction.DELETED)
        info = await q.job_info(job_id)
        assert info["state"] == "dead" and info["failures"][0]["reason"] == b"gone"
        with pytest.raises(NotFound):
            await q.peek_result(job_id)


async def test_complete_progress_and_results(qs):
    async with aclient(qs) as q:
        await q.config_tube_set("done", "retain", 600)
        await q.use("done")
        job_id = await q.put(b"job")
        await q.reserve_job(job_id)
        await q.progress(job_id, b"\xff\x00 half \\ \"way\"")
        info = await q.job_info(job_id)
        assert info["progress"] == b"\xff\x00 half \\ \"way\""
        await q.progress(job_id, "¾")
        assert (await q.job_info(job_id))["progress"] == "¾".encode()
        await q.complete(job_id, "résultat")
        assert await q.peek_result(job_id) == "résultat".encode()
        info = await q.job_info(job_id)
        assert info["state"] == "completed" and info["result-bytes"] == len("résultat".encode())
        with pytest.raises(NotFound):
            await q.complete(job_id, b"again")
        with pytest.raises(NotFound):
            await q.peek(job_id)

        await q.use("default")                  # retain 0: nothing kept
        job_id = await q.put(b"job")
        await q.reserve_job(job_id)
        await q.complete(job_id)
        with pytest.raises(NotFound):
            await q.peek_result(job_id)
        with pytest.raises(NotFound):
            await q.progress(job_id, b"late")


async def test_stats_ext_counts(qs):
    async with aclient(qs) as q:
        await q.config_tube_set("s", "retain", 60)
        await q.use("s")
        await q.watch("s")
        for _ in range(2):
            await q.put(b"x")
        first = await q.reserve()
        await q.progress(first.id, b"p")
        await q.complete(first.id, b"r")
        second = await q.reserve()
        # a configured tube retries (max-attempts 0: unlimited; backoff none)
        assert await q.fail(second.id, b"f") == FailResult(FailAction.RETRYING, delay=0)
        await q.job_info(first.id)
        await q.peek_result(first.id)
        expected = {
            "cmd-config-tube": 1, "cmd-fail": 1, "cmd-complete": 1, "cmd-progress": 1,
            "cmd-job-info": 1, "cmd-peek-result": 1, "cmd-stats-ext": 1,
            "job-failures": 1, "job-retries": 1, "job-dead-letters": 0,
            "job-completions": 1, "current-retained": 1, "configured-tubes": 1}
        ext = await q.stats_ext()               # later extensions add their own keys
        assert {key: ext.get(key) for key in expected} == expected
        assert list(ext)[:len(expected)] == list(expected)


def test_blocking_extensions(qs):
    with Client(port=qs.port, timeout=TIMEOUT) as c:
        c.config_tube_set("b", "retain", 60)
        c.use("b")
        job_id = c.put(b"x")
        c.reserve_job(job_id)
        c.progress(job_id, "1/2")
        c.complete(job_id, b"ok")
        assert c.peek_result(job_id) == b"ok"
        assert c.job_info(job_id)["progress"] == b"1/2"
        assert c.config_tube_get("b")["retain"] == 60
        assert c.stats_ext()["job-completions"] == 1


# -- the worker loop ----------------------------------------------------------------------

async def test_work_completes_and_fails(qs):
    async with aclient(qs) as q:
        await q.config_tube_set("emails", "retain", 600)
        await q.config_tube_set("emails", "max-attempts", 1)   # else: retried at once
        await q.use("emails")
        ok = await q.put(b"ok")
        empty = await q.put(b"none")
        bad = await q.put(b"raise")
        wrong = await q.put(b"wrong type")
        await q.use("other")
        other = await q.put(b"not mine")

        async def handler(job):
            if job.body == b"raise":
                raise ValueError("cannot send to nobody")
            if job.body == b"wrong type":
                return 42
            await q.progress(job.id, b"sending")       # the handler may use the client
            return None if job.body == b"none" else "sent " + job.body.decode()

        assert await q.work("emails", handler, idle_timeout=0, max_jobs=10) == 4
        assert await q.list_tubes_watched() == ["emails"]
        assert await q.peek_result(ok) == b"sent ok"
        assert await q.peek_result(empty) == b""
        assert (await q.job_info(ok))["progress"] == b"sending"
        info = await q.job_info(bad)
        assert info["state"] == "buried" and info["attempts"] == 1
        reason = info["failures"][0]["reason"]
        assert reason.startswith(b"Traceback") and b"in handler" in reason
        assert reason.endswith(b"ValueError: cannot send to nobody\n")
        reason = (await q.job_info(wrong))["failures"][0]["reason"]
        assert b"TypeError: a body must be bytes, str or None, not int" in reason
        assert (await q.stats_job(other))["state"] == "ready"


async def test_work_stops_after_max_jobs(qs):
    async with aclient(qs) as q:
        await q.use("m")
        for _ in range(3):
            await q.put(b"x")
        seen = []

        async def handler(job):
            seen.append(job.id)
        assert await q.work(["m", "n"], handler, max_jobs=2) == 2
        assert seen == [1, 2]
        assert sorted(await q.list_tubes_watched()) == ["m", "n"]
        assert (await q.stats_job(3))["state"] == "ready"


async def test_work_heartbeats_while_the_handler_runs(qs):
    async with aclient(qs) as q, aclient(qs) as observer:
        await q.use("hb")
        await q.put(b"slow", ttr=10)
        await q.put(b"default interval", ttr=3)

        async def handler(job):
            start = (await observer.stats())["cmd-touch"]

            async def touched():
                return (await observer.stats())["cmd-touch"] >= start + 2
            # ttr 3: a touch every 1.5 s; else every 0.05 s as asked
            if job.body == b"default interval":
                await until(touched, "two heartbeats at ttr/2")
            else:
                await until(touched, "two heartbeats")
            return "done"

        assert await q.work("hb", handler, max_jobs=1, heartbeat=0.05) == 1
        assert await q.work("hb", handler, max_jobs=1) == 1
        assert (await q.stats_ext())["job-completions"] == 2


async def test_cancelled_worker_releases_its_job(qs):
    async with aclient(qs) as q, aclient(qs) as observer:
        await q.use("c")
        job_id = await q.put(b"x", pri=77)
        started = asyncio.Event()

        async def handler(job):
            started.set()
            await asyncio.Event().wait()        # until cancelled

        task = asyncio.create_task(q.work("c", handler))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await observer.stats_job(job_id)
        assert (stats["state"], stats["pri"], stats["releases"]) == ("ready", 77, 1)
        assert await q.list_tube_used() == "c"  # the connection is still good


def test_blocking_work_with_a_plain_function(qs):
    with Client(port=qs.port, timeout=TIMEOUT) as c:
        c.config_tube_set("sync", "retain", 60)
        c.config_tube_set("sync", "max-attempts", 1)
        c.use("sync")
        good = c.put(b"2")
        bad = c.put(b"x")

        def handler(job):
            c.progress(job.id, b"working")          # from the handler's thread
            return str(int(job.body) * 21)

        assert c.work("sync", handler, idle_timeout=0, max_jobs=10) == 2
        assert c.peek_result(good) == b"42"
        assert c.job_info(good)["progress"] == b"working"
        reason = c.job_info(bad)["failures"][0]["reason"]
        assert b"ValueError: invalid literal for int()" in reason


def test_interrupted_blocking_work_releases_its_job(qs):
    """^C while a blocking `work` runs a handler: the job goes back before the call
    returns, and the connection stays usable."""
    with Client(port=qs.port, timeout=TIMEOUT) as c:
        c.use("i")
        job_id = c.put(b"x", pri=5)
        started = threading.Event()
        gate = threading.Event()

        def handler(job):
            started.set()
            gate.wait(TIMEOUT)

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        def send_interrupt():
            if started.wait(TIMEOUT):
                os.kill(os.getpid(), signal.SIGALRM)

        previous = signal.signal(signal.SIGALRM, interrupt)
        threading.Thread(target=send_interrupt, daemon=True).start()
        try:
            with pytest.raises(KeyboardInterrupt):
                c.work("i", handler)
        finally:
            signal.signal(signal.SIGALRM, previous)
            gate.set()
        stats = c.stats_job(job_id)
        assert (stats["state"], stats["pri"], stats["releases"]) == ("ready", 5, 1)
