"""The fields of `stats`, `stats-tube` and `stats-job`, in beanstalkd's order.

Builds (key, formatted value) pairs from the engine and the process-wide counters in
`ServerInfo`; `wire` turns them into YAML. Imports: `job`, `wire`, stdlib.
"""

import os
import resource

from qserver.job import COMPLETED, DEAD, DELAYED, RESERVED, STATE_NAMES
from qserver.wire import yaml_bytes, yaml_quote

# The cmd-* counters, in the order `stats` prints them.
CMD_COUNTERS = (
    "put", "peek", "peek-ready", "peek-delayed", "peek-buried", "reserve",
    "reserve-with-timeout", "delete", "release", "use", "watch", "ignore", "bury",
    "kick", "touch", "stats", "stats-job", "stats-tube", "list-tubes",
    "list-tube-used", "list-tubes-watched", "pause-tube",
)


class ServerInfo:
    """Process-wide facts and counters that live outside the engine."""

    def __init__(self, version: str, max_job_size: int, segment_size: int, started: float):
        self.version = version
        self.max_job_size = max_job_size
        self.segment_size = segment_size
        self.started = started
        self.pid = os.getpid()
        self.instance_id = os.urandom(8).hex()
        uname = os.uname()
        self.hostname, self.os, self.platform = uname.nodename, uname.version, uname.machine
        self.current_connections = 0
        self.total_connections = 0
        self.cmd_counts = dict.fromkeys(CMD_COUNTERS, 0)
        self.cmd_counts.update(dict.fromkeys(EXT_COMMANDS, 0))


def _seconds(value: float) -> str:
    """A time in seconds as `%d.%06d`, the way beanstalkd prints rusage."""
    micros = int(value * 1_000_000)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _tube_totals(engine):
    urgent = ready = reserved = delayed = buried = 0
    for tube in engine.tubes.values():
        urgent += tube.urgent_count
        ready += tube.ready_count
        reserved += tube.reserved_count
        delayed += tube.delayed_count
        buried += len(tube.buried)
    return urgent, ready, reserved, delayed, buried


def server_stats(engine, info: ServerInfo, now: float) -> list:
    log = engine.log
    return server_pairs(_tube_totals(engine), info, now, engine.job_timeouts,
                        engine.total_jobs, len(engine.tubes), engine.producers,
                        engine.workers, engine.waiting_count,
                        (log.oldest_index, log.current_index, log.migrated, log.written),
                        engine.draining)


def server_pairs(job_counts, info: ServerInfo, now: float, job_timeouts: int,
                 total_jobs: int, tubes: int, producers: int, workers: int,
                 waiting: int, binlog: tuple, draining: bool) -> list:
    """`stats`, from the figures of whichever store holds the jobs."""
    urgent, ready, reserved, delayed, buried = job_counts
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pairs = [
        ("current-jobs-urgent", urgent),
        ("current-jobs-ready", ready),
        ("current-jobs-reserved", reserved),
        ("current-jobs-delayed", delayed),
        ("current-jobs-buried", buried),
    ]
    counts = info.cmd_counts
    pairs += [("cmd-" + name, counts[name]) for name in CMD_COUNTERS]
    oldest, current, migrated, written = binlog
    pairs += [
        ("job-timeouts", job_timeouts),
        ("total-jobs", total_jobs),
        ("max-job-size", info.max_job_size),
        ("current-tubes", tubes),
        ("current-connections", info.current_connections),
        ("current-producers", producers),
        ("current-workers", workers),
        ("current-waiting", waiting),
        ("total-connections", info.total_connections),
        ("pid", info.pid),
        ("version", yaml_quote(info.version)),
        ("rusage-utime", _seconds(usage.ru_utime)),
        ("rusage-stime", _seconds(usage.ru_stime)),
        ("uptime", int(now - info.started)),
        ("binlog-oldest-index", oldest),
        ("binlog-current-index", current),
        ("binlog-records-migrated", migrated),
        ("binlog-records-written", written),
        ("binlog-max-size", info.segment_size),
        ("draining", "true" if draining else "false"),
        ("id", info.instance_id),
        ("hostname", yaml_quote(info.hostname)),
        ("os", yaml_quote(info.os)),
        ("platform", yaml_quote(info.platform)),
    ]
    return pairs


