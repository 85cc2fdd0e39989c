"""The event stream on the shared store (protocol.md, "subscribe" and "Several
nodes"): the functions append every node's job events to one Redis stream (once
some node has had a subscriber), and a node with subscribers mirrors that stream
into an `events.EventLog` window, which its connections stream from as they do in
memory. Sequence numbers are the stream's, so they are the cluster's: a subscriber
may resume through any node.
Imports: `events`, `store.batch`, stdlib.
"""

import asyncio
import logging
import time

from qserver.events import EventLog
from qserver.store.batch import RespConnection

log = logging.getLogger("qserver")

FLAG_TTL_MS = 30_000            # recording stops this long after the last renewal
RENEW_SECONDS = 5.0
READ_BLOCK_MS = 1000            # one XREAD waits this long for new events
READ_COUNT = 1000               # events per read


class EventMirror:
    def __init__(self, store, capacity: int):
        self.store = store              # store.redis.RedisStore
        self.capacity = capacity        # --event-window: events kept
        self.stream = store.key + ":events"
        self.window = None              # the EventLog, from the first subscribe on
        self.task = None
        self.renewed = 0.0

    async def ready(self) -> EventLog:
        """The window, caught up with the stream as it is now: `now` is the
        cluster's next event, and a resume finds what the stream still holds."""
        last = await self._record()
        if self.window is None:
            self.window = EventLog(self.capacity, first_seq=last + 1)
            await self._load_history()
            self.task = asyncio.get_running_loop().create_task(self._follow())
            self.store.tasks.append(self.task)      # stopped with the store
        await self._read_to(last)
        return self.window

    async def _record(self) -> int:
        """Ask every node's functions to record events (for FLAG_TTL_MS more);
        the last sequence number given so far."""
        (last,) = await self.store.values("qs_events_on", self.capacity, FLAG_TTL_MS)
        self.renewed = time.monotonic()
        return last

    async def _load_history(self) -> None:
        """The events the stream kept from before (another node's subscribers')."""
        entries = await self.store.batcher.call("XREVRANGE", self.stream, "+", "-",
                                                "COUNT", self.capacity)
        if entries:
            first = _seq(entries[-1][0])
            self.window.first_seq = self.window.next_seq = first
            for entry in reversed(entries):
                self._add(entry)

    async def _read_to(self, last: int) -> None:
        while self.window.next_seq <= last:
            entries = await self.store.batcher.call(
                "XRANGE", self.stream, "%d-1" % self.window.next_seq, "+",
                "COUNT", READ_COUNT)
            if not entries:
                return                  # trimmed away meanwhile
            for entry in entries:
                self._add(entry)

    def _add(self, entry) -> None:
        entry_id, flat = entry
        fields = dict(zip(flat[::2], flat[1::2]))
        self.window.add_at(_seq(entry_id), int(fields[b"w"]) / 1e6, int(fields[b"i"]),
                           fields[b"t"].decode(), fields[b"n"].decode(),
                           int(fields[b"a"]))

    async def _follow(self) -> None:
        """Read the stream as it grows, on a connection of its own (XREAD blocks),
        and keep the recording on."""
        connection = RespConnection(self.store.settings)
        while True:
            try:
                if not connection.is_open:
                    await connection.open()
                if time.monotonic() - self.renewed >= RENEW_SECONDS:
                    await self._record()
                reply = await connection.call(
                    "XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS",
                    self.stream, "%d-1" % (self.window.next_seq - 1))
                for _, entries in reply or ():
                    for entry in entries:
                        self._add(entry)
            except asyncio.CancelledError:
                connection.close()
                raise
            except Exception as error:      # the store away: try again in a second
                log.warning("store: reading the event stream: %s", error)
                connection.close()
                await asyncio.sleep(1.0)


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])
