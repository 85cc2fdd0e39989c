"""The steering extension commands on the shared store (protocol.md, "Extensions"
and "Several nodes"): put-ex with unique keys, tags and lock keys (per-key
concurrency is the reserve function's), flush-tube, cancel-tag and list-jobs, each
change one Redis Function (functions.lua, "Steering"). Lines and replies are the
in-memory table's (`commands.steering`, `listing`); `subscribe` streams the
cluster's events through `store.events`.
Imports: `wire`, `errors`, `listing`, `stats`, `commands.steering`, `store.events`.
"""

from qserver import wire
from qserver.commands.steering import (SteeringWords, parse_subscribe, read_list_jobs,
                                      read_put_ex, tag_value)
from qserver.errors import Draining, ExpectedCrlf
from qserver.listing import STATES
from qserver.stats import job_page_text, key_text, tags_text
from qserver.store.events import EventMirror

_LETTERS = {state: letter for _, state, letter in STATES}
_STATE_NAMES = {letter: name for name, _, letter in STATES}
_TIMED = {"reserved": "due", "delayed": "due", "completed": "expires", "dead": "expires"}


class StoreSteering(SteeringWords):
    def __init__(self, commands):
        self.commands = commands        # store.commands.StoreCommands: calls, bodies
        self.store = commands.store
        self.counts = commands.counts
        self.events = EventMirror(commands.store, commands.event_window)

    def put_ex(self, client, rest):
        return read_put_ex(client, rest, self.commands.max_job_size, self.counts,
                           self._put, self._mark_producer)

    def _mark_producer(self, client) -> None:
        self.commands.session(client).producer = True

    def _put(self, client, body: bytes, pri, delay, ttr, key, tags, lock):
        if not body.endswith(wire.CRLF):
            raise ExpectedCrlf
        if self.commands.draining:
            raise Draining
        self.commands.when(client, self.store.call(
            "qs_put_ex", client.store_session.use, pri, delay, ttr, body, key or b"",
            b" ".join(tags), lock or b""), self._inserted_or_duplicate)

    def flush_tube(self, client, rest):
        name = wire.parse_tube(rest).decode()
        self.counts["flush-tube"] += 1
        self.commands.later(client, self._flush(name))

    async def _flush(self, tube: str) -> bytes:
        flush, count = await self.store.values("qs_flush_start", tube)
        if flush:
            await self.store.finish_flush(flush)
        return b"FLUSHED %d\r\n" % count

    def cancel_tag(self, client, rest):
        tag = tag_value(rest)
        self.counts["cancel-tag"] += 1
        self.commands.when(client, self.store.call("qs_cancel_tag", tag),
                           lambda reply: b"CANCELLED %d %d\r\n" % (reply[1], reply[2]))

    def list_jobs(self, client, rest):
        tube, (states, after, limit) = read_list_jobs(rest, self.counts)
        letters = "".join(_LETTERS[state] for state in states)
        after_letter, score, after_id = "", 0, 0
        if after is not None:
            after_letter, (score, after_id) = _LETTERS[after[0]], after[1]
        self.commands.when(client, self.store.call(
            "qs_list_jobs", tube, letters, after_letter, score, after_id, limit), _page)


    def subscribe(self, client, rest):
        tube, start = parse_subscribe(rest)
        self.counts["subscribe"] += 1
        self.commands.later(client, self._subscribe(client, tube, start))

    async def _subscribe(self, client, tube, start) -> bytes:
        window = await self.events.ready()
        return client.subscribe(tube, start, window)

    def _inserted_or_duplicate(self, reply) -> bytes:
        if reply[0] == b"DUPLICATE":
            return b"DUPLICATE %d\r\n" % reply[1]
        return self.commands.inserted(reply)


def _page(reply) -> bytes:
    """list-jobs' reply from the store's rows (qs_list_jobs)."""
    _, now_us, next_cursor, *found = reply
    now = now_us / 1e6
    rows = []
    for letter, job_id, _, pri, created, delay, due, expires, attempts, key, tags, size \
            in found:
        state = _STATE_NAMES[letter.decode()]
        timed = _TIMED.get(state)
        time_left = int(int(due if timed == "due" else expires) / 1e6 - now) if timed else 0
        rows.append((job_id, state, int(pri), int(now - int(created) / 1e6), int(delay),
                     time_left, int(attempts), key_text(key or None),
                     tags_text(tags.split()), max(0, size - 2)))
    return wire.yaml_reply(job_page_text(rows, next_cursor.decode() or None))
