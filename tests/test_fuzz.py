"""Bad input (issue 6): hypothesis throws random and mutated command streams, split at
random byte boundaries, at the framer and command table in-process and at a live
server; plus explicit tests for huge declared bodies, over-long lines, NUL and
non-ASCII tube names, and the INTERNAL_ERROR path.

Properties checked:
* framing depends on the bytes, never on how they are split into reads;
* the framer never holds more than one item's worth of bytes;
* no exception escapes the command layer, and no input makes a handler fail
  (no INTERNAL_ERROR, no traceback in the server's log);
* junk lines get exactly one error reply each and the stream stays in sync;
* on a live server, other connections are served correctly throughout, and the
  server answers `stats` on a fresh connection after each fuzzed connection closes.

Example counts are modest and deadlines off, so the whole file runs in well under a
minute. Every wait is bounded.
"""

import logging
import re
import socket
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SERVED_WITHIN, ServerProcess, free_port, rss, start_qserver
from qserver.commands import Commands
from qserver.engine import Engine
from qserver.session import Session
from qserver.stats import ServerInfo
from qserver.wire import DISCARDED, LINE_LIMIT, OVERLONG, Framer

MiB = 1024 * 1024
MAX_JOB = 100                      # the in-process command table's -z

FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
LIVE = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- streams

TUBES = [b"default", b"a", b"t-1", b"x" * 200, b"$(;)+/._"]
IDS = st.integers(0, 12).map(lambda n: b"%d" % n)
U32 = st.sampled_from([b"0", b"1", b"5", b"1024", b"4294967295"])
BODY = st.binary(max_size=MAX_JOB + 20)


def _put(args):
    pri, delay, ttr, body = args
    return b"put %s %s %s %d\r\n%s\r\n" % (pri, delay, ttr, len(body), body)


VALID = st.one_of(
    st.tuples(U32, st.sampled_from([b"0", b"0", b"1"]), U32, BODY).map(_put),
    st.tuples(st.sampled_from([b"use", b"watch", b"ignore", b"stats-tube"]),
              st.sampled_from(TUBES)).map(lambda a: a[0] + b" " + a[1] + b"\r\n"),
    st.tuples(st.sampled_from([b"peek", b"delete", b"touch", b"kick-job", b"stats-job",
                               b"reserve-job"]), IDS).map(
        lambda a: a[0] + b" " + a[1] + b"\r\n"),
    st.tuples(IDS, U32).map(lambda a: b"bury %s %s\r\n" % a),
    st.tuples(IDS, U32, st.sampled_from([b"0", b"1"])).map(
        lambda a: b"release %s %s %s\r\n" % a),
    st.sampled_from([b"kick 3\r\n", b"kick 0\r\n", b"reserve-with-timeout 0\r\n",
                     b"reserve\r\n", b"peek-ready\r\n", b"peek-delayed\r\n",
                     b"peek-buried\r\n", b"list-tubes\r\n", b"list-tube-used\r\n",
                     b"list-tubes-watched\r\n", b"stats\r\n", b"pause-tube a 0\r\n",
                     b"pause-tube default 0\r\n"]),
)

ODD_BYTES = st.sampled_from([b"\0", b"\r", b"\n", b"\r\n", b" ", b"\t", b"\x80", b"\xff",
                             b"\xc3\xa9", b"-", b"9" * 30])


@st.composite
def mutated(draw):
    """A valid command with a few byte-level mutations."""
    data = bytearray(draw(VALID))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.integers(0, 4))
        i = draw(st.integers(0, len(data)))
        if op == 0 and i < len(data):                       # replace a byte
            data[i:i + 1] = draw(st.one_of(ODD_BYTES, st.binary(min_size=1, max_size=1)))
        elif op == 1:                                       # insert bytes
            data[i:i] = draw(st.one_of(ODD_BYTES, st.binary(max_size=4)))
        elif op == 2:                                       # delete a run
            del data[i:i + draw(st.integers(1, 8))]
        elif op == 3:                                       # truncate
            del data[i:]
        else:                                               # repeat a slice
            j = draw(st.integers(i, len(data)))
            data[j:j] = data[i:j]
    return bytes(data)


