"""A Python client for qserver (and beanstalkd): asyncio first, with a blocking wrapper.

`AsyncClient` speaks every beanstalkd command and every qserver extension
(protocol.md, "Extensions") over one connection; `Client` runs an `AsyncClient` on a
private event loop in a thread, so the protocol is written once. `AsyncClient.work`
(and `Client.work`) is the worker loop: reserve, heartbeat while the handler runs,
`complete` with what it returns, `fail` with the traceback when it raises.

Errors are split in two: `QueueConnectionError` (a `ConnectionError`: cannot connect,
the connection broke, a reply did not come in time or could not be read) and
`ServerError`, with one subclass per error reply (`NotFound`, `BadFormat`, ...).
A command cancelled or timed out while its reply is outstanding leaves the
request/reply pipe out of step, so the connection is closed and later calls raise
`QueueConnectionError`. So does an extension with a body (`put-ex`, `fail`,
`complete`, `progress`) answered `UNKNOWN_COMMAND`: beanstalkd does not know it and
reads the body as command lines of its own.

The event stream (`subscribe`, `events`) runs on a connection of its own: a
subscribed connection only streams (protocol.md, "subscribe"), so the client's own
connection stays free for commands.

YAML replies are read by a small parser for the flat shapes the servers send
(protocol.md, "YAML replies", "job-info"); PyYAML is not needed.

Imports: stdlib only, and nothing from the server's modules (a client runs anywhere).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import re
import threading
import traceback
import weakref
from collections.abc import (AsyncIterator, Awaitable, Callable, Coroutine, Generator,
                             Iterable, Iterator, Sequence)
from dataclasses import dataclass
from typing import (Any, Concatenate, Literal, ParamSpec, TypedDict, TypeVar, Union,
                    cast, get_args)

__all__ = [
    "AsyncClient", "Client", "Job", "FailAction", "FailResult", "CancelResult",
    "JobPage", "JobRow", "JobState", "LIST_STATES", "Event", "EventName",
    "EVENT_NAMES", "Gap", "EventStream",
    "JobStats", "TubeStats", "JobInfo", "Failure", "TubePolicy", "ExtStats",
    "ServerStats", "parse_yaml",
    "QueueClientError", "QueueConnectionError", "ServerError", "NotFound", "BadFormat",
    "JobTooBig", "Draining", "DeadlineSoon", "TimedOut", "Buried", "ExpectedCrlf",
    "OutOfMemory", "InternalError", "UnknownCommand", "NotIgnored", "Duplicate",
    "Cancelled", "UnexpectedReply",
    "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_PRI", "DEFAULT_TTR",
]

log = logging.getLogger("qserver.client")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11300
DEFAULT_PRI = 1 << 31        # the middle of the u32 range
DEFAULT_TTR = 60
FAIL_REASON_LIMIT = 4096     # the server keeps at most this much of a reason
CANCEL_GRACE = 10.0          # seconds an interrupted blocking call gets to clean up
LIST_LIMIT = 1000            # list-jobs' largest page


# -- errors -------------------------------------------------------------------------

class QueueClientError(Exception):
    """Base of every error this module raises."""


class QueueConnectionError(QueueClientError, ConnectionError):
    """Cannot connect, the connection broke or was closed, or a reply did not arrive
    in time or could not be read. The connection is unusable afterwards."""


class ServerError(QueueClientError):
    """The server answered a command with an error reply. The connection stays usable.

    `command` is the command word sent, `reply` the reply line (without CRLF)."""

    word = ""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(f"{command}: {reply}")
        self.command = command
        self.reply = reply

    def __reduce__(self) -> tuple[type[ServerError], tuple[str, str]]:
        return type(self), (self.command, self.reply)


class NotFound(ServerError):
    word = "NOT_FOUND"


class BadFormat(ServerError):
    word = "BAD_FORMAT"


class JobTooBig(ServerError):
    word = "JOB_TOO_BIG"


class Draining(ServerError):
    word = "DRAINING"


class DeadlineSoon(ServerError):
    """A reserve was answered DEADLINE_SOON: a job this connection holds is about to
    run out of TTR."""

    word = "DEADLINE_SOON"


class TimedOut(ServerError):
    word = "TIMED_OUT"


class Buried(ServerError):
    """`put` or `release` answered BURIED (beanstalkd out of memory; qserver never
    sends it). `job_id` is the id a put's reply names, else None."""

    word = "BURIED"

    @property
    def job_id(self) -> int | None:
        words = self.reply.split()
        return int(words[1]) if len(words) == 2 and words[1].isdigit() else None


class ExpectedCrlf(ServerError):
    word = "EXPECTED_CRLF"


class OutOfMemory(ServerError):
    word = "OUT_OF_MEMORY"


class InternalError(ServerError):
    word = "INTERNAL_ERROR"


class UnknownCommand(ServerError):
    """The server does not know the command (e.g. an extension sent to beanstalkd)."""

    word = "UNKNOWN_COMMAND"


class NotIgnored(ServerError):
    word = "NOT_IGNORED"


class Duplicate(ServerError):
    """`put_ex` with a key that a live (or retained) job of the tube already has.
    `job_id` is that job's id."""

    word = "DUPLICATE"

    @property
    def job_id(self) -> int:
        words = self.reply.split()
        return int(words[1]) if len(words) == 2 and words[1].isdigit() else 0


class Cancelled(ServerError):
    """`touch`, `progress` or `complete` of a job that `cancel_tag` flagged while it
    was reserved: the worker should stop. `delete`, `release`, `bury` and `fail`
    still work for the job."""

    word = "CANCELLED"


class UnexpectedReply(ServerError):
    """A well-framed reply that this command never gets."""


_ERRORS: dict[str, type[ServerError]] = {
    cls.word: cls for cls in (NotFound, BadFormat, JobTooBig, Draining, DeadlineSoon,
                              TimedOut, Buried, ExpectedCrlf, OutOfMemory,
                              InternalError, UnknownCommand, NotIgnored, Duplicate,
                              Cancelled)}


# -- values -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Job:
    """A job as `reserve*` and `peek*` return it."""

    id: int
    body: bytes


