"""qserver.client against real servers, and its reply parsing against literal bytes.

* The beanstalkd commands run against qserver and against the reference beanstalkd
  (parametrized), with the async client and with the blocking one.
* The extensions (config-tube, fail, complete, progress, job-info, peek-result,
  stats-ext; put-ex with keys, tags and locks, flush-tube, cancel-tag, list-jobs,
  subscribe) and the worker loop run against qserver; the event streams also
  through a proxy that cuts their connections, and across a server restart.
* Replies no real server sends on demand (BURIED to a put, a garbled body, a reply
  that never comes, a cut event stream) come from a scripted fake server.

No test asserts a duration. Every wait is bounded: each client has a reply timeout,
reserves use timeouts, and polling loops have a fixed number of turns.
"""

import asyncio
import contextlib
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time

import pytest

from conftest import (ServerProcess, free_port, qserver_argv, start_beanstalkd,
                      start_qserver)

from qserver.client import (EVENT_NAMES, LIST_STATES, AsyncClient, BadFormat, Buried,
                            CancelResult, Cancelled, Client, DeadlineSoon, Draining,
                            Duplicate, Event, EventStream, ExpectedCrlf, FailAction,
                            FailResult, Gap, InternalError, Job, JobPage, JobTooBig,
                            NotFound, NotIgnored, OutOfMemory, QueueClientError,
                            QueueConnectionError, ServerError, TimedOut,
                            UnexpectedReply, UnknownCommand, parse_yaml)

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


async def nxt(stream):
    """The next item of an event stream, bounded."""
    async with asyncio.timeout(TIMEOUT):
        return await anext(stream)


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


def test_parse_steering_fields_and_a_list_jobs_page():
    info = parse_yaml(JOB_INFO.replace(
        b"result-bytes: 0\n", b'result-bytes: 0\nkey: "k\\"1"\ntags: ["a", "q\\"u,o]te"]\n'
                              b"cancelled: true\n"), ("tube", "state"))
    assert (info["key"], info["tags"], info["cancelled"]) == ('k"1', ["a", 'q"u,o]te'], True)
    assert list(info)[-4:] == ["key", "tags", "cancelled", "failures"]
    empty = parse_yaml(b"---\nkey: ~\ntags: []\ncancelled: false\n")
    assert empty == {"key": None, "tags": [], "cancelled": False}
    # protocol.md's example page, and the last (empty) one
    page = parse_yaml(b'---\nnext: "r:2:4"\njobs:\n- id: 5\n  state: ready\n  pri: 1\n'
                      b'  age: 0\n  delay: 0\n  time-left: 0\n  attempts: 0\n'
                      b'  key: "k4"\n  tags: ["a"]\n  size: 1\n', ("state",))
    assert page == {"next": "r:2:4", "jobs": [{
        "id": 5, "state": "ready", "pri": 1, "age": 0, "delay": 0, "time-left": 0,
        "attempts": 0, "key": "k4", "tags": ["a"], "size": 1}]}
    assert parse_yaml(b"---\nnext: ~\njobs: []\n") == {"next": None, "jobs": []}
    assert parse_yaml(b"---\nx: [a]\n") == {"x": "[a]"}   # not a list of quoted strings


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
               Duplicate, Cancelled, UnexpectedReply]
    assert all(issubclass(c, ServerError) for c in classes)
    assert len({c.word for c in classes}) == len(classes)
    error = NotFound("delete", "NOT_FOUND")
    assert str(error) == "delete: NOT_FOUND" and error.command == "delete"
    duplicate = pickle.loads(pickle.dumps(Duplicate("put-ex", "DUPLICATE 42")))
    assert type(duplicate) is Duplicate and duplicate.job_id == 42
    assert (Duplicate.word, Cancelled.word) == ("DUPLICATE", "CANCELLED")


def test_arguments_cannot_smuggle_a_command():
    client = AsyncClient()
    for bad in ("a\r\nput 0 0 1 1", "a\nb"):
        with pytest.raises(ValueError):
            asyncio.run(client.use(bad))
    with pytest.raises(ValueError):
        asyncio.run(client.delete(-1))
    with pytest.raises(TypeError):
        asyncio.run(client.put(12))
    for key in ("a b", "a\r\nput 0 0 1 1", "", "é", "k\tx"):
        with pytest.raises(ValueError):
            asyncio.run(client.put_ex(b"x", key=key))
        with pytest.raises(ValueError):
            asyncio.run(client.put_ex(b"x", tags=["ok", key]))
        with pytest.raises(ValueError):
            asyncio.run(client.cancel_tag(key))
    with pytest.raises(TypeError):              # one str is not a list of tags
        asyncio.run(client.put_ex(b"x", tags="abc"))
    for state, cursor in (("ready now", "0"), ("ready", "r:1:2 5"), ("", "0")):
        with pytest.raises(ValueError):
            asyncio.run(client.list_jobs("t", state, cursor))
    for lock in ("a b", "a\r\nput 0 0 1 1", ""):
        with pytest.raises(ValueError):
            asyncio.run(client.put_ex(b"x", lock=lock))
    for bad in (lambda: client.subscribe("a\r\nstats"), lambda: client.subscribe("t", -1),
                lambda: client.subscribe("t", "later"), lambda: client.events("t", -1),
                lambda: client.events("t", retries=-1),
                lambda: client.events("t", retry_delay=-1)):
        with pytest.raises(ValueError):
            bad()


