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


class SteeringCommands:
    def __init__(self, commands):
        self.commands = commands          # the beanstalkd table: bodies, clocks, counts
        self.engine = commands.engine
        self.steering = commands.engine.steering
        self.counts = commands.counts

    def table(self) -> tuple[dict, dict]:
        """(commands with arguments, commands without), by command word."""
        return {
            b"put-ex": self.put_ex, b"flush-tube": self.flush_tube,
            b"cancel-tag": self.cancel_tag, b"list-jobs": self.list_jobs,
            b"subscribe": self.subscribe,
        }, {}

    def put_ex(self, client, rest):
        pri, delay, ttr, size, tail = wire.parse_put(rest)
        self.counts["put-ex"] += 1
        if size > self.commands.max_job_size:
            client.framer.discard_body(size)
            return None
        # Bad options are answered after the body is read, so the stream stays in
        # sync (the numbers told us how long the body is).
        try:
            key, tags, lock = put_options(wire.parse_options(tail))
        except BadFormat:
            finish, args = refuse_body, ()
        else:
            finish, args = self._store, (pri, delay, ttr or 1, key, tags, lock)
        self.engine.mark_producer(client.session)
        body = client.framer.take_body(size)
        if body is None:
            client.pending_body = (finish, args)
            return None
        return finish(client, body, *args)

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
        parts = rest.split(b" ")
        if len(parts) != 4 or not parts[3].isdigit() or len(parts[3]) > 4:
            raise BadFormat
        tube = wire.parse_tube(parts[0]).decode()
        self.counts["list-jobs"] += 1
        try:
            state, cursor = parts[1].decode("ascii"), parts[2].decode("ascii")
        except UnicodeDecodeError:
            raise BadFormat from None
        request = parse_request(state, cursor, int(parts[3]))
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
