"""A job: its numbers, its body and its state. Imports: stdlib only.

A server may hold millions of jobs, so a job is kept small: twelve slots, the five
per-job counters packed into one int (zero, a shared object, for a fresh job), and
the `deadline` slot reused for the bury order while the job is buried.
"""

READY, RESERVED, DELAYED, BURIED = 1, 2, 3, 4
# A finished job whose record is retained (protocol.md, "job-info"); never in a tube.
COMPLETED, DEAD = 5, 6
# A put-ex job waiting for its lock key (protocol.md, "Per-key concurrency").
HELD = 7
# A job a flush-tube in progress has taken and not yet freed (flush.py); never seen
# by clients (every lookup treats it as gone).
FLUSHED = 8
STATE_NAMES = {READY: "ready", RESERVED: "reserved", DELAYED: "delayed", BURIED: "buried",
               COMPLETED: "completed", DEAD: "dead", HELD: "held"}

URGENT_PRI = 1024            # ready jobs below this priority count as urgent
PRI_SHIFT = 64               # ready-heap keys are (pri << 64) | id
ID_MASK = (1 << 64) - 1

_COUNTER_BITS = 32
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1
# Adding one of these to `counts` bumps one counter.
ONE_RESERVE, ONE_TIMEOUT, ONE_RELEASE, ONE_BURY, ONE_KICK = (
    1 << (_COUNTER_BITS * i) for i in range(5))


def pack_counts(reserves, timeouts, releases, buries, kicks) -> int:
    """The five per-job counters as one int (the layout of `Job.counts`)."""
    counts = 0
    for i, value in enumerate((reserves, timeouts, releases, buries, kicks)):
        counts |= (value & _COUNTER_MASK) << (_COUNTER_BITS * i)
    return counts


def _counter(index: int) -> property:
    shift = _COUNTER_BITS * index

    def get(job) -> int:
        return (job.counts >> shift) & _COUNTER_MASK

    def set(job, value: int) -> None:
        job.counts = (job.counts & ~(_COUNTER_MASK << shift)) \
            | ((value & _COUNTER_MASK) << shift)

    return property(get, set)


class Job:
    """One job. `body` keeps the trailing CRLF so a reply is header + body.

    `deadline` is on the monotonic clock: the due time while delayed, the TTR
    deadline while reserved; while buried it holds the bury order instead.
    `created` is wall-clock seconds, for `age`.
    """

    __slots__ = (
        "id", "tube", "pri", "delay", "ttr", "body", "state", "deadline", "created",
        "holder", "counts", "file",
    )

    def __init__(self, job_id, tube, pri, delay, ttr, body, created):
        self.id = job_id
        self.tube = tube
        self.pri = pri
        self.delay = delay
        self.ttr = ttr
        self.body = body
        self.state = READY
        self.deadline = 0.0
        self.created = created
        self.holder = None       # the session that has it reserved
        self.counts = 0          # reserves, timeouts, releases, buries, kicks (u32 each)
        self.file = 0            # log segment holding its latest full record

    reserves = _counter(0)
    timeouts = _counter(1)
    releases = _counter(2)
    buries = _counter(3)
    kicks = _counter(4)

    @property
    def bury_seq(self) -> int:
        """Orders buried jobs, also across a restart; 0 when not buried."""
        return int(self.deadline) if self.state == BURIED else 0

    @bury_seq.setter
    def bury_seq(self, value: int) -> None:
        self.deadline = value

    @property
    def ready_key(self) -> int:
        """Orders ready jobs by (pri, id) as one int, cheap to compare in a heap."""
        return (self.pri << PRI_SHIFT) | self.id
