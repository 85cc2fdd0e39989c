"""The append-only log (`-b DIR`): writing, fsync policy, rotation and compaction.

Every logged change is written to the OS (one `pwritev`) before the command's reply
is produced, so a process crash never loses an acknowledged change. The fsync policy
decides what survives a power loss:

* `-f 0` (ALWAYS): replies that acknowledge a change are held until an fsync covers
  their record; one fsync (in a worker thread) covers everything written meanwhile,
  so concurrent clients share fsyncs (group commit);
* `-f MS` (INTERVAL): an fsync runs at most MS ms after any write, by timer, even if
  no further write comes;
* `-F` (NEVER): no fsync.

Compaction keeps disk use proportional to live data: when the log grows past twice
the live data plus two segments, a sweep rewrites every live job whose latest full
record sits in an older segment into the current one, a slice at a time, and then
deletes the older segments. No job, however old, can pin a file.

The journal talks to the event loop only through the small `scheduler` it is given
(call_soon, call_later, run_in_thread, clock). Imports: `journal.*`, `job`, `errors`.
"""

import collections
import logging
import math
import os
import time
from operator import attrgetter

from qserver.errors import InternalError, OutOfMemory
from qserver.job import COMPLETED, DEAD, DELAYED
from qserver.journal import records
from qserver.journal.replay import CorruptLog, Recovery, replay
from qserver.journal.segments import (LogDirError, create_segment, list_segments,
                                      lock_dir, remove_segment, segment_path, sync_dir)

_BODY = attrgetter("body")
_TUBE_NAME = attrgetter("tube.name")

__all__ = ["Journal", "CorruptLog", "LogDirError", "Recovery"]

log = logging.getLogger("qserver")

ALWAYS, INTERVAL, NEVER = "always", "interval", "never"
SWEEP_SLICE_SECONDS = 0.010     # compaction never holds the loop longer than this


