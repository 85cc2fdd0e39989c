"""The wire format: framing of command lines and put bodies, argument parsing, replies.

Sans-I/O: `Framer` is fed bytes and hands back complete lines and bodies; "need more
bytes" is a return value (None), never an exception. Argument parsers raise the
`errors` classes. The YAML emitter for the stats replies lives here too.
Imports: `errors`, stdlib.
"""

import re

from qserver.errors import BadFormat

# A command line may be at most 224 bytes including its CRLF (protocol.md, "Lines").
LINE_LIMIT = 224
# Extension commands that may carry long arguments (tags, keys, two tube names) get
# longer lines (protocol.md, "Extensions"); beanstalkd's commands keep the 224 rule.
LONG_LINE_LIMIT = 4096
LONG_LINE_WORDS = (b"put-ex ", b"config-tube ", b"cancel-tag ")
MAX_TUBE_NAME = 200
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF
INT_MAX = 0x7FFFFFFF

CRLF = b"\r\n"

# Framer.next() results that are not data.
OVERLONG = object()    # an over-long line was skipped: answer BAD_FORMAT
DISCARDED = object()   # an oversized put body was thrown away: answer JOB_TOO_BIG

_LINE, _SKIP_LINE, _BODY, _DISCARD = range(4)
_SKIP = object()       # _long_line: the line is over-long after all


class Framer:
    """Cuts a byte stream into command lines and put bodies.

    Line ends are found the way beanstalkd finds them, so that the same stream gives
    the same commands: only the first CR inside a 224-byte window counts, and a
    window without a usable CRLF is thrown away whole (protocol.md, "Lines").
    """

    __slots__ = ("buf", "pos", "mode", "remaining", "next")

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0
        self.mode = _LINE
        self.remaining = 0
        # `next()` gives the next complete item (a line without its CRLF, a body
        # with its two trailer bytes, OVERLONG or DISCARDED) or None when more bytes
        # are needed. It is bound to the reader for the current mode, which saves a
        # dispatch per item on the hot path.
        self.next = self._next_line

    def feed(self, data: bytes) -> None:
        self.buf += data

    def buffered(self) -> int:
        """Bytes received but not yet handed out."""
        return len(self.buf) - self.pos

    def expect_body(self, size: int) -> None:
        """The next item is a put body of `size` bytes plus its two trailer bytes."""
        self.mode = _BODY
        self.remaining = size + 2
        self.next = self._next_body

    def take_body(self, size: int):
        """A put body of `size` bytes plus its trailer if it is all here already;
        otherwise None, and the body becomes the next item (`expect_body`)."""
        pos = self.pos
        end = pos + size + 2
        if len(self.buf) >= end:
            self.pos = end
            return bytes(self.buf[pos:end])
        self.expect_body(size)
        return None

    def discard_body(self, size: int) -> None:
        """Throw away `size` + 2 bytes as they arrive, then yield DISCARDED."""
        self.mode = _DISCARD
        self.remaining = size + 2
        self.next = self._next_discard

    def _expect_line(self) -> None:
        self.mode = _LINE
        self.next = self._next_line

    def _next_line(self):
        buf = self.buf
        while True:
            pos = self.pos
            avail = len(buf) - pos
            window = avail if avail < LINE_LIMIT else LINE_LIMIT
            if window >= 2:
                cr = buf.find(b"\r", pos, pos + window - 1)
                if cr >= 0 and buf[cr + 1] == 10:
                    self.pos = cr + 2
                    if self.mode == _SKIP_LINE:
                        self.mode = _LINE
                        return OVERLONG
                    return bytes(buf[pos:cr])
            if avail < LINE_LIMIT:
                self._compact()
                return None
            if self.mode == _LINE and buf.startswith(LONG_LINE_WORDS, pos):
                line = self._long_line(buf, pos, avail)
                if line is not _SKIP:
                    return line
            # A full window without a line end: drop it and skip to the next CRLF.
            self.pos = pos + LINE_LIMIT
            self.mode = _SKIP_LINE

    def _long_line(self, buf, pos: int, avail: int):
        """An extension line longer than 224 bytes: up to its first CRLF within
        LONG_LINE_LIMIT; None while it may still come; _SKIP when it is over-long."""
        end = buf.find(b"\r\n", pos, pos + LONG_LINE_LIMIT)
        if end >= 0:
            self.pos = end + 2
            return bytes(buf[pos:end])
        if avail < LONG_LINE_LIMIT:
            self._compact()
            return None
        return _SKIP

    def _next_body(self):
        pos = self.pos
        end = pos + self.remaining
        if len(self.buf) < end:
            self._compact()
            return None
        body = bytes(self.buf[pos:end])
        self.pos = end
        self._expect_line()
        return body

    def _next_discard(self):
        avail = len(self.buf) - self.pos
        if avail < self.remaining:
            self.remaining -= avail
            self.buf.clear()
            self.pos = 0
            return None
        self.pos += self.remaining
        self._expect_line()
        return DISCARDED

    def _compact(self) -> None:
        pos = self.pos
        if pos:
            if pos == len(self.buf):
                self.buf.clear()
            else:
                del self.buf[:pos]
            self.pos = 0


