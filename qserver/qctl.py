"""`qctl`: an operator's command line for qserver and beanstalkd, over the wire protocol.

    qctl [--host H] [--port P | --socket PATH] COMMAND [--json] ...

Commands: stats, tubes, peek, kick, delete, pause, put, top, and for qserver's
extensions job, config, stats-ext, jobs (list-jobs), flush (flush-tube), cancel
(cancel-tag), watch-events (subscribe) and put's --key, --tag and --lock (put-ex).
Tables for people by default,
`--json` for scripts. It needs nothing from the server but the protocol, so the
beanstalkd commands work against beanstalkd too: 1.12 prints YAML strings bare, 1.13
and qserver quote them, and both are read. Exit status: 0 done, 1 the server said no
(NOT_FOUND, DUPLICATE, ...) or a flush was not confirmed, 2 bad usage, 3 cannot
connect or the connection broke.
Imports: stdlib and `qserver.client` (the wire talk), not the server's modules: qctl
may run on another host.
"""

import argparse
import base64
import dataclasses
import json
import os
import sys
import time

from qserver.client import (DEFAULT_PRI, DEFAULT_TTR, LIST_LIMIT, BadFormat, Client,
                            Duplicate, Event, Gap, NotFound, QueueConnectionError,
                            ServerError, UnknownCommand)

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3

TUBE_COLUMNS = ("tube", "ready", "reserved", "delayed", "buried", "urgent", "waiting",
                "paused")
EXTENSION_WORDS = frozenset(("config-tube", "fail", "complete", "progress", "job-info",
                             "peek-result", "stats-ext", "put-ex", "flush-tube",
                             "cancel-tag", "list-jobs", "subscribe"))
JOB_COLUMNS = ("id", "state", "pri", "age", "delay", "time-left", "attempts", "key",
               "tags", "size")
# stats-ext's counters that `top` shows, with their labels
TOP_EXT_FIELDS = (("job-failures", "failures"), ("job-retries", "retries"),
                  ("job-dead-letters", "dead-letters"),
                  ("job-completions", "completions"), ("current-retained", "retained"))


# -- gathering ----------------------------------------------------------------------

def tube_row(stats) -> dict:
    return {
        "tube": str(stats["name"]),
        "ready": stats["current-jobs-ready"],
        "reserved": stats["current-jobs-reserved"],
        "delayed": stats["current-jobs-delayed"],
        "buried": stats["current-jobs-buried"],
        "urgent": stats["current-jobs-urgent"],
        "waiting": stats["current-waiting"],
        "paused": stats.get("pause-time-left", 0),    # seconds left, 0: not paused
    }


def tube_rows(client: Client) -> list:
    rows = []
    for name in client.list_tubes():
        try:
            rows.append(tube_row(client.stats_tube(name)))
        except NotFound:                        # a tube may vanish in between
            pass
    return rows


def put_text(view: dict, key: str, data: bytes | None) -> None:
    """`view[key]` = data as text when it is UTF-8, else `view[key_base64]`."""
    if data is None:
        view[key] = None
        return
    try:
        view[key] = data.decode("utf-8")
    except UnicodeDecodeError:
        view[key + "_base64"] = base64.b64encode(data).decode()


def shown(view: dict, key: str) -> str:
    """The text `put_text` stored, for people."""
    if key + "_base64" in view:
        return "<%d bytes, not UTF-8>" % len(base64.b64decode(view[key + "_base64"]))
    return "~" if view.get(key) is None else view[key]


def job_view(client: Client, job) -> dict:
    view = {"id": job.id}
    try:
        view["stats"] = dict(client.stats_job(job.id))
    except NotFound:            # deleted between peek and stats-job
        view["stats"] = {}
    put_text(view, "body", job.body)
    return view


def info_view(client: Client, job_id: int) -> dict:
    """job-info as JSON-ready data: bytes become text (or base64), failures a list,
    and a completed job's result is included."""
    info = client.job_info(job_id)
    view = {key: value for key, value in info.items()
            if key not in ("progress", "failures")}
    put_text(view, "progress", info["progress"])
    view["failures"] = []
    for failure in info["failures"]:
        entry = {"time": failure["time"]}
        put_text(entry, "reason", failure["reason"])
        view["failures"].append(entry)
    if info["state"] == "completed":
        try:
            put_text(view, "result", client.peek_result(job_id))
        except NotFound:        # expired in between
            pass
    return view


# -- output -------------------------------------------------------------------------

