"""A tube: its ready heaps, delayed heap, buried FIFO, waiting sessions and pause.

Ready jobs are ordered by (pri, id): one heap of ids per priority (`ready`, with
the priorities in use in the heap `pris`). A heap entry is then the job's own id
object, shared with the job and the index: 8 bytes a job, where a combined
(pri << 64 | id) key cost a 48-byte int of its own.

The heaps use lazy deletion: a job leaving a heap other than by a pop leaves a stale
entry behind, recognised later because the job's state or key no longer matches.
Counts are kept separately, so stale entries never show in stats, and a heap is
rebuilt when stale entries outnumber live ones. Imports: `job`, `swapset`, stdlib.
"""

import heapq

from qserver.job import BURIED, DELAYED, HELD, READY, URGENT_PRI
from qserver.swapset import SwapSet


class Tube:
    __slots__ = (
        "name", "jobs", "ready", "pris", "ready_entries", "ready_count", "urgent_count", "delayed",
        "delayed_count", "buried", "reserved_count", "waiting", "using", "watching",
        "total_jobs", "cmd_delete", "cmd_pause", "pause", "unpause_at", "policy",
        "counters", "index", "flushes",
    )

    def __init__(self, name: str, jobs: dict, policy=None):
        self.name = name
        self.jobs = jobs              # the engine's id -> job index
        self.ready = {}               # pri -> heap of the ids of ready jobs
        self.pris = []                # heap of the priorities in `ready`
        self.ready_entries = 0        # entries in the id heaps, stale ones included
        self.ready_count = 0
        self.urgent_count = 0
        self.delayed = []             # heap of (deadline, id)
        self.delayed_count = 0
        self.buried = {}              # id -> job, oldest first
        self.reserved_count = 0
        self.waiting = SwapSet()      # sessions blocked in reserve watching this tube
        self.using = 0
        self.watching = 0
        self.total_jobs = 0
        self.cmd_delete = 0
        self.cmd_pause = 0
        self.pause = 0                # seconds of the current pause, 0 when none
        self.unpause_at = 0.0
        self.policy = policy          # policy.Policy once configured (config-tube)
        self.counters = None          # lifecycle.Counters once a job failed or completed
        self.index = None             # listing.TubeIndex once the tube was listed
        self.flushes = None           # [flush.Flush] while flushes are in progress

    # -- lifetime ---------------------------------------------------------------

    def is_unused(self) -> bool:
        """No jobs and no connection refers to it: it may be dropped."""
        return not (self.using or self.watching or self.ready_count or self.delayed_count
                    or self.buried or self.reserved_count)

    def is_paused(self, now: float) -> bool:
        return self.pause > 0 and now < self.unpause_at

    def take_listed(self) -> tuple:
        """flush-tube: hand over the ready heap, delayed heap and buried jobs (and
        those parts of the list-jobs index) and start empty ones, in O(1)."""
        taken = (self.ready, self.delayed, self.buried)
        self.ready = {}
        self.pris = []
        self.ready_entries = self.ready_count = self.urgent_count = 0
        self.delayed = []
        self.delayed_count = 0
        self.buried = {}
        index_lists = self.index.take((READY, DELAYED, BURIED, HELD)) \
            if self.index is not None else ()
        return (*taken, index_lists)

    # -- ready ------------------------------------------------------------------

    def push_ready(self, job) -> None:
        job.state = READY
        pri = job.pri
        heap = self.ready.get(pri)
        if heap is None:
            heap = self.ready[pri] = []
            heapq.heappush(self.pris, pri)
        heapq.heappush(heap, job.id)
        self.ready_entries += 1
        self.ready_count += 1
        if pri < URGENT_PRI:
            self.urgent_count += 1
        if self.index is not None:
            self.index.add(READY, (pri, job.id))

    def restore_ready(self, jobs) -> None:
        """Add many ready jobs at once (replay): one heapify instead of a push each."""
        ready = self.ready
        pri = heap = None
        count = urgent = 0
        for job in jobs:
            job.state = READY
            if job.pri != pri:
                pri = job.pri
                heap = ready.get(pri)
                if heap is None:
                    heap = ready[pri] = []
                    self.pris.append(pri)
            heap.append(job.id)
            count += 1
            if pri < URGENT_PRI:
                urgent += 1
        self.ready_entries += count
        self.ready_count += count
        self.urgent_count += urgent
        if self.index is not None:
            for job in jobs:
                self.index.add(READY, (job.pri, job.id))
        for heap in ready.values():
            heapq.heapify(heap)
        heapq.heapify(self.pris)

    def peek_ready(self):
        """The ready job with the smallest (pri, id), or None."""
        pris = self.pris
        jobs = self.jobs
        while pris:
            pri = pris[0]
            heap = self.ready[pri]
            while heap:
                job = jobs.get(heap[0])
                if job is not None and job.state == READY and job.tube is self \
                        and job.pri == pri:
                    return job
                heapq.heappop(heap)
                self.ready_entries -= 1
            del self.ready[pri]
            heapq.heappop(pris)
        return None

    def ready_keys(self):
        """(pri, id) of every entry of the ready heaps, stale ones included, one
        list per priority (copied: list-jobs reads them a chunk at a time)."""
        return [(pri, list(heap)) for pri, heap in self.ready.items()]

    def forget_ready(self, job) -> None:
        """Account for a ready job leaving; its heap entry goes stale."""
        self.ready_count -= 1
        if job.pri < URGENT_PRI:
            self.urgent_count -= 1
        if self.index is not None:
            self.index.discard(READY, (job.pri, job.id))
        if self.ready_entries > 2 * self.ready_count + 64:
            self._rebuild_ready(job)

    def _rebuild_ready(self, leaving) -> None:
        jobs = self.jobs
        ready = {}
        entries = 0
        for pri, heap in self.ready.items():
            live = set()
            for job_id in heap:
                job = jobs.get(job_id)
                if job is not None and job is not leaving and job.state == READY \
                        and job.tube is self and job.pri == pri:
                    live.add(job.id)
            if live:
                ready[pri] = heap = list(live)
                heapq.heapify(heap)
                entries += len(heap)
        self.ready = ready
        self.pris = list(ready)
        heapq.heapify(self.pris)
        self.ready_entries = entries

    # -- delayed ----------------------------------------------------------------

    def push_delayed(self, job, due: float) -> None:
        job.state = DELAYED
        job.deadline = due
        heapq.heappush(self.delayed, (due, job.id))
        self.delayed_count += 1
        if self.index is not None:
            self.index.add(DELAYED, (due, job.id))

    def peek_delayed(self):
        """The delayed job due soonest (ties by id), or None."""
        heap = self.delayed
        jobs = self.jobs
        while heap:
            due, job_id = heap[0]
            job = jobs.get(job_id)
            if job is not None and job.state == DELAYED and job.tube is self \
                    and job.deadline == due:
                return job
            heapq.heappop(heap)
        return None

    def forget_delayed(self, job) -> None:
        self.delayed_count -= 1
        if self.index is not None:
            self.index.discard(DELAYED, (job.deadline, job.id))
        if len(self.delayed) > 2 * self.delayed_count + 64:
            jobs = self.jobs
            self.delayed = list({
                (due, i) for due, i in self.delayed
                if (j := jobs.get(i)) is not None and j is not job
                and j.state == DELAYED and j.tube is self and j.deadline == due})
            heapq.heapify(self.delayed)

    # -- buried -----------------------------------------------------------------

    def push_buried(self, job) -> None:
        job.state = BURIED
        self.buried[job.id] = job
        if self.index is not None:
            self.index.add(BURIED, (job.bury_seq, job.id))

    def forget_buried(self, job) -> None:
        del self.buried[job.id]
        if self.index is not None:
            self.index.discard(BURIED, (job.bury_seq, job.id))

    def peek_buried(self):
        """The oldest buried job, or None."""
        for job in self.buried.values():
            return job
        return None