# -- a scripted server ------------------------------------------------------------------

BODY_COMMANDS = {b"put", b"fail", b"complete", b"progress"}


class LocalServer:
    """A scripted server on a free loopback port for the length of an `async with`;
    subclasses write `_serve(reader, writer)`."""

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()


class FakeServer(LocalServer):
    """Answers the n-th command with replies[n] (None: never answer); records lines."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.lines = []

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


async def test_a_cursor_that_does_not_advance_stops_iter_jobs():
    page = b'---\nnext: "r:1:1"\njobs:\n- id: 1\n  state: ready\n'
    reply = b"OK %d\r\n%s\r\n" % (len(page), page)
    async with FakeServer([reply, reply, b"OK 4\r\n---\n\r\n"]) as fake:
        async with AsyncClient(port=fake.port, timeout=TIMEOUT) as q:
            seen = []
            with pytest.raises(UnexpectedReply, match="did not advance"):
                async for row in q.iter_jobs("t", "ready", page_size=5):
                    seen.append(row["id"])
            assert seen == [1, 1]
            with pytest.raises(UnexpectedReply, match="not a list-jobs page"):
                await q.list_jobs("t", "all")
    assert fake.lines == [b"list-jobs t ready 0 5", b"list-jobs t ready r:1:1 5",
                          b"list-jobs t all 0 100"]


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


def frame(seq: int, job_id: int, tube: str = "t", event: str = "put", attempt: int = 0,
          when: str = "1764626400.123") -> bytes:
    body = (f'---\nseq: {seq}\ntime: {when}\nid: {job_id}\ntube: "{tube}"\n'
            f"event: {event}\nattempt: {attempt}\n").encode()
    return b"EVENT %d\r\n%s\r\n" % (len(body), body)


class StreamFake(LocalServer):
    """Each connection reads one line (recorded) and gets the next script: the bytes
    to send, then the connection is closed (None: closed without a word)."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.lines = []

    async def _serve(self, reader, writer):
        try:
            script = self.scripts.pop(0) if self.scripts else None
            if script is not None:
                self.lines.append((await reader.readuntil(b"\r\n"))[:-2])
                writer.write(script)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@contextlib.asynccontextmanager
async def streams_only(port: int):
    """A client whose own connection is never made: only its streams connect."""
    client = AsyncClient(port=port, timeout=TIMEOUT)
    try:
        yield client
    finally:
        await client.close()


async def test_event_frames_become_events_and_gaps():
    script = (b"SUBSCRIBED 7\r\n" + frame(7, 42, "emails", "fail", 1)
              + frame(8, 0, "emails", "flush", when="1764626401.5")
              + b"GAP 20\r\n" + frame(20, 3, 'a\\"b', "held"))
    async with StreamFake([script]) as fake:
        async with streams_only(fake.port) as q:
            stream = q.subscribe("emails", 7)
            assert isinstance(stream, EventStream) and stream.next_seq == 7
            items = []
            with pytest.raises(QueueConnectionError, match="closed the connection"):
                async for item in stream:
                    items.append(item)
            assert stream.closed
            assert [item async for item in stream] == []       # ended for good
    assert fake.lines == [b"subscribe emails 7"]
    assert items == [Event(7, 1764626400.123, 42, "emails", "fail", 1),
                     Event(8, 1764626401.5, 0, "emails", "flush", 0),
                     Gap(20, 9), Event(20, 1764626400.123, 3, 'a"b', "held", 0)]
    assert isinstance(items[0].time, float) and items[0].event in EVENT_NAMES
    assert stream.next_seq == 21


async def test_a_gap_answered_to_subscribe_comes_first():
    async with StreamFake([b"GAP 11\r\n" + frame(11, 1)]) as fake:
        async with streams_only(fake.port) as q:
            async with q.subscribe("*", 3) as stream:
                assert await nxt(stream) == Gap(11, 3)
                assert (await nxt(stream)).seq == 11
    assert fake.lines == [b"subscribe * 3"]