def tube_stats(tube, now: float) -> list:
    paused = tube.is_paused(now)
    return tube_pairs(tube.name, (tube.urgent_count, tube.ready_count, tube.reserved_count,
                                  tube.delayed_count, len(tube.buried)),
                      tube.total_jobs, tube.using, tube.watching, len(tube.waiting),
                      tube.cmd_delete, tube.cmd_pause, tube.pause if paused else 0,
                      int(tube.unpause_at - now) if paused else 0)


def tube_pairs(name: str, job_counts: tuple, total_jobs: int, using: int, watching: int,
               waiting: int, cmd_delete: int, cmd_pause: int, pause: int,
               pause_left: int) -> list:
    """`stats-tube`, from the figures of whichever store holds the jobs."""
    urgent, ready, reserved, delayed, buried = job_counts
    return [
        ("name", yaml_quote(name)),
        ("current-jobs-urgent", urgent),
        ("current-jobs-ready", ready),
        ("current-jobs-reserved", reserved),
        ("current-jobs-delayed", delayed),
        ("current-jobs-buried", buried),
        ("total-jobs", total_jobs),
        ("current-using", using),
        ("current-watching", watching),
        ("current-waiting", waiting),
        ("cmd-delete", cmd_delete),
        ("cmd-pause-tube", cmd_pause),
        ("pause", pause),
        ("pause-time-left", pause_left),
    ]


def job_stats(job, now: float, wall: float) -> list:
    # A retained record's time-left counts down to its expiry (protocol.md, "job-info").
    timed = job.state in (RESERVED, DELAYED, COMPLETED, DEAD)
    return job_pairs(job.id, job.tube.name, STATE_NAMES[job.state], job.pri,
                     int(wall - job.created), job.delay, job.ttr,
                     int(job.deadline - now) if timed else 0, job.file,
                     (job.reserves, job.timeouts, job.releases, job.buries, job.kicks))


def job_pairs(job_id: int, tube_name: str, state_name: str, pri: int, age: int,
              delay: int, ttr: int, time_left: int, file: int, counters: tuple) -> list:
    """`stats-job`, from the figures of whichever store holds the job."""
    reserves, timeouts, releases, buries, kicks = counters
    return [
        ("id", job_id),
        ("tube", yaml_quote(tube_name)),
        ("state", state_name),
        ("pri", pri),
        ("age", age),
        ("delay", delay),
        ("ttr", ttr),
        ("time-left", time_left),
        ("file", file),
        ("reserves", reserves),
        ("timeouts", timeouts),
        ("releases", releases),
        ("buries", buries),
        ("kicks", kicks),
    ]


# -- extensions (protocol.md, "Extensions") ----------------------------------------

# Each extension topic's commands; stats-ext prints a topic's block after another's.
LIFECYCLE_COMMANDS = ("config-tube", "fail", "complete", "progress", "job-info",
                      "peek-result", "stats-ext")
STEERING_COMMANDS = ("put-ex", "flush-tube", "cancel-tag", "list-jobs", "subscribe")
EXT_COMMANDS = LIFECYCLE_COMMANDS + STEERING_COMMANDS


def job_info(job, history, meta, max_attempts: int, now: float, wall: float) -> str:
    """job-info's YAML: the stats-job fields, then the lifecycle's and put-ex's."""
    return job_info_text(
        job_stats(job, now, wall), history.attempts if history is not None else 0,
        max_attempts, history.progress if history is not None else None,
        history.result if history is not None else None, _key_text(meta),
        _tags_text(meta), meta is not None and meta.cancelled,
        history.failures if history is not None else ())


