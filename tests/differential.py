"""Differential testing support: drive beanstalkd 1.12 and qserver with the same bytes.

A `Pair` holds one reference server and one qserver, each with the same number of
client connections. A `Runner` sends each `Step` to both, reads the replies with
bounded waits and compares them after `normalise` (which hides the values that
legitimately differ: pids, versions, uptimes, 1.12's unquoted strings ...).

`RandomSession` generates seeded command sequences. It keeps only a small advisory
model (used tube, reserved ids, highest id) and learns everything else from the
reference server's replies, so a sequence is a pure function of its seed as long as
beanstalkd behaves deterministically. Before any reserve that could block it asks both
servers (`list-tubes-watched`, `stats-tube`) whether a job is available; those probes
are compared like any other command.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from conftest import WAIT, start_beanstalkd, start_qserver

# Bounds on every wait. beanstalkd answers in microseconds and qserver in well under a
# millisecond; a reply missing after this long is a missing reply, not a slow one, even
# on a slow or busy host. (Only a failing run waits this long: no step expects silence.)
REPLY_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
MAX_JOB_SIZE = 65535
LINE_LIMIT = 224

# stats values that differ between any two server processes.
STATS_MASKED = {"pid", "version", "rusage-utime", "rusage-stime", "uptime", "id",
                "hostname", "os", "platform"}
# 1.12 prints these unquoted, qserver (like 1.13) quotes them.
QUOTED = {"name", "tube", "hostname", "os", "platform", "version"}
# Whole seconds measured at slightly different instants: allow one second either way.
NEAR = {"age", "time-left", "pause-time-left"}

TUBES = [b"default", b"t1", b"t2", b"a-b", b"Q+/;.$_()", b"x" * 200, b"9"]
BAD_TUBES = [b"-lead", b"y" * 201, b"a b", b"a*b", b"", b"caf\xc3\xa9", b"a\tb",
             b" t1", b"t1 "]


class ReplyTimeout(Exception):
    """No complete reply within the allowed time."""


class Closed(Exception):
    """The server closed the connection."""


class GeneratorError(AssertionError):
    """The reference server did not answer as the generator expected: a test bug."""


class Divergence(AssertionError):
    """beanstalkd and qserver answered differently."""


# ---------------------------------------------------------------------------
# Connections


class Conn:
    """One client socket with its own receive buffer; every read has a deadline."""

    def __init__(self, server):
        self.sock = socket.create_connection(("127.0.0.1", server.port),
                                             timeout=SEND_TIMEOUT)
        # Separate send() calls should become separate TCP segments.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.settimeout(SEND_TIMEOUT)
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReplyTimeout
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise ReplyTimeout from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise Closed
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _read_line(self, deadline: float) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i + 2)
            self._fill(deadline)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        return self._take(n)

    def read_reply(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        """One whole reply: the line, plus the body of FOUND/RESERVED/OK replies."""
        deadline = time.monotonic() + timeout
        line = self._read_line(deadline)
        size = body_size(line)
        if size is None:
            return line
        return line + self._read_exact(size + 2, deadline)

    def wait_closed(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        """Wait for EOF; returns any bytes that came before it."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except Closed:
            return self._take(len(self.buf))

    def close(self) -> None:
        self.sock.close()


def long_line(line: bytes) -> Cmd:
    """An over-long line (CRLF included): one BAD_FORMAT once its end is seen.

    beanstalkd looks for the line end in 224-byte windows and only sees a CRLF that
    lies inside one window. When the CR is the last byte of a window the line end is
    missed and the following line is swallowed too (the reference doc's "225-byte"
    quirk, which qserver copies), so a short line is added for it to swallow.
    """
    if (len(line) - 1) % LINE_LIMIT == 0:
        line += b"list-tube-used\r\n"
    return Cmd(line, 1, "bad")


def body_size(line: bytes):
    """The body length announced by a reply line, or None if it has no body."""
    m = re.fullmatch(rb"(?:(?:FOUND|RESERVED) \d+|OK) (\d+)\r\n", line)
    return int(m[1]) if m else None