SEGMENT = st.one_of(
    VALID, VALID, mutated(), mutated(),
    st.binary(max_size=300),                                 # random bytes
    st.integers(200, 800).map(lambda n: b"o" * n + b"\r\n"),     # over-long lines
    st.integers(MAX_JOB + 1, 2**32 - 1).map(                 # huge declared bodies
        lambda n: b"put 0 0 1 %d\r\n" % n),
    st.sampled_from([b"use a\0b\r\n", b"watch caf\xc3\xa9\r\n", b"use \xff\r\n",
                     b"put 0 0 1 99999999999\r\n", b"peek 99999999999999999999999\r\n"]),
)

STREAM = st.lists(SEGMENT, min_size=1, max_size=20).map(b"".join)


def split(data: bytes, cuts) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points + [len(data)]:
        pieces.append(data[start:p])
        start = p
    return [p for p in pieces if p]


# --------------------------------------------------------------------------- in-process


class FakeClient:
    """What the command table needs of a connection."""

    def __init__(self, engine):
        self.framer = Framer()
        self.session = Session(wake=self.woken)
        self.pending_body = None
        self.closing = False
        self.woken_with = []
        engine.attach(self.session)

    def woken(self, outcome):
        self.woken_with.append(outcome)


class Driver:
    """Framer + Commands wired like the server's read loop, with a fixed clock. A
    reserve that has to wait is cancelled at once (as a half-close does) and noted
    as `<parked>`, so the reply sequence is a function of the bytes alone."""

    def __init__(self, max_job=MAX_JOB, engine_class=Engine):
        self.engine = engine_class()
        info = ServerInfo("0.0.0", max_job, 1 << 20, 0.0)
        self.commands = Commands(self.engine, info, max_job, clock=lambda: 1000.0,
                                 wall=lambda: 1.7e9)
        self.client = FakeClient(self.engine)
        self.replies = []

    def feed(self, data: bytes) -> None:
        client, framer = self.client, self.client.framer
        framer.feed(data)
        while not client.closing:
            if client.session.waiting:
                self.engine.cancel_wait(client.session)
                self.replies.append(b"<parked>")
            item = framer.next()
            if item is None:
                # Never more buffered than the largest item still to come.
                assert framer.buffered() <= max(LINE_LIMIT, MAX_JOB + 2)
                break
            if client.pending_body is not None:
                reply = self.commands.finish_body(client, item)
            elif item.__class__ is bytes:
                reply = self.commands.execute(client, item)
            elif item is OVERLONG:
                reply = b"BAD_FORMAT\r\n"
            else:
                assert item is DISCARDED
                reply = b"JOB_TOO_BIG\r\n"
            if reply is not None:
                self.replies.append(reply)
        assert not client.woken_with

    def normalized(self) -> list:
        """Replies with the values that depend on the process (rusage, id) blanked."""
        out = []
        for reply in self.replies:
            if reply.startswith(b"OK "):
                reply = re.sub(rb"^OK \d+", b"OK", reply)
                reply = re.sub(rb"\n(rusage-[us]time|id): [^\n]*", rb"\n\1: *", reply)
            out.append(reply)
        return out


def run(pieces) -> Driver:
    d = Driver()
    for piece in pieces:
        d.feed(piece)
    return d


