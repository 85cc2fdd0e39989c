"""The log's record codec (format version 1, documented in protocol.md, "Persistence").

A segment file starts with a header: magic `QSLOG`, a format version byte, two zero
bytes, and the next job id at the time the segment was created. Then records follow,
each framed as `u32 length, u32 crc32(payload), payload`; a zero length marks the end
of the data (segments are preallocated with zeros). Payload types:

* JOB:    the whole job as it is now (written by put and by compaction);
* STATE:  a job's changed fields (release, bury, kick, kick-job, reserve-job);
* DELETE: the job is gone.

All integers are little-endian. Times in records are wall-clock seconds (float64):
`created` for age, `due` for a delayed job's absolute due time.
Imports: `job`, stdlib.
"""

import struct
import zlib

from qserver.job import BURIED, DELAYED, READY, RESERVED, Job, pack_counts

MAGIC = b"QSLOG"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<5sBxxQ")        # magic, version, next id
RECORD_HEADER = struct.Struct("<II")             # payload length, crc32

JOB, STATE, DELETE = 1, 2, 3

# type, id, pri, delay, ttr, state, created, due, reserves, timeouts, releases,
# buries, kicks, bury order, tube-name length, body length (the body keeps its CRLF)
JOB_FIXED = struct.Struct("<BQIIIBddIIIIIQHI")
# type, id, pri, delay, state, due, reserves, timeouts, releases, buries, kicks, bury order
STATE_FIXED = struct.Struct("<BQIIBdIIIIIQ")
DELETE_FIXED = struct.Struct("<BQ")

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


def _encoded_name(name: str) -> bytes:
    raw = _ENCODED_NAMES.get(name)
    if raw is None:
        raw = name.encode("ascii")
        if len(_ENCODED_NAMES) < 65536:
            _ENCODED_NAMES[name] = raw
    return raw


def job_record_size(job) -> int:
    return RECORD_HEADER.size + JOB_FIXED.size + len(job.tube.name) + len(job.body)


def state_record(job, due: float) -> list:
    fixed = STATE_FIXED.pack(STATE, job.id, job.pri, job.delay, job.state, due,
                             job.reserves, job.timeouts, job.releases, job.buries,
                             job.kicks, job.bury_seq)
    return _framed(fixed)


def delete_record(job_id: int) -> list:
    return _framed(DELETE_FIXED.pack(DELETE, job_id))


def decode(payload, file_index: int, jobs: dict) -> int:
    """Apply one verified payload to `jobs` (id -> Job as the log describes it);
    returns the job id.

    Jobs come back with `tube` holding the tube's name, `state` the logged state,
    and `deadline` the wall-clock due time of a delayed job or the bury order of a
    buried one; `Engine.restore` turns them into live jobs.
    """
    kind = payload[0]
    if kind == JOB:
        (_, job_id, pri, delay, ttr, state, created, due, reserves, timeouts, releases,
         buries, kicks, bury_seq, name_len, body_len) = JOB_FIXED.unpack_from(payload)
        start = JOB_FIXED.size
        if start + name_len + body_len != len(payload):
            raise ValueError("JOB record lengths do not add up")
        name = _tube_name(payload[start:start + name_len])
        job = Job(job_id, name, pri, delay, ttr, bytes(payload[start + name_len:]), created)
        job.file = file_index
        _set_state(job, state, due, bury_seq, reserves, timeouts, releases, buries, kicks)
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
        return job_id
    raise ValueError(f"unknown record type {kind}")


def _set_state(job, state, due, bury_seq, *counters) -> None:
    if state not in (READY, RESERVED, DELAYED, BURIED):
        raise ValueError(f"unknown job state {state}")
    job.state = state
    job.deadline = due if state == DELAYED else bury_seq if state == BURIED else 0.0
    job.counts = pack_counts(*counters)


_NAMES = {}


def _tube_name(raw) -> str:
    """Decode a tube name once per distinct name (millions of records share few)."""
    raw = bytes(raw)
    name = _NAMES.get(raw)
    if name is None:
        name = _NAMES[raw] = raw.decode("ascii")
    return name
