"""Per-connection queue state: the used tube, the watch list, reserved jobs, and a
pending reserve. The engine reads and changes it; the server owns one per connection
and sets `wake`, the callback through which a parked reserve is answered.
Imports: `swapset`, `job`, stdlib.
"""

import heapq

from qserver.job import RESERVED
from qserver.swapset import SwapSet


class Session:
    __slots__ = (
        "use", "watch", "reserved", "deadlines", "waiting", "wait_until", "wait_seq",
        "producer", "worker", "wake",
    )

    def __init__(self, wake=None):
        self.use = None
        self.watch = SwapSet()
        self.reserved = {}        # id -> job reserved by this session
        self.deadlines = []       # heap of (ttr deadline, id), lazily cleaned
        self.waiting = False
        self.wait_until = None    # monotonic time a reserve-with-timeout gives up
        self.wait_seq = 0
        self.producer = False
        self.worker = False
        self.wake = wake          # wake(job) or wake(error class) for a parked reserve

    def hold(self, job) -> None:
        self.reserved[job.id] = job
        self.note_deadline(job)

    def note_deadline(self, job) -> None:
        heap = self.deadlines
        heapq.heappush(heap, (job.deadline, job.id))
        if len(heap) > 2 * len(self.reserved) + 16:
            self.deadlines = [(j.deadline, i) for i, j in self.reserved.items()]
            heapq.heapify(self.deadlines)

    def soonest_deadline(self):
        """The earliest TTR deadline among this session's reserved jobs, or None."""
        heap = self.deadlines
        reserved = self.reserved
        while heap:
            deadline, job_id = heap[0]
            job = reserved.get(job_id)
            if job is not None and job.state == RESERVED and job.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None
