"""The Prometheus text format at /metrics and the health check at /health of the HTTP
listener (`--http`, alias `--metrics`).

Imported only with that listener, so neither startup nor the command path pay
for it. A scrape reads what `stats` and `stats-tube` would report (qserver/stats.py)
at that moment; nothing is counted on the command path for it.

Names follow messagebird/beanstalkd_exporter, which turns each `stats` field into a
metric by replacing '-' with '_' (`current_jobs_ready`, `cmd_put`, ...) and each
`stats-tube` field into `tube_<field>{tube="NAME"}`, so its dashboards and alerts
work unchanged. Metrics it has no counterpart for start with `qserver_`. Unlike the
exporter (gauges only), monotonic fields are typed `counter`.

/health answers 200 "ok", or 503 "draining" after SIGUSR1 (puts are refused, so a
load balancer should send producers elsewhere) and 503 "stopping" during shutdown.
Imports: `stats`, stdlib.
"""

import time

from qserver.stats import ext_stats, server_stats, tube_stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `stats` fields that are not numbers, or (pid) not worth a series; version and
# hostname go into qserver_info's labels instead.
SKIPPED = frozenset(("pid", "version", "id", "hostname", "os", "platform"))

COUNTERS = frozenset((
    "job-timeouts", "total-jobs", "total-connections", "rusage-utime", "rusage-stime",
    "binlog-records-migrated", "binlog-records-written",
))

HELP = {
    "current-jobs-urgent": "Ready jobs with priority < 1024",
    "current-jobs-ready": "Jobs in the ready queue",
    "current-jobs-reserved": "Jobs reserved by all clients",
    "current-jobs-delayed": "Delayed jobs",
    "current-jobs-buried": "Buried jobs",
    "job-timeouts": "Times a job's time-to-run ran out",
    "total-jobs": "Jobs created",
    "max-job-size": "Largest job body accepted, in bytes",
    "current-tubes": "Tubes that currently exist",
    "current-connections": "Open connections",
    "current-producers": "Open connections that have issued put",
    "current-workers": "Open connections that have issued reserve",
    "current-waiting": "Connections waiting in reserve",
    "total-connections": "Connections accepted",
    "rusage-utime": "User CPU time of the process, in seconds",
    "rusage-stime": "System CPU time of the process, in seconds",
    "uptime": "Seconds since the server started",
    "binlog-oldest-index": "Index of the oldest log file",
    "binlog-current-index": "Index of the log file being written",
    "binlog-records-migrated": "Log records rewritten by compaction",
    "binlog-records-written": "Log records written",
    "binlog-max-size": "Size of each log file, in bytes",
    "draining": "1 while in drain mode (SIGUSR1), else 0",
}

TUBE_COUNTERS = frozenset(("total-jobs", "cmd-delete", "cmd-pause-tube"))

TUBE_HELP = {
    "current-jobs-urgent": "Ready jobs with priority < 1024 in the tube",
    "current-jobs-ready": "Ready jobs in the tube",
    "current-jobs-reserved": "Reserved jobs in the tube",
    "current-jobs-delayed": "Delayed jobs in the tube",
    "current-jobs-buried": "Buried jobs in the tube",
    "total-jobs": "Jobs created in the tube",
    "current-using": "Connections using the tube",
    "current-watching": "Connections watching the tube",
    "current-waiting": "Connections waiting in reserve on the tube",
    "cmd-delete": "delete commands for jobs of the tube",
    "cmd-pause-tube": "pause-tube commands for the tube",
    "pause": "Seconds of the current pause, 0 when not paused",
    "pause-time-left": "Seconds until the pause ends",
}


# -- the text format ----------------------------------------------------------------

