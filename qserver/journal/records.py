"""The log's record codec (format version 2, documented in protocol.md, "Persistence"
and "Extensions and the log").

A segment file starts with a header: magic `QSLOG`, a format version byte, two zero
bytes, and the next job id at the time the segment was created. Then records follow,
each framed as `u32 length, u32 crc32(payload), payload`; a zero length marks the end
of the data (segments are preallocated with zeros). Payload types:

* JOB:    the whole job as it is now (written by put and by compaction);
* STATE:  a job's changed fields (release, bury, kick, kick-job, reserve-job);
* DELETE: the job is gone.
* POLICY: a tube's policy (config-tube), as its `name value` text;
* LIFECYCLE: a job's attempts, last failures, progress and result (full snapshot);
* FINISHED: a retained record of a completed or dead job (no body);
* META: a put-ex job's key, tags and cancelled flag (full snapshot);
* FLUSH: the ids of the jobs flush-tube removed, in one record;
* GROUP: the next N records are one command's and apply all together or not at all.

Version 1 logs (types 1-3 only) are read as they are.
Imports: `job`, `ledger`, `lifecycle`, `policy`, `steering`, stdlib.

All integers are little-endian. Times in records are wall-clock seconds (float64):
`created` for age, `due` for a delayed job's absolute due time.
"""

import struct
import zlib

from qserver.job import (BURIED, COMPLETED, DEAD, DELAYED, READY, RESERVED, Job,
                         pack_counts)
from qserver.ledger import TubeRef
from qserver.lifecycle import History
from qserver.policy import Policy
from qserver.steering import Meta

MAGIC = b"QSLOG"
VERSION = 2
READABLE_VERSIONS = (1, 2)
SEGMENT_HEADER = struct.Struct("<5sBxxQ")        # magic, version, next id
RECORD_HEADER = struct.Struct("<II")             # payload length, crc32

JOB, STATE, DELETE, POLICY, LIFECYCLE, FINISHED, META, FLUSH, GROUP = range(1, 10)
KINDS = (JOB, STATE, DELETE, POLICY, LIFECYCLE, FINISHED, META, FLUSH, GROUP)

# type, id, pri, delay, ttr, state, created, due, reserves, timeouts, releases,
# buries, kicks, bury order, tube-name length, body length (the body keeps its CRLF)
JOB_FIXED = struct.Struct("<BQIIIBddIIIIIQHI")
# type, id, pri, delay, state, due, reserves, timeouts, releases, buries, kicks, bury order
STATE_FIXED = struct.Struct("<BQIIBdIIIIIQ")
DELETE_FIXED = struct.Struct("<BQ")
# type, tube-name length; then the name and the policy text
POLICY_FIXED = struct.Struct("<BH")
# type, id, attempts, failure count, progress length, result length (NONE: absent);
# then progress, result, and per failure (time f64, reason length u16, reason)
LIFECYCLE_FIXED = struct.Struct("<BQIBII")
FAILURE_FIXED = struct.Struct("<dH")
NONE = 0xFFFFFFFF
# type, id, state, expires (wall clock), pri, delay, ttr, created, reserves, timeouts,
# releases, buries, kicks, tube-name length; then the tube name
FINISHED_FIXED = struct.Struct("<BQBdIIIdIIIIIH")
# type, id, cancelled, key length and lock length (0xFFFF: none), tag count; then the
# key, the lock, then each tag as (u16 length, tag)
META_FIXED = struct.Struct("<BQBHHB")
NO_KEY = 0xFFFF
SHORT = struct.Struct("<H")
# type, tube-name length, job count; then the name and the ids (u64 each)
FLUSH_FIXED = struct.Struct("<BHI")
# type, how many records follow that belong to the group
GROUP_FIXED = struct.Struct("<BI")

STATE_RECORD_SIZE = RECORD_HEADER.size + STATE_FIXED.size
DELETE_RECORD_SIZE = RECORD_HEADER.size + DELETE_FIXED.size