# ---------------------------------------------------------------------------
# Argument parsing (protocol.md, "Numbers" and "Tube names").

_NAME_CHARS = rb"A-Za-z0-9\-+/;.$_()"
_TUBE_NAME = re.compile(rb"(?!-)[" + _NAME_CHARS + rb"]{1,200}")
_ONE = re.compile(rb" *(\d++)")
_TWO = re.compile(rb" *(\d++) *(\d++)")
_THREE = re.compile(rb" *(\d++) *(\d++) *(\d++)")
_PUT = re.compile(rb" *(\d++) *(\d++) *(\d++) *(\d++)(.*)", re.DOTALL)
_KICK = re.compile(rb"[ \t\n\v\f\r]*([+-]?)(\d+)")
_PAUSE = re.compile(rb" *([" + _NAME_CHARS + rb"]++) *(\d++)")


def _u32(digits: bytes) -> int:
    value = int(digits)
    if value > U32_MAX:
        raise BadFormat
    return value


def _u64(digits: bytes) -> int:
    value = int(digits)
    if value > U64_MAX:
        raise BadFormat
    return value


def parse_id(rest: bytes) -> int:
    """A lone u64 job id, nothing after it."""
    if rest.isdigit():          # the usual spelling, without the regex: same result
        return _u64(rest)
    m = _ONE.fullmatch(rest)
    if m is None:
        raise BadFormat
    return _u64(m[1])


def parse_id_pri(rest: bytes) -> tuple[int, int]:
    """`<id> <pri>` for bury."""
    m = _TWO.fullmatch(rest)
    if m is None:
        raise BadFormat
    return _u64(m[1]), _u32(m[2])


def parse_id_pri_delay(rest: bytes) -> tuple[int, int, int]:
    """`<id> <pri> <delay>` for release."""
    m = _THREE.fullmatch(rest)
    if m is None:
        raise BadFormat
    return _u64(m[1]), _u32(m[2]), _u32(m[3])


def parse_put(rest: bytes) -> tuple[int, int, int, int, bytes]:
    """`<pri> <delay> <ttr> <bytes>`, and whatever follows on the line (empty for a
    clean put; put-ex's options, see `parse_options`).

    Trailing garbage is returned rather than raised because beanstalkd checks the
    size limit first (protocol.md, "put").
    """
    # The usual spelling, four numbers and single spaces, without the regex (a
    # third of the time); _PUT reads it the same way.
    words = rest.split(b" ")
    if len(words) == 4 and words[0].isdigit() and words[1].isdigit() \
            and words[2].isdigit() and words[3].isdigit():
        pri, delay, ttr, size = words
        tail = b""
    else:
        m = _PUT.match(rest)
        if m is None:
            raise BadFormat
        pri, delay, ttr, size, tail = m.groups()
    pri, delay, ttr, size = _number(pri), _number(delay), _number(ttr), _number(size)
    if pri > U32_MAX or delay > U32_MAX or ttr > U32_MAX or size > U32_MAX:
        raise BadFormat
    return pri, delay, ttr, size, tail


_NUMBERS = {}


def _number(digits: bytes) -> int:
    """int(digits), sharing one int object per distinct spelling.

    Clients repeat the same priorities, delays and TTRs; sharing the objects saves
    an int per job field (tens of bytes a job with a million jobs queued), and a
    dict lookup is cheaper than parsing. The cache is bounded.
    """
    value = _NUMBERS.get(digits)
    if value is None:
        value = int(digits)
        if len(_NUMBERS) < 4096:
            _NUMBERS[digits] = value
    return value


_OPTION = re.compile(rb"(key|tag|lock)=([\x21-\x7e]{1,200})")