@pytest.mark.parametrize("reply, error", [
    (b"UNKNOWN_COMMAND\r\n", UnknownCommand), (b"BAD_FORMAT\r\n", BadFormat),
    (b"SUBSCRIBED\r\n", UnexpectedReply)])
async def test_a_refused_subscribe_raises_its_error(reply, error):
    async with StreamFake([reply]) as fake:
        async with streams_only(fake.port) as q:
            stream = q.events("*")          # not retried: the server said no
            with pytest.raises(error):
                await nxt(stream)
            assert stream.closed


@pytest.mark.parametrize("garbled", [b"EVENT 5\r\nabcdeXY", b"EVENT x\r\n",
                                     b"OK 3\r\nabc\r\n"])
async def test_a_garbled_frame_breaks_the_stream(garbled):
    async with StreamFake([b"SUBSCRIBED 1\r\n" + frame(1, 1) + garbled]) as fake:
        async with streams_only(fake.port) as q:
            stream = q.subscribe()
            assert (await nxt(stream)).seq == 1
            with pytest.raises(QueueConnectionError):
                await nxt(stream)
            assert stream.closed


async def test_events_reconnects_and_resumes_after_the_last_event():
    scripts = [b"SUBSCRIBED 1\r\n" + frame(1, 1) + frame(2, 2) + b"EVENT 9",  # cut
               None,                                                   # refused
               b"SUBSCRIBED 3\r\n" + frame(3, 3),
               b"SUBSCRIBED 4\r\n"]                                     # then closed
    async with StreamFake(scripts) as fake:
        async with streams_only(fake.port) as q:
            stream = q.events("t", retries=2, retry_delay=0.01)
            seqs = []
            with pytest.raises(QueueConnectionError):
                async for item in stream:
                    seqs.append(item.seq)
            assert stream.closed
    assert seqs == [1, 2, 3]
    # the refused attempt read no line; after the last script nothing answers
    assert fake.lines == [b"subscribe t now", b"subscribe t 3", b"subscribe t 4"]


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


# -- the steering extensions, on qserver --------------------------------------------------

def row(job_id, state, pri, *, delay=0, attempts=0, key=None, tags=(), size=1) -> dict:
    """A list-jobs row with the clock fields left out (see `timeless`)."""
    return {"id": job_id, "state": state, "pri": pri, "delay": delay,
            "attempts": attempts, "key": key, "tags": list(tags), "size": size}


def timeless(rows) -> list:
    """Rows without `age` and `time-left`, after checking every row has exactly the
    documented keys in order and sane clock fields."""
    keys = ["id", "state", "pri", "age", "delay", "time-left", "attempts", "key", "tags",
            "size"]
    out = []
    for r in rows:
        assert list(r) == keys
        assert isinstance(r["age"], int) and isinstance(r["time-left"], int)
        out.append({k: v for k, v in r.items() if k not in ("age", "time-left")})
    return out


async def test_put_ex_keys_tags_and_duplicates(qs):
    async with aclient(qs) as q:
        await q.use("u")
        first = await q.put_ex(b"one", pri=5, ttr=30, key="order-1", tags=["a", "b", "a"])
        assert first == 1
        with pytest.raises(Duplicate) as info:
            await q.put_ex("again", key="order-1", tags=["c"])
        assert info.value.job_id == first and info.value.reply == "DUPLICATE 1"
        assert info.value.command == "put-ex"
        assert await q.put_ex(b"no options") == 2       # a plain put; no id used up
        await q.use("other")                            # keys are per tube
        assert await q.put_ex(b"x", key="order-1") == 3
        await q.use("u")
        stats = await q.stats_job(first)
        assert (stats["pri"], stats["ttr"], stats["tube"]) == (5, 30, "u")
        info1 = await q.job_info(first)
        assert (info1["key"], info1["tags"], info1["cancelled"]) == ("order-1", ["a", "b"],
                                                                     False)
        info2 = await q.job_info(2)
        assert (info2["key"], info2["tags"], info2["cancelled"]) == (None, [], False)
        assert (await q.peek(first)).body == b"one"
        with pytest.raises(BadFormat):                  # nine distinct tags
            await q.put_ex(b"x", tags=[f"t{i}" for i in range(9)])
        with pytest.raises(BadFormat):                  # over 200 bytes
            await q.put_ex(b"x", key="k" * 201)
        assert await q.put_ex(b"x", key="k" * 200, tags=[f"t{i}" for i in range(8)]) == 4
        await q.delete(first)                           # the key is free again
        assert await q.put_ex(b"back", key="order-1") == 5
        ext = await q.stats_ext()
        assert (ext["cmd-put-ex"], ext["job-duplicates"]) == (8, 1)