class FailAction(enum.StrEnum):
    """What `fail` did with the job (protocol.md, "fail")."""

    RETRYING = "RETRYING"
    BURIED = "BURIED"
    MOVED = "MOVED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class FailResult:
    """The reply to `fail`: `delay` is set for RETRYING (seconds until the next
    attempt, 0 = ready now), `tube` for MOVED (the dead-letter tube)."""

    action: FailAction
    delay: int | None = None
    tube: str | None = None


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The reply to `cancel_tag`: jobs removed (not reserved) and reserved jobs
    flagged as cancelled."""

    removed: int
    flagged: int


JobState = Literal["ready", "delayed", "reserved", "buried", "held", "completed", "dead",
                   "all"]
LIST_STATES: tuple[str, ...] = get_args(JobState)
"""The states `list_jobs` takes, `all` last. `held`: jobs of a full lock key
(protocol.md, "Per-key concurrency")."""

EventName = Literal["put", "reserve", "release", "bury", "kick", "delete", "timeout",
                    "fail", "retry", "dead", "complete", "progress", "cancel", "held",
                    "flush"]
EVENT_NAMES: tuple[str, ...] = get_args(EventName)
"""The events of protocol.md, "subscribe"."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the stream (protocol.md, "subscribe"): its sequence number, the
    wall-clock Unix time, the job id (0 for a whole `flush`), the tube, the event
    name and the job's attempts (counted failures) at that moment."""

    seq: int
    time: float
    id: int
    tube: str
    event: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Gap:
    """An item of an event stream, not an error: events the stream should have
    carried are no longer kept by the server (older than its `--event-window`, or
    numbered by an earlier server process). The stream goes on at once with event
    `oldest`, the oldest kept. `expected` is the sequence number the stream was
    waiting for (None when it started `now`). Events `expected` to `oldest - 1` (of
    every tube) were missed, or all events after `expected - 1` of the old process
    when the server was restarted (each process numbers from its start time in
    microseconds, above the last one's numbers)."""

    oldest: int
    expected: int | None = None

Scalar = Union[int, float, bool, str, None]
Result = Union[bytes, str, None]
"""What a `work` handler returns: the result `complete` stores (None: empty)."""
ServerStats = dict[str, Scalar]
"""`stats`: keys as on the wire; the set of keys depends on the server and version."""

JobStats = TypedDict("JobStats", {
    "id": int, "tube": str, "state": str, "pri": int, "age": int, "delay": int,
    "ttr": int, "time-left": int, "file": int, "reserves": int, "timeouts": int,
    "releases": int, "buries": int, "kicks": int})

TubeStats = TypedDict("TubeStats", {
    "name": str, "current-jobs-urgent": int, "current-jobs-ready": int,
    "current-jobs-reserved": int, "current-jobs-delayed": int,
    "current-jobs-buried": int, "total-jobs": int, "current-using": int,
    "current-watching": int, "current-waiting": int, "cmd-delete": int,
    "cmd-pause-tube": int, "pause": int, "pause-time-left": int})


class Failure(TypedDict):
    """One counted failure of a job: wall-clock Unix seconds and the reason."""

    time: int
    reason: bytes


JobInfo = TypedDict("JobInfo", {
    "id": int, "tube": str, "state": str, "pri": int, "age": int, "delay": int,
    "ttr": int, "time-left": int, "file": int, "reserves": int, "timeouts": int,
    "releases": int, "buries": int, "kicks": int,
    "attempts": int, "max-attempts": int, "progress": bytes | None,
    "result-bytes": int, "key": str | None, "tags": list[str], "cancelled": bool,
    "failures": list[Failure]})

JobRow = TypedDict("JobRow", {
    "id": int, "state": str, "pri": int, "age": int, "delay": int, "time-left": int,
    "attempts": int, "key": str | None, "tags": list[str], "size": int})
"""One job of a `list_jobs` page (protocol.md, "list-jobs")."""


@dataclass(frozen=True, slots=True)
class JobPage:
    """A `list_jobs` page: its jobs in the state's order, and the cursor of the next
    page (None on the last one)."""

    jobs: list[JobRow]
    next: str | None

TubePolicy = TypedDict("TubePolicy", {
    "name": str, "configured": bool, "max-attempts": int, "backoff": str,
    "dead-letter": str, "retain": int, "lock-limit": int})

ExtStats = TypedDict("ExtStats", {
    "cmd-config-tube": int, "cmd-fail": int, "cmd-complete": int, "cmd-progress": int,
    "cmd-job-info": int, "cmd-peek-result": int, "cmd-stats-ext": int,
    "job-failures": int, "job-retries": int, "job-dead-letters": int,
    "job-completions": int, "current-retained": int, "configured-tubes": int,
    "cmd-put-ex": int, "cmd-flush-tube": int, "cmd-cancel-tag": int,
    "cmd-list-jobs": int, "cmd-subscribe": int, "job-duplicates": int,
    "jobs-flushed": int, "jobs-cancelled": int, "jobs-cancel-flagged": int})


# -- YAML replies -------------------------------------------------------------------

# Keys whose bare values stay strings even when they look like numbers: beanstalkd
# 1.12 writes strings bare (`version: 1.12`), a tube may be called `123`, and the
# `stats` id is hex that may happen to be all digits.
_STATS_STRINGS = frozenset(("version", "hostname", "os", "platform", "id"))
_TUBE_STRINGS = frozenset(("name",))
_JOB_STRINGS = frozenset(("tube", "state"))
_POLICY_STRINGS = frozenset(("name", "backoff", "dead-letter"))
_EVENT_STRINGS = frozenset(("tube", "event"))

_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)")
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_INT = re.compile(r"[0-9]+")
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_FLOW_LIST = re.compile(r"\[\s*(?:%s(?:\s*,\s*%s)*)?\s*\]" % (_QUOTED, _QUOTED))
_FLOAT = re.compile(r"[0-9]+\.[0-9]+")


def _unescape(match: re.Match[str]) -> str:
    text = match.group(1)
    if len(text) == 3:                  # xNN: one byte, as one character U+00NN
        return chr(int(text[1:], 16))
    return _SIMPLE_ESCAPES.get(text, text)