class Pair:
    """A fresh beanstalkd and a fresh qserver, each with `nconns` connections."""

    def __init__(self, nconns: int = 3):
        self.servers = []
        self.servers.append(start_beanstalkd())
        self.servers.append(start_qserver())
        self.conns = [[Conn(s) for _ in range(nconns)] for s in self.servers]

    def reconnect(self, i: int) -> None:
        for side in (0, 1):
            self.conns[side][i].close()
            self.conns[side][i] = Conn(self.servers[side])

    def hang_up(self, i: int) -> None:
        """The client closes connection `i` on both servers and opens a new one; returns
        once both servers have closed their end of the old one, so that what they
        count next (connections, ids of unfinished puts) no longer depends on timing."""
        old = [self.conns[side][i].sock.getsockname()[1] for side in (0, 1)]
        self.reconnect(i)
        for server, client_port in zip(self.servers, old):
            wait_server_closed(server.port, client_port)

    def close(self) -> None:
        for side in self.conns:
            for conn in side:
                conn.close()
        for server in self.servers:
            server.stop()


# TCP states (include/net/tcp_states.h) in which the server still holds its end.
_SERVER_END_OPEN = {"01", "08"}         # ESTABLISHED, CLOSE_WAIT


def _server_end_state(server_port: int, client_port: int):
    """The state of the server's end of 127.0.0.1:client_port -> server_port, or None
    once it is gone (/proc/net/tcp; ports in hex)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (int(local.split(":")[1], 16) == server_port
                    and int(remote.split(":")[1], 16) == client_port):
                return state
    return None


def wait_server_closed(server_port: int, client_port: int, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while _server_end_state(server_port, client_port) in _SERVER_END_OPEN:
        if time.monotonic() > deadline:
            raise AssertionError(f"server on {server_port} never closed the connection "
                                 f"from port {client_port}")
        time.sleep(0.005)


# ---------------------------------------------------------------------------
# Normalisation


class Near:
    """A whole-seconds value that equals another within one second."""

    def __init__(self, text: str):
        self.text = text

    def __eq__(self, other):
        if not isinstance(other, Near):
            return NotImplemented
        try:
            return abs(int(self.text) - int(other.text)) <= 1
        except ValueError:
            return self.text == other.text

    def __repr__(self):
        return f"~{self.text}"


def _yaml_value(key: str, value: str, is_stats: bool):
    if key in QUOTED and len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if is_stats and key in STATS_MASKED:
        return "*"
    if key in NEAR:
        return Near(value)
    return value


def normalise(reply: bytes, kind: str = ""):
    """A comparable form of one reply: the bytes themselves, except for YAML bodies.

    A YAML reply becomes (framing-is-consistent, entries): the byte count is not
    compared directly because 1.12's unquoted strings make it shorter.
    """
    header, _, rest = reply.partition(b"\r\n")
    m = re.fullmatch(rb"OK (\d+)", header)
    if not m or not rest.endswith(b"\r\n"):
        return reply
    body = rest[:-2]
    framed = len(body) == int(m[1]) and body.startswith(b"---\n") and body.endswith(b"\n")
    lines = body.decode("latin-1").split("\n")[1:-1]
    if lines and all(line.startswith("- ") for line in lines):
        items = [line[2:] for line in lines]
        # list-tubes order is the server's internal array order: compare as a set.
        return ("list", framed, tuple(sorted(items) if kind == "list-tubes" else items))
    pairs = [line.partition(": ") for line in lines]
    is_stats = any(key == "pid" for key, _, _ in pairs)
    return ("yaml", framed,
            tuple((k, s, _yaml_value(k, v, is_stats)) for k, s, v in pairs))


def yaml_fields(reply: bytes) -> dict:
    """key -> value (quotes stripped) of a stats-style reply, for the generator."""
    body = reply.partition(b"\r\n")[2][:-2].decode("latin-1")
    out = {}
    for line in body.split("\n")[1:]:
        key, _, value = line.partition(": ")
        out[key] = value.strip('"')
    return out


def yaml_list(reply: bytes) -> list:
    body = reply.partition(b"\r\n")[2][:-2].decode("latin-1")
    return [line[2:] for line in body.split("\n") if line.startswith("- ")]


# ---------------------------------------------------------------------------
# Steps and the runner


@dataclass
class Cmd:
    """Bytes for one command (or one deliberately odd chunk of input).

    `replies` is how many replies beanstalkd gives to these bytes (a put line with a
    bad format followed by a body gives two: the body is read as a command).
    `kind` names the command for normalisation and for the generator's bookkeeping.
    """
    data: bytes
    replies: int = 1
    kind: str = ""
    arg: object = None


@dataclass
class Step:
    """What one connection sends in one go, possibly split into several sends."""
    conn: int
    cmds: list
    cuts: list = field(default_factory=list)   # split points for segmented sending
    pause: float = 0.0                         # sleep between segments
    closes: bool = False                       # the server must close the connection

    @property
    def data(self) -> bytes:
        return b"".join(c.data for c in self.cmds)

    def replies(self) -> int:
        return sum(c.replies for c in self.cmds)

    def kinds(self) -> list:
        out = []
        for c in self.cmds:
            out += [c.kind] + ["?"] * (c.replies - 1)
        return out


def show(data: bytes, limit: int = 160) -> str:
    """repr of bytes, shortened in the middle for long put bodies."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit // 2]!r} ...({len(data)} bytes)... {data[-limit // 4:]!r}"