class Errors(logging.Handler):
    """Collects the qserver logger's error records while in a `with` block."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logging.getLogger("qserver").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("qserver").removeHandler(self)


@FAST
@given(stream=STREAM, cuts=st.lists(st.integers(0, 10**6), max_size=30))
def test_split_anywhere_gives_the_same_replies(stream, cuts):
    """The replies are the same whether the stream arrives whole, at random
    boundaries or byte by byte; and nothing makes a handler fail."""
    with Errors() as errors:
        whole = run([stream])
        pieces = run(split(stream, cuts))
        bytewise = run([stream[i:i + 1] for i in range(len(stream))])
    assert pieces.normalized() == whole.normalized()
    assert bytewise.normalized() == whole.normalized()
    assert b"INTERNAL_ERROR\r\n" not in whole.replies
    assert not errors.records, errors.records[0].getMessage()


# Framer alone: lines `B<n>` announce an n-byte body, `D<n>` a discarded one.
FRAMER_SEGMENT = st.one_of(
    st.binary(max_size=260),
    st.integers(0, 300).map(lambda n: b"B%d\r\n" % n + b"\r" * n + b"\r\n"),
    st.integers(0, 300).map(lambda n: b"D%d\r\n" % n + b"\n" * n + b"xy"),
    st.integers(0, 600).map(lambda n: b"L" * n + b"\r\n"),
)


def frame(pieces) -> list:
    framer, items = Framer(), []
    for piece in pieces:
        framer.feed(piece)
        while (item := framer.next()) is not None:
            items.append(item)
            if item.__class__ is bytes and item[:1] in (b"B", b"D") and item[1:].isdigit() \
                    and len(items) >= 1:
                (framer.expect_body if item[:1] == b"B" else framer.discard_body)(
                    int(item[1:]))
                items.append(b"<body>")        # marks the switch
        assert framer.buffered() <= max(LINE_LIMIT, 302)
    return [i if i.__class__ is bytes else repr(i) for i in items]


@FAST
@given(stream=st.lists(FRAMER_SEGMENT, max_size=15).map(b"".join),
       cuts=st.lists(st.integers(0, 10**6), max_size=40))
def test_framer_items_do_not_depend_on_splits(stream, cuts):
    assert frame(split(stream, cuts)) == frame([stream])


JUNK_LINE = st.one_of(mutated(), st.binary(max_size=700)).map(
    lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n")).filter(
    # 223 content bytes (mod 224) put the CR where no LF fits in the window, which
    # swallows the next line by design (protocol.md, "Lines").
    lambda b: len(b) % LINE_LIMIT != LINE_LIMIT - 1).map(
    # Lines that could start a body, wait or close are not junk for this test.
    lambda b: b"x" + b if b.startswith((b"put", b"reserve", b"quit")) else b)


@FAST
@given(lines=st.lists(JUNK_LINE, min_size=1, max_size=15),
       cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_junk_lines_never_desynchronise(lines, cuts):
    """Each junk line gets exactly one reply, and a command after them is answered
    as if nothing had happened."""
    d = run(split(b"".join(line + b"\r\n" for line in lines) + b"peek 0\r\n", cuts))
    assert len(d.replies) == len(lines) + 1, d.replies
    assert d.replies[-1] == b"NOT_FOUND\r\n"
    assert b"INTERNAL_ERROR\r\n" not in d.replies


# --------------------------------------------------------------------------- handler failures


def test_handler_exception_becomes_internal_error_and_a_logged_traceback(caplog):
    def boom(*args):
        raise RuntimeError("secret internal detail")

    # A subclass: the engine has __slots__ (its instances take no new attributes),
    # and compiled (compiled.py) its class takes none either.
    class FailingEngine(Engine):
        peek = put = boom

    d = Driver(engine_class=FailingEngine)
    with caplog.at_level(logging.ERROR, logger="qserver"):
        d.feed(b"peek 1\r\nput 0 0 1 2\r\nhi\r\nlist-tube-used\r\n")
    assert d.replies == [b"INTERNAL_ERROR\r\n", b"INTERNAL_ERROR\r\n",
                         b"USING default\r\n"]
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert record.exc_info and record.exc_info[0] is RuntimeError


PATCHED_SERVER = """
import sys
from qserver import engine, server
class FailingEngine(engine.Engine):     # compiled, Engine itself takes no new methods
    def peek(self, job_id):
        if job_id == 4242:
            raise RuntimeError("secret internal detail")
        return super().peek(job_id)
server.Engine = FailingEngine
from qserver.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_internal_error_over_the_wire_leaks_nothing():
    port = free_port()
    server = ServerProcess([sys.executable, "-c", PATCHED_SERVER, "-l", "127.0.0.1",
                            "-p", str(port)], port)
    try:
        c = server.client()
        assert c.cmd(b"peek 4242") == b"INTERNAL_ERROR\r\n"
        assert c.cmd(b"peek 4241") == b"NOT_FOUND\r\n"
        assert c.cmd(b"list-tube-used") == b"USING default\r\n"
        c.close()
        log = server.stderr_text()
        assert "Traceback" in log and "RuntimeError: secret internal detail" in log
        assert server.proc.poll() is None
    finally:
        server.stop()


# --------------------------------------------------------------------------- live server


def control_client(server, tube: bytes):
    c = server.client()
    c.send(b"use %s\r\nwatch %s\r\nignore default\r\n" % (tube, tube))
    assert c.read_line() == b"USING %s\r\n" % tube
    assert c.read_line() == b"WATCHING 2\r\n"
    assert c.read_line() == b"WATCHING 1\r\n"
    return c


