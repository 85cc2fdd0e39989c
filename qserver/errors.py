"""One exception class per error reply of the protocol, each carrying its reply bytes.

Handlers raise these; `commands` is the one place that turns them into bytes on the
wire. Imports: stdlib only.
"""


class QueueError(Exception):
    """Base of every error that is answered with a fixed reply line."""

    reply = b"INTERNAL_ERROR\r\n"


class BadFormat(QueueError):
    reply = b"BAD_FORMAT\r\n"


class UnknownCommand(QueueError):
    reply = b"UNKNOWN_COMMAND\r\n"


class NotFound(QueueError):
    reply = b"NOT_FOUND\r\n"


class NotIgnored(QueueError):
    reply = b"NOT_IGNORED\r\n"


class Draining(QueueError):
    reply = b"DRAINING\r\n"


class ExpectedCrlf(QueueError):
    reply = b"EXPECTED_CRLF\r\n"


class JobTooBig(QueueError):
    reply = b"JOB_TOO_BIG\r\n"


class OutOfMemory(QueueError):
    reply = b"OUT_OF_MEMORY\r\n"


class InternalError(QueueError):
    reply = b"INTERNAL_ERROR\r\n"


class DeadlineSoon(QueueError):
    """Not an error for the client, but a one-word answer to a reserve."""

    reply = b"DEADLINE_SOON\r\n"


class TimedOut(QueueError):
    reply = b"TIMED_OUT\r\n"


class Cancelled(QueueError):
    """The job was cancelled (cancel-tag) while reserved: the worker should stop."""

    reply = b"CANCELLED\r\n"


class Duplicate(QueueError):
    """put-ex with a key that a live or retained job already has."""

    def __init__(self, job_id: int):
        super().__init__(job_id)
        self.reply = b"DUPLICATE %d\r\n" % job_id