def parse_options(tail: bytes) -> list:
    """put-ex's ` name=value` words (single spaces) as (name, value) pairs."""
    options = []
    if tail:
        if tail[:1] != b" ":
            raise BadFormat
        for word in tail[1:].split(b" "):
            option = _OPTION.fullmatch(word)
            if option is None:
                raise BadFormat
            options.append((option[1], option[2]))
    return options


def parse_id_size(rest: bytes) -> tuple[int, int]:
    """`<id> <bytes>` of the extension commands with a body (protocol.md, "Numbers")."""
    m = _TWO.fullmatch(rest)
    if m is None:
        raise BadFormat
    return _u64(m[1]), _u32(m[2])


def parse_config(rest: bytes) -> tuple[str, str | None, str | None]:
    """`<tube>` or `<tube> <name> <value>` of config-tube (single spaces only)."""
    parts = rest.split(b" ")
    if len(parts) not in (1, 3) or not all(parts):
        raise BadFormat
    tube = parse_tube(parts[0]).decode()
    if len(parts) == 1:
        return tube, None, None
    try:
        return tube, parts[1].decode("ascii"), parts[2].decode("ascii")
    except UnicodeDecodeError:
        raise BadFormat from None


def parse_timeout(rest: bytes) -> int:
    """reserve-with-timeout's seconds: trailing text is ignored, as in beanstalkd 1.13."""
    m = _ONE.match(rest)
    if m is None:
        raise BadFormat
    value = int(m[1])
    if value > INT_MAX:
        raise BadFormat
    return value


def parse_kick_bound(rest: bytes) -> int:
    """kick's bound, read like C's strtoul and cut to 32 bits (protocol.md, "kick")."""
    m = _KICK.match(rest)
    if m is None:
        raise BadFormat
    value = int(m[2])
    if value > U64_MAX:
        raise BadFormat
    if m[1] == b"-":
        value = -value % (U64_MAX + 1)
    return value & U32_MAX


def parse_tube(rest: bytes) -> bytes:
    """A tube name that must be the whole rest of the line."""
    if _TUBE_NAME.fullmatch(rest) is None:
        raise BadFormat
    return rest


def parse_pause(rest: bytes) -> tuple[bytes, int]:
    """`<tube> <seconds>` for pause-tube, which reads its name leniently."""
    m = _PAUSE.fullmatch(rest)
    if m is None:
        raise BadFormat
    return m[1], _u32(m[2])


# ---------------------------------------------------------------------------
# Replies.

def job_reply(word: bytes, job_id: int, body: bytes) -> bytes:
    """`WORD <id> <bytes>\\r\\n<body>\\r\\n`; the stored body carries its CRLF."""
    return b"%s %d %d\r\n%s" % (word, job_id, len(body) - 2, body)


def yaml_reply(text: str) -> bytes:
    """Frame a YAML document as `OK <n>\\r\\n<yaml>\\r\\n` (n excludes the last CRLF)."""
    data = text.encode()
    return b"OK %d\r\n%s\r\n" % (len(data), data)


def yaml_quote(value: str) -> str:
    """A double-quoted YAML scalar (beanstalkd 1.13 quotes its string values)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# How each byte is written inside a double-quoted YAML scalar.
_YAML_BYTE = [chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in range(256)]
_YAML_BYTE[ord("\\")] = "\\\\"
_YAML_BYTE[ord('"')] = '\\"'


def yaml_bytes(data: bytes) -> str:
    """Arbitrary bytes as a double-quoted YAML scalar: printable ASCII as it is,
    `\\` and `"` escaped with a backslash, every other byte as `\\xNN` (protocol.md,
    "job-info")."""
    return '"' + "".join(_YAML_BYTE[b] for b in data) + '"'


def event_frame(event: tuple) -> bytes:
    """`EVENT <bytes>\\r\\n<YAML>\\r\\n` for one event (protocol.md, "subscribe")."""
    seq, when, job_id, tube, name, attempt = event
    body = (f"---\nseq: {seq}\ntime: {when:.3f}\nid: {job_id}\ntube: {yaml_quote(tube)}\n"
            f"event: {name}\nattempt: {attempt}\n").encode()
    return b"EVENT %d\r\n%s\r\n" % (len(body), body)


def yaml_mapping(pairs) -> bytes:
    """A stats reply from (key, already-formatted value) pairs, in order."""
    return yaml_reply("---\n" + "".join(f"{k}: {v}\n" for k, v in pairs))


def yaml_list(names) -> bytes:
    """A list-tubes style reply; names are plain tube names, never quoted."""
    return yaml_reply("---\n" + "".join(f"- {name}\n" for name in names))
