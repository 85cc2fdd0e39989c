"""The steering extension commands (protocol.md, "put-ex", "flush-tube",
"cancel-tag", "list-jobs"): puts with a unique key and tags, emptying a tube,
cancelling by tag, paging through a tube's jobs.

Imports: `wire`, `errors`, `steering`, `stats`, `listing`.
"""

from qserver import wire
from qserver.errors import BadFormat, Draining, ExpectedCrlf, UnknownCommand
from qserver.listing import index_of, page_of, parse_request
from qserver.stats import job_page
from qserver.steering import MAX_TAGS


class SteeringWords:
    """The steering's command words, shared by both stores' tables."""

    def table(self) -> tuple[dict, dict]:
        """(commands with arguments, commands without), by command word."""
        return {
            b"put-ex": self.put_ex, b"flush-tube": self.flush_tube,
            b"cancel-tag": self.cancel_tag, b"list-jobs": self.list_jobs,
            b"subscribe": self.subscribe,
        }, {}


class SteeringCommands(SteeringWords):
    def __init__(self, commands):
        self.commands = commands          # the beanstalkd table: bodies, clocks, counts
        self.engine = commands.engine
        self.steering = commands.engine.steering
        self.counts = commands.counts

    def put_ex(self, client, rest):
        return read_put_ex(client, rest, self.commands.max_job_size, self.counts,
                           self._store, self._mark_producer)

    def _mark_producer(self, client) -> None:
        self.engine.mark_producer(client.session)

    def _store(self, client, body: bytes, pri, delay, ttr, key, tags, lock) -> bytes:
        """Make the job once its body is here; the key is checked only now, so a
        refused put still consumes its body (and takes no id)."""
        if not body.endswith(wire.CRLF):
            raise ExpectedCrlf
        engine = self.engine
        if engine.draining:
            raise Draining
        tube = client.session.use
        self.steering.check_key(tube.name, key)     # before the id is taken
        job_id = engine.allocate_id()
        self.steering.put(tube, job_id, pri, delay, ttr, body, self.commands.clock(),
                          self.commands.creation_time(), key, tags, lock)
        return b"INSERTED %d\r\n" % job_id

    def flush_tube(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["flush-tube"] += 1
        flusher = self.engine.flusher
        flush = flusher.start(name)
        if flush is None:
            return b"FLUSHED 0\r\n"
        if flush.logged:                # a small tube: done in the first slice
            return _flushed(flush)
        answer = client.answer_later(logged=True)
        flush.answer = lambda done: answer(_flushed(done))
        return None

    def cancel_tag(self, client, rest):
        tag = tag_value(rest)
        self.counts["cancel-tag"] += 1
        removed, flagged = self.steering.cancel_tag(tag)
        return b"CANCELLED %d %d\r\n" % (removed, flagged)


    def list_jobs(self, client, rest):
        tube, request = read_list_jobs(rest, self.counts)
        found = self.engine.tubes.get(tube)
        if found is not None:
            index = index_of(self.engine, found)
            if not index.built:         # a big tube's first listing: a few turns
                answer = client.answer_later(logged=False)
                index.waiters.append(lambda: answer(self._page(tube, request)))
                return None
        return self._page(tube, request)

    def _page(self, tube: str, request: tuple) -> bytes:
        engine = self.engine
        jobs, next_cursor = page_of(engine, tube, request)
        return wire.yaml_reply(job_page(jobs, next_cursor, engine.histories, engine.meta,
                                        self.commands.clock(), self.commands.wall()))


    def subscribe(self, client, rest):
        tube, start = parse_subscribe(rest)
        self.counts["subscribe"] += 1
        subscribe = getattr(client, "subscribe", None)
        if subscribe is None:           # an in-process harness without a server
            raise UnknownCommand
        return subscribe(tube, start)


# -- the lines, read alike by both stores -----------------------------------------

def read_put_ex(client, rest: bytes, max_job_size: int, counts: dict, finish,
                mark_producer):
    """A put-ex line: its body is read as put's, then finish(client, body, pri,
    delay, ttr, key, tags, lock) makes the job. Bad options are answered after the
    body is read, so the stream stays in step (the numbers said how long it is)."""
    pri, delay, ttr, size, tail = wire.parse_put(rest)
    counts["put-ex"] += 1
    if size > max_job_size:
        client.framer.discard_body(size)
        return None
    try:
        key, tags, lock = put_options(wire.parse_options(tail))
    except BadFormat:
        finish, args = refuse_body, ()
    else:
        args = (pri, delay, ttr or 1, key, tags, lock)
    mark_producer(client)
    body = client.framer.take_body(size)
    if body is None:
        client.pending_body = (finish, args)
        return None
    return finish(client, body, *args)


def read_list_jobs(rest: bytes, counts: dict) -> tuple:
    """(tube, listing.parse_request's request) of a list-jobs line (counted once
    the tube name is good)."""
    parts = rest.split(b" ")
    if len(parts) != 4 or not parts[3].isdigit() or len(parts[3]) > 4:
        raise BadFormat
    tube = wire.parse_tube(parts[0]).decode()
    counts["list-jobs"] += 1
    try:
        state, cursor = parts[1].decode("ascii"), parts[2].decode("ascii")
    except UnicodeDecodeError:
        raise BadFormat from None
    return tube, parse_request(state, cursor, int(parts[3]))


def parse_subscribe(rest: bytes) -> tuple:
    """(tube or None for `*`, first sequence number or None for `now`)."""
    parts = rest.split(b" ")
    if len(parts) != 2 or not parts[1]:
        raise BadFormat
    tube = None if parts[0] == b"*" else wire.parse_tube(parts[0]).decode()
    if parts[1] == b"now":
        return tube, None
    if parts[1].isdigit() and len(parts[1]) <= 20:
        return tube, max(1, int(parts[1]))
    raise BadFormat


def _flushed(flush) -> bytes:
    if flush.error is not None:
        return flush.error.reply
    return b"FLUSHED %d\r\n" % flush.count()


def refuse_body(client, body: bytes):
    raise BadFormat


def put_options(options: list) -> tuple:
    """The key and the lock (at most one each) and the distinct tags (at most
    MAX_TAGS)."""
    single = {b"key": None, b"lock": None}
    tags = []
    for name, value in options:
        if name == b"tag":
            if value not in tags:
                tags.append(value)
        elif single[name] is not None:
            raise BadFormat
        else:
            single[name] = value
    if len(tags) > MAX_TAGS:
        raise BadFormat
    return single[b"key"], tuple(tags), single[b"lock"]


def tag_value(rest: bytes) -> bytes:
    """A tag as put-ex takes it: 1-200 printable ASCII bytes, no spaces."""
    if not 0 < len(rest) <= 200 or not all(0x21 <= b <= 0x7E for b in rest):
        raise BadFormat
    return bytes(rest)
