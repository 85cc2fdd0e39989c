"""The log directory: its lock, and the numbered segment files `qlog.N` in it.

Segments are preallocated to their full size so that writes inside them cannot fail
for lack of space; a segment is cut to its used length when the log moves on.
Imports: `journal.records`, `errors`, stdlib.
"""

import errno
import fcntl
import os
import re

from qserver.journal.records import segment_header

_SEGMENT_NAME = re.compile(r"qlog\.(\d+)")


class LogDirError(Exception):
    """The directory cannot be used (missing, unwritable, locked by another server)."""


def lock_dir(path: str) -> int:
    """Take the directory's lock file; a second server on the same DIR is refused."""
    if not os.path.isdir(path):
        raise LogDirError(f"log directory {path} does not exist")
    if not os.access(path, os.W_OK | os.X_OK):
        raise LogDirError(f"log directory {path} is not writable")
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise LogDirError(f"log directory {path} is in use by another qserver") \
                from None
        raise
    return fd


def segment_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"qlog.{index}")


def list_segments(directory: str) -> list:
    """Indexes of the segment files present, oldest first."""
    found = []
    for name in os.listdir(directory):
        m = _SEGMENT_NAME.fullmatch(name)
        if m:
            found.append(int(m[1]))
    return sorted(found)


def sync_dir(directory: str) -> None:
    """Make creations and removals of files in the directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(directory: str, index: int, size: int, next_id: int) -> int:
    """Create, preallocate and open segment `index`; returns its fd positioned after
    the header. Raises OSError (e.g. ENOSPC) when the space cannot be had."""
    path = segment_path(directory, index)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        os.write(fd, segment_header(next_id))
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def remove_segment(directory: str, index: int) -> None:
    try:
        os.unlink(segment_path(directory, index))
    except FileNotFoundError:
        pass