def _unquote(text: str) -> tuple[str, bool]:
    """A YAML double-quoted scalar's text (protocol.md, "job-info": `\\\\`, `\\"`,
    `\\xNN`), and whether it was quoted."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return _ESCAPE.sub(_unescape, text[1:-1]), True
    return text, False


def _scalar(key: str, text: str, strings: frozenset[str]) -> Any:
    value, quoted = _unquote(text)
    if quoted or key in strings:
        return value
    if value == "~":
        return None
    if value in ("true", "false"):
        return value == "true"
    if value == "[]":
        return []
    if value[:1] == "[" and _FLOW_LIST.fullmatch(value):    # ["a", "b"]: tags
        return [_unquote(item)[0] for item in re.findall(_QUOTED, value)]
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def parse_yaml(text: str | bytes, strings: Iterable[str] = ()) -> Any:
    """Read the YAML the servers send: a document that is either a list of names
    (`- name`) or flat `key: value` lines, where a key with an empty value holds a
    list of `- key: value` mappings continued by `  key: value` lines (job-info's
    `failures`, list-jobs' `jobs`). Quoted values are strings; a flow list of quoted
    strings (`["a", "b"]`) is a list of them; bare values become int, float, bool,
    None (`~`) or [] (`[]`) unless their key is in `strings`. List entries are
    strings."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    keep = frozenset(strings)
    mapping: dict[str, Any] = {}
    names: list[str] | None = None
    block: list[Any] | None = None         # the list a `key:` line opened
    item: dict[str, Any] | None = None     # the mapping a `- key: value` line opened
    for line in text.split("\n"):
        if not line or line == "---":
            continue
        if line.startswith("- "):
            entry = line[2:]
            if block is None:                       # a list document: list-tubes
                if names is None:
                    names = []
                names.append(_unquote(entry)[0])
                continue
            key, sep, value = entry.partition(": ")
            if sep:
                item = {key: _scalar(key, value, keep)}
                block.append(item)
            else:
                item = None
                block.append(_scalar("", entry, keep))
        elif line.startswith("  ") and item is not None:
            key, _, value = line[2:].partition(": ")
            item[key] = _scalar(key, value, keep)
        else:
            key, _, value = line.partition(":")
            item = None
            if value.strip():
                mapping[key] = _scalar(key, value[1:] if value[:1] == " " else value,
                                       keep)
                block = None
            else:
                block = mapping[key] = []
    return names if names is not None and not mapping else mapping


def _latin1(text: str) -> bytes:
    """The bytes a YAML string stands for: the server writes every byte that is not
    printable ASCII as `\\xNN`, so each character is one byte."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:          # not from qserver's escaping; keep the text
        return text.encode("utf-8")


def _job_info(data: bytes) -> JobInfo:
    info = parse_yaml(data, _JOB_STRINGS)
    progress = info.get("progress")
    if isinstance(progress, str):
        info["progress"] = _latin1(progress)
    failures = info.get("failures") or []
    for failure in failures:
        if isinstance(failure, dict) and isinstance(failure.get("reason"), str):
            failure["reason"] = _latin1(failure["reason"])
    info["failures"] = failures
    # servers before the steering extensions send no key, tags or cancelled
    info.setdefault("key", None)
    info.setdefault("tags", [])
    info.setdefault("cancelled", False)
    return cast(JobInfo, info)


def _job_page(data: bytes) -> JobPage:
    page = parse_yaml(data, _JOB_STRINGS)
    jobs = page.get("jobs")
    following = page.get("next")
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs) \
            or following is not None and not isinstance(following, str):
        raise UnexpectedReply("list-jobs", f"not a list-jobs page: {data[:200]!r}")
    return JobPage(cast(list[JobRow], jobs), following)


def _event(data: bytes) -> Event:
    """An EVENT frame's YAML (protocol.md, "subscribe")."""
    fields = parse_yaml(data, _EVENT_STRINGS)
    try:
        seq, when, job_id = fields["seq"], fields["time"], fields["id"]
        tube, name, attempt = fields["tube"], fields["event"], fields["attempt"]
    except (KeyError, TypeError):
        raise UnexpectedReply("subscribe", f"not an event: {data[:200]!r}") from None
    if not (type(seq) is int and type(job_id) is int and type(attempt) is int
            and type(when) in (int, float) and isinstance(tube, str)
            and isinstance(name, str)):
        raise UnexpectedReply("subscribe", f"not an event: {data[:200]!r}")
    return Event(seq, float(when), job_id, tube, name, attempt)


def _body(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"a body must be bytes, str or None, not {type(data).__name__}")


def _number(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return str(value)


def _name(tube: str) -> str:
    """A tube name for a command line. The server checks the rules; the client only
    makes sure the name cannot end the line early and smuggle in another command."""
    if not isinstance(tube, str) or any(c in tube for c in "\r\n"):
        raise ValueError(f"not a tube name: {tube!r}")
    return tube


def _word(value: str, what: str) -> str:
    """A key, tag, state or cursor: one word of printable ASCII (no space, so it
    cannot smuggle in another option or argument). The server checks the rest
    (length, how many tags)."""
    if not isinstance(value, str) or not value or \
            not all("!" <= c <= "~" for c in value):
        raise ValueError(f"not a {what}: {value!r}")
    return value


# -- the async client ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Reply:
    line: str
    words: list[str]
    body: bytes | None


_BODY_REPLIES = {"OK": 2, "FOUND": 3, "RESERVED": 3}   # word -> words with the size last
_FROM_SETTING = object()
_EXTENSIONS_WITH_BODY = frozenset(("put-ex", "fail", "complete", "progress"))


class AsyncClient:
    """One connection to qserver or beanstalkd.

        async with AsyncClient(port=11300) as queue:
            job_id = await queue.put(b"hello")

    `timeout` (seconds, default None: wait as long as it takes) bounds connecting
    and every reply except a `reserve`'s wait; `reserve_with_timeout(n)` waits
    n + timeout. Commands are serialized with a lock, so several tasks may share
    one client; they take turns.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 unix_path: str | None = None, timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()

    # connection ------------------------------------------------------------------

    @property
    def where(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"

    @property
    def closed(self) -> bool:
        return self._writer is None

    async def connect(self) -> AsyncClient:
        if self._writer is not None:
            return self
        try:
            async with asyncio.timeout(self.timeout):
                if self.unix_path:
                    opened = await asyncio.open_unix_connection(self.unix_path)
                else:
                    opened = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as error:
            reason = "timed out" if isinstance(error, TimeoutError) else error
            raise QueueConnectionError(f"cannot connect to {self.where}: {reason}") \
                from error
        self._reader, self._writer = opened
        return self

    async def close(self) -> None:
        """Close the connection, and the event streams opened through this client."""
        for stream in list(self._streams):
            await stream.aclose()
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _abort(self) -> None:
        """Drop the connection at once: the pipe is out of step."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    # one command -------------------------------------------------------------------

    async def _call(self, line: str, body: bytes | None = None,
                    timeout: Any = _FROM_SETTING, tail: str = "") -> _Reply:
        """Send one command and read its whole reply, holding the lock. `tail`
        follows the body's size on the line (put-ex's options)."""
        data = line.encode("utf-8")
        # A body goes after its size, as put's does (protocol.md, "Job bodies").
        data += b"\r\n" if body is None else b" %d%s\r\n%s\r\n" % (
            len(body), tail.encode("ascii"), body)
        wait = self.timeout if timeout is _FROM_SETTING else timeout
        async with self._lock:
            reader, writer = self._reader, self._writer
            if reader is None or writer is None:
                raise QueueConnectionError(f"not connected to {self.where}")
            try:
                async with asyncio.timeout(wait):
                    writer.write(data)
                    await writer.drain()
                    reply = await self._read_reply(reader)
                if reply.words[0] == "UNKNOWN_COMMAND" and \
                        line.split(" ", 1)[0] in _EXTENSIONS_WITH_BODY:
                    # beanstalkd: the body's lines were read as commands, and their
                    # replies are still to come
                    self._abort()
                return reply
            except BaseException as error:
                # Cancelled, timed out or broken with the reply outstanding: whatever
                # comes next on this connection would be read as the wrong reply.
                self._abort()
                if isinstance(error, TimeoutError):
                    raise QueueConnectionError(
                        f"{line.split(' ')[0]}: no reply from {self.where} within "
                        f"{wait} s") from None
                if isinstance(error, (OSError, EOFError, ValueError)):
                    raise QueueConnectionError(
                        f"connection to {self.where}: {error}") from error
                raise

    async def _read_reply(self, reader: asyncio.StreamReader) -> _Reply:
        try:
            raw = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise EOFError("the server closed the connection") from None
        except asyncio.LimitOverrunError:
            raise ValueError("reply line too long") from None
        line = raw[:-2].decode("latin-1")
        words = line.split(" ")
        if _BODY_REPLIES.get(words[0]) == len(words):
            if not _INT.fullmatch(words[-1]):
                raise ValueError(f"bad reply line {line!r}")
            try:
                data = await reader.readexactly(int(words[-1]) + 2)
            except asyncio.IncompleteReadError:
                raise EOFError("the server closed the connection") from None
            if data[-2:] != b"\r\n":
                raise ValueError(f"reply body of {line!r} is not followed by CRLF")
            return _Reply(line, words, data[:-2])
        return _Reply(line, words, None)

    async def _expect(self, line: str, word: str, numbers: int | None = 0,
                      body: bytes | None = None, timeout: Any = _FROM_SETTING,
                      tail: str = "") -> _Reply:
        """`_call`, raising the reply's ServerError unless it is `word` followed by
        `numbers` numbers (None: anything, as the tube name after USING)."""
        reply = await self._call(line, body, timeout, tail)
        words = reply.words
        if words[0] != word or numbers is not None and (
                len(words) != 1 + numbers or not all(map(_INT.fullmatch, words[1:]))):
            raise self._error(line, reply)
        return reply

    @staticmethod
    def _error(line: str, reply: _Reply) -> ServerError:
        cls = _ERRORS.get(reply.words[0], UnexpectedReply)
        return cls(line.split(" ")[0], reply.line)

    @staticmethod
    def _job(reply: _Reply) -> Job:
        assert reply.body is not None
        return Job(int(reply.words[1]), reply.body)

    async def _yaml(self, line: str, strings: frozenset[str] = frozenset()) -> Any:
        reply = await self._expect(line, "OK", 1)
        assert reply.body is not None
        return parse_yaml(reply.body, strings)

    # producer commands ---------------------------------------------------------------

    async def put(self, body: bytes | str, *, pri: int = DEFAULT_PRI, delay: int = 0,
                  ttr: int = DEFAULT_TTR) -> int:
        """Put a job into the used tube; returns its id. A str body is sent as UTF-8."""
        reply = await self._expect(f"put {_number(pri)} {_number(delay)} {_number(ttr)}",
                                   "INSERTED", 1, _body(body))
        return int(reply.words[1])

    async def use(self, tube: str) -> str:
        """Put later jobs into `tube`; returns the name."""
        return (await self._expect(f"use {_name(tube)}", "USING", None)).line[len("USING "):]

    # worker commands -----------------------------------------------------------------

    async def reserve(self) -> Job:
        """Wait as long as it takes for a job from the watched tubes. Raises
        DeadlineSoon when a job this connection holds is about to time out."""
        return self._job(await self._expect("reserve", "RESERVED", 2, timeout=None))

    async def reserve_with_timeout(self, seconds: int) -> Job:
        """As `reserve`, but raises TimedOut after `seconds` (0: at once)."""
        wait = None if self.timeout is None else seconds + self.timeout
        return self._job(await self._expect(f"reserve-with-timeout {_number(seconds)}",
                                            "RESERVED", 2, timeout=wait))

    async def reserve_job(self, job_id: int) -> Job:
        """Reserve one ready, delayed or buried job by id."""
        return self._job(await self._expect(f"reserve-job {_number(job_id)}", "RESERVED", 2))

    async def delete(self, job_id: int) -> None:
        await self._expect(f"delete {_number(job_id)}", "DELETED")

    async def release(self, job_id: int, *, pri: int = DEFAULT_PRI, delay: int = 0) -> None:
        await self._expect(f"release {_number(job_id)} {_number(pri)} {_number(delay)}",
                           "RELEASED")

    async def bury(self, job_id: int, *, pri: int = DEFAULT_PRI) -> None:
        await self._expect(f"bury {_number(job_id)} {_number(pri)}", "BURIED")

    async def touch(self, job_id: int) -> None:
        await self._expect(f"touch {_number(job_id)}", "TOUCHED")

    async def watch(self, tube: str) -> int:
        """Add `tube` to the watch list; returns how many tubes are watched."""
        return int((await self._expect(f"watch {_name(tube)}", "WATCHING", 1)).words[1])

    async def ignore(self, tube: str) -> int:
        """Remove `tube` from the watch list; returns how many tubes are watched.
        Raises NotIgnored for the last one."""
        return int((await self._expect(f"ignore {_name(tube)}", "WATCHING", 1)).words[1])

    # other commands ------------------------------------------------------------------

    async def peek(self, job_id: int) -> Job:
        return self._job(await self._expect(f"peek {_number(job_id)}", "FOUND", 2))

    async def peek_ready(self) -> Job:
        """The next ready job of the used tube."""
        return self._job(await self._expect("peek-ready", "FOUND", 2))

    async def peek_delayed(self) -> Job:
        """The delayed job of the used tube that is due soonest."""
        return self._job(await self._expect("peek-delayed", "FOUND", 2))

    async def peek_buried(self) -> Job:
        """The oldest buried job of the used tube."""
        return self._job(await self._expect("peek-buried", "FOUND", 2))

    async def kick(self, bound: int) -> int:
        """Kick up to `bound` buried (else delayed) jobs of the used tube; returns
        how many were kicked."""
        return int((await self._expect(f"kick {_number(bound)}", "KICKED", 1)).words[1])

    async def kick_job(self, job_id: int) -> None:
        await self._expect(f"kick-job {_number(job_id)}", "KICKED")

    async def stats(self) -> ServerStats:
        return cast(ServerStats, await self._yaml("stats", _STATS_STRINGS))

    async def stats_job(self, job_id: int) -> JobStats:
        return cast(JobStats, await self._yaml(f"stats-job {_number(job_id)}",
                                               _JOB_STRINGS))

    async def stats_tube(self, tube: str) -> TubeStats:
        return cast(TubeStats, await self._yaml(f"stats-tube {_name(tube)}",
                                                _TUBE_STRINGS))

    async def list_tubes(self) -> list[str]:
        return cast(list[str], await self._yaml("list-tubes"))

    async def list_tube_used(self) -> str:
        return (await self._expect("list-tube-used", "USING", None)).line[len("USING "):]

    async def list_tubes_watched(self) -> list[str]:
        return cast(list[str], await self._yaml("list-tubes-watched"))

    async def pause_tube(self, tube: str, seconds: int) -> None:
        await self._expect(f"pause-tube {_name(tube)} {_number(seconds)}", "PAUSED")

    async def quit(self) -> None:
        """Ask the server to close the connection (no reply), then close it."""
        async with self._lock:
            if self._writer is not None:
                try:
                    self._writer.write(b"quit\r\n")
                    await self._writer.drain()
                except OSError:
                    pass
        await self.close()

    # extensions (qserver only; beanstalkd answers UNKNOWN_COMMAND) -------------------

    async def config_tube_set(self, tube: str, name: str, value: int | str) -> None:
        """Set one policy value of a tube: `max-attempts`, `backoff`, `dead-letter`,
        `retain` or `lock-limit` (protocol.md, "config-tube")."""
        if not isinstance(value, int) or isinstance(value, bool):
            value = _name(str(value))
        await self._expect(f"config-tube {_name(tube)} {_name(name)} {value}", "CONFIGURED")

    async def config_tube_get(self, tube: str) -> TubePolicy:
        """A tube's effective policy (the defaults, `configured: False`, if none)."""
        return cast(TubePolicy, await self._yaml(f"config-tube {_name(tube)}",
                                                 _POLICY_STRINGS))

    async def fail(self, job_id: int, reason: bytes | str = b"") -> FailResult:
        """Report that a reserved job failed; the tube's policy decides what next."""
        reply = await self._call(f"fail {_number(job_id)}", _body(reason))
        words = reply.words
        if words == ["BURIED"] or words == ["DELETED"]:
            return FailResult(FailAction(words[0]))
        if words[0] == "RETRYING" and len(words) == 2 and _INT.fullmatch(words[1]):
            return FailResult(FailAction.RETRYING, delay=int(words[1]))
        if words[0] == "MOVED" and len(words) == 2:
            return FailResult(FailAction.MOVED, tube=words[1])
        raise self._error("fail", reply)

    async def complete(self, job_id: int, result: bytes | str | None = b"") -> None:
        """Finish a reserved job with a result (kept for the tube's `retain` seconds)."""
        await self._expect(f"complete {_number(job_id)}", "COMPLETED", 0, _body(result))

    async def progress(self, job_id: int, data: bytes | str) -> None:
        """Store a reserved job's progress and restart its TTR (a `touch`)."""
        await self._expect(f"progress {_number(job_id)}", "TOUCHED", 0, _body(data))

    async def job_info(self, job_id: int) -> JobInfo:
        """`stats-job` plus attempts, failures, progress and result size; also for
        finished jobs whose record is retained (state `completed` or `dead`)."""
        reply = await self._expect(f"job-info {_number(job_id)}", "OK", 1)
        assert reply.body is not None
        return _job_info(reply.body)

    async def peek_result(self, job_id: int) -> bytes:
        """The result of a completed job while its record is retained."""
        reply = await self._expect(f"peek-result {_number(job_id)}", "FOUND", 2)
        assert reply.body is not None
        return reply.body

    async def stats_ext(self) -> ExtStats:
        return cast(ExtStats, await self._yaml("stats-ext"))

    async def put_ex(self, body: bytes | str, *, pri: int = DEFAULT_PRI, delay: int = 0,
                     ttr: int = DEFAULT_TTR, key: str | None = None,
                     tags: Iterable[str] = (), lock: str | None = None) -> int:
        """`put` with a unique key, tags and a lock key (protocol.md, "put-ex");
        returns the id. Raises Duplicate, carrying the existing job's `job_id`,
        while a job of the used tube with this key is live or its record retained.
        With `lock`, at most the tube's `lock-limit` jobs (default 1) with that lock
        are reserved at once; the others wait in state `held` ("Per-key
        concurrency"). Keys, tags and locks are printable ASCII words (ValueError
        otherwise); at most 8 distinct tags. qserver only: beanstalkd does not know
        put-ex and reads the body as commands (the connection is closed after its
        UNKNOWN_COMMAND)."""
        if isinstance(tags, str):
            raise TypeError("tags must be a collection of str, not one str")
        options = [] if key is None else [f"key={_word(key, 'key')}"]
        options += [f"tag={_word(tag, 'tag')}" for tag in tags]
        if lock is not None:
            options.append(f"lock={_word(lock, 'lock')}")
        reply = await self._expect(f"put-ex {_number(pri)} {_number(delay)} {_number(ttr)}",
                                   "INSERTED", 1, _body(body),
                                   tail="".join(" " + option for option in options))
        return int(reply.words[1])

    async def flush_tube(self, tube: str) -> int:
        """Remove every ready, delayed, buried and held job of `tube` (reserved ones
        stay); returns how many went. A tube that does not exist gives 0."""
        return int((await self._expect(f"flush-tube {_name(tube)}", "FLUSHED", 1)).words[1])

    async def cancel_tag(self, tag: str) -> CancelResult:
        """Remove the jobs with `tag` that are not reserved, and flag the reserved
        ones: their `touch`, `progress` and `complete` raise Cancelled from then on."""
        reply = await self._expect(f"cancel-tag {_word(tag, 'tag')}", "CANCELLED", 2)
        return CancelResult(int(reply.words[1]), int(reply.words[2]))

    async def list_jobs(self, tube: str, state: JobState, cursor: str = "0",
                        limit: int = 100) -> JobPage:
        """One page of `tube`'s jobs in `state` (or `all`), in that state's order:
        start with cursor "0" and pass each page's `next` to get the following one
        (None: that was the last). `limit` is 1 to 1000. See `iter_jobs`."""
        reply = await self._expect(
            f"list-jobs {_name(tube)} {_word(state, 'state')} {_word(cursor, 'cursor')} "
            f"{_number(limit)}", "OK", 1)
        assert reply.body is not None
        return _job_page(reply.body)

    async def iter_jobs(self, tube: str, state: JobState, *,
                        page_size: int = 100) -> AsyncIterator[JobRow]:
        """Every job of `tube` in `state`, page by page (`list_jobs`), in the state's
        order. Jobs that move while it walks may be seen twice or not at all;
        the others exactly once."""
        cursor = "0"
        while True:
            page = await self.list_jobs(tube, state, cursor, page_size)
            for row in page.jobs:
                yield row
            if page.next is None:
                return
            if page.next == cursor:         # would walk the same page forever
                raise UnexpectedReply("list-jobs", f"cursor {cursor!r} did not advance")
            cursor = page.next

    def subscribe(self, tube: str = "*", start: int | Literal["now"] = "now"
                  ) -> EventStream:
        """The job events of `tube` (`*`: every tube), from the next one (`now`) or
        from sequence number `start` (the last one seen plus 1), as an async
        iterator of `Event`, with a `Gap` item where the server no longer had the
        events asked for (see `Gap`):

            async with queue.subscribe("emails") as stream:
                async for item in stream:
                    if isinstance(item, Gap):
                        ...                 # events were missed; goes on at item.oldest
                    else:
                        print(item.seq, item.event, item.id)

        The stream connects on its own connection (a subscribed connection only
        streams) when it is entered or first read; `stream.next_seq` is where it
        would resume. When that connection breaks it raises QueueConnectionError
        and ends: `events` reconnects instead. Raises UnknownCommand from
        beanstalkd, BadFormat for a bad tube name. Close it (`aclose`, or leave
        the `async with`) when done; closing the client closes it too."""
        first = None if start == "now" else int(_number(start))
        stream = EventStream(self, tube, first, retries=None, retry_delay=0.0,
                             reconnect=False)
        self._streams.add(stream)
        return stream

    def events(self, tube: str = "*", resume_from: int | None = None, *,
               retries: int | None = 10, retry_delay: float = 1.0) -> EventStream:
        """`subscribe` that survives lost connections: when the stream's connection
        breaks, or the server restarts, it connects again and resumes from the
        event after the last one it yielded (`next_seq`), so no event is missed or
        seen twice unless the server answers with a `Gap`. `resume_from` is the
        first sequence number wanted (a saved `event.seq + 1`), None for `now`.
        Between attempts it waits `retry_delay` seconds; after `retries`
        consecutive attempts that yield nothing (None: no limit) it raises
        QueueConnectionError."""
        if resume_from is not None:
            _number(resume_from)
        if retries is not None:
            _number(retries)
        if retry_delay < 0:
            raise ValueError(f"retry_delay must not be negative: {retry_delay!r}")
        stream = EventStream(self, tube, resume_from, retries=retries,
                             retry_delay=retry_delay, reconnect=True)
        self._streams.add(stream)
        return stream

    # the worker loop -----------------------------------------------------------------

    async def work(self, tubes: str | Sequence[str],
                   handler: Callable[[Job], Awaitable[Result] | Result],
                   *, max_jobs: int | None = None, idle_timeout: int | None = None,
                   heartbeat: float | None = None) -> int:
        """Watch `tubes` (only those) and handle jobs one at a time until cancelled,
        `max_jobs` are handled, or no job comes for `idle_timeout` seconds. Returns
        the number of jobs handled.

        While `handler(job)` runs, a background task `touch`es the job every
        `heartbeat` seconds (default: half its ttr). When the handler returns bytes,
        str or None the job is `complete`d with it; when it raises, the job is
        `fail`ed with the traceback (its last 4 KiB) and the tube's policy decides
        what follows. If the worker is cancelled meanwhile, the job is released.
        A handler may use this client too (e.g. `progress`); commands take turns.
        A plain function as the handler runs on the event loop and stalls the
        heartbeats while it works: use `Client.work` or `asyncio.to_thread` for
        blocking code. `complete`, `fail` and `job_info` are qserver extensions.

        A job cancelled with `cancel_tag` (the server answers CANCELLED) is
        *deleted*, at once, and neither completed nor failed: when the heartbeat
        learns it, the heartbeats stop and the job is deleted while the handler
        still runs (so its TTR cannot run out and hand it to another worker); the
        handler is not interrupted and what it returns or raises is dropped. A
        handler that wants to stop early learns it from its own `touch` or
        `progress` (Cancelled, or NotFound once the job is deleted). A job that
        was flagged before this worker reserved it (released since) is deleted
        without running the handler. Cancelled jobs count as handled.
        """
        names = [tubes] if isinstance(tubes, str) else list(tubes)
        if not names:
            raise ValueError("no tube to work on")
        for tube in names:
            await self.watch(tube)
        for tube in await self.list_tubes_watched():
            if tube not in names:
                await self.ignore(tube)
        handled = 0
        while max_jobs is None or handled < max_jobs:
            try:
                if idle_timeout is None:
                    job = await self.reserve()
                else:
                    job = await self.reserve_with_timeout(idle_timeout)
            except TimedOut:
                break
            except DeadlineSoon:        # a job the handler reserved itself is due
                await asyncio.sleep(0.1)
                continue
            await self._handle(job, handler, heartbeat)
            handled += 1
        return handled

    async def _handle(self, job: Job, handler: Callable[[Job], Any],
                      heartbeat: float | None) -> None:
        try:
            info = await self.job_info(job.id)
        except NotFound:                # its TTR ran out already
            log.warning("job %d was lost before its handler ran", job.id)
            return
        if info["cancelled"]:
            await self._delete_cancelled(job.id)
            return
        interval = heartbeat if heartbeat is not None else info["ttr"] / 2
        stop = asyncio.Event()
        cancelled = asyncio.Event()     # set once the job is deleted as cancelled
        beat = asyncio.create_task(self._heartbeat(job.id, interval, stop, cancelled))
        try:
            try:
                result = handler(job)
                if inspect.isawaitable(result):
                    result = await result
                body = _body(result)
            finally:
                stop.set()
                await asyncio.shield(beat)   # never cancel it mid-command
        except Cancelled:               # the handler's own touch or progress
            if not cancelled.is_set():
                await self._delete_cancelled(job.id)
            return
        except Exception:
            if cancelled.is_set():      # deleted already; nothing to fail
                return
            reason = traceback.format_exc().encode("utf-8", "replace")
            await self._fail_quietly(job.id, reason[-FAIL_REASON_LIMIT:])
            return
        except BaseException:           # cancelled: give the job back untouched
            if not self.closed and not cancelled.is_set():
                try:
                    await self.release(job.id, pri=info["pri"])
                except QueueClientError:
                    pass
            raise
        if cancelled.is_set():
            return
        try:
            await self.complete(job.id, body)
        except Cancelled:               # cancel-tag came after the last heartbeat
            await self._delete_cancelled(job.id)
        except NotFound:
            log.warning("job %d was lost before it could be completed", job.id)
        except (JobTooBig, BadFormat) as error:
            await self._fail_quietly(job.id, f"complete: {error.reply}".encode())

    async def _delete_cancelled(self, job_id: int) -> None:
        """Delete a job that cancel-tag flagged (delete works for it)."""
        try:
            await self.delete(job_id)
        except NotFound:
            log.warning("job %d was cancelled and is gone already", job_id)
            return
        log.info("job %d was cancelled (cancel-tag): deleted", job_id)

    async def _fail_quietly(self, job_id: int, reason: bytes) -> None:
        try:
            outcome = await self.fail(job_id, reason)
        except NotFound:
            log.warning("job %d was lost before it could be failed", job_id)
            return
        log.info("job %d failed: %s", job_id, outcome.action.value)

    async def _heartbeat(self, job_id: int, interval: float, stop: asyncio.Event,
                         cancelled: asyncio.Event) -> None:
        """Touch the job every `interval` seconds until `stop` is set; if the job
        was cancelled, delete it, set `cancelled` and stop."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await self.touch(job_id)
            except Cancelled:
                try:
                    await self._delete_cancelled(job_id)
                except QueueClientError:
                    pass
                cancelled.set()         # tried: the job is not ours to finish
                return
            except NotFound:
                log.warning("job %d: heartbeat found it gone (TTR ran out)", job_id)
                return
            except QueueConnectionError:
                return


# -- the event stream ---------------------------------------------------------------

class EventStream:
    """The job events of a tube, or of all, as an async iterator of `Event` and
    `Gap` items (`AsyncClient.subscribe`, `AsyncClient.events`), read on a
    connection of its own. `next_seq` is the sequence number it would resume from:
    the last event's plus 1 (before any, the first one the server announced, or
    None until it connected when started `now`). Use it with `async with` (which
    connects at once) or just `async for` (which connects on the first read); close
    it with `aclose`.

    A read cancelled while waiting for the next frame leaves the stream usable
    (e.g. `asyncio.timeout` around `anext(stream)`); one cancelled half-way
    through a frame drops the connection (`events` then reconnects on the next
    read and resumes at `next_seq`).
    """

    def __init__(self, client: AsyncClient, tube: str, start: int | None, *,
                 retries: int | None, retry_delay: float, reconnect: bool) -> None:
        self.tube = _name(tube)
        self.next_seq: int | None = start
        self._client = client
        self._reconnect = reconnect
        self._retries = retries
        self._retry_delay = retry_delay
        self._failures = 0              # attempts in a row that yielded nothing
        self._conn: AsyncClient | None = None
        self._pending: Gap | None = None    # a GAP answered to the subscribe line
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> EventStream:
        return self

    async def __aenter__(self) -> EventStream:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def open(self) -> EventStream:
        """Connect and subscribe now (else the first read does). With `events`,
        retried as reads are."""
        while self._conn is None:
            if self._closed:
                raise QueueConnectionError("the event stream is closed")
            try:
                await self._subscribe()
            except QueueConnectionError as error:
                await self._failed(error)
        return self

    async def __anext__(self) -> Event | Gap:
        while True:
            if self._closed:
                raise StopAsyncIteration
            await self.open()
            if self._pending is not None:
                item: Event | Gap = self._pending
                self._pending = None
            else:
                try:
                    item = await self._read()
                except QueueConnectionError as error:
                    if self._closed:        # aclose() from another task
                        raise StopAsyncIteration from None
                    await self._failed(error)
                    continue
            self._failures = 0
            return item

    async def _failed(self, error: QueueConnectionError) -> None:
        """The connection broke or could not be made: raise `error`, or get ready
        to try again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn._abort()
        self._failures += 1
        if not self._reconnect or (self._retries is not None
                                   and self._failures > self._retries):
            self._closed = True
            raise error
        if self._failures > 1:          # the first time, at once: a dropped connection
            await asyncio.sleep(self._retry_delay)

    async def _subscribe(self) -> None:
        client = self._client
        conn = AsyncClient(client.host, client.port, unix_path=client.unix_path,
                           timeout=client.timeout)
        await conn.connect()
        line = f"subscribe {self.tube} {'now' if self.next_seq is None else self.next_seq}"
        try:
            reply = await conn._call(line)
        except BaseException:
            await conn.close()
            raise
        words = reply.words
        if words[0] in ("SUBSCRIBED", "GAP") and len(words) == 2 \
                and _INT.fullmatch(words[1]):
            first = int(words[1])
            if words[0] == "GAP":
                self._pending = Gap(first, self.next_seq)
            self.next_seq = first
            self._conn = conn
            return
        await conn.close()
        self._closed = True
        raise AsyncClient._error(line, reply)

    async def _read(self) -> Event | Gap:
        """The next frame: an EVENT, or a GAP where the stream skipped ahead."""
        conn = self._conn
        assert conn is not None
        reader = conn._reader
        if reader is None:
            raise QueueConnectionError(f"not connected to {conn.where}")
        try:
            raw = await reader.readuntil(b"\r\n")  # cancelling here keeps the stream
        except asyncio.IncompleteReadError:
            raise QueueConnectionError(
                f"connection to {conn.where}: the server closed the connection") from None
        except asyncio.LimitOverrunError:
            raise QueueConnectionError(
                f"connection to {conn.where}: event frame line too long") from None
        except OSError as error:
            raise QueueConnectionError(f"connection to {conn.where}: {error}") from error
        line = raw[:-2].decode("latin-1")
        words = line.split(" ")
        if len(words) == 2 and _INT.fullmatch(words[1]):
            if words[0] == "GAP":
                gap = Gap(int(words[1]), self.next_seq)
                self.next_seq = gap.oldest
                return gap
            if words[0] == "EVENT":
                try:
                    async with asyncio.timeout(conn.timeout):
                        data = await reader.readexactly(int(words[1]) + 2)
                except BaseException as error:
                    conn._abort()           # half a frame read: out of step
                    if isinstance(error, asyncio.IncompleteReadError):
                        raise QueueConnectionError(
                            f"connection to {conn.where}: the server closed the "
                            "connection") from None
                    if isinstance(error, (OSError, TimeoutError)):
                        raise QueueConnectionError(
                            f"connection to {conn.where}: event frame cut short: "
                            f"{error or 'timed out'}") from error
                    raise
                if data[-2:] != b"\r\n":
                    conn._abort()
                    raise QueueConnectionError(
                        f"connection to {conn.where}: event frame not followed by CRLF")
                event = _event(data[:-2])
                self.next_seq = event.seq + 1
                return event
        conn._abort()
        raise QueueConnectionError(f"connection to {conn.where}: not an event frame: "
                                   f"{line[:200]!r}")


# -- the blocking client ------------------------------------------------------------

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]
              ) -> Callable[Concatenate[Client, P], T]:
    """`Client.<name>`: run `AsyncClient.<name>` on the client's loop and wait."""
    name = method.__name__

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound = cast(Callable[P, Coroutine[Any, Any, T]], getattr(self._client, name))
        return self._run(bound(*args, **kwargs))
    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