def table(rows: list, columns) -> str:
    """Left-aligned text columns, numbers right-aligned."""
    cells = [[str(c).upper() for c in columns]] + [
        [_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    numeric = [all(isinstance(row[c], (int, float)) for row in rows) for c in columns]
    lines = []
    for r in cells:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(r, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def emit(args, data, human: str) -> None:
    write(json.dumps(data) if args.json else human)


def write(text: str) -> None:
    """Print; a reader that went away (`qctl stats | head`) ends qctl quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the flush at exit does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)


# -- commands -----------------------------------------------------------------------

def key_values(data: dict) -> str:
    return table([{"key": k, "value": v} for k, v in data.items()], ("key", "value"))


def cmd_stats(client: Client, args) -> int:
    stats = client.stats()
    emit(args, stats, key_values(stats))
    return 0


def cmd_tubes(client: Client, args) -> int:
    rows = tube_rows(client)
    human = table([dict(r, paused=r["paused"] or "-") for r in rows], TUBE_COLUMNS)
    emit(args, rows, human)
    return 0


def cmd_peek(client: Client, args) -> int:
    if args.id is not None:
        job = client.peek(args.id)
    else:
        if args.tube:
            client.use(args.tube)
        job = getattr(client, f"peek_{args.state}")()
    view = job_view(client, job)
    emit(args, view, f"{key_values(view['stats'])}\n\n{shown(view, 'body')}")
    return 0


def cmd_kick(client: Client, args) -> int:
    client.use(args.tube)
    count = client.kick(args.bound)
    emit(args, {"tube": args.tube, "kicked": count}, f"kicked {count} job(s) in {args.tube}")
    return 0


def cmd_delete(client: Client, args) -> int:
    client.delete(args.id)
    emit(args, {"deleted": args.id}, f"deleted job {args.id}")
    return 0


def cmd_pause(client: Client, args) -> int:
    client.pause_tube(args.tube, args.seconds)
    emit(args, {"tube": args.tube, "paused": args.seconds},
         f"paused {args.tube} for {args.seconds} s")
    return 0


def cmd_put(client: Client, args) -> int:
    """put, or put-ex with --key, --tag and --lock."""
    body = sys.stdin.buffer.read()
    steering = args.key is not None or bool(args.tag) or args.lock is not None
    if steering:
        # beanstalkd would read the body as commands of its own: ask first with a
        # harmless extension (job-info 0 is NOT_FOUND on qserver)
        try:
            client.job_info(0)
        except NotFound:
            pass
    client.use(args.tube)
    if steering:
        job_id = client.put_ex(body, pri=args.pri, delay=args.delay, ttr=args.ttr,
                               key=args.key, tags=args.tag, lock=args.lock)
    else:
        job_id = client.put(body, pri=args.pri, delay=args.delay, ttr=args.ttr)
    emit(args, {"id": job_id, "tube": args.tube}, f"inserted job {job_id} into {args.tube}")
    return 0


def cmd_job(client: Client, args) -> int:
    """job-info: the job's stats, attempts, progress, failures and kept result."""
    view = info_view(client, args.id)
    scalars = {k: v for k, v in view.items()
               if k != "failures" and not k.startswith(("progress", "result"))}
    scalars["progress"] = shown(view, "progress").replace("\n", "\\n")   # one line
    lines = [key_values(scalars)]
    if view["failures"]:
        lines.append("\nfailures (oldest first):")
        for failure in view["failures"]:        # a reason may be a whole traceback
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(failure["time"]))
            lines.append(f"  {when}Z")
            lines.extend("    " + line for line in shown(failure, "reason").split("\n"))
    if "result" in view or "result_base64" in view:
        lines.append(f"\nresult:\n{shown(view, 'result')}")
    emit(args, view, "\n".join(lines))
    return 0


def cmd_config(client: Client, args) -> int:
    """config-tube: set one policy value (NAME VALUE), then show the policy."""
    if args.name is not None:
        client.config_tube_set(args.tube, args.name, args.value)
    policy = client.config_tube_get(args.tube)
    emit(args, policy, key_values(dict(policy)))
    return 0


def cmd_stats_ext(client: Client, args) -> int:
    stats = client.stats_ext()
    emit(args, stats, key_values(dict(stats)))
    return 0


def cmd_jobs(client: Client, args) -> int:
    """list-jobs: one page from --cursor, or every page with --all-pages."""
    if args.all_pages:
        jobs, following = list(client.iter_jobs(args.tube, args.state,
                                                page_size=args.limit)), None
    else:
        page = client.list_jobs(args.tube, args.state, args.cursor, args.limit)
        jobs, following = page.jobs, page.next
    data = {"tube": args.tube, "state": args.state, "jobs": jobs, "next": following}
    rows = [dict(job, key="-" if job["key"] is None else job["key"],
                 tags=",".join(job["tags"]) or "-") for job in jobs]
    human = table(rows, JOB_COLUMNS)
    if following is not None:
        human += (f"\nmore: qctl jobs {args.tube} --state {args.state} "
                  f"--limit {args.limit} --cursor {following}   (or --all-pages)")
    emit(args, data, human)
    return 0


def cmd_flush(client: Client, args) -> int:
    """flush-tube, after a yes on a terminal (unless --yes)."""
    if not args.yes and sys.stdin.isatty():
        try:
            tube = client.stats_tube(args.tube)
            counts = (f"{tube['current-jobs-ready']} ready, "
                      f"{tube['current-jobs-delayed']} delayed and "
                      f"{tube['current-jobs-buried']} buried job(s)")
        except NotFound:
            counts = "no jobs (no such tube)"
        print(f"flush {args.tube}: remove {counts} for good? [y/N] ", end="",
              file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("qctl: not flushed", file=sys.stderr)
            return EXIT_REFUSED
    count = client.flush_tube(args.tube)
    emit(args, {"tube": args.tube, "flushed": count},
         f"flushed {count} job(s) from {args.tube}")
    return 0


def cmd_cancel(client: Client, args) -> int:
    """cancel-tag: remove the tag's jobs, flag the reserved ones."""
    result = client.cancel_tag(args.tag)
    emit(args, {"tag": args.tag, "removed": result.removed, "flagged": result.flagged},
         f"cancelled tag {args.tag}: removed {result.removed} job(s), flagged "
         f"{result.flagged} reserved job(s)")
    return 0


def event_time(when: float) -> str:
    """Wall-clock Unix seconds as UTC ISO 8601 with milliseconds."""
    seconds, millis = divmod(round(when * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def event_line(event: Event) -> str:
    return (f"{event.seq} {event_time(event.time)} {event.event} id={event.id} "
            f"tube={event.tube} attempt={event.attempt}")


def gap_line(gap: Gap) -> str:
    asked = "" if gap.expected is None else f" from seq {gap.expected}"
    return (f"-- gap: the server no longer keeps the events asked for{asked}; "
            f"going on from seq {gap.oldest}")


def cmd_watch_events(client: Client, args) -> int:
    """subscribe: one line per event as it comes, until ^C or --count events."""
    stream = client.subscribe(args.tube, "now") if args.start == "now" else \
        client.subscribe(args.tube, int(args.start))
    seen = 0
    try:
        for item in stream:
            if isinstance(item, Gap):
                write(json.dumps({"gap": item.oldest, "expected": item.expected})
                      if args.json else gap_line(item))
                continue
            write(json.dumps(dataclasses.asdict(item)) if args.json else event_line(item))
            seen += 1
            if args.count and seen >= args.count:
                break
    finally:
        stream.close()
    return 0


def cmd_top(client: Client, args) -> int:
    """Refresh a summary and the tube table every --interval seconds."""
    previous = None
    count = 0
    clear = sys.stdout.isatty() and not args.json
    extensions = True           # until the server says it has none (beanstalkd)
    while True:
        stats = client.stats()
        ext = None
        if extensions:
            try:
                ext = dict(client.stats_ext())
            except (UnknownCommand, BadFormat):     # beanstalkd reads it as `stats`
                extensions = False
        rows = tube_rows(client)
        rates = _rates(previous, stats, args.interval)
        previous = stats
        if args.json:
            write(json.dumps({"time": time.time(), "stats": stats, "rates": rates,
                              "tubes": rows, "ext": ext}))
        else:
            write(("\x1b[H\x1b[2J" if clear else "") + _top_screen(stats, rates, rows, ext))
        count += 1
        if args.iterations and count >= args.iterations:
            return 0
        time.sleep(args.interval)


RATE_FIELDS = ("cmd-put", "cmd-reserve", "cmd-delete", "job-timeouts")


def _rates(previous, stats, interval) -> dict:
    """Per-second rates of a few counters since the last refresh."""
    if previous is None:
        return {}
    return {key: round((stats.get(key, 0) - previous.get(key, 0)) / interval, 1)
            for key in RATE_FIELDS}


def _top_screen(stats, rates, rows, ext=None) -> str:
    head = (f"version {stats.get('version', '?')}  up {stats.get('uptime', 0)} s  "
            f"connections {stats.get('current-connections', 0)}  "
            f"workers {stats.get('current-workers', 0)}  "
            f"waiting {stats.get('current-waiting', 0)}"
            + ("  DRAINING" if stats.get("draining") is True else ""))
    jobs = "  ".join(f"{s} {stats.get('current-jobs-' + s, 0)}"
                     for s in ("ready", "reserved", "delayed", "buried", "urgent"))
    rate = "  ".join(f"{k} {v}/s" for k, v in rates.items()) or "rates after next refresh"
    if ext is not None:
        rate += "\nlifecycle: " + "  ".join(f"{label} {ext.get(key, 0)}"
                                            for key, label in TOP_EXT_FIELDS)
    human_rows = [dict(r, paused=r["paused"] or "-") for r in rows]
    return f"{head}\njobs: {jobs}\n{rate}\n\n{table(human_rows, TUBE_COLUMNS)}"


# -- flags --------------------------------------------------------------------------

def _nonnegative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return int(text)


def _page_size(text: str) -> int:
    value = _nonnegative(text)
    if not 1 <= value <= LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1 to {LIST_LIMIT}")
    return value


def _positive(text: str) -> int:
    value = _nonnegative(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _start(text: str) -> str:
    if text != "now" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"not `now` or a sequence number: {text!r}")
    return text


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _subcommand(subs, name, func, help_text):
    p = subs.add_parser(name, help=help_text, description=help_text)
    # SUPPRESS keeps a --json given before the command from being reset here.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print JSON instead of a table")
    p.set_defaults(func=func)
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qctl", description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 done, 1 refused by the server "
                                       "(or a flush not confirmed), 2 usage, 3 "
                                       "connection failed.")
    p.add_argument("--host", default=os.environ.get("QCTL_HOST", "127.0.0.1"))
    p.add_argument("--port", type=_nonnegative,
                   default=int(os.environ.get("QCTL_PORT", "11300")))
    p.add_argument("--socket", metavar="PATH", help="connect to a unix socket instead")
    p.add_argument("--timeout", type=_seconds, default=5.0,
                   help="seconds to wait for the server (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    subs = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _subcommand(subs, "stats", cmd_stats, "server statistics")
    _subcommand(subs, "tubes", cmd_tubes, "per-tube job counts")
    peek = _subcommand(subs, "peek", cmd_peek, "show a job by id, or the next in a state")
    peek.add_argument("id", nargs="?", type=_nonnegative)
    peek.add_argument("--state", choices=("ready", "delayed", "buried"))
    peek.add_argument("--tube", help="tube for --state (default: default)")
    kick = _subcommand(subs, "kick", cmd_kick, "kick buried (else delayed) jobs")
    kick.add_argument("bound", nargs="?", type=_nonnegative, default=1,
                      help="at most this many jobs (default 1)")
    kick.add_argument("--tube", default="default")
    delete = _subcommand(subs, "delete", cmd_delete, "delete a job")
    delete.add_argument("id", type=_nonnegative)
    pause = _subcommand(subs, "pause", cmd_pause, "pause a tube for SECONDS")
    pause.add_argument("tube")
    pause.add_argument("seconds", type=_nonnegative)
    put = _subcommand(subs, "put", cmd_put, "put a job whose body is read from stdin")
    put.add_argument("--tube", default="default")
    put.add_argument("--pri", type=_nonnegative, default=DEFAULT_PRI)
    put.add_argument("--delay", type=_nonnegative, default=0)
    put.add_argument("--ttr", type=_nonnegative, default=DEFAULT_TTR)
    put.add_argument("--key", help="a unique key in the tube: refused (DUPLICATE) while "
                                   "a job with it is live (put-ex; qserver only)")
    put.add_argument("--tag", action="append", default=[],
                     help="a tag for `qctl cancel`; repeat for more, up to 8 "
                          "(put-ex; qserver only)")
    put.add_argument("--lock", help="a lock key: at most the tube's lock-limit jobs "
                                    "with it are reserved at once, the others are "
                                    "held (put-ex; qserver only)")
    top = _subcommand(subs, "top", cmd_top, "a live view of the server and its tubes")
    top.add_argument("--interval", type=_seconds, default=1.0,
                     help="seconds between refreshes (default 1)")
    top.add_argument("--iterations", type=_nonnegative, default=0,
                     help="stop after this many refreshes (default: run until ^C)")
    # qserver's extensions (protocol.md, "Extensions"); beanstalkd refuses them (exit 1)
    job = _subcommand(subs, "job", cmd_job, "a job's record: stats, attempts, progress, "
                      "failures, result (job-info; qserver only)")
    job.add_argument("id", type=_nonnegative)
    config = _subcommand(subs, "config", cmd_config,
                         "show a tube's policy, or set one value and show it "
                         "(config-tube; qserver only)")
    config.epilog = ("names: max-attempts N (0: unlimited), backoff none|fixed:S|"
                     "exp:BASE:CAP, dead-letter bury|delete|tube:NAME, retain S, "
                     "lock-limit N (jobs of one lock key reserved at once, 1 or more)")
    config.add_argument("tube")
    config.add_argument("name", nargs="?", help="max-attempts, backoff, dead-letter, "
                                                "retain or lock-limit")
    config.add_argument("value", nargs="?")
    _subcommand(subs, "stats-ext", cmd_stats_ext,
                "lifecycle and steering counters: failures, retries, dead letters, "
                "completions, duplicates, flushed, cancelled (stats-ext; qserver only)")
    jobs = _subcommand(subs, "jobs", cmd_jobs, "list a tube's jobs in one state, in "
                       "that state's order (list-jobs; qserver only)")
    jobs.add_argument("tube")
    jobs.add_argument("--state", default="all",
                      help="ready, delayed, reserved, buried, held, completed, dead "
                           "or all (default all)")
    jobs.add_argument("--limit", type=_page_size, default=100,
                      help=f"jobs per page, 1 to {LIST_LIMIT} (default 100)")
    jobs.add_argument("--cursor", default="0",
                      help="start after this cursor: the `next` of the page before")
    jobs.add_argument("--all-pages", action="store_true",
                      help="walk every page (--limit jobs per request)")
    flush = _subcommand(subs, "flush", cmd_flush, "remove a tube's ready, delayed and "
                        "buried jobs, asking first on a terminal (flush-tube; qserver "
                        "only)")
    flush.add_argument("tube")
    flush.add_argument("--yes", action="store_true", help="do not ask")
    cancel = _subcommand(subs, "cancel", cmd_cancel, "remove the jobs with a tag, and "
                         "flag its reserved jobs as cancelled (cancel-tag; qserver only)")
    cancel.add_argument("tag")
    watch = _subcommand(subs, "watch-events", cmd_watch_events,
                        "print job events as they happen, one line each, until ^C or "
                        "--count (subscribe; qserver only)")
    watch.epilog = ("lines: SEQ TIME EVENT id=ID tube=TUBE attempt=N (--json: one "
                    "object per line); where the server no longer keeps events asked "
                    "for, a `-- gap:` line ({\"gap\": OLDEST, \"expected\": SEQ}) "
                    "and the stream goes on from OLDEST")
    watch.add_argument("--tube", default="*", help="only this tube's events "
                                                   "(default: every tube)")
    watch.add_argument("--from", dest="start", type=_start, default="now",
                       metavar="SEQ", help="start at this sequence number (the last "
                                           "one seen plus 1) instead of now")
    watch.add_argument("--count", type=_positive, default=0, metavar="N",
                       help="stop after N events (default: run until ^C)")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "peek" and (args.id is None) == (args.state is None):
        p.error("peek takes a job id or --state, not both")
    if args.command == "peek" and args.tube and args.state is None:
        p.error("peek --tube goes with --state")
    if args.command == "config" and (args.name is None) != (args.value is None):
        p.error("config takes a TUBE alone (show) or TUBE NAME VALUE (set)")
    if args.command == "jobs" and args.all_pages and args.cursor != "0":
        p.error("jobs takes --cursor or --all-pages, not both")
    try:
        client = Client(args.host, args.port, unix_path=args.socket,
                        timeout=args.timeout)
    except QueueConnectionError as error:
        print(f"qctl: {error}", file=sys.stderr)
        return EXIT_CONNECTION
    try:
        return args.func(client, args)
    except ServerError as error:
        hint = ""
        # beanstalkd does not know the words (and reads `stats-ext` as a bad `stats`)
        if error.command in EXTENSION_WORDS and (
                isinstance(error, UnknownCommand)
                or isinstance(error, BadFormat) and error.command == "stats-ext"):
            hint = " (a qserver extension: is this beanstalkd?)"
        elif isinstance(error, Duplicate):
            hint = f" (job {error.job_id} has this key)"
        print(f"qctl: {error}{hint}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as error:        # QueueConnectionError is one
        print(f"qctl: connection to {client.where}: {error}", file=sys.stderr)
        return EXIT_CONNECTION
    except ValueError as error:     # the client's argument checks (a key with a space)
        print(f"qctl: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
