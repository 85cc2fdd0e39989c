"""Logging to stderr: one line per event, more detail with each -V.

Under systemd (`$JOURNAL_STREAM` names our stderr) lines carry sd-daemon priority
prefixes instead of timestamps, since the journal adds its own. Imports: stdlib only.
"""

import logging
import os
import sys

_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
               logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record):
        return f"<{_PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def _stderr_is_journal() -> bool:
    """$JOURNAL_STREAM is `DEV:INODE` of the journal stream; it is inherited by
    everything a service starts, so check that it is still our stderr (as
    systemd.exec(5) advises) before dropping timestamps."""
    dev, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(inode))


def setup(verbosity: int) -> logging.Logger:
    """Warnings by default; -V adds info, -VV debug."""
    level = logging.WARNING - 10 * min(verbosity, 2)
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s qserver[%(process)d] %(levelname)s %(message)s"))
    log = logging.getLogger("qserver")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    return log