class Client:
    """The blocking client: every `AsyncClient` method, waiting for its result.

        with Client(port=11300) as queue:
            job_id = queue.put(b"hello")

    It runs an `AsyncClient` on a private event loop in a daemon thread, so it
    may be used from several threads (commands take turns) and from a `work`
    handler. It connects at once and raises QueueConnectionError if it cannot.
    A call interrupted (e.g. by KeyboardInterrupt) while its reply is outstanding
    closes the connection.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 unix_path: str | None = None, timeout: float | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="qserver-client", daemon=True)
        self._thread.start()
        self._client = AsyncClient(host, port, unix_path=unix_path, timeout=timeout)
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking Client call from its own event loop")
        if self._loop.is_closed():
            coroutine.close()
            raise QueueConnectionError("the client is closed")
        finished = threading.Event()

        async def run() -> T:
            try:
                return await coroutine
            finally:
                finished.set()
        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (^C): cancel the call and let it clean up (a `work` loop
            # releases its job) before the caller goes on, e.g. to close().
            future.cancel()
            finished.wait(CANCEL_GRACE)
            raise

    def _stop_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    @property
    def where(self) -> str:
        return self._client.where

    @property
    def closed(self) -> bool:
        return self._loop.is_closed() or self._client.closed

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._run(self._client.close())
            finally:
                self._stop_loop()

    def quit(self) -> None:
        if not self._loop.is_closed():
            try:
                self._run(self._client.quit())
            finally:
                self._stop_loop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def work(self, tubes: str | Sequence[str],
             handler: Callable[[Job], bytes | str | None], *,
             max_jobs: int | None = None, idle_timeout: int | None = None,
             heartbeat: float | None = None) -> int:
        """`AsyncClient.work` with a plain function as the handler, run in a worker
        thread so that the heartbeats go on while it works."""
        async def run(job: Job) -> bytes | str | None:
            return await asyncio.to_thread(handler, job)
        return self._run(self._client.work(tubes, run, max_jobs=max_jobs,
                                           idle_timeout=idle_timeout,
                                           heartbeat=heartbeat))

    put = _blocking(AsyncClient.put)
    use = _blocking(AsyncClient.use)
    reserve = _blocking(AsyncClient.reserve)
    reserve_with_timeout = _blocking(AsyncClient.reserve_with_timeout)
    reserve_job = _blocking(AsyncClient.reserve_job)
    delete = _blocking(AsyncClient.delete)
    release = _blocking(AsyncClient.release)
    bury = _blocking(AsyncClient.bury)
    touch = _blocking(AsyncClient.touch)
    watch = _blocking(AsyncClient.watch)
    ignore = _blocking(AsyncClient.ignore)
    peek = _blocking(AsyncClient.peek)
    peek_ready = _blocking(AsyncClient.peek_ready)
    peek_delayed = _blocking(AsyncClient.peek_delayed)
    peek_buried = _blocking(AsyncClient.peek_buried)
    kick = _blocking(AsyncClient.kick)
    kick_job = _blocking(AsyncClient.kick_job)
    stats = _blocking(AsyncClient.stats)
    stats_job = _blocking(AsyncClient.stats_job)
    stats_tube = _blocking(AsyncClient.stats_tube)
    list_tubes = _blocking(AsyncClient.list_tubes)
    list_tube_used = _blocking(AsyncClient.list_tube_used)
    list_tubes_watched = _blocking(AsyncClient.list_tubes_watched)
    pause_tube = _blocking(AsyncClient.pause_tube)
    config_tube_set = _blocking(AsyncClient.config_tube_set)
    config_tube_get = _blocking(AsyncClient.config_tube_get)
    fail = _blocking(AsyncClient.fail)
    complete = _blocking(AsyncClient.complete)
    progress = _blocking(AsyncClient.progress)
    job_info = _blocking(AsyncClient.job_info)
    peek_result = _blocking(AsyncClient.peek_result)
    stats_ext = _blocking(AsyncClient.stats_ext)
    put_ex = _blocking(AsyncClient.put_ex)
    flush_tube = _blocking(AsyncClient.flush_tube)
    cancel_tag = _blocking(AsyncClient.cancel_tag)
    list_jobs = _blocking(AsyncClient.list_jobs)

    def subscribe(self, tube: str = "*", start: int | Literal["now"] = "now"
                  ) -> Generator[Event | Gap, None, None]:
        """`AsyncClient.subscribe` as a generator of `Event` and `Gap` items, read
        on a connection of its own. Unlike the async one it subscribes at once
        (so `now` is the moment of the call, and UnknownCommand or BadFormat are
        raised here). The events come as they happen: a `for` loop over it waits
        as long as it takes. Its connection is closed when the generator is
        closed or dropped (a `break` out of the loop), or the client closed; it
        raises QueueConnectionError if the connection breaks."""
        return self._stream(self._client.subscribe(tube, start))

    def events(self, tube: str = "*", resume_from: int | None = None, *,
               retries: int | None = 10, retry_delay: float = 1.0
               ) -> Generator[Event | Gap, None, None]:
        """`AsyncClient.events` as a generator, subscribed at once as `subscribe`
        is: reconnects and resumes after the last event it yielded when the
        connection breaks."""
        return self._stream(self._client.events(tube, resume_from, retries=retries,
                                                retry_delay=retry_delay))

    def _stream(self, stream: EventStream) -> Generator[Event | Gap, None, None]:
        self._run(stream.open())
        items = self._items(stream)
        next(items)                 # now inside its `try`: closing it closes the stream
        return items

    def _items(self, stream: EventStream) -> Generator[Any, None, None]:
        async def next_item() -> Event | Gap | None:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None
        try:
            yield None              # taken by _stream
            while True:
                item = self._run(next_item())
                if item is None:
                    return
                yield item
        finally:
            if not self._loop.is_closed() and threading.current_thread() is not self._thread:
                try:
                    self._run(stream.aclose())
                except QueueConnectionError:    # the client closed meanwhile
                    pass

    def iter_jobs(self, tube: str, state: JobState, *,
                  page_size: int = 100) -> Iterator[JobRow]:
        """`AsyncClient.iter_jobs`, one `list_jobs` call per page as it is read."""
        cursor = "0"
        while True:
            page = self.list_jobs(tube, state, cursor, page_size)
            yield from page.jobs
            if page.next is None:
                return
            if page.next == cursor:
                raise UnexpectedReply("list-jobs", f"cursor {cursor!r} did not advance")
            cursor = page.next