class Runner:
    """Sends steps to both servers and compares what comes back."""

    def __init__(self, pair: Pair, label: str):
        self.pair = pair
        self.label = label
        self.history = deque(maxlen=int(os.environ.get("DIFF_HISTORY", 6)))
        self.count = 0

    def run(self, step: Step) -> list:
        """Run one step; returns beanstalkd's replies, raises Divergence on a mismatch."""
        self.count += 1
        self._send(step)
        ref = self._read_reference(step)
        got = self._read_qserver(step, step.replies())
        self._compare(step, ref, got)
        self.history.append((step, ref, got))
        if step.closes:
            self.pair.reconnect(step.conn)
        return ref

    def _send(self, step: Step) -> None:
        """Send the step's bytes to both servers, segment by segment in lockstep."""
        data = step.data
        bounds = [0, *sorted(set(step.cuts)), len(data)]
        conns = (self.pair.conns[0][step.conn], self.pair.conns[1][step.conn])
        for a, b in zip(bounds, bounds[1:]):
            if a == b:
                continue
            for conn in conns:
                conn.send(data[a:b])
            if step.pause and b < len(data):
                time.sleep(step.pause)

    def _read_reference(self, step: Step) -> list:
        conn = self.pair.conns[0][step.conn]
        replies = []
        try:
            for _ in range(step.replies()):
                replies.append(conn.read_reply())
            if step.closes:
                extra = conn.wait_closed()
                if extra:
                    replies.append(extra)
        except (ReplyTimeout, Closed) as e:
            raise GeneratorError(
                f"{self.label}: beanstalkd gave {replies!r} then {type(e).__name__} "
                f"for {show(step.data)}; the generator's expectations are wrong") from None
        return replies

    def _read_qserver(self, step: Step, n: int) -> list:
        """`n` replies, each bounded; a missing reply, an early close or a connection
        left open after quit becomes a marker that cannot match beanstalkd's."""
        conn = self.pair.conns[1][step.conn]
        replies = []
        try:
            for _ in range(n):
                replies.append(conn.read_reply())
        except ReplyTimeout:
            return replies + [b"<no reply within %.1fs>" % REPLY_TIMEOUT]
        except Closed:
            return replies + [b"<connection closed>"]
        if step.closes:
            try:
                extra = conn.wait_closed()
            except ReplyTimeout:
                return replies + [b"<connection still open after %.1fs>" % REPLY_TIMEOUT]
            if extra:
                replies.append(extra)
        return replies

    def _compare(self, step: Step, ref: list, got: list) -> None:
        kinds = step.kinds() + [""] * len(ref)
        same = len(ref) == len(got) and all(
            normalise(r, k) == normalise(g, k) for r, g, k in zip(ref, got, kinds))
        if not same:
            raise Divergence(self._report(step, ref, got))

    def _report(self, step: Step, ref: list, got: list) -> str:
        lines = [f"{self.label}, step {self.count}: replies differ",
                 f"  conn {step.conn} sent: {show(step.data)}"
                 + (f" in segments cut at {step.cuts}" if step.cuts else ""),
                 f"  beanstalkd: {[show(r, 400) for r in ref]}",
                 f"  qserver:    {[show(r, 400) for r in got]}",
                 "  preceding steps (oldest first):"]
        for old, r, g in self.history:
            lines.append(f"    conn {old.conn}: {show(old.data, 100)} -> "
                         f"{[show(x, 80) for x in r]}"
                         + ("" if r == g else f" / qserver {[show(x, 80) for x in g]}"))
        return "\n".join(lines)


