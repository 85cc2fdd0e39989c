"""The job-lifecycle extension commands (protocol.md, "Extensions"): config-tube,
fail, complete, progress, job-info, peek-result and stats-ext.

Handlers take (client, rest of the line) like the beanstalkd ones and return reply
bytes or None; the commands with a body read it as `put` does, through
`Commands.with_body`. Imports: `wire`, `errors`, `stats`, `policy`.
"""

from qserver import wire
from qserver.errors import BadFormat, NotFound
from qserver.policy import DEFAULT, PolicyError
from qserver.stats import ext_stats, job_info, policy_info

CONFIGURED = b"CONFIGURED\r\n"
COMPLETED = b"COMPLETED\r\n"
TOUCHED = b"TOUCHED\r\n"


class LifecycleWords:
    """The lifecycle's command words, shared by both stores' tables."""

    def table(self) -> tuple[dict, dict]:
        """(commands with arguments, commands without), by command word."""
        return {
            b"config-tube": self.config_tube, b"fail": self.fail,
            b"complete": self.complete, b"progress": self.progress,
            b"job-info": self.job_info, b"peek-result": self.peek_result,
        }, {b"stats-ext": self.stats_ext}


class LifecycleCommands(LifecycleWords):
    def __init__(self, commands):
        self.commands = commands          # the beanstalkd table: bodies, clocks, counts
        self.engine = commands.engine
        self.lifecycle = commands.engine.lifecycle
        self.counts = commands.counts

    def config_tube(self, client, rest):
        tube, name, value = wire.parse_config(rest)
        self.counts["config-tube"] += 1
        lifecycle = self.lifecycle
        if name is None:
            policy = lifecycle.policies.get(tube)
            return wire.yaml_mapping(policy_info(tube, policy or DEFAULT, policy is not None))
        try:
            lifecycle.configure(tube, name, value)
        except PolicyError:
            raise BadFormat from None
        return CONFIGURED

    def fail(self, client, rest):
        self.counts["fail"] += 1
        return self.commands.with_body(client, rest, self._fail)

    def _fail(self, client, reason: bytes, job_id: int):
        word, argument = self.lifecycle.fail(client.session, job_id, reason,
                                             self.commands.clock())
        if argument is None:
            return b"%s\r\n" % word.encode()
        return b"%s %s\r\n" % (word.encode(), str(argument).encode())

    def complete(self, client, rest):
        self.counts["complete"] += 1
        return self.commands.with_body(client, rest, self._complete)

    def _complete(self, client, result: bytes, job_id: int):
        self.lifecycle.complete(client.session, job_id, result, self.commands.clock())
        return COMPLETED

    def progress(self, client, rest):
        self.counts["progress"] += 1
        return self.commands.with_body(client, rest, self._progress)

    def _progress(self, client, data: bytes, job_id: int):
        self.lifecycle.progress(client.session, job_id, data, self.commands.clock())
        return TOUCHED

    def job_info(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["job-info"] += 1
        job = self.engine.find(job_id) or self.lifecycle.retained(job_id)
        if job is None:
            raise NotFound
        policy = self.lifecycle.policies.get(job.tube.name)
        max_attempts = policy.max_attempts if policy is not None else 0
        text = job_info(job, self.engine.histories.get(job_id),
                        self.engine.meta.get(job_id), max_attempts,
                        self.commands.clock(), self.commands.wall())
        return wire.yaml_reply(text)

    def peek_result(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["peek-result"] += 1
        record = self.lifecycle.retained(job_id)
        history = self.engine.histories.get(job_id) if record is not None else None
        if history is None or history.result is None:
            raise NotFound
        return wire.job_reply(b"FOUND", job_id, history.result + wire.CRLF)

    def stats_ext(self, client, rest):
        self.counts["stats-ext"] += 1
        return wire.yaml_mapping(ext_stats(self.engine, self.counts))
