"""Reading the log back at startup.

Every record is verified (length and crc32) before it is applied, so a record is
never half-applied. A bad record at the very end of the newest segment is a torn
write from a crash: it is cut off with a warning. A bad record anywhere else stops
startup with an error naming the file and offset, unless salvage was asked for; then
the bad bytes are skipped up to the next valid record and reported exactly.
Imports: `journal.records`, `journal.segments`, stdlib.
"""

import struct
import zlib

from qserver.journal.records import (GROUP, KINDS, MAGIC, READABLE_VERSIONS,
                                     RECORD_HEADER, SEGMENT_HEADER, decode, group_size)
from qserver.journal.segments import segment_path

_HEADER = RECORD_HEADER.size


class CorruptLog(Exception):
    """The log is damaged somewhere other than a torn tail."""


class Recovery:
    """What replay found: the jobs, policies, histories and retained records, the
    next id, segment sizes and what went wrong."""

    def __init__(self):
        self.jobs = {}          # id -> Job as logged (see records.decode)
        self.policies = {}      # tube name -> Policy
        self.histories = {}     # job id -> lifecycle.History
        self.finished = {}      # job id -> retained record, deadline = wall expiry
        self.meta = {}          # job id -> steering.Meta
        self.next_id = 1
        self.sizes = {}         # segment index -> bytes of valid data
        self.records = 0
        self.warnings = []      # torn tails cut off, gaps in numbering
        self.dropped = []       # byte ranges skipped under salvage


def replay(directory: str, indexes: list, salvage: bool = False) -> Recovery:
    result = Recovery()
    previous = None
    for index in indexes:
        if previous is not None and index != previous + 1:
            result.warnings.append(f"segments {previous + 1}..{index - 1} are missing")
        previous = index
        _replay_segment(directory, index, index == indexes[-1], salvage, result)
    return result


def _replay_segment(directory, index, newest, salvage, result) -> None:
    path = segment_path(directory, index)
    with open(path, "rb") as f:
        data = f.read()
    if not _check_header(path, data, newest, result):
        result.sizes[index] = 0
        return
    view = memoryview(data)
    pos = SEGMENT_HEADER.size
    size = len(data)
    unpack_from = RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    while pos < size:
        search_from = pos + 1
        if pos + _HEADER <= size:
            length, crc = unpack_from(data, pos)
            if length == 0 and crc == 0 and _all_zero(data, pos):
                break                   # the preallocated, never written tail
            # _valid and _apply_records, inline for the usual single record: a
            # million of them at a restart.
            start = pos + _HEADER
            stop = start + length
            if 0 < length and stop <= size and data[start] in KINDS \
                    and crc32(view[start:stop]) == crc:
                if data[start] != GROUP:
                    if _apply(view[start:stop], index, result):
                        pos = stop
                        continue
                else:
                    end = _apply_records(data, view, pos, length, index, result)
                    if end > 0:
                        pos = end
                        continue
                    search_from = -end  # a torn group: look for data after its records
        elif _all_zero(data, pos):
            break
        following = _bad_record(path, data, view, pos, search_from, newest, salvage,
                                result)
        if following is None:
            break
        pos = following
    result.sizes[index] = pos


def _check_header(path, data, newest, result) -> bool:
    """Validate the segment header; False for an empty newest segment."""
    if len(data) < SEGMENT_HEADER.size or not any(data[:SEGMENT_HEADER.size]):
        if newest:
            # Created but never written when the process died.
            result.warnings.append(f"{path}: empty segment ignored")
            return False
        raise CorruptLog(f"{path}: missing segment header at offset 0")
    magic, version, next_id = SEGMENT_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptLog(f"{path}: not a qserver log segment (bad magic at offset 0)")
    if version not in READABLE_VERSIONS:
        raise CorruptLog(f"{path}: unsupported log format version {version}")
    result.next_id = max(result.next_id, next_id)
    return True


def _valid(data, view, pos, length, crc) -> bool:
    end = pos + _HEADER + length
    return 0 < length and end <= len(data) and data[pos + _HEADER] in KINDS \
        and zlib.crc32(view[pos + _HEADER:end]) == crc


def _apply_records(data, view, pos: int, length: int, index: int, result):
    """Apply the valid record at `pos`, or, when it opens a GROUP, the whole group
    if every one of its records is valid. Returns the offset after what was
    applied, or, when nothing was (a torn group, a payload that does not decode),
    minus the offset where the bad part ends (a torn group's valid records are
    not data of their own)."""
    payload = view[pos + _HEADER:pos + _HEADER + length]
    count = group_size(payload)
    if not count:
        return pos + _HEADER + length if _apply(payload, index, result) else -(pos + 1)
    spans = []
    end = pos + _HEADER + length
    for _ in range(count):
        if end + _HEADER > len(data):
            return -end
        size, crc = RECORD_HEADER.unpack_from(data, end)
        if not _valid(data, view, end, size, crc):
            return -(end + 1) if end > pos else -(pos + 1)
        spans.append((end + _HEADER, end + _HEADER + size))
        end += _HEADER + size
    for start, stop in spans:
        if not _apply(view[start:stop], index, result):
            return -(pos + 1)
    result.records += 1             # the GROUP record itself
    return end


def _apply(payload, index, result) -> bool:
    try:
        job_id = decode(payload, index, result)
    except (ValueError, struct.error):      # UnicodeDecodeError, PolicyError too
        return False
    result.records += 1
    if job_id >= result.next_id:
        result.next_id = job_id + 1
    return True


def _all_zero(data, pos) -> bool:
    return data.count(0, pos) == len(data) - pos


def _next_valid(data, view, start: int, stop: int):
    """The offset of the next verifiable record in [start, stop), or None."""
    for q in range(start, max(start, stop - _HEADER)):
        length, crc = RECORD_HEADER.unpack_from(data, q)
        if _valid(data, view, q, length, crc):
            return q
    return None


def _bad_record(path, data, view, pos, search_from, newest, salvage, result):
    """Handle a record that fails verification at `pos`: returns the offset to go on
    from, or None when nothing usable follows in this segment."""
    last = len(data.rstrip(b"\0"))
    following = _next_valid(data, view, search_from, last)
    if following is None and newest:
        result.warnings.append(
            f"{path}: torn record at offset {pos} cut off ({last - pos} bytes)")
        _truncate(path, pos)
        return None
    if not salvage:
        raise CorruptLog(f"{path}: corrupt record at offset {pos}; start with "
                         f"--salvage-log to skip damaged records")
    stop = following if following is not None else last
    result.dropped.append(f"{path}: dropped bytes {pos}..{stop} ({stop - pos} bytes)")
    return following


def _truncate(path, size) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