def run_script(steps: list, label: str, nconns: int = 3) -> None:
    """Run fixed steps on a fresh pair of servers."""
    pair = Pair(nconns)
    try:
        runner = Runner(pair, label)
        warm_up(runner, nconns)
        for step in steps:
            runner.run(step)
        check_quiet(runner, nconns)
    finally:
        pair.close()


def warm_up(runner: Runner, nconns: int) -> None:
    """One round trip per connection, so both servers have accepted them all before
    any stats reply counts connections."""
    for i in range(nconns):
        runner.run(Step(i, [Cmd(b"list-tube-used\r\n", kind="list-tube-used")]))


def check_quiet(runner: Runner, nconns: int) -> None:
    """Nothing unexpected is left in any connection: each still answers in step."""
    for i in range(nconns):
        runner.run(Step(i, [Cmd(b"list-tubes-watched\r\n", kind="list-tubes-watched")]))


# ---------------------------------------------------------------------------
# Random sequences


@dataclass
class ConnModel:
    """What the generator remembers about one connection (advisory only)."""
    used: bytes = b"default"
    reserved: set = field(default_factory=set)


def rand_body(rng: random.Random, size: int) -> bytes:
    """Arbitrary bytes with a bias towards CR, LF and NUL, which framing must ignore."""
    alphabet = b"abcXYZ019 \r\n\x00\xff"
    return bytes(rng.choice(alphabet) for _ in range(size)) if size < 512 \
        else rng.randbytes(size)


