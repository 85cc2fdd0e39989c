"""flush-tube a slice at a time (protocol.md, "flush-tube").

A flush takes effect when its command runs: the tube's ready, delayed, buried and
held lists are swapped for empty ones in one step, so from then on reserve, peek,
kick and the stats see none of those jobs, and jobs put afterwards are not touched.
The rest runs in slices of at most SLICE_SECONDS, one per loop turn, so other
clients are served meanwhile (a million jobs used to hold the loop for over a
second): first the old lists are walked and their jobs collected (each marked
FLUSHED, which also drops the stale duplicates a lazy heap has); then the one
FLUSH record naming them is written and the client hears `FLUSHED <n>`; then the
jobs are freed.

Until it is freed a flushed job is still in the engine's id index but counts as
gone: `hides(job)` says so for the lookups by id (peek, delete, kick-job,
reserve-job, job-info, unique keys, tags, the delay timer, compaction). The rule
needs no mark on each job, so it holds from the first moment: a job of a tube with
a flush in progress was flushed if its id had been taken when the flush began,
unless the job was reserved then or came in later from another tube (a dead
letter); those are `kept`.

A crash before the record brings every flushed job back, as if the flush had never
run (its client was never told it had): no job is freed before the record, and
compaction, which does not copy hidden jobs, keeps the old segments while a flush
is unlogged (`Flusher.unlogged`). One exception keeps unique keys unique: a put-ex
that wants the key of a flushed job logs that job's DELETE first (`give_up_key`).
Imports: `job`, `errors`, stdlib.
"""

import array
import collections
import itertools
import sys
import time
from operator import itemgetter

from qserver.errors import QueueError
from qserver.job import FLUSHED

SLICE_SECONDS = 0.010       # a flush never holds the loop longer than this per turn
CHUNK = 1024


def hides(job) -> bool:
    """Whether a job still in the id index was flushed. Call only when its tube has
    a flush in progress (`job.tube.flushes`); the latest flush's rule covers the
    jobs of the earlier ones too (none of those was reserved or came in since)."""
    latest = job.tube.flushes[-1]
    return job.id <= latest.last_id and job.id not in latest.kept


class Flush:
    """One flush-tube: the lists it took, the jobs it collected, who waits."""

    __slots__ = ("tube", "last_id", "kept", "chunks", "index_lists", "gone", "logged",
                 "freeing", "answer", "error")

    def __init__(self, engine, tube, lists):
        self.tube = tube
        self.last_id = engine.next_id - 1
        self.kept = {job.id for job in engine.reserved_in(tube)}
        ready, delayed, buried, held, self.index_lists = lists
        self.chunks = _chunks(ready, delayed, buried, held)
        self.gone = array.array("Q")    # the ids the FLUSH record names
        self.logged = False             # the record is written: the reply can go
        self.freeing = None             # chunks of `gone` once logged
        self.answer = None              # called with the Flush once logged
        self.error = None               # the log's error if the record failed

    def count(self) -> int:
        return len(self.gone)

    def collect(self, engine, stop: float) -> bool:
        """Mark the old lists' jobs FLUSHED and note their ids until perf_counter()
        passes `stop`; True when every list is walked."""
        jobs, tube, last_id, kept, gone = engine.jobs, self.tube, self.last_id, \
            self.kept, self.gone
        clock = time.perf_counter
        for ids in self.chunks:
            for job_id in ids:
                job = jobs.get(job_id)
                if job is not None and job.tube is tube and job.state != FLUSHED \
                        and job_id <= last_id and job_id not in kept:
                    job.state = FLUSHED
                    gone.append(job_id)
            if clock() > stop:
                return False
        return True

    def free(self, engine, stop: float) -> bool:
        """Forget collected jobs until perf_counter() passes `stop`; True when done."""
        if self.freeing is None:
            gone = self.gone
            self.freeing = itertools.chain(
                (gone[start:start + CHUNK] for start in range(0, len(gone), CHUNK)),
                _emptied(self.index_lists))
        jobs, forget = engine.jobs, engine.forget_flushed
        deleted = engine.flusher.deleted
        clock = time.perf_counter
        for ids in self.freeing:
            for job_id in ids:
                job = jobs.get(job_id)
                if job is None:
                    continue
                logged = job_id in deleted      # its own DELETE went (give_up_key)
                if logged:
                    deleted.discard(job_id)
                forget(job, logged)
            if clock() > stop:
                return False
        return True


def _chunks(ready: dict, delayed: list, buried: dict, held: list):
    """The ids in the old lists, CHUNK at a time, taken out of the lists as they go
    so that their memory is freed a little each turn too (dropping a million
    entries at once holds the loop for 50-200 ms). A job can have stale entries in
    several lists; the first one that finds it marks it FLUSHED."""
    for heap in ready.values():             # pri -> heap of ids (tube.py)
        while heap:
            chunk = heap[-CHUNK:]
            del heap[-CHUNK:]
            yield chunk
    while delayed:
        chunk = delayed[-CHUNK:]
        del delayed[-CHUNK:]
        yield map(itemgetter(1), chunk)
    while buried:
        yield [buried.popitem()[0] for _ in range(min(CHUNK, len(buried)))]
    yield [job.id for job in held]


def _emptied(index_lists):
    """The tube's old list-jobs index lists, emptied CHUNK entries at a time."""
    for entries in index_lists:
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
        self.deleted = set()        # flushed jobs whose DELETE give_up_key logged

    @property
    def unlogged(self) -> bool:
        return any(not flush.logged for flush in self.queue)

    def start(self, tube_name: str):
        """Flush the tube now (its lists are emptied at once); returns the Flush,
        or None when there is no such tube. When its first slice did not log it,
        its `answer` is called once it is logged."""
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
        if not flush.logged:
            if not flush.collect(self.engine, stop):
                return
            self._log(flush)
            if time.perf_counter() > stop:
                return
        if flush.free(self.engine, stop):
            self.queue.popleft()
            tube = flush.tube
            tube.flushes.remove(flush)
            if not tube.flushes:
                tube.flushes = None

    def _log(self, flush) -> None:
        if flush.gone:
            try:
                self.engine.log.flush(flush.tube.name, _little_endian(flush.gone))
            except QueueError as error:
                # The log could not take the record (it said why in the server's
                # log): the client hears the error, and the jobs are freed all the
                # same; they come back with their records if the server restarts
                # before compaction has dropped those.
                flush.error = error
        flush.logged = True
        if flush.error is None:
            self.total += flush.count()
        if flush.answer is not None:
            flush.answer(flush)

    # -- the lookups that must not see a flushed job ----------------------------

    def give_up_key(self, job) -> None:
        """A put-ex wants the unique key of a flushed job that is not freed yet:
        log that job's DELETE now (a crash before the flush's record must not
        bring back both) and free the key; the flush frees the job as usual."""
        self.engine.log.delete(job)
        self.deleted.add(job.id)
        self.engine.steering.drop_key(job)

    def kept(self, job) -> None:
        """A job came into a tube with flushes in progress (a dead letter)."""
        for flush in job.tube.flushes:
            flush.kept.add(job.id)


def _little_endian(ids):
    if sys.byteorder != "little":
        ids = array.array("Q", ids)
        ids.byteswap()
    return ids