class Journal:
    def __init__(self, directory: str, segment_size: int, fsync_ms, scheduler):
        self.directory = directory
        self.segment_size = segment_size
        if fsync_ms is None:
            self.mode = NEVER
        else:
            self.mode = ALWAYS if fsync_ms == 0 else INTERVAL
        self.interval = (fsync_ms or 0) / 1000.0
        self.holds_replies = self.mode == ALWAYS
        self.scheduler = scheduler
        self.lock_fd = lock_dir(directory)
        # Room kept at the end of each segment for deletes, so that deletes keep
        # working when the disk is full and no new segment can be made.
        self.delete_reserve = max(64 * records.DELETE_RECORD_SIZE,
                                  min(segment_size // 8, 1 << 20))
        self.engine = None
        self.fd = None
        self.current_index = 0
        self.offset = 0
        self.capacity = 0
        self.sizes = {}             # older segment index -> used bytes
        self.older_bytes = 0        # sum of self.sizes
        self.live_bytes = 0         # bytes of the latest JOB record of every live job
        self.written = 0            # records written (also stats binlog-records-written)
        self.synced = 0             # records covered by a completed fsync
        self.migrated = 0
        self.retired = []           # fds of older segments awaiting their last fsync
        self.sync_pending = False
        self.sync_running = False
        self.last_sync = -math.inf
        self.waiters = collections.deque()  # (record count, callback) awaiting fsync
        self.sweep = None
        self.out_of_space = False
        self.batch = None           # the Batch collecting records, inside atomic()

    # -- startup ----------------------------------------------------------------

    def recover(self, salvage: bool = False) -> Recovery:
        """Read the existing segments (oldest first)."""
        indexes = list_segments(self.directory)
        result = replay(self.directory, indexes, salvage) if indexes else Recovery()
        self.sizes = dict(result.sizes)
        self.older_bytes = sum(self.sizes.values())
        self._trim(self.sizes)
        self.current_index = indexes[-1] if indexes else 0
        return result

    def _trim(self, sizes: dict) -> None:
        """Cut segments read back to their data: a crash leaves the newest one
        preallocated at full size, and it must not cost disk for ever."""
        for index, used in list(sizes.items()):
            path = segment_path(self.directory, index)
            if used == 0:                   # created but never written: drop it
                remove_segment(self.directory, index)
                del sizes[index]
            elif os.path.getsize(path) > used:
                os.truncate(path, used)

    def start(self, engine) -> None:
        """Begin writing into a fresh segment after the newest one found."""
        self.engine = engine
        # records.job_record_size of every job, summed at C speed (a million jobs).
        jobs = engine.jobs.values()
        self.live_bytes += len(jobs) * records.JOB_RECORD_FIXED \
            + sum(map(len, map(_BODY, jobs))) + sum(map(len, map(_TUBE_NAME, jobs)))
        for record in engine.lifecycle.ledger.records.values():
            self.live_bytes += records.framed_size(records.finished_record(record, 0.0))
        for job_id, history in engine.histories.items():
            history.logged_size = records.framed_size(
                records.lifecycle_record(job_id, history))
            self.live_bytes += history.logged_size
        for job_id, meta in engine.meta.items():
            meta.logged_size = records.framed_size(records.meta_record(job_id, meta))
            self.live_bytes += meta.logged_size
        self._open_segment(self.current_index + 1, self.segment_size)

    @property
    def oldest_index(self) -> int:
        return min(self.sizes, default=self.current_index)

    # -- the engine's hooks -----------------------------------------------------

    def put(self, job) -> None:
        """Log a new job; OUT_OF_MEMORY when the log cannot take it."""
        try:
            self._write_job(job)
        except OSError as error:
            self._report_failure("put", error)
            raise OutOfMemory from None
        self.live_bytes += records.job_record_size(job)

    def reserve_update(self) -> None:
        """Make sure the next `update` will fit; INTERNAL_ERROR when it cannot."""
        try:
            self._make_room(records.STATE_RECORD_SIZE, for_delete=False)
        except OSError as error:
            self._report_failure("update", error)
            raise InternalError from None

    def update(self, job) -> None:
        try:
            self._write(records.state_record(job, self._due(job)),
                        records.STATE_RECORD_SIZE, for_delete=False)
        except OSError as error:
            self._report_failure("update", error)
            raise InternalError from None

    def delete(self, job) -> None:
        try:
            self._write(records.delete_record(job.id), records.DELETE_RECORD_SIZE,
                        for_delete=True)
        except OSError as error:
            self._report_failure("delete", error)
            raise InternalError from None
        self.live_bytes -= records.job_record_size(job) + self._sidecar_bytes(job.id)

    def _sidecar_bytes(self, job_id: int) -> int:
        """Forget the logged size of a going job's LIFECYCLE and META records (they
        are written again if its record is retained); returns it."""
        size = 0
        for table in (self.engine.histories, self.engine.meta):
            if table:
                extra = table.get(job_id)
                if extra is not None:
                    size += extra.logged_size
                    extra.logged_size = 0
        return size

    # -- the lifecycle's hooks (protocol.md, "Extensions and the log") ----------

    def reserve(self, size: int) -> None:
        """Make sure records of `size` bytes in all will fit; INTERNAL_ERROR else."""
        try:
            self._make_room(size, for_delete=False)
        except OSError as error:
            self._report_failure("update", error)
            raise InternalError from None

    def moved(self, job, old_tube_name: str) -> None:
        """A job changed tubes (a dead letter): its whole record again."""
        self.live_bytes += len(job.tube.name) - len(old_tube_name)
        self._guarded("move", self._write_job, job)

    def policy(self, tube_name: str, policy) -> None:
        self._guarded("policy", self._write_buffers,
                      records.policy_record(tube_name, policy.to_text()))

    def lifecycle(self, job_id: int, history) -> None:
        size = self._guarded("lifecycle", self._write_buffers,
                             records.lifecycle_record(job_id, history))
        self.live_bytes += size - history.logged_size
        history.logged_size = size

    def meta(self, job_id: int, meta) -> None:
        size = self._guarded("meta", self._write_buffers, records.meta_record(job_id, meta))
        self.live_bytes += size - meta.logged_size
        meta.logged_size = size

    def flush(self, tube_name: str, job_ids) -> None:
        """flush-tube: one record naming every job it removed (each was `forget`-ed
        before)."""
        buffers = records.flush_record(tube_name, job_ids)
        self.reserve(records.framed_size(buffers))
        self._guarded("flush", self._write_buffers, buffers)

    def forget(self, job) -> None:
        """A job goes by flush-tube: its bytes stop counting as live now, its record
        comes later (`flush`)."""
        self.live_bytes -= records.job_record_size(job) + self._sidecar_bytes(job.id)

    def finished(self, record) -> None:
        size = self._guarded("finished", self._write_finished, record)
        self.live_bytes += size

    def expired(self, record, history) -> None:
        """A retained record ran out (not logged: replay drops it by its expiry)."""
        self.live_bytes -= records.framed_size(records.finished_record(record, 0.0))
        if history is not None:
            self.live_bytes -= history.logged_size
        meta = self.engine.meta.get(record.id)
        if meta is not None:
            self.live_bytes -= meta.logged_size

    def _guarded(self, what: str, write, item) -> int:
        try:
            return write(item)
        except OSError as error:
            self._report_failure(what, error)
            raise InternalError from None

    # -- writing ----------------------------------------------------------------

    def _write_job(self, job) -> None:
        size = records.job_record_size(job)
        self._write(records.job_record(job, self._due(job)), size, for_delete=False)
        job.file = self.current_index

    def _write_buffers(self, buffers: list) -> int:
        size = records.framed_size(buffers)
        self._write(buffers, size, for_delete=False)
        return size

    def _write_sidecars(self, job_id: int) -> None:
        """A job's LIFECYCLE and META records again, after its rewritten record."""
        engine = self.engine
        history = engine.histories.get(job_id) if engine.histories else None
        if history is not None:
            self._write_buffers(records.lifecycle_record(job_id, history))
        meta = engine.meta.get(job_id) if engine.meta else None
        if meta is not None:
            self._write_buffers(records.meta_record(job_id, meta))

    def _write_finished(self, record) -> int:
        expires = time.time() + (record.deadline - self.scheduler.clock())
        size = self._write_buffers(records.finished_record(record, expires))
        record.file = self.current_index
        return size

    def _due(self, job) -> float:
        """A delayed job's due time on the wall clock, for the record."""
        if job.state != DELAYED:
            return 0.0
        return time.time() + (job.deadline - self.scheduler.clock())

    def atomic(self) -> "Batch":
        """`with journal.atomic():` collects every record written inside and sends
        them in one pwritev at the end, so a process killed in the middle of a
        command that writes several records leaves all of them or none."""
        return Batch(self)

    def _write(self, buffers: list, size: int, for_delete: bool) -> None:
        batch = self.batch
        if batch is not None:
            batch.add(buffers, size, for_delete)
            return
        self._write_now(buffers, size, for_delete, 1)

    def _write_now(self, buffers: list, size: int, for_delete: bool, count: int) -> None:
        self._make_room(size, for_delete)
        offset = self.offset
        try:
            done = os.pwritev(self.fd, buffers, offset)
        except OSError:
            self._scrub(offset, size)
            raise
        if done != size:
            self._scrub(offset, size)
            raise OSError(f"short write to the log ({done} of {size} bytes)")
        self.offset = offset + size
        self.written += count
        self._schedule_sync()
        self._maybe_compact()

    def _scrub(self, offset: int, size: int) -> None:
        """Zero a failed write so a partial record cannot look like data."""
        try:
            os.pwrite(self.fd, bytes(size), offset)
        except OSError:
            pass

    def _make_room(self, size: int, for_delete: bool) -> None:
        limit = self.capacity if for_delete else self.capacity - self.delete_reserve
        if self.offset + size > limit:
            self._rotate(size)

    def _rotate(self, need: int) -> None:
        """Move on to a new segment big enough for a record of `need` bytes."""
        capacity = max(self.segment_size,
                       records.SEGMENT_HEADER.size + need + self.delete_reserve)
        old_fd, old_index, old_used = self.fd, self.current_index, self.offset
        self._open_segment(old_index + 1, capacity)
        os.ftruncate(old_fd, old_used)      # hand back the unused preallocation
        self.sizes[old_index] = old_used
        self.older_bytes += old_used
        if self.mode == NEVER:
            os.close(old_fd)
        else:
            self.retired.append(old_fd)

    def _open_segment(self, index: int, capacity: int) -> None:
        next_id = self.engine.next_id if self.engine else 1
        try:
            fd = create_segment(self.directory, index, capacity, next_id)
        except OSError as error:
            self.out_of_space = True
            raise error
        if self.out_of_space:
            log.warning("log writes resumed in segment %d", index)
            self.out_of_space = False
        if self.mode != NEVER:
            sync_dir(self.directory)
        self.fd, self.current_index = fd, index
        self.offset, self.capacity = records.SEGMENT_HEADER.size, capacity

    def _report_failure(self, what: str, error: OSError) -> None:
        log.error("log write failed (%s): %s", what, error)

    # -- fsync ------------------------------------------------------------------

    def when_synced(self, callback) -> None:
        """Call `callback()` once everything written so far is fsynced."""
        if self.synced >= self.written:
            callback()
            return
        self.waiters.append((self.written, callback))
        self._schedule_sync()

    def _schedule_sync(self) -> None:
        if self.mode == NEVER or self.sync_pending:
            return
        self.sync_pending = True
        if self.mode == ALWAYS:
            self.scheduler.call_soon(self._start_sync)
        else:
            wait = self.last_sync + self.interval - self.scheduler.clock()
            self.scheduler.call_later(max(0.0, wait), self._start_sync)

    def _start_sync(self) -> None:
        self.sync_pending = False
        if self.sync_running:
            return                  # _sync_done schedules the next round
        if self.synced >= self.written and not self.retired:
            return
        target = self.written
        fds, retired = [self.fd, *self.retired], self.retired
        self.retired = []
        self.sync_running = True
        self.scheduler.run_in_thread(lambda: _fsync_all(fds, retired),
                                     lambda error: self._sync_done(target, error))

    def _sync_done(self, target: int, error) -> None:
        self.sync_running = False
        self.last_sync = self.scheduler.clock()
        if error is not None:
            log.critical("fsync of the log failed: %s", error)
        self.synced = max(self.synced, target)
        waiters = self.waiters
        while waiters and waiters[0][0] <= self.synced:
            waiters.popleft()[1]()
        if self.written > self.synced or self.retired:
            self._schedule_sync()

    def flush_and_close(self) -> None:
        """At shutdown: fsync everything (unless -F), send what waited for it, and
        release the directory."""
        if self.fd is not None and self.mode != NEVER:
            _fsync_all([self.fd, *self.retired], self.retired)
            self.retired = []
        self.synced = self.written
        while self.waiters:
            self.waiters.popleft()[1]()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        os.close(self.lock_fd)

    # -- compaction -------------------------------------------------------------

    def total_bytes(self) -> int:
        return self.older_bytes + self.offset

    def _maybe_compact(self) -> None:
        if self.older_bytes + self.offset > 2 * (self.live_bytes + self.segment_size) \
                and self.sweep is None and self.sizes:
            self._start_sweep()

    def _start_sweep(self) -> None:
        try:
            self._rotate(0)
        except OSError:
            return                  # no space to compact into; try again later
        boundary = self.current_index
        self.sweep = (boundary, [], 0)    # claimed: the writes below start no other
        engine = self.engine
        try:
            for name, policy in engine.policies.items():
                self._write_buffers(records.policy_record(name, policy.to_text()))
        except OSError:
            self.sweep = None
            return
        # Retained records are swept like jobs; a job id is live or retained, not both.
        ids = list(engine.jobs)
        ids += engine.lifecycle.ledger.records
        self.sweep = (boundary, ids, 0)
        log.debug("compaction started: log %d bytes, live %d bytes", self.total_bytes(),
                  self.live_bytes)
        # Listing a million ids takes about as long as a slice: the first slice
        # waits for the next loop turn, so no turn holds the loop for both.
        self.scheduler.call_soon(self._sweep_slice)

    def _sweep_slice(self) -> None:
        """Rewrite older jobs into the current segment for at most one slice of time."""
        boundary, ids, pos = self.sweep
        find = self.engine.find             # not a job being flushed (flush.py)
        retained = self.engine.lifecycle.ledger.records
        clock = time.perf_counter           # real time spent, whatever the loop's clock
        stop = clock() + SWEEP_SLICE_SECONDS
        try:
            while pos < len(ids):
                job_id = ids[pos]
                job = find(job_id) or retained.get(job_id)
                pos += 1
                if job is not None and job.file < boundary:
                    if job.state == COMPLETED or job.state == DEAD:
                        self._write_finished(job)
                    else:
                        self._write_job(job)
                    self.migrated += 1
                    self._write_sidecars(job_id)
                if pos % 256 == 0 and clock() > stop:
                    break
        except OSError as error:
            log.warning("compaction paused: %s", error)
            self.sweep = None
            return
        self.sweep = (boundary, ids, pos)
        if pos < len(ids):
            self.scheduler.call_soon(self._sweep_slice)
        elif self.mode == NEVER:
            self._finish_sweep(boundary)
        else:
            self.when_synced(lambda: self._finish_sweep(boundary))

    def _finish_sweep(self, boundary: int) -> None:
        """Every live job now has its latest JOB record at or after `boundary`: the
        older segments go, one per loop turn (unlinking a big file takes time).
        Not while a flush-tube is unlogged: the sweep skipped the jobs it took, whose
        JOB records are in those segments, and a crash before its FLUSH record must
        bring them back."""
        if self.engine.flusher.unlogged:
            self.scheduler.call_later(0.05, lambda: self._finish_sweep(boundary))
            return
        older = sorted(i for i in self.sizes if i < boundary)
        if older:
            index = older[0]
            remove_segment(self.directory, index)
            self.older_bytes -= self.sizes.pop(index)
        if len(older) > 1:
            self.scheduler.call_soon(lambda: self._finish_sweep(boundary))
            return
        if self.mode != NEVER:
            sync_dir(self.directory)
        self.sweep = None
        log.info("compaction done: log is %d bytes, %d live", self.total_bytes(),
                 self.live_bytes)


def _fsync_all(fds, retired) -> None:
    for fd in fds:
        os.fsync(fd)
    for fd in retired:
        os.close(fd)


class Batch:
    """The records of one command, written together (Journal.atomic)."""

    IOV_MAX = 1024                  # buffers one pwritev may take

    def __init__(self, journal):
        self.journal = journal
        self.buffers = []
        self.size = 0
        self.count = 0
        self.for_delete = True
        self.outer = False

    def add(self, buffers: list, size: int, for_delete: bool) -> None:
        self.buffers += buffers
        self.size += size
        self.count += 1
        self.for_delete = self.for_delete and for_delete

    def __enter__(self):
        journal = self.journal
        if journal.batch is None:
            journal.batch = self
            self.outer = True
        return journal.batch

    def __exit__(self, kind, error, trace) -> bool:
        if not self.outer:
            return False            # a nested atomic(): the outer one writes
        journal = self.journal
        journal.batch = None
        if not self.count:
            return False
        buffers, size, count = self.buffers, self.size, self.count
        if count > 1:               # replay applies the group whole or not at all
            group = records.group_record(count)
            buffers = group + buffers
            size += records.framed_size(group)
            count += 1
        if len(buffers) > self.IOV_MAX:
            buffers = [b"".join(buffers)]
        try:
            journal._write_now(buffers, size, self.for_delete, count)
        except OSError as failure:
            journal._report_failure("write", failure)
            if kind is None:
                raise InternalError from None
        return False

