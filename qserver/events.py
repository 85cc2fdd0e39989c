"""The event stream's window (protocol.md, "subscribe"): a bounded, sequenced record
of what happened to jobs, which subscribers read from and can resume in.

Recording starts with the first `subscribe` (before that, plain traffic pays
nothing for it) and keeps the last CAPACITY events in a ring, so memory is bounded
whatever the subscribers do: one that falls behind the window is told `GAP`.
Sequence numbers start from the wall clock in microseconds when the window is made,
so each process numbers above the last one (no server records a million events a
second): a subscriber resuming after a restart asks for a number below the new
window and is told `GAP`, instead of being handed the new process's events under
numbers it has already seen.
Events carry the sequence number, the wall-clock time, the job id, the tube, the
event name and the job's counted failures (attempts). Pure: no sockets or loop; the
server passes `notify`, called once when events arrive for listeners.
Imports: stdlib only.
"""

import time

CAPACITY = 100_000

NAMES = ("put", "reserve", "release", "bury", "kick", "delete", "timeout", "fail",
         "retry", "dead", "complete", "progress", "cancel", "held", "flush")


class EventLog:
    def __init__(self, capacity: int = CAPACITY, wall=time.time, first_seq=None):
        self.capacity = capacity
        self.ring = [None] * capacity     # event seq s sits at s % capacity
        self.first_seq = first_seq if first_seq is not None else int(wall() * 1e6)
        self.next_seq = self.first_seq
        self.wall = wall
        self.notify = None                # set by the server: wakes the subscribers
        self.notified = False

    @property
    def oldest(self) -> int:
        """The smallest sequence number still kept."""
        return max(self.first_seq, self.next_seq - self.capacity)

    def add(self, name: str, job_id: int, tube_name: str, attempt: int) -> None:
        seq = self.next_seq
        self.ring[seq % self.capacity] = (seq, self.wall(), job_id, tube_name, name, attempt)
        self.next_seq = seq + 1
        if self.notify is not None and not self.notified:
            self.notified = True
            self.notify()

    def add_at(self, seq: int, when: float, job_id: int, tube_name: str, name: str,
               attempt: int) -> None:
        """An event numbered elsewhere (the shared store's stream). Numbers come in
        order; one past a hole (events the store trimmed before this node read
        them) starts the window again there, so readers before it hear GAP."""
        if seq < self.next_seq:
            return                        # read twice (two readers of one stream)
        if seq > self.next_seq:
            self.first_seq = seq
        self.ring[seq % self.capacity] = (seq, when, job_id, tube_name, name, attempt)
        self.next_seq = seq + 1
        if self.notify is not None and not self.notified:
            self.notified = True
            self.notify()

    def read(self, start: int, limit: int) -> list:
        """Up to `limit` events from sequence number `start` on (start >= oldest)."""
        stop = min(self.next_seq, start + limit)
        ring, capacity = self.ring, self.capacity
        return [ring[seq % capacity] for seq in range(start, stop)]