async def test_flush_tube(qs):
    async with aclient(qs) as q, aclient(qs) as worker:
        await q.use("f")
        for pri in (1, 2, 3):
            await q.put(b"x", pri=pri)
        await q.put(b"later", delay=600)
        await q.put_ex(b"keyed", key="k")
        await worker.watch("f")
        held = await worker.reserve_job(1)
        await worker.reserve_job(2)
        await worker.bury(2, pri=0)
        assert await q.flush_tube("f") == 4             # ready, delayed, buried
        assert (await q.stats_job(held.id))["state"] == "reserved"
        tube = await q.stats_tube("f")
        assert (tube["current-jobs-ready"], tube["current-jobs-delayed"],
                tube["current-jobs-buried"], tube["current-jobs-reserved"]) == (0, 0, 0, 1)
        assert await q.put_ex(b"keyed", key="k") == 6   # its key went with it
        assert await q.flush_tube("f") == 1
        assert await q.flush_tube("no-such-tube") == 0
        await worker.delete(held.id)
        ext = await q.stats_ext()
        assert (ext["cmd-flush-tube"], ext["jobs-flushed"]) == (3, 5)


async def test_cancel_tag_removes_and_flags(qs):
    async with aclient(qs) as q, aclient(qs) as worker:
        await q.config_tube_set("c", "retain", 600)
        await q.use("c")
        running = await q.put_ex(b"run", tags=["batch-7"])
        waiting = await q.put_ex(b"wait", tags=["batch-7", "x"])
        other = await q.put_ex(b"keep", tags=["batch-8"])
        await worker.watch("c")
        await worker.reserve_job(running)
        assert await q.cancel_tag("batch-7") == CancelResult(removed=1, flagged=1)
        with pytest.raises(NotFound):
            await q.peek(waiting)
        info = await q.job_info(running)
        assert (info["state"], info["cancelled"], info["tags"]) == ("reserved", True,
                                                                   ["batch-7"])
        for call in (worker.touch(running), worker.progress(running, b"50%"),
                     worker.complete(running, b"result")):
            with pytest.raises(Cancelled) as error:
                await call
            assert error.value.reply == "CANCELLED"
        assert (await q.job_info(other))["cancelled"] is False
        # every reserved job with the tag counts as flagged, again
        assert await q.cancel_tag("batch-7") == CancelResult(0, 1)
        assert await q.cancel_tag("nobody") == CancelResult(0, 0)
        await worker.delete(running)                    # delete still works
        with pytest.raises(NotFound):
            await q.job_info(running)                   # no record: not completed
        ext = await q.stats_ext()
        assert (ext["cmd-cancel-tag"], ext["jobs-cancelled"], ext["jobs-cancel-flagged"],
                ext["job-completions"]) == (3, 1, 2, 0)


async def test_cancelled_job_can_be_released_buried_or_failed(qs):
    async with aclient(qs) as q:
        await q.use("r")
        await q.watch("r")
        job_id = await q.put_ex(b"x", tags=["t"])
        await q.reserve_job(job_id)
        assert await q.cancel_tag("t") == CancelResult(0, 1)
        await q.release(job_id, pri=3)
        assert (await q.job_info(job_id))["cancelled"] is True     # the flag stays
        await q.reserve_job(job_id)
        await q.bury(job_id)
        await q.kick_job(job_id)
        await q.reserve_job(job_id)
        assert await q.fail(job_id, "stop") == FailResult(FailAction.BURIED)
        info = await q.job_info(job_id)
        assert (info["state"], info["cancelled"]) == ("buried", True)


