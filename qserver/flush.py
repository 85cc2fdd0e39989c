"""flush-tube a slice at a time (protocol.md, "flush-tube").

A flush takes effect when its command runs: the tube's ready, delayed, buried and
held lists are swapped for empty ones in one step, so from then on reserve, peek,
kick and the stats see none of those jobs, and jobs put afterwards are not touched.
Forgetting the old lists' jobs then runs in slices of at most SLICE_SECONDS, one per
loop turn, so other clients are served meanwhile (a million jobs used to hold the
loop for over a second). When the last one is gone, one FLUSH record naming them is
written, and only then does the client hear `FLUSHED <n>`.

Until then a flushed job is still in the engine's id index but counts as gone:
`hides(job)` says so for the lookups by id (peek, delete, kick-job, reserve-job,
job-info, unique keys, tags, the delay timer). The rule needs no mark on each job: a
job of a tube with a flush in progress was flushed if its id had been taken when the
flush began, unless the job was reserved then or came in later from another tube (a
dead letter); those are `kept`.

A crash before the record brings every flushed job back, as if the flush had never
run (its client was never told it had). Two things keep that true: compaction keeps
the old segments while a flush is unlogged (`Flusher.unlogged`), and a unique key
whose job is being flushed is taken over only after that job's DELETE is logged
(`Flusher.give_up_key`).
Imports: `job`, `errors`, stdlib.
"""

import array
import collections
import sys
import time
from operator import itemgetter

from qserver.errors import QueueError
from qserver.job import ID_MASK

SLICE_SECONDS = 0.010       # a flush never holds the loop longer than this per turn
CHUNK = 1024


def hides(job) -> bool:
    """Whether a job still in the id index was flushed. Call only when its tube has
    a flush in progress (`job.tube.flushes`); the latest flush's rule covers the
    jobs of the earlier ones too (none of those was reserved or came in since)."""
    latest = job.tube.flushes[-1]
    return job.id <= latest.last_id and job.id not in latest.kept


class Flush:
    """One flush-tube: the lists it took, what it has removed, and who waits."""

    __slots__ = ("tube", "last_id", "kept", "chunks", "gone", "early", "answer",
                 "error")

    def __init__(self, engine, tube, lists):
        self.tube = tube
        self.last_id = engine.next_id - 1
        self.kept = {job.id for job in engine.reserved_in(tube)}
        self.chunks = _chunks(*lists)
        self.gone = array.array("Q")    # the ids the FLUSH record names
        self.early = 0                  # removed by give_up_key, each with a DELETE
        self.answer = None              # called with the Flush once it is done
        self.error = None               # the log's error if the record failed

    def count(self) -> int:
        return len(self.gone) + self.early

    def step(self, engine, stop: float) -> bool:
        """Remove flushed jobs until perf_counter() passes `stop`; True when all
        are gone."""
        jobs, tube, last_id, kept, gone = engine.jobs, self.tube, self.last_id, \
            self.kept, self.gone
        forget = engine.forget_flushed
        clock = time.perf_counter
        for ids in self.chunks:
            for job_id in ids:
                job = jobs.get(job_id)
                if job is not None and job.tube is tube and job_id <= last_id \
                        and job_id not in kept:
                    forget(job)
                    gone.append(job_id)
            if clock() > stop:
                return False
        return True


def _chunks(ready: list, delayed: list, buried: dict, held: list, index_lists):
    """The ids in the old lists, CHUNK at a time, taken out of the lists as they go
    so that their memory is freed a little each turn too (dropping a million
    entries at once holds the loop for 50-200 ms). A job can have stale entries in
    several lists; the first one that finds it removes it."""
    for heap, pick in ((ready, ID_MASK.__and__), (delayed, itemgetter(1))):
        while heap:
            chunk = heap[-CHUNK:]
            del heap[-CHUNK:]
            yield map(pick, chunk)
    while buried:
        yield [buried.popitem()[0] for _ in range(min(CHUNK, len(buried)))]
    yield [job.id for job in held]
    for entries in index_lists:         # the tube's list-jobs index, if it had one
        while entries:
            for _ in range(min(CHUNK, len(entries))):
                entries.pop()
            yield ()


class Flusher:
    """The flushes in progress, run one after another (first come, first served)."""

    def __init__(self, engine):
        self.engine = engine
        self.queue = collections.deque()
        self.running = False
        self.total = 0              # jobs removed by flushes since start

    @property
    def unlogged(self) -> bool:
        return bool(self.queue)

    def start(self, tube_name: str):
        """Flush the tube now (its lists are emptied at once); returns the Flush,
        or None when there is no such tube. `finished(flush)` tells whether it is
        done; else its `answer` gets the count later."""
        engine = self.engine
        tube = engine.tubes.get(tube_name)
        if tube is None:
            return None
        flush = Flush(engine, tube, engine.empty_lists(tube))
        if tube.flushes is None:
            tube.flushes = []
        tube.flushes.append(flush)
        if engine.events is not None:       # one event for the lot (id 0)
            engine.events.add("flush", 0, tube_name, 0)
        self.queue.append(flush)
        if engine.call_soon is None:      # no loop (the unit tests): all at once
            self.finish_all()
        elif not self.running:
            self.running = True
            self._turn()
        return flush

    def flush(self, tube_name: str) -> int:
        """flush-tube run to the end at once; returns how many jobs went."""
        flush = self.start(tube_name)
        if flush is None:
            return 0
        self.finish_all()
        return flush.count()

    def finished(self, flush) -> bool:
        return flush not in self.queue

    def finish_all(self) -> None:
        """Complete every flush now (at shutdown, or without a loop)."""
        while self.queue:
            self._step(float("inf"))

    def _turn(self) -> None:
        if self.queue:
            self._step(time.perf_counter() + SLICE_SECONDS)
        if self.queue:
            self.engine.call_soon(self._turn)
        else:
            self.running = False

    def _step(self, stop: float) -> None:
        flush = self.queue[0]
        if not flush.step(self.engine, stop):
            return
        self.queue.popleft()
        self._logged(flush)

    def _logged(self, flush) -> None:
        engine, tube = self.engine, flush.tube
        if flush.gone:
            try:
                engine.log.flush(tube.name, _little_endian(flush.gone))
            except QueueError as error:
                # The log could not take the record (it said why in the server's
                # log): the client hears the error; the jobs are gone from memory
                # and come back with their records if the server restarts first.
                flush.error = error
        tube.flushes.remove(flush)
        if not tube.flushes:
            tube.flushes = None
        self.total += flush.count()
        if flush.answer is not None:
            flush.answer(flush)

    # -- the lookups that must not see a flushed job ----------------------------

    def give_up_key(self, job) -> None:
        """A put-ex wants the unique key of a job being flushed: remove that job now,
        with its own DELETE record, so that no crash can bring back both."""
        engine = self.engine
        engine.log.delete(job)
        engine.forget_flushed(job, logged=True)
        job.tube.flushes[-1].early += 1

    def kept(self, job) -> None:
        """A job came into a tube with flushes in progress (a dead letter)."""
        for flush in job.tube.flushes:
            flush.kept.add(job.id)


def _little_endian(ids):
    if sys.byteorder != "little":
        ids = array.array("Q", ids)
        ids.byteswap()
    return ids