class RandomSession:
    """A seeded random walk over the protocol, run step by step on a Runner."""

    def __init__(self, runner: Runner, seed: int, nconns: int = 3):
        self.runner = runner
        self.rng = random.Random(seed)
        self.nconns = nconns
        self.conns = [ConnModel() for _ in range(nconns)]
        self.max_id = 0
        self.actions = self._weighted_actions()

    def _weighted_actions(self) -> list:
        table = [
            (self.do_put, 18), (self.do_reserve, 10), (self.do_job_cmd, 16),
            (self.do_tube_cmd, 8), (self.do_peek, 6), (self.do_kick, 4),
            (self.do_info, 5), (self.do_pause, 2), (self.do_bad_line, 10),
            (self.do_bad_put, 5), (self.do_long_line, 2), (self.do_batch, 6),
            (self.do_interleave, 3), (self.do_quit, 1),
        ]
        return [fn for fn, weight in table for _ in range(weight)]

    def run(self, nsteps: int) -> None:
        while self.runner.count < nsteps:
            self.rng.choice(self.actions)()

    # -- execution and bookkeeping ----------------------------------------------

    def execute(self, conn: int, cmds: list) -> list:
        """Run the commands as one step, sometimes cut into segments."""
        step = Step(conn, cmds, closes=any(c.kind == "quit" for c in cmds))
        self._maybe_segment(step)
        replies = self.runner.run(step)
        self.observe(conn, cmds, replies)
        if step.closes:
            self.conns[conn] = ConnModel()
            # A round trip on the new connection, so that it has been accepted before
            # another connection asks for stats.
            self.execute(conn, [self.c(b"list-tube-used", "list-tube-used")])
        return replies

    def _maybe_segment(self, step: Step) -> None:
        """Deliver ~1 step in 8 in random segments, sometimes with a short pause."""
        size = len(step.data)
        if size < 2 or self.rng.random() > 0.125:
            return
        ncuts = self.rng.randint(1, min(6, size - 1))
        step.cuts = [self.rng.randint(1, size - 1) for _ in range(ncuts)]
        if self.rng.random() < 0.3:
            step.pause = 0.0005

    def observe(self, conn: int, cmds: list, replies: list) -> None:
        """Learn from beanstalkd's replies: ids handed out, jobs held, the used tube."""
        model = self.conns[conn]
        kinds = [k for c in cmds for k in [c] + [None] * (c.replies - 1)]
        for i, reply in enumerate(replies):
            cmd = kinds[i] if i < len(kinds) else None
            words = reply.split(b"\r\n", 1)[0].split(b" ")
            if words[0] in (b"INSERTED", b"BURIED") and len(words) == 2:
                self.max_id = max(self.max_id, int(words[1]))
            elif words[0] == b"RESERVED":
                model.reserved.add(int(words[1]))
            elif words[0] == b"USING":
                model.used = words[1]
            elif cmd and words[0] in (b"DELETED", b"RELEASED", b"BURIED"):
                model.reserved.discard(cmd.arg)
            if cmd and cmd.kind == "delete" and words[0] == b"DELETED":
                for other in self.conns:
                    other.reserved.discard(cmd.arg)

    @staticmethod
    def c(line: bytes, kind: str = "", arg=None, replies: int = 1) -> Cmd:
        """A command line with its CRLF; a line that came out too long is an over-long
        line (one BAD_FORMAT) whatever it was meant to be."""
        if len(line) + 2 > LINE_LIMIT:
            return long_line(line + b"\r\n")
        return Cmd(line + b"\r\n", replies, kind, arg)

    def conn(self) -> int:
        return self.rng.randrange(self.nconns)

    # -- argument pickers -------------------------------------------------------

    def pick_id(self, conn: int):
        """(text, id) of a job id: often one this connection holds, sometimes odd."""
        rng = self.rng
        held = self.conns[conn].reserved
        r = rng.random()
        if held and r < 0.45:
            n = rng.choice(sorted(held))
            return str(n).encode(), n
        if r < 0.88:
            n = rng.randint(1, self.max_id + 2)
            return str(n).encode(), n
        odd = [b"0", b"00" + str(max(1, self.max_id)).encode(), str(U64_MAX).encode(),
               str(U64_MAX + 1).encode(), b"-1", b"+1", b"1x", b" 1", b"1 ", b"",
               b"99999999999999999999999", b"0x1", b"1\t"]
        return rng.choice(odd), None

    def pick_pri(self) -> bytes:
        rng = self.rng
        return str(rng.choice([0, 1, 1023, 1024, 500, U32_MAX, rng.randint(0, 2000),
                               rng.randint(0, U32_MAX)])).encode()

    def pick_delay(self) -> bytes:
        """0, or long enough that no delay ends while the sequence runs."""
        rng = self.rng
        if rng.random() < 0.75:
            return b"0"
        return str(rng.choice([100, 3600, U32_MAX, rng.randint(100, 10**6)])).encode()

    def pick_ttr(self) -> bytes:
        """Long enough that no reservation times out while the sequence runs."""
        rng = self.rng
        return str(rng.choice([100, 120, 3600, U32_MAX, rng.randint(100, 10**6)])).encode()

    def pick_tube(self, bad_chance: float = 0.1) -> bytes:
        if self.rng.random() < bad_chance:
            return self.rng.choice(BAD_TUBES)
        return self.rng.choice(TUBES)

    # -- actions ----------------------------------------------------------------

    def put_cmd(self) -> Cmd:
        rng = self.rng
        r = rng.random()
        size = rng.randint(0, 20) if r < 0.8 else (
            rng.randint(0, 3000) if r < 0.98 else MAX_JOB_SIZE)
        space = b"  " if rng.random() < 0.05 else b" "
        line = b"put" + space + b" ".join(
            [self.pick_pri(), self.pick_delay(), self.pick_ttr(), str(size).encode()])
        return Cmd(line + b"\r\n" + rand_body(rng, size) + b"\r\n", 1, "put")

    def do_put(self) -> None:
        self.execute(self.conn(), [self.put_cmd()])

    def do_reserve(self) -> None:
        """reserve / reserve-with-timeout, blocking forms only when a job is there."""
        conn = self.conn()
        rng = self.rng
        if rng.random() < 0.3:
            line = rng.choice([b"reserve-with-timeout 0", b"reserve-with-timeout 00",
                               b"reserve-with-timeout  0", b"reserve-with-timeout 0 x",
                               b"reserve-with-timeout 0x"])
            self.execute(conn, [self.c(line, "reserve-with-timeout")])
            return
        if self.job_available(conn):
            line = rng.choice([b"reserve", b"reserve", b"reserve-with-timeout 1",
                               b"reserve-with-timeout 100"])
        else:
            line = b"reserve-with-timeout 0"
        self.execute(conn, [self.c(line, "reserve")])

    def job_available(self, conn: int) -> bool:
        """Ask (both servers, compared) whether a watched, unpaused tube has a ready job."""
        watched = yaml_list(self.execute(
            conn, [self.c(b"list-tubes-watched", "list-tubes-watched")])[0])
        cmds = [self.c(b"stats-tube " + name.encode("latin-1"), "stats-tube")
                for name in watched]
        for reply in self.execute(conn, cmds):
            fields = yaml_fields(reply)
            if int(fields["current-jobs-ready"]) > 0 and fields["pause"] == "0":
                return True
        return False

    def job_cmd(self, conn: int) -> Cmd:
        rng = self.rng
        text, n = self.pick_id(conn)
        kind = rng.choice(["delete", "release", "bury", "touch", "reserve-job",
                           "kick-job", "stats-job", "delete"])
        args = {"release": [text, self.pick_pri(), self.pick_delay()],
                "bury": [text, self.pick_pri()]}.get(kind, [text])
        if rng.random() < 0.05:
            args.append(rng.choice([b"", b"x", b"1"]))     # trailing garbage
        return self.c(kind.encode() + b" " + b" ".join(args), kind, n)

    def do_job_cmd(self) -> None:
        conn = self.conn()
        self.execute(conn, [self.job_cmd(conn)])

    def tube_cmd(self) -> Cmd:
        kind = self.rng.choice(["use", "watch", "watch", "ignore", "ignore", "stats-tube"])
        return self.c(kind.encode() + b" " + self.pick_tube(), kind)

    def do_tube_cmd(self) -> None:
        self.execute(self.conn(), [self.tube_cmd()])

    def peek_cmd(self, conn: int) -> Cmd:
        kind = self.rng.choice(["peek", "peek-ready", "peek-delayed", "peek-buried"])
        if kind == "peek":
            return self.c(b"peek " + self.pick_id(conn)[0], kind)
        return self.c(kind.encode(), kind)

    def do_peek(self) -> None:
        conn = self.conn()
        self.execute(conn, [self.peek_cmd(conn)])

    def kick_cmd(self) -> Cmd:
        # kick reads its bound with strtoul: no trailing check, signs, wrap-around.
        bound = self.rng.choice([b"0", b"1", b"2", b"5", b"100", b"10abc", b"-1", b"+3",
                                 b" 2", b"\t2", b"0x5", b"4294967296", b"4294967297",
                                 b"99999999999999999999", b"", b"1 2", b"3 "])
        return self.c(b"kick " + bound, "kick")

    def do_kick(self) -> None:
        self.execute(self.conn(), [self.kick_cmd()])

    def info_cmd(self) -> Cmd:
        kind = self.rng.choice(["stats", "list-tubes", "list-tube-used",
                                "list-tubes-watched", "stats-tube", "stats-job"])
        if kind == "stats-tube":
            return self.c(b"stats-tube " + self.pick_tube(0.2), kind)
        if kind == "stats-job":
            return self.c(b"stats-job " + self.pick_id(0)[0], kind)
        return self.c(kind.encode(), kind)

    def do_info(self) -> None:
        self.execute(self.conn(), [self.info_cmd()])

    def pause_cmd(self) -> Cmd:
        rng = self.rng
        delay = rng.choice([b"0", b"0", b"100", b"3600", b"4294967295", b"4294967296",
                            b"-1", b"", b"0 x", b"00"])
        sep = rng.choice([b" ", b" ", b" ", b"  ", b""])
        return self.c(b"pause-tube" + sep + self.pick_tube(0.15) + b" " + delay,
                      "pause-tube")

    def do_pause(self) -> None:
        self.execute(self.conn(), [self.pause_cmd()])

    def bad_line(self) -> Cmd:
        """A single malformed line: exactly one reply (never a put expecting a body)."""
        rng = self.rng
        choices = [
            b"", b" ", b"foo", b"STATS", b"Stats", b"LIST-TUBES", b"Use default",
            b"PUT 0 0 100 1", b" stats", b"stats ", b"statsx", b"list-tubes ",
            b"list-tubesx", b"list-tube-usedx", b"list-tubes-watched ", b"reserve ",
            # Not "reserve-with-timeout " / "x" / "-1": 1.12 reads those as timeouts,
            # 1.13 (and qserver) answer BAD_FORMAT, a deliberate difference.
            b"reservex", b"reserve-with-timeout", b"peek-ready ",
            b"peek-delayedx", b"peek-buried 1", b"peek", b"peek ", b"kick",
            b"delete", b"delete ", b"delete\t1", b"putx", b"use", b"watch",
            b"ignore", b"stats-job", b"stats-tube", b"pause-tube", b"pause-tube default",
            b"pause-tubex", b"touch 1 2", b"bury 1", b"release 1 2", b"release 1",
            b"bury 1 4294967296", b"release 1 0 4294967296", b"release 1 4294967296 0",
            b"stats\x00", b"\x00", b"use t\x00", b"peek 1\x00", b"put 0 0 100 1\x00",
            b"list-tubes\x00x", b"x" * 222, b"use " + b"z" * 218,
            b"put -1 0 100 1", b"put 4294967296 0 100 1", b"put 0 4294967296 100 1",
            b"put 0 0 4294967296 1", b"put 0 0 100 4294967296", b"put 0 0 100",
            b"put 0 0 100 1 x", b"put 0 0 100 1 ", b"put x", b"put", b"put ",
            b"put 0 0 100 18446744073709551616", b"put +1 0 100 1", b"put 0 0 100 -1",
            b"\xff\xfe", b"stats-job 1 2", b"list-tubes watched", b"quix",
        ]
        return self.c(rng.choice(choices), "bad")

    def do_bad_line(self) -> None:
        self.execute(self.conn(), [self.bad_line()])

    def do_bad_put(self) -> None:
        """put lines whose body is not a job: too big, bad trailer, or read as commands."""
        rng = self.rng
        conn = self.conn()
        form = rng.choice(["too_big", "too_big_junk", "crlf", "crlf", "body_as_cmd"])
        if form.startswith("too_big"):
            size = rng.choice([MAX_JOB_SIZE + 1, 70000, rng.randint(65536, 100000)])
            junk = b" junk" if form == "too_big_junk" else b""
            body = rand_body(rng, size) + rng.choice([b"\r\n", b"XY", b"\r\r"])
            cmd = Cmd(b"put 0 0 100 %d%s\r\n" % (size, junk) + body, 1, "put")
        elif form == "crlf":
            size = rng.randint(0, 30)
            trailer = rng.choice([b"XY", b"\n\r", b"\r\r", b"\nX", b"\x00\x00", b"  "])
            cmd = Cmd(b"put 1 0 100 %d\r\n" % size + rand_body(rng, size) + trailer,
                      1, "put")
        else:
            line = rng.choice([b"put 0 0 10 5 ", b"put 0 0 10 x", b"put 0 0 -1 5",
                               b"put 4294967296 0 10 5", b"put 0 0 10 5 5"])
            body = rng.choice([b"hello", b"peek 1", b"stats-job 1", b"list-tubes",
                               b"peek-ready", b"del\x00ete", b"kick 1", b""])
            kind = "list-tubes" if body == b"list-tubes" else "body"
            cmd = Cmd(line + b"\r\n", 1, "bad")
            self.execute(conn, [cmd, Cmd(body + b"\r\n", 1, kind)])
            return
        self.execute(conn, [cmd])

    def do_long_line(self) -> None:
        """Over-long lines: one BAD_FORMAT once the line ends (and the 225-byte quirk)."""
        rng = self.rng
        length = rng.choice([225, 226, 227, 300, 448, 449, 1000, rng.randint(226, 5000)])
        head = rng.choice([b"use ", b"put 0 0 100 1 ", b"stats-tube ", b"", b"x\r"])
        line = (head + b"q" * length)[:length - 2] + b"\r\n"
        self.execute(self.conn(), [long_line(line)])

    def simple_cmd(self, conn: int) -> Cmd:
        """Any one-reply command that can never block."""
        pick = self.rng.choice([self.put_cmd, lambda: self.job_cmd(conn), self.tube_cmd,
                                lambda: self.peek_cmd(conn), self.kick_cmd,
                                self.info_cmd, self.bad_line, self.pause_cmd,
                                lambda: self.c(b"reserve-with-timeout 0", "reserve")])
        return pick()

    def order_free_cmd(self, conn: int) -> Cmd:
        """A command whose reply does not depend on another connection's pending put:
        no put (it would take an id), no stats (cmd-put, total-jobs), and nothing
        that names a job id. beanstalkd already files the half-uploaded job under
        its id: `peek` shows its unfinished body buffer and `stats-job` its state as
        "invalid", a quirk qserver rightly does not copy (it answers NOT_FOUND)."""
        peeks = [b"peek-ready", b"peek-delayed", b"peek-buried"]
        pick = self.rng.choice([self.tube_cmd, self.kick_cmd,
                                lambda: self.c(self.rng.choice(peeks), "peek"),
                                self.pause_cmd, lambda: self.c(b"list-tubes", "list-tubes"),
                                lambda: self.c(b"reserve-with-timeout 0", "reserve")])
        return pick()

    def do_batch(self) -> None:
        """Several commands pipelined in one send."""
        conn = self.conn()
        cmds = [self.simple_cmd(conn) for _ in range(self.rng.randint(2, 8))]
        if self.rng.random() < 0.1:
            cmds.append(self.c(b"quit", "quit", replies=0))
        self.execute(conn, cmds)

    def do_interleave(self) -> None:
        """Half a command on one connection, whole commands on others, then the rest."""
        rng = self.rng
        a = self.conn()
        cmd = rng.choice([self.put_cmd, self.info_cmd, self.tube_cmd])()
        cut = rng.randint(1, max(1, len(cmd.data) - 1))
        self.runner.run(Step(a, [Cmd(cmd.data[:cut], 0, cmd.kind)]))
        # Once a put line is complete its id is taken, but nothing tells us when each
        # server read it; other connections then avoid what would show the id order.
        header_sent = b"\r\n" in cmd.data[:cut]
        for _ in range(rng.randint(1, 3)):
            b = rng.choice([i for i in range(self.nconns) if i != a])
            other = self.order_free_cmd(b) if header_sent else self.simple_cmd(b)
            self.execute(b, [other])
        self.execute(a, [Cmd(cmd.data[cut:], cmd.replies, cmd.kind)])

    def do_quit(self) -> None:
        line = self.rng.choice([b"quit", b"quit", b"quitx", b"quit now"])
        self.execute(self.conn(), [self.c(line, "quit", replies=0)])


def run_random(seed: int, nsteps: int, nconns: int = 3) -> int:
    """Run one seeded sequence on a fresh pair; returns the number of steps run."""
    pair = Pair(nconns)
    try:
        runner = Runner(pair, f"seed {seed}")
        warm_up(runner, nconns)
        RandomSession(runner, seed, nconns).run(nsteps)
        check_quiet(runner, nconns)
        return runner.count
    finally:
        pair.close()