def segment_header(next_id: int) -> bytes:
    return SEGMENT_HEADER.pack(MAGIC, VERSION, next_id)


def _framed(*parts) -> list:
    crc = 0
    length = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
        length += len(part)
    return [RECORD_HEADER.pack(length, crc), *parts]


def job_record(job, due: float) -> list:
    """A JOB record as a list of buffers (for os.pwritev, no copying of the body)."""
    name = _encoded_name(job.tube.name)
    counts = job.counts
    fixed = JOB_FIXED.pack(JOB, job.id, job.pri, job.delay, job.ttr, job.state,
                           job.created, due, counts & _U32, (counts >> 32) & _U32,
                           (counts >> 64) & _U32, (counts >> 96) & _U32,
                           (counts >> 128) & _U32, job.bury_seq, len(name), len(job.body))
    body = job.body
    crc = zlib.crc32(body, zlib.crc32(name, zlib.crc32(fixed)))
    return [RECORD_HEADER.pack(len(fixed) + len(name) + len(body), crc), fixed, name, body]


_U32 = 0xFFFFFFFF
_ENCODED_NAMES = {}
# decode's last JOB record: [pri, created, raw tube name, its length, tube name].
_last = [None, None, None, -1, None]


def _encoded_name(name: str) -> bytes:
    raw = _ENCODED_NAMES.get(name)
    if raw is None:
        raw = name.encode("ascii")
        if len(_ENCODED_NAMES) < 65536:
            _ENCODED_NAMES[name] = raw
    return raw


JOB_RECORD_FIXED = RECORD_HEADER.size + JOB_FIXED.size


def job_record_size(job) -> int:
    return JOB_RECORD_FIXED + len(job.tube.name) + len(job.body)


def state_record(job, due: float) -> list:
    fixed = STATE_FIXED.pack(STATE, job.id, job.pri, job.delay, job.state, due,
                             job.reserves, job.timeouts, job.releases, job.buries,
                             job.kicks, job.bury_seq)
    return _framed(fixed)


def delete_record(job_id: int) -> list:
    return _framed(DELETE_FIXED.pack(DELETE, job_id))


def policy_record(tube_name: str, policy_text: str) -> list:
    name = _encoded_name(tube_name)
    return _framed(POLICY_FIXED.pack(POLICY, len(name)), name, policy_text.encode())


def lifecycle_record(job_id: int, history) -> list:
    progress, result = history.progress, history.result
    parts = [LIFECYCLE_FIXED.pack(
        LIFECYCLE, job_id, history.attempts, len(history.failures),
        NONE if progress is None else len(progress), NONE if result is None else len(result))]
    if progress:
        parts.append(progress)
    if result:
        parts.append(result)
    for when, reason in history.failures:
        parts.append(FAILURE_FIXED.pack(when, len(reason)))
        parts.append(reason)
    return _framed(*parts)


def finished_record(record, expires: float) -> list:
    name = _encoded_name(record.tube.name)
    counts = record.counts
    fixed = FINISHED_FIXED.pack(
        FINISHED, record.id, record.state, expires, record.pri, record.delay, record.ttr,
        record.created, counts & _U32, (counts >> 32) & _U32, (counts >> 64) & _U32,
        (counts >> 96) & _U32, (counts >> 128) & _U32, len(name))
    return _framed(fixed, name)


def meta_record(job_id: int, meta) -> list:
    key, lock = meta.key, meta.lock
    parts = [META_FIXED.pack(META, job_id, meta.cancelled, NO_KEY if key is None else len(key),
                             NO_KEY if lock is None else len(lock), len(meta.tags))]
    if key:
        parts.append(key)
    if lock:
        parts.append(lock)
    for tag in meta.tags:
        parts.append(SHORT.pack(len(tag)))
        parts.append(tag)
    return _framed(*parts)


