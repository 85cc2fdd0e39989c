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
    """A JOB record as a list of buffers (for os.writev, no copying of the body)."""
    name = job.tube.name.encode()
    fixed = JOB_FIXED.pack(JOB, job.id, job.pri, job.delay, job.ttr, job.state,
                           job.created, due, job.reserves, job.timeouts, job.releases,
                           job.buries, job.kicks, job.bury_seq, len(name), len(job.body))
    return _framed(fixed, name, job.body)


def job_record_size(job) -> int:
    return RECORD_HEADER.size + JOB_FIXED.size + len(job.tube.name) + len(job.body)


def state_record(job, due: float) -> list:
    fixed = STATE_FIXED.pack(STATE, job.id, job.pri, job.delay, job.state, due,
                             job.reserves, job.timeouts, job.releases, job.buries,
                             job.kicks, job.bury_seq)
    return _framed(fixed)


def delete_record(job_id: int) -> list:
    return _framed(DELETE_FIXED.pack(DELETE, job_id))


class JobImage:
    """A job as the log describes it, before it is loaded into an engine."""

    __slots__ = ("id", "tube", "pri", "delay", "ttr", "state", "created", "due",
                 "reserves", "timeouts", "releases", "buries", "kicks", "bury_seq",
                 "body", "file")


def decode(payload, file_index: int, images: dict) -> int:
    """Apply one verified payload to `images` (id -> JobImage); returns the job id."""
    kind = payload[0]
    if kind == JOB:
        (_, job_id, pri, delay, ttr, state, created, due, reserves, timeouts, releases,
         buries, kicks, bury_seq, name_len, body_len) = JOB_FIXED.unpack_from(payload)
        start = JOB_FIXED.size
        if start + name_len + body_len != len(payload):
            raise ValueError("JOB record lengths do not add up")
        image = JobImage()
        image.id, image.pri, image.delay, image.ttr, image.state = job_id, pri, delay, ttr, state
        image.created, image.due, image.bury_seq = created, due, bury_seq
        image.reserves, image.timeouts, image.releases = reserves, timeouts, releases
        image.buries, image.kicks = buries, kicks
        image.tube = bytes(payload[start:start + name_len]).decode()
        image.body = bytes(payload[start + name_len:])
        image.file = file_index
        images[job_id] = image
        return job_id
    if kind == STATE:
        (_, job_id, pri, delay, state, due, reserves, timeouts, releases, buries, kicks,
         bury_seq) = STATE_FIXED.unpack(payload)
        image = images.get(job_id)
        if image is not None:   # else its JOB record was compacted away: it is gone
            image.pri, image.delay, image.state, image.due = pri, delay, state, due
            image.reserves, image.timeouts, image.releases = reserves, timeouts, releases
            image.buries, image.kicks, image.bury_seq = buries, kicks, bury_seq
        return job_id
    if kind == DELETE:
        _, job_id = DELETE_FIXED.unpack(payload)
        images.pop(job_id, None)
        return job_id
    raise ValueError(f"unknown record type {kind}")
