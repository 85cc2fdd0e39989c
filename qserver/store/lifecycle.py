"""The job-lifecycle extension commands on the shared store (protocol.md,
"Extensions" and "Several nodes"): config-tube, fail, complete, progress, job-info,
peek-result and stats-ext. Each change is one Redis Function (functions.lua, "Job
lifecycle"), so a retry, a dead letter or a retained record is one atomic step
whichever node runs it. Lines and replies are the in-memory table's
(`commands.lifecycle`); the store's figures are turned into the same YAML by
`stats`.
Imports: `wire`, `errors`, `policy`, `stats`, `commands.lifecycle`, `store.redis`.
"""

from qserver import wire
from qserver.commands.lifecycle import COMPLETED, CONFIGURED, TOUCHED, LifecycleWords
from qserver.errors import BadFormat
from qserver.policy import DEFAULT, Policy, PolicyError
from qserver.stats import ext_pairs, job_info_text, key_text, policy_info, tags_text
from qserver.store.redis import job_stats_pairs


class StoreLifecycle(LifecycleWords):
    def __init__(self, commands):
        self.commands = commands        # store.commands.StoreCommands: calls, bodies
        self.store = commands.store
        self.counts = commands.counts

    def config_tube(self, client, rest):
        tube, name, value = wire.parse_config(rest)
        self.counts["config-tube"] += 1
        if name is None:
            self.commands.when(client, self.store.call("qs_policy", tube),
                               lambda reply: _policy_reply(tube, reply[1:]))
            return
        try:
            # Checked here, stored as the policy prints it (one spelling).
            text = dict(DEFAULT.with_value(tube, name, value).pairs())[name]
        except PolicyError:
            raise BadFormat from None
        self.commands.simple(client, CONFIGURED, "qs_config", tube, name, text)

    def fail(self, client, rest):
        self.counts["fail"] += 1
        return self.commands.with_body(client, rest, self._fail)

    def _fail(self, client, reason: bytes, job_id: int):
        self.commands.when(client, self.store.call(
            "qs_fail", job_id, self.commands.session(client).holder, reason), _outcome)

    def complete(self, client, rest):
        self.counts["complete"] += 1
        return self.commands.with_body(client, rest, self._complete)

    def _complete(self, client, result: bytes, job_id: int):
        self.commands.simple(client, COMPLETED, "qs_complete", job_id,
                             self.commands.session(client).holder, result)

    def progress(self, client, rest):
        self.counts["progress"] += 1
        return self.commands.with_body(client, rest, self._progress)

    def _progress(self, client, data: bytes, job_id: int):
        self.commands.simple(client, TOUCHED, "qs_progress", job_id,
                             self.commands.session(client).holder, data)

    def job_info(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["job-info"] += 1
        self.commands.when(client, self.store.call("qs_job_info", job_id),
                           lambda reply: _job_info_reply(job_id, reply))

    def peek_result(self, client, rest):
        job_id = wire.parse_id(rest)
        self.counts["peek-result"] += 1
        self.commands.when(client, self.store.call("qs_peek_result", job_id),
                           lambda reply: wire.job_reply(b"FOUND", reply[1],
                                                        reply[2] + wire.CRLF))

    def stats_ext(self, client, rest):
        self.counts["stats-ext"] += 1
        self.commands.when(client, self.store.call("qs_ext_totals"), self._stats_ext_reply)

    def _stats_ext_reply(self, reply) -> bytes:
        # Command counts are this node's; the job figures are the cluster's.
        return wire.yaml_mapping(ext_pairs(self.counts, tuple(reply[1:7]),
                                           tuple(reply[7:11])))


def _policy_reply(tube: str, values: list) -> bytes:
    text = "".join(f"{name.decode()} {value.decode()}\n"
                   for name, value in zip(values[::2], values[1::2]))
    return wire.yaml_mapping(policy_info(tube, Policy.from_text(tube, text), bool(values)))


def _outcome(reply) -> bytes:
    """fail's reply from the store's (word[, argument])."""
    if len(reply) == 2:
        return reply[1] + wire.CRLF
    argument = reply[2]
    return b"%s %s\r\n" % (reply[1], argument if isinstance(argument, bytes)
                           else str(argument).encode())


def _job_info_reply(job_id: int, reply) -> bytes:
    _, now_us, max_attempts, flat, failures = reply
    fields = {name.decode(): value for name, value in zip(flat[::2], flat[1::2])}
    kept = []
    for failure in failures:
        when, _, reason = failure.partition(b" ")
        kept.append((int(when), reason))
    return wire.yaml_reply(job_info_text(
        job_stats_pairs(job_id, now_us / 1e6, fields), int(fields.get("attempts", 0)),
        max_attempts, fields.get("progress"), fields.get("result"),
        key_text(fields.get("key")), tags_text(fields.get("tags", b"").split()),
        fields.get("cancelled") is not None, kept))