def flush_record(tube_name: str, job_ids) -> list:
    """`job_ids`: an array("Q") in little-endian order (one buffer, no packing)."""
    name = _encoded_name(tube_name)
    return _framed(FLUSH_FIXED.pack(FLUSH, len(name), len(job_ids)), name,
                   memoryview(job_ids).cast("B"))


def group_record(count: int) -> list:
    return _framed(GROUP_FIXED.pack(GROUP, count))


def group_size(payload) -> int:
    """The record count of a GROUP payload, or 0 for any other record."""
    if payload[0] != GROUP:
        return 0
    _, count = GROUP_FIXED.unpack(payload)
    return count


def framed_size(buffers: list) -> int:
    return sum(len(part) for part in buffers)


def decode(payload, file_index: int, found) -> int:
    """Apply one verified payload to `found` (a journal.replay.Recovery: `jobs`,
    `policies`, `histories`, `finished`); returns the job id (0 for a policy).

    Jobs come back with `tube` holding the tube's name, `state` the logged state,
    and `deadline` the wall-clock due time of a delayed job or the bury order of a
    buried one; `Engine.restore` turns them into live jobs. Retained records come
    back with their wall-clock expiry in `deadline`.
    """
    kind = payload[0]
    jobs = found.jobs
    if kind == JOB:
        (_, job_id, pri, delay, ttr, state, created, due, reserves, timeouts, releases,
         buries, kicks, bury_seq, name_len, body_len) = JOB_FIXED.unpack_from(payload)
        start = JOB_FIXED.size
        if start + name_len + body_len != len(payload):
            raise ValueError("JOB record lengths do not add up")
        # Jobs logged one after another mostly share their tube, priority and
        # creation time (the same millisecond): share those objects as the live
        # server does (commands.creation_time, wire._number), 64 bytes a job.
        last = _last
        if pri == last[0]:
            pri = last[0]
        if created == last[1]:
            created = last[1]
        else:
            last[0], last[1] = pri, created
        if name_len == last[3] and payload[start:start + name_len] == last[2]:
            name = last[4]
        else:
            raw = bytes(payload[start:start + name_len])
            name = _tube_name(raw)
            last[2], last[3], last[4] = raw, name_len, name
        job = Job(job_id, name, pri, delay, ttr, bytes(payload[start + name_len:]), created)
        job.file = file_index
        if state == READY and not (reserves or timeouts or releases or buries or kicks):
            job.state = READY       # as Job() left it: the usual fresh job, quickly
        else:
            _set_state(job, state, due, bury_seq, reserves, timeouts, releases, buries,
                       kicks)
        jobs[job_id] = job
        return job_id
    if kind == STATE:
        (_, job_id, pri, delay, state, due, reserves, timeouts, releases, buries, kicks,
         bury_seq) = STATE_FIXED.unpack(payload)
        job = jobs.get(job_id)
        if job is not None:     # else its JOB record was compacted away: it is gone
            job.pri, job.delay = pri, delay
            _set_state(job, state, due, bury_seq, reserves, timeouts, releases, buries,
                       kicks)
        return job_id
    if kind == DELETE:
        _, job_id = DELETE_FIXED.unpack(payload)
        jobs.pop(job_id, None)
        found.histories.pop(job_id, None)
        found.finished.pop(job_id, None)
        found.meta.pop(job_id, None)
        return job_id
    if kind == LIFECYCLE:
        job_id, history = _decode_lifecycle(payload)
        if job_id in jobs or job_id in found.finished:
            found.histories[job_id] = history
        return job_id
    if kind == FINISHED:
        return _decode_finished(payload, file_index, found.finished)
    if kind == META:
        job_id, meta = _decode_meta(payload)
        if job_id in jobs or job_id in found.finished:
            found.meta[job_id] = meta
        return job_id
    if kind == FLUSH:
        _, name_len, count = FLUSH_FIXED.unpack_from(payload)
        start = FLUSH_FIXED.size + name_len
        if start + 8 * count != len(payload):
            raise ValueError("FLUSH record lengths do not add up")
        for job_id in struct.unpack_from(f"<{count}Q", payload, start):
            jobs.pop(job_id, None)
            found.histories.pop(job_id, None)
            found.meta.pop(job_id, None)
        return 0
    if kind == POLICY:
        _, name_len = POLICY_FIXED.unpack_from(payload)
        start = POLICY_FIXED.size
        name = _tube_name(payload[start:start + name_len])
        found.policies[name] = Policy.from_text(name, bytes(payload[start + name_len:])
                                                .decode("ascii"))
        return 0
    raise ValueError(f"unknown record type {kind}")