async def test_list_jobs_pages_in_each_states_order(qs):
    async with aclient(qs) as q, aclient(qs) as worker:
        await q.config_tube_set("l", "retain", 600)
        await q.use("l")
        await q.put_ex(b"a", pri=7, key="k1", tags=["x", "y"])      # 1
        await q.put(b"bb", pri=3)                                  # 2
        await q.put(b"c", pri=7)                                   # 3
        await q.put(b"d", pri=9, delay=600)                        # 4
        await q.put(b"e", pri=9, delay=300)                        # 5
        for _ in range(3):
            await q.put(b"f", pri=1)                               # 6, 7, 8
        await worker.watch("l")
        await worker.ignore("default")
        for job_id in (6, 7, 8):
            await worker.reserve_job(job_id)
        await worker.bury(7, pri=4)
        await worker.bury(6, pri=4)
        await worker.complete(8, b"done")
        page = await q.list_jobs("l", "ready")
        assert isinstance(page, JobPage) and page.next is None
        assert timeless(page.jobs) == [
            row(2, "ready", 3, size=2), row(1, "ready", 7, key="k1", tags=["x", "y"]),
            row(3, "ready", 7)]
        delayed = (await q.list_jobs("l", "delayed")).jobs
        assert timeless(delayed) == [row(5, "delayed", 9, delay=300),
                                     row(4, "delayed", 9, delay=600)]
        assert 0 < delayed[0]["time-left"] <= 300 < delayed[1]["time-left"] <= 600
        assert timeless((await q.list_jobs("l", "buried")).jobs) == [
            row(7, "buried", 4), row(6, "buried", 4)]               # oldest buried first
        done = (await q.list_jobs("l", "completed")).jobs
        assert timeless(done) == [row(8, "completed", 1, size=0)]
        assert (await q.list_jobs("l", "reserved")).jobs == []
        assert (await q.list_jobs("l", "dead")) == JobPage([], None)
        # pages of two through every state
        first = await q.list_jobs("l", "all", "0", 2)
        assert [r["id"] for r in first.jobs] == [2, 1] and first.next is not None
        second = await q.list_jobs("l", "all", first.next, 2)
        assert [r["id"] for r in second.jobs] == [3, 5]
        ids = [r["id"] async for r in q.iter_jobs("l", "all", page_size=2)]
        assert ids == [2, 1, 3, 5, 4, 7, 6, 8]
        assert [r["id"] async for r in q.iter_jobs("l", "ready", page_size=1000)] == [2, 1, 3]
        assert [r async for r in q.iter_jobs("nothing", "all")] == []
        for state, cursor, limit in (("bogus", "0", 1), ("all", "0", 0),
                                     ("all", "0", 1001), ("ready", "nonsense", 1)):
            with pytest.raises(BadFormat):
                await q.list_jobs("l", state, cursor, limit)


async def test_iter_jobs_while_jobs_come_and_go(qs):
    """Jobs that stay where they are are each seen exactly once, however the pages
    fall, while others are deleted and put between pages."""
    async with aclient(qs) as q, aclient(qs) as other:
        await q.use("g")
        await other.use("g")
        stay = [await q.put(b"s", pri=10) for _ in range(30)]
        churn = [await q.put(b"c", pri=10) for _ in range(30)]
        seen = []
        turns = 0
        async for r in q.iter_jobs("g", "ready", page_size=4):
            seen.append(r["id"])
            turns += 1
            assert turns <= 200
            if churn:
                await other.delete(churn.pop())
                await other.put(b"new", pri=0)          # before the cursor: not seen
        assert [i for i in seen if i in stay] == stay
        assert len(seen) == len(set(seen))


def test_blocking_steering(qs):
    with Client(port=qs.port, timeout=TIMEOUT) as c:
        c.use("b")
        job_id = c.put_ex(b"x", pri=2, key="k", tags=["t"])
        with pytest.raises(Duplicate) as info:
            c.put_ex(b"y", key="k")
        assert info.value.job_id == job_id
        for _ in range(4):
            c.put(b"z", pri=9)
        page = c.list_jobs("b", "ready", "0", 3)
        assert [r["id"] for r in page.jobs] == [1, 2, 3] and page.next is not None
        assert [r["id"] for r in c.iter_jobs("b", "all", page_size=2)] == [1, 2, 3, 4, 5]
        assert c.cancel_tag("t") == CancelResult(1, 0)
        assert c.flush_tube("b") == 4
        assert c.list_jobs("b", "all") == JobPage([], None)
        assert c.stats_ext()["jobs-flushed"] == 4


async def test_steering_against_beanstalkd(beanstalkd):
    async with aclient(beanstalkd) as q:
        for call in (q.flush_tube("default"), q.cancel_tag("t"),
                     q.list_jobs("default", "all")):
            with pytest.raises(UnknownCommand):
                await call
        assert await q.list_tube_used() == "default"    # no body: still in step
        # beanstalkd reads put-ex's body as a command line of its own: the pipe is
        # out of step, so the connection is closed
        with pytest.raises(UnknownCommand):
            await q.put_ex(b"stats", key="k")
        assert q.closed
        with pytest.raises(QueueConnectionError):
            await q.stats()


# -- per-key concurrency and the event stream, on qserver ---------------------------------