def escape_label(value: str) -> str:
    """A label value as the text format wants it: \\, \" and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(lines: list, name: str, kind: str, help_text: str, samples) -> None:
    """One metric family: HELP, TYPE, then its samples ((labels, value) pairs)."""
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        lines.append(f"{name}{labels} {value}")


def _number(value) -> str | None:
    """A `stats` value as a sample value; None for strings that are not numbers."""
    if value.__class__ is int:
        return str(value)
    if value in ("true", "false"):
        return "1" if value == "true" else "0"
    try:
        float(value)
    except ValueError:
        return None
    return value


class Figures:
    """What a page shows, from whichever store: `stats` pairs, per tube (name,
    stats-tube pairs as a dict, paused), `stats-ext` pairs, per tube lifecycle
    counters (name, Counters), and held and cancel-flagged jobs by tube name."""

    __slots__ = ("stats", "tubes", "ext", "tube_counters", "held", "cancelled")


def memory_figures(server) -> Figures:
    """Read straight from the engine: a scrape costs no commands."""
    now = time.monotonic()
    engine = server.engine
    figures = Figures()
    figures.stats = server_stats(engine, server.info, now)
    tubes = list(engine.tubes.values())
    figures.tubes = [(tube.name, dict(tube_stats(tube, now)), tube.is_paused(now))
                     for tube in tubes]
    figures.ext = ext_stats(engine, server.info.cmd_counts)
    figures.tube_counters = [(tube.name, tube.counters) for tube in tubes
                             if tube.counters is not None]
    figures.held, figures.cancelled = _steering_by_tube(engine)
    return figures


async def store_figures(server, console) -> Figures:
    """Through the console's commands: the store's figures are the cluster's. The
    per-tube lifecycle counters and cancel flags are not kept by tube in the store."""
    figures = Figures()
    figures.stats = (await console.run("stats")).pairs()
    figures.ext = (await console.run("stats-ext")).pairs()
    figures.tubes, figures.held = [], {}
    for name in (await console.run("list-tubes")).yaml():
        reply = await console.run(f"stats-tube {name}")
        if reply.word == "OK":
            stats = dict(reply.pairs())
            figures.tubes.append((name, stats, stats["pause"] != "0"))
            held = await server.store.held_count(name)
            if held:
                figures.held[name] = held
    figures.tube_counters, figures.cancelled = [], {}
    return figures


def _server_families(lines: list, figures) -> None:
    for key, value in figures.stats:
        number = None if key in SKIPPED else _number(value)
        if number is None:
            continue
        if key.startswith("cmd-"):
            kind, help_text = "counter", f"{key[4:]} commands received"
        else:
            kind = "counter" if key in COUNTERS else "gauge"
            help_text = HELP.get(key, f"stats field {key}")
        _family(lines, key.replace("-", "_"), kind, help_text, [("", number)])


def _tube_families(lines: list, figures) -> None:
    """Per-tube series, grouped by family as the format requires."""
    rows = [('{tube="%s"}' % escape_label(name), stats, paused)
            for name, stats, paused in figures.tubes]
    for key, help_text in TUBE_HELP.items():
        kind = "counter" if key in TUBE_COUNTERS else "gauge"
        samples = [(label, str(stats[key])) for label, stats, _ in rows if key in stats]
        _family(lines, "tube_" + key.replace("-", "_"), kind, help_text, samples)
    _family(lines, "qserver_tube_paused", "gauge", "1 while the tube is paused, else 0",
            [(label, "1" if paused else "0") for label, _, paused in rows])


# The lifecycle extensions' counters (protocol.md, "stats-ext"), as qserver_ series.
EXT_HELP = {
    "job-failures": ("counter", "Counted failed attempts (fail, TTR expiry and closed "
                                "connections in configured tubes)"),
    "job-retries": ("counter", "Failed attempts that scheduled another attempt"),
    "job-dead-letters": ("counter", "Jobs whose attempts ran out"),
    "job-completions": ("counter", "Jobs finished with complete"),
    "current-retained": ("gauge", "Finished jobs' records retained now"),
    "configured-tubes": ("gauge", "Tube names with a policy"),
    "job-duplicates": ("counter", "put-ex refused as DUPLICATE"),
    "jobs-flushed": ("counter", "Jobs removed by flush-tube"),
    "jobs-cancelled": ("counter", "Jobs removed by cancel-tag"),
    "jobs-cancel-flagged": ("counter", "Reserved jobs flagged by cancel-tag"),
}
TUBE_EXT = (("failures", "Counted failed attempts in the tube"),
            ("retries", "Failed attempts in the tube that scheduled another attempt"),
            ("dead_letters", "Jobs of the tube whose attempts ran out"),
            ("completions", "Jobs of the tube finished with complete"))


def _ext_families(lines: list, figures) -> None:
    for key, value in figures.ext:
        if key.startswith("cmd-"):
            kind, help_text = "counter", f"{key[4:]} commands received"
        else:
            kind, help_text = EXT_HELP[key]
        name = "qserver_" + key.replace("-", "_")
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        _family(lines, name, kind, help_text, [("", str(value))])
    for field, help_text in TUBE_EXT:
        samples = [('{tube="%s"}' % escape_label(name), str(getattr(counts, field)))
                   for name, counts in figures.tube_counters]
        _family(lines, f"qserver_tube_{field}_total", "counter", help_text, samples)
    for name, values, help_text in (
            ("qserver_tube_held", figures.held,
             "Jobs held by per-key concurrency in the tube"),
            ("qserver_tube_cancelled", figures.cancelled,
             "Reserved jobs of the tube flagged by cancel-tag")):
        _family(lines, name, "gauge", help_text,
                [('{tube="%s"}' % escape_label(tube), str(count))
                 for tube, count in sorted(values.items())])


def held_by_tube(engine) -> dict:
    """Jobs held by per-key concurrency, by tube name (one pass over the locks)."""
    held = {}
    for (tube, _), lock in engine.steering.locks.items():
        if lock.held:
            held[tube] = held.get(tube, 0) + len(lock.held)
    return held


def _steering_by_tube(engine) -> tuple:
    """Held and cancel-flagged jobs per tube name (only tubes that have some)."""
    held = held_by_tube(engine)
    cancelled = {}
    for job_id in engine.steering.flagged:
        job = engine.jobs.get(job_id)
        if job is not None:
            cancelled[job.tube.name] = cancelled.get(job.tube.name, 0) + 1
    return held, cancelled


def render(server, figures: Figures) -> str:
    """The whole /metrics page."""
    lines = []
    info = server.info
    _family(lines, "qserver_info", "gauge", "Constant 1, labelled with version and host",
            [('{version="%s",hostname="%s"}' % (escape_label(info.version),
                                                escape_label(info.hostname)), "1")])
    _server_families(lines, figures)
    _tube_families(lines, figures)
    _ext_families(lines, figures)
    _family(lines, "qserver_shutting_down", "gauge", "1 once shutdown has begun",
            [("", "1" if server.shutting_down else "0")])
    lines.append("")
    return "\n".join(lines)


def health(server) -> tuple:
    if server.shutting_down:
        return 503, "stopping\n"
    if server.engine.draining:
        return 503, "draining\n"
    return 200, "ok\n"