def _decode_lifecycle(payload) -> tuple:
    (_, job_id, attempts, count, progress_len,
     result_len) = LIFECYCLE_FIXED.unpack_from(payload)
    pos = LIFECYCLE_FIXED.size
    progress = result = None
    if progress_len != NONE:
        progress, pos = bytes(payload[pos:pos + progress_len]), pos + progress_len
    if result_len != NONE:
        result, pos = bytes(payload[pos:pos + result_len]), pos + result_len
    failures = []
    for _ in range(count):
        when, size = FAILURE_FIXED.unpack_from(payload, pos)
        pos += FAILURE_FIXED.size
        failures.append((when, bytes(payload[pos:pos + size])))
        pos += size
    if pos != len(payload):
        raise ValueError("LIFECYCLE record lengths do not add up")
    return job_id, History(attempts, tuple(failures), progress, result)


def _decode_meta(payload) -> tuple:
    _, job_id, cancelled, key_len, lock_len, count = META_FIXED.unpack_from(payload)
    pos = META_FIXED.size
    key = lock = None
    if key_len != NO_KEY:
        key, pos = bytes(payload[pos:pos + key_len]), pos + key_len
    if lock_len != NO_KEY:
        lock, pos = bytes(payload[pos:pos + lock_len]), pos + lock_len
    tags = []
    for _ in range(count):
        (size,) = SHORT.unpack_from(payload, pos)
        pos += SHORT.size
        tags.append(bytes(payload[pos:pos + size]))
        pos += size
    if pos != len(payload):
        raise ValueError("META record lengths do not add up")
    return job_id, Meta(key, tuple(tags), bool(cancelled), lock)


def _decode_finished(payload, file_index: int, finished: dict) -> int:
    (_, job_id, state, expires, pri, delay, ttr, created, reserves, timeouts, releases,
     buries, kicks, name_len) = FINISHED_FIXED.unpack_from(payload)
    start = FINISHED_FIXED.size
    if state not in (COMPLETED, DEAD) or start + name_len != len(payload):
        raise ValueError("bad FINISHED record")
    record = Job(job_id, TubeRef(_tube_name(payload[start:])), pri, delay, ttr, b"",
                 created)
    record.state = state
    record.deadline = expires
    record.counts = pack_counts(reserves, timeouts, releases, buries, kicks)
    record.file = file_index
    finished[job_id] = record
    return job_id


def _set_state(job, state, due, bury_seq, *counters) -> None:
    if state not in (READY, RESERVED, DELAYED, BURIED):
        raise ValueError(f"unknown job state {state}")
    job.state = state
    job.deadline = due if state == DELAYED else bury_seq if state == BURIED else 0.0
    job.counts = pack_counts(*counters)


_NAMES = {}
# decode's last JOB record: [pri, created, raw tube name, its length, tube name].
_last = [None, None, None, -1, None]


def _tube_name(raw) -> str:
    """Decode a tube name once per distinct name (millions of records share few)."""
    raw = bytes(raw)
    name = _NAMES.get(raw)
    if name is None:
        name = _NAMES[raw] = raw.decode("ascii")
    return name