async def test_put_ex_lock_holds_jobs_and_lock_limit(qs):
    assert LIST_STATES == ("ready", "delayed", "reserved", "buried", "held", "completed",
                           "dead", "all")
    async with aclient(qs) as q, aclient(qs) as worker:
        policy = await q.config_tube_get("acct")
        assert (policy["configured"], policy["lock-limit"]) == (False, 1)
        await q.config_tube_set("acct", "lock-limit", 2)
        assert (await q.config_tube_get("acct"))["lock-limit"] == 2
        with pytest.raises(BadFormat):
            await q.config_tube_set("acct", "lock-limit", 0)
        await q.use("acct")
        ids = [await q.put_ex(b"j%d" % n, pri=n, lock="acct-1") for n in range(4)]
        free = await q.put_ex(b"free", pri=9, key="k", tags=["t"], lock="acct-2")
        await worker.watch("acct")
        await worker.ignore("default")
        assert [(await worker.reserve_with_timeout(0)).id for _ in range(3)] == \
            [ids[0], ids[1], free]
        with pytest.raises(TimedOut):
            await worker.reserve_with_timeout(0)
        page = await q.list_jobs("acct", "held")
        assert [(row["id"], row["state"]) for row in page.jobs] == \
            [(ids[2], "held"), (ids[3], "held")] and page.next is None
        info = await q.job_info(ids[2])
        assert (info["state"], info["key"], info["tags"]) == ("held", None, [])
        assert (await q.stats_job(ids[3]))["state"] == "held"
        assert [row["state"] async for row in q.iter_jobs("acct", "all")] == \
            ["reserved", "reserved", "reserved", "held", "held"]
        with pytest.raises(NotFound):
            await worker.reserve_job(ids[2])
        await worker.complete(ids[0], b"")
        assert (await worker.reserve_with_timeout(0)).id == ids[2]
        assert await q.flush_tube("acct") == 1              # the held one
        assert (await q.stats_ext())["cmd-put-ex"] == 5


async def test_subscribe_streams_typed_events_on_a_connection_of_its_own(qs):
    async with aclient(qs) as q:
        async with q.subscribe("t") as stream:
            base = stream.next_seq              # the wall clock in microseconds
            assert base > 1_700_000_000 * 10**6
            await q.use("t")                # the client's own connection is free
            job_id = await q.put_ex(b"x", lock="k")
            await q.use("other")
            await q.put(b"not shown")
            await q.watch("t")
            assert (await q.reserve_with_timeout(0)).id == job_id
            await q.config_tube_set("t", "max-attempts", 1)
            assert await q.fail(job_id, "no") == FailResult(FailAction.BURIED)
            items = [await nxt(stream) for _ in range(5)]
            assert [(e.seq, e.id, e.tube, e.event, e.attempt) for e in items] == [
                (base, job_id, "t", "put", 0), (base + 2, job_id, "t", "reserve", 0),
                (base + 3, job_id, "t", "fail", 1), (base + 4, job_id, "t", "dead", 1),
                (base + 5, job_id, "t", "bury", 1)]
            assert all(isinstance(e, Event) and isinstance(e.time, float) for e in items)
            assert stream.next_seq == base + 6
            # a read given up while waiting leaves the stream usable
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await anext(stream)
            await q.delete(job_id)
            assert (await nxt(stream)).event == "delete"
        assert stream.closed
        assert (await q.stats_ext())["cmd-subscribe"] == 1

        async def one_connection():
            return (await q.stats())["current-connections"] == 1
        await until(one_connection, "the stream's connection is closed")


async def test_subscribe_from_a_seq_and_gap(qs):
    async with aclient(qs) as q:
        async with q.subscribe() as stream:
            base = stream.next_seq
            for _ in range(3):
                await q.put(b"x")
            assert [(await nxt(stream)).seq for _ in range(3)] == [base, base + 1, base + 2]
        async with q.subscribe("*", base + 1) as again:
            assert [(await nxt(again)).seq for _ in range(2)] == [base + 1, base + 2]
        async with q.subscribe("*", 500) as restarted:     # a number from an older process
            assert await nxt(restarted) == Gap(base, 500)
            assert (await nxt(restarted)).seq == base
        with pytest.raises(BadFormat):
            await nxt(q.subscribe("-bad"))


@pytest.mark.parametrize("kind", ["subscribe", "events"])
async def test_aclose_from_another_task_ends_the_iteration(qs, kind):
    async with aclient(qs) as q:
        stream = getattr(q, kind)()
        await stream.open()
        seen = []

        async def read():
            async for item in stream:
                seen.append(item)
        reader = asyncio.create_task(read())
        await q.put(b"x")

        async def one_seen():
            return len(seen) == 1
        await until(one_seen, "the event is read")
        await stream.aclose()
        async with asyncio.timeout(TIMEOUT):
            await reader                    # ended, without an error
        assert [e.event for e in seen] == ["put"] and stream.closed


async def test_small_window_gives_a_gap_in_the_stream():
    s = start_qserver("--event-window", "5")
    try:
        async with aclient(s) as q:
            async with q.subscribe() as first:  # events are kept from now on
                base = first.next_seq
                for _ in range(12):
                    await q.put(b"x")
            async with q.events("*", resume_from=base + 1) as late:
                assert await nxt(late) == Gap(base + 7, base + 1)
                assert [(await nxt(late)).seq for _ in range(5)] == \
                    [base + n for n in range(7, 12)]
                assert late.next_seq == base + 12
    finally:
        s.stop()