def round_trip(c, body: bytes) -> float:
    """put + reserve in one write (nobody can take the job between them), then
    delete; every reply checked exactly. Returns the time it took."""
    t0 = time.monotonic()
    c.send(b"put 1 0 30 %d\r\n%s\r\nreserve-with-timeout 5\r\n" % (len(body), body))
    line = c.read_line()
    assert line.startswith(b"INSERTED "), line
    job_id = int(line.split()[1])
    assert c.read_reply() == b"RESERVED %d %d\r\n%s\r\n" % (job_id, len(body), body)
    assert c.cmd(b"delete %d" % job_id) == b"DELETED\r\n"
    return time.monotonic() - t0


def drain(sock) -> None:
    try:
        while sock.recv(65536):
            pass
    except (BlockingIOError, OSError):
        pass


def test_live_fuzz_keeps_other_connections_served():
    server = start_qserver()
    tube = b"ctl-%d" % time.monotonic_ns()
    ctl = control_client(server, tube)
    examples = []
    try:
        @LIVE
        @given(stream=STREAM, cuts=st.lists(st.integers(0, 10**6), max_size=12))
        def fuzz(stream, cuts):
            examples.append(1)
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for i, piece in enumerate(split(stream, cuts)):
                    try:
                        sock.sendall(piece)
                    except OSError:             # quit, or the server closed it
                        break
                    sock.setblocking(False)
                    drain(sock)
                    sock.setblocking(True)
                    sock.settimeout(2)
                    assert round_trip(ctl, b"body %d" % i) < SERVED_WITHIN
            finally:
                sock.close()
            fresh = server.client()
            stats = fresh.yaml(b"stats")
            assert int(stats["current-connections"]) >= 2
            fresh.close()
            assert round_trip(ctl, b"after") < SERVED_WITHIN
            assert server.proc.poll() is None

        fuzz()
        assert len(examples) >= 20, len(examples)
        log = server.stderr_text()
        assert "Traceback" not in log and "failed" not in log, log[-2000:]
    finally:
        ctl.close()
        server.stop()


@pytest.mark.parametrize("flags", [("-z", "1073741824"), ()],
                         ids=["accepted-1GiB", "over-limit-discarded"])
def test_trickled_huge_body_does_not_grow_memory(flags):
    """A client declares a 1 GiB body and trickles bytes: memory grows with what
    arrived (here 640 KiB), never with what was declared; others are served."""
    server = start_qserver(*flags)
    try:
        ctl = control_client(server, b"ctl")
        round_trip(ctl, b"warm-up")
        base = rss(server.proc.pid)
        hog = server.client()
        hog.send(b"put 0 0 60 1073741824\r\n")
        for i in range(40):
            hog.send(b"z" * 16384)
            if i % 4 == 0:
                assert round_trip(ctl, b"meanwhile") < SERVED_WITHIN
            time.sleep(0.01)
        assert rss(server.proc.pid) - base < 6 * MiB
        assert hog.nothing_within(0.1)
        hog.close()
        assert round_trip(ctl, b"after") < SERVED_WITHIN
        assert ctl.yaml(b"stats")["current-jobs-ready"] == "0"
    finally:
        server.stop()


def test_endless_line_is_skipped_with_bounded_memory():
    server = start_qserver()
    try:
        c = server.client()
        for size in (1, 16):                     # MiB without a line end
            for _ in range(size * 16):
                c.send(b"a" * 65536)
            c.send(b"\r\nlist-tube-used\r\n")
            assert c.read_line() == b"BAD_FORMAT\r\n"
            assert c.read_line() == b"USING default\r\n"
            if size == 1:                        # after the one-time warm-up
                base = rss(server.proc.pid)
        assert rss(server.proc.pid) - base < 4 * MiB
    finally:
        server.stop()


@pytest.mark.parametrize("name", [b"a\0b", b"\0", b"caf\xc3\xa9", b"\xff", b"tube\x7f",
                                  b"t\x80"])
@pytest.mark.parametrize("command", [b"use", b"watch", b"ignore", b"stats-tube"])
def test_nul_and_non_ascii_tube_names_are_bad_format(qserver, command, name):
    c = qserver.client()
    assert c.cmd(command + b" " + name) == b"BAD_FORMAT\r\n"
    assert c.cmd(b"pause-tube " + name + b" 0") == b"BAD_FORMAT\r\n"
    assert c.cmd(b"list-tube-used") == b"USING default\r\n"
    assert c.cmd(b"list-tubes-watched") == b"OK 14\r\n---\n- default\n\r\n"
    c.close()