def job_info_text(stats: list, attempts: int, max_attempts: int, progress, result,
                  key: str, tags: str, cancelled: bool, failures) -> str:
    """job-info's YAML from the figures of whichever store holds the job: `stats` are
    stats-job's pairs, `failures` (wall-clock time, reason bytes) oldest first."""
    pairs = stats + [
        ("attempts", attempts),
        ("max-attempts", max_attempts),
        ("progress", "~" if progress is None else yaml_bytes(progress)),
        ("result-bytes", 0 if result is None else len(result)),
        ("key", key),
        ("tags", tags),
        ("cancelled", "true" if cancelled else "false"),
    ]
    lines = ["---\n"]
    lines += [f"{name}: {value}\n" for name, value in pairs]
    if not failures:
        lines.append("failures: []\n")
    else:
        lines.append("failures:\n")
        for when, reason in failures:
            lines.append(f"- time: {int(when)}\n  reason: {yaml_bytes(reason)}\n")
    return "".join(lines)


def policy_info(tube_name: str, policy, configured: bool) -> list:
    pairs = [("name", yaml_quote(tube_name)), ("configured", str(configured).lower())]
    for name, value in policy.pairs():
        pairs.append((name, yaml_quote(value) if name == "dead-letter" else value))
    return pairs


def ext_stats(engine, counts: dict) -> list:
    lifecycle, steering = engine.lifecycle, engine.steering
    totals = lifecycle.totals
    return ext_pairs(counts, (totals.failures, totals.retries, totals.dead_letters,
                              totals.completions, len(lifecycle.ledger),
                              len(lifecycle.policies)),
                     (steering.totals.duplicates, engine.flusher.total,
                      steering.totals.cancelled_removed,
                      steering.totals.cancelled_flagged))


def ext_pairs(counts: dict, lifecycle: tuple, steering: tuple) -> list:
    """stats-ext from the figures of whichever store: the command counts, then the
    lifecycle's (failures, retries, dead letters, completions, retained, configured
    tubes) and the steering's (duplicates, flushed, cancelled, cancel-flagged)."""
    pairs = [(f"cmd-{name}", counts[name]) for name in LIFECYCLE_COMMANDS]
    pairs += zip(("job-failures", "job-retries", "job-dead-letters", "job-completions",
                  "current-retained", "configured-tubes"), lifecycle)
    pairs += [(f"cmd-{name}", counts[name]) for name in STEERING_COMMANDS]
    pairs += zip(("job-duplicates", "jobs-flushed", "jobs-cancelled",
                  "jobs-cancel-flagged"), steering)
    return pairs


def job_page(jobs: list, next_cursor, histories: dict, meta: dict, now: float,
             wall: float) -> str:
    """list-jobs' YAML: the next cursor, then one short mapping per job."""
    timed = (RESERVED, DELAYED, COMPLETED, DEAD)
    rows = []
    for job in jobs:
        history = histories.get(job.id)
        job_meta = meta.get(job.id)
        rows.append((job.id, STATE_NAMES[job.state], job.pri, int(wall - job.created),
                     job.delay, int(job.deadline - now) if job.state in timed else 0,
                     history.attempts if history is not None else 0,
                     _key_text(job_meta), _tags_text(job_meta),
                     max(0, len(job.body) - 2)))
    return job_page_text(rows, next_cursor)


def job_page_text(rows: list, next_cursor) -> str:
    """list-jobs' YAML from rows of (id, state name, pri, age, delay, time-left,
    attempts, key text, tags text, size), whichever store they come from."""
    lines = ["---\n", "next: %s\n" % ("~" if next_cursor is None else yaml_quote(next_cursor))]
    lines.append("jobs:\n" if rows else "jobs: []\n")
    for job_id, state, pri, age, delay, time_left, attempts, key, tags, size in rows:
        lines.append(
            f"- id: {job_id}\n  state: {state}\n  pri: {pri}\n  age: {age}\n"
            f"  delay: {delay}\n  time-left: {time_left}\n  attempts: {attempts}\n"
            f"  key: {key}\n  tags: {tags}\n  size: {size}\n")
    return "".join(lines)


def key_text(key) -> str:
    """A unique key (bytes or None) as job-info and list-jobs show it."""
    return "~" if key is None else yaml_bytes(key)


def tags_text(tags) -> str:
    """Tags (bytes each) as a YAML flow list."""
    return "[" + ", ".join(yaml_bytes(t) for t in tags) + "]"


def _key_text(meta) -> str:
    return key_text(meta.key if meta is not None else None)


def _tags_text(meta) -> str:
    return tags_text(meta.tags) if meta else "[]"