class CuttingProxy:
    """A TCP proxy to a server whose connections the test can cut."""

    def __init__(self, port: int):
        self.upstream = port
        self.writers = []
        self.accepted = 0
        self.tasks = set()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()
        self.cut()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers = []

    async def _serve(self, reader, writer):
        self.accepted += 1
        self.tasks.add(asyncio.current_task())
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.writers += [writer, up_writer]

        async def pipe(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            sink.transport.abort()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_events_resumes_after_a_cut_connection_without_a_miss_or_a_repeat(qs):
    async with CuttingProxy(qs.port) as proxy, aclient(qs) as q:
        streamer = AsyncClient(port=proxy.port, timeout=TIMEOUT)
        plain = streamer.subscribe()
        resuming = streamer.events(retries=3, retry_delay=0.05)
        await plain.open()
        await resuming.open()
        seqs = []
        for round_ in range(4):
            for _ in range(25):
                await q.put(b"x")
            for _ in range(10 + round_):        # some read, the rest left unread
                seqs.append((await nxt(resuming)).seq)
            proxy.cut()
        for _ in range(5):
            await q.put(b"x")
        while len(seqs) < 105:
            seqs.append((await nxt(resuming)).seq)
        assert seqs == list(range(seqs[0], seqs[0] + 105))
        # It reconnected, at most once per cut (frames read before a cut are
        # still in the client's buffer and come first).
        assert 2 < proxy.accepted <= 2 + 4
        # subscribe does not reconnect: the cut ends it
        with pytest.raises(QueueConnectionError):
            for _ in range(200):
                await nxt(plain)
        assert plain.closed
        await streamer.close()
        assert resuming.closed


async def test_events_resumes_across_a_server_restart_with_a_gap(tmp_path):
    port = free_port()
    argv = qserver_argv("-l", "127.0.0.1", "-p", str(port), "-b", str(tmp_path))
    s = ServerProcess(argv, port)
    owner = AsyncClient(port=port, timeout=TIMEOUT)     # only its stream connects
    try:
        stream = owner.events(retries=200, retry_delay=0.05)    # 10 s of attempts
        await stream.open()
        async with AsyncClient(port=port, timeout=TIMEOUT) as q:
            for _ in range(3):
                await q.put(b"x")
        seqs = [(await nxt(stream)).seq for _ in range(3)]
        assert seqs == list(range(seqs[0], seqs[0] + 3))
        s.stop()
        s = ServerProcess(argv, port)
        # The new process numbers its events from its start time up and has none
        # before this subscribe: the stream resumes with a gap.
        gap = await nxt(stream)
        assert isinstance(gap, Gap) and gap.expected == seqs[-1] + 1
        assert gap.oldest > seqs[-1] + 1
        async with AsyncClient(port=port, timeout=TIMEOUT) as q:
            await q.put(b"after")               # jobs 1 to 3 came back from the log
        event = await nxt(stream)
        assert (event.seq, event.id, event.event) == (gap.oldest, 4, "put")
    finally:
        await owner.close()
        assert stream.closed
        s.stop()


def bounded_next(items):
    """next(items) from a thread, bounded: a blocking stream that hangs fails."""
    out = []
    thread = threading.Thread(target=lambda: out.append(next(items, None)), daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "no event came"
    return out[0]


def test_blocking_subscribe_and_events(qs):
    with Client(port=qs.port, timeout=TIMEOUT) as c:
        with pytest.raises(ValueError):
            c.subscribe("t", -1)
        with pytest.raises(BadFormat):          # subscribed at the call
            c.subscribe("-bad")
        stream = c.subscribe("b")               # now: before the puts below
        c.use("b")
        ids = [c.put_ex(b"x", lock="k") for _ in range(3)]
        c.use("other")
        c.put(b"y")
        seen = []
        for _ in range(3):
            event = bounded_next(stream)
            seen.append((event.seq, event.id, event.tube, event.event))
        base = seen[0][0]
        assert seen == [(base, ids[0], "b", "put"), (base + 1, ids[1], "b", "put"),
                        (base + 2, ids[2], "b", "put")]
        stream.close()                          # closes its connection
        events = c.events("*", resume_from=base + 1, retries=0)
        assert [bounded_next(events).seq for _ in range(3)] == [base + 1, base + 2,
                                                                base + 3]
        del events                              # dropped: closed too
        dropped = c.subscribe("*", base)
        assert bounded_next(dropped).seq == base
        for _ in range(POLL_TURNS):
            if c.stats()["current-connections"] == 2:
                break
            time.sleep(POLL_PAUSE)
        assert c.stats()["current-connections"] == 2    # the client's and `dropped`'s
    assert c.closed
    with pytest.raises(QueueConnectionError, match="closed"):   # as any call now
        next(dropped)


async def test_subscribe_against_beanstalkd(beanstalkd):
    async with aclient(beanstalkd) as q:
        with pytest.raises(UnknownCommand):
            async with q.subscribe():
                pass
        assert await q.list_tube_used() == "default"


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


async def test_work_deletes_a_job_cancelled_while_its_handler_runs(qs):
    """The heartbeat learns CANCELLED: the job is deleted at once (its TTR cannot
    run out and hand it to another worker), and what the handler returns is
    dropped: no complete, no fail."""
    async with aclient(qs) as q, aclient(qs) as observer:
        await q.config_tube_set("w", "retain", 600)     # a completion would be kept
        await q.use("w")
        job_id = await q.put_ex(b"x", tags=["batch"])
        started = asyncio.Event()

        async def handler(job):
            started.set()

            async def deleted():
                try:
                    await observer.peek(job.id)
                except NotFound:
                    return True
                return False
            await until(deleted, "the worker deletes the cancelled job")
            return "a result nobody keeps"

        task = asyncio.create_task(q.work("w", handler, max_jobs=1, heartbeat=0.05))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        assert await observer.cancel_tag("batch") == CancelResult(0, 1)
        assert await asyncio.wait_for(task, TIMEOUT) == 1
        with pytest.raises(NotFound):
            await observer.job_info(job_id)             # deleted: no record kept
        ext = await observer.stats_ext()
        assert (ext["cmd-complete"], ext["cmd-fail"], ext["job-completions"]) == (0, 0, 0)
        assert (await observer.stats())["cmd-delete"] == 1


async def test_work_deletes_when_complete_answers_cancelled(qs):
    async with aclient(qs) as q, aclient(qs) as observer:
        await q.config_tube_set("w", "retain", 600)
        await q.use("w")
        job_id = await q.put_ex(b"x", tags=["batch"])

        async def handler(job):
            # cancelled after the last heartbeat (none comes within the hour)
            assert await observer.cancel_tag("batch") == CancelResult(0, 1)
            return "done"

        assert await q.work("w", handler, max_jobs=1, heartbeat=3600) == 1
        with pytest.raises(NotFound):
            await observer.job_info(job_id)
        ext = await observer.stats_ext()
        assert (ext["cmd-complete"], ext["job-completions"], ext["cmd-fail"]) == (1, 0, 0)
        assert (await observer.stats())["cmd-delete"] == 1


async def test_work_deletes_when_the_handler_learns_it(qs):
    """A handler whose own progress raises Cancelled stops; the job is deleted,
    not failed (no attempt is counted, no retry)."""
    async with aclient(qs) as q, aclient(qs) as observer:
        await q.config_tube_set("w", "max-attempts", 3)
        await q.use("w")
        job_id = await q.put_ex(b"x", tags=["batch"])
        after = []

        async def handler(job):
            assert await observer.cancel_tag("batch") == CancelResult(0, 1)
            await q.progress(job.id, b"still going?")     # raises Cancelled
            after.append(job.id)

        assert await q.work("w", handler, max_jobs=1, heartbeat=3600) == 1
        assert after == []
        with pytest.raises(NotFound):
            await observer.peek(job_id)
        ext = await observer.stats_ext()
        assert (ext["cmd-fail"], ext["job-failures"], ext["cmd-complete"]) == (0, 0, 0)


async def test_work_deletes_a_flagged_job_without_running_the_handler(qs):
    """A job flagged while another connection held it, then released, is deleted
    by the next worker that reserves it."""
    async with aclient(qs) as q, aclient(qs) as holder:
        await q.use("w")
        job_id = await q.put_ex(b"x", tags=["batch"])
        other = await q.put(b"y")
        await holder.watch("w")
        await holder.reserve_job(job_id)
        assert await q.cancel_tag("batch") == CancelResult(0, 1)
        await holder.release(job_id, pri=0)
        handled = []

        async def handler(job):
            handled.append(job.id)

        assert await q.work("w", handler, idle_timeout=0, max_jobs=10) == 2
        assert handled == [other]
        with pytest.raises(NotFound):
            await q.peek(job_id)


def test_blocking_work_deletes_a_cancelled_job(qs):
    with Client(port=qs.port, timeout=TIMEOUT) as c, \
            Client(port=qs.port, timeout=TIMEOUT) as observer:
        c.use("bw")
        job_id = c.put_ex(b"x", tags=["batch"])
        caught = []

        def handler(job):
            assert observer.cancel_tag("batch") == CancelResult(0, 1)
            try:
                c.touch(job.id)
            except Cancelled as error:
                caught.append(error.command)
            return "ignored"

        assert c.work("bw", handler, max_jobs=1, heartbeat=3600) == 1
        assert caught == ["touch"]
        with pytest.raises(NotFound):
            c.peek(job_id)
        assert observer.stats_ext()["job-completions"] == 0


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
