"""Logging to stderr: one line per event, more detail with each -V.

Under systemd (`$JOURNAL_STREAM` set) lines carry sd-daemon priority prefixes
instead of timestamps, since the journal adds its own. Imports: stdlib only.
"""

import logging
import os
import sys

_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
               logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record):
        return f"<{_PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def setup(verbosity: int) -> logging.Logger:
    """Warnings by default; -V adds info, -VV debug."""
    level = logging.WARNING - 10 * min(verbosity, 2)
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s qserver[%(process)d] %(levelname)s %(message)s"))
    log = logging.getLogger("qserver")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    return log
