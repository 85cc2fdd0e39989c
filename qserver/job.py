"""A job: its numbers, its body and its state. Imports: stdlib only."""

READY, RESERVED, DELAYED, BURIED = 1, 2, 3, 4
STATE_NAMES = {READY: "ready", RESERVED: "reserved", DELAYED: "delayed", BURIED: "buried"}

URGENT_PRI = 1024            # ready jobs below this priority count as urgent
PRI_SHIFT = 64               # ready-heap keys are (pri << 64) | id
ID_MASK = (1 << 64) - 1


class Job:
    """One job. `body` keeps the trailing CRLF so a reply is header + body.

    `deadline` is on the monotonic clock: the due time while delayed, the TTR
    deadline while reserved. `created` is wall-clock seconds, for `age`.
    """

    __slots__ = (
        "id", "tube", "pri", "delay", "ttr", "body", "state", "deadline", "created",
        "holder", "reserves", "timeouts", "releases", "buries", "kicks", "file",
        "bury_seq",
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
        self.reserves = 0
        self.timeouts = 0
        self.releases = 0
        self.buries = 0
        self.kicks = 0
        self.file = 0            # log segment holding its latest full record
        self.bury_seq = 0        # orders buried jobs across a restart

    @property
    def ready_key(self) -> int:
        """Orders ready jobs by (pri, id) as one int, cheap to compare in a heap."""
        return (self.pri << PRI_SHIFT) | self.id
