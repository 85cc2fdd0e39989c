"""`qctl`: an operator's command line for qserver and beanstalkd, over the wire protocol.

    qctl [--host H] [--port P | --socket PATH] COMMAND [--json] ...

Commands: stats, tubes, peek, kick, delete, pause, put, top. Tables for people by
default, `--json` for scripts. It needs nothing from the server but the protocol, so
it works against beanstalkd too: 1.12 prints YAML strings bare, 1.13 and qserver
quote them, and both are read. Exit status: 0 done, 1 the server said no
(NOT_FOUND, ...), 2 bad usage, 3 cannot connect or the connection broke.
Imports: stdlib only (not the server's modules: qctl may run on another host).
"""

import argparse
import json
import os
import re
import socket
import sys
import time

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3

DEFAULT_PRI = 1 << 31        # the middle of the range, as most client libraries use
DEFAULT_TTR = 60

TUBE_COLUMNS = ("tube", "ready", "reserved", "delayed", "buried", "urgent", "waiting",
                "paused")


class Refused(Exception):
    """The server answered with something other than the expected reply."""


# -- the protocol -------------------------------------------------------------------

class Connection:
    """One blocking connection; every read is bounded by the socket timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    @classmethod
    def open(cls, args) -> "Connection":
        if args.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(args.timeout)
            sock.connect(args.socket)
        else:
            sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _line(self) -> list:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("latin-1").split()

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n + 2:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n + 2:]
        return data

    def call(self, line: str, body: bytes | None = None) -> tuple:
        """Send one command; returns (reply words, body or None)."""
        data = line.encode() + b"\r\n"
        if body is not None:
            data += body + b"\r\n"
        self.sock.sendall(data)
        words = self._line()
        if words and words[0] in ("OK", "FOUND", "RESERVED"):
            return words, self._exact(int(words[-1]))
        return words, None

    def expect(self, line: str, reply: str, body: bytes | None = None) -> tuple:
        words, data = self.call(line, body)
        if not words or words[0] != reply:
            raise Refused(f"{line.split()[0]}: {' '.join(words) or 'empty reply'}")
        return words, data

    def yaml(self, line: str, strings=frozenset()):
        """A stats-style command's reply as a dict, or a list for list-tubes."""
        return parse_yaml(self.expect(line, "OK")[1].decode("utf-8", "replace"), strings)


# Fields that are strings even when they look like numbers: 1.12 prints them bare
# (`version: 1.12`), and the `stats` id is hex that may happen to be all digits.
STRING_KEYS = frozenset(("version", "hostname", "os", "platform", "name", "tube",
                         "state"))


def _unquote(text: str) -> str:
    """A YAML value as beanstalkd writes it: quoted (1.13, qserver) or bare (1.12)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])    # one pass, so \\" reads right
    return text


def _value(key: str, text: str, strings):
    text = _unquote(text)
    if key in STRING_KEYS or key in strings:
        return text
    if text.isdigit():
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    if key.startswith("rusage-"):
        try:
            return float(text)
        except ValueError:
            pass
    return text


def parse_yaml(text: str, strings=frozenset()):
    """The one-level mappings and lists beanstalkd sends; keys in `strings` (or
    STRING_KEYS) are never converted to numbers."""
    lines = [line for line in text.split("\n") if line and line != "---"]
    if lines and lines[0].startswith("- "):
        return [_unquote(line[2:]) for line in lines]
    return {key: _value(key, value, strings) for key, _, value in
            (line.partition(": ") for line in lines)}


# -- gathering ----------------------------------------------------------------------

def tube_row(stats: dict) -> dict:
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


def tube_rows(conn: Connection) -> list:
    rows = []
    for name in conn.yaml("list-tubes"):
        words, data = conn.call(f"stats-tube {name}")
        if words and words[0] == "OK":          # a tube may vanish in between
            rows.append(tube_row(parse_yaml(data.decode("utf-8", "replace"))))
    return rows


def job_view(conn: Connection, words: list, body: bytes) -> dict:
    job_id = int(words[1])
    view = {"id": job_id}
    try:
        view["stats"] = conn.yaml(f"stats-job {job_id}")
    except Refused:             # deleted between peek and stats-job
        view["stats"] = {}
    try:
        view["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        import base64
        view["body_base64"] = base64.b64encode(body).decode()
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

def server_stats(conn: Connection) -> dict:
    return conn.yaml("stats", strings=("id",))


def cmd_stats(conn, args) -> int:
    stats = server_stats(conn)
    emit(args, stats, table([{"key": k, "value": v} for k, v in stats.items()],
                            ("key", "value")))
    return 0


def cmd_tubes(conn, args) -> int:
    rows = tube_rows(conn)
    human = table([dict(r, paused=r["paused"] or "-") for r in rows], TUBE_COLUMNS)
    emit(args, rows, human)
    return 0


def cmd_peek(conn, args) -> int:
    if args.id is not None:
        command = f"peek {args.id}"
    else:
        if args.tube:
            conn.expect(f"use {args.tube}", "USING")
        command = f"peek-{args.state}"
    words, body = conn.call(command)
    if words[:1] != ["FOUND"]:
        raise Refused(f"{command}: {' '.join(words)}")
    view = job_view(conn, words, body)
    stats = table([{"key": k, "value": v} for k, v in view["stats"].items()],
                  ("key", "value"))
    text = view.get("body", "<%d bytes, not UTF-8>" % len(body))
    emit(args, view, f"{stats}\n\n{text}")
    return 0


def cmd_kick(conn, args) -> int:
    conn.expect(f"use {args.tube}", "USING")
    words, _ = conn.expect(f"kick {args.bound}", "KICKED")
    count = int(words[1])
    emit(args, {"tube": args.tube, "kicked": count}, f"kicked {count} job(s) in {args.tube}")
    return 0


def cmd_delete(conn, args) -> int:
    conn.expect(f"delete {args.id}", "DELETED")
    emit(args, {"deleted": args.id}, f"deleted job {args.id}")
    return 0


def cmd_pause(conn, args) -> int:
    conn.expect(f"pause-tube {args.tube} {args.seconds}", "PAUSED")
    emit(args, {"tube": args.tube, "paused": args.seconds},
         f"paused {args.tube} for {args.seconds} s")
    return 0


def cmd_put(conn, args) -> int:
    body = sys.stdin.buffer.read()
    conn.expect(f"use {args.tube}", "USING")
    words, _ = conn.expect(f"put {args.pri} {args.delay} {args.ttr} {len(body)}",
                           "INSERTED", body)
    job_id = int(words[1])
    emit(args, {"id": job_id, "tube": args.tube}, f"inserted job {job_id} into {args.tube}")
    return 0


def cmd_top(conn, args) -> int:
    """Refresh a summary and the tube table every --interval seconds."""
    previous = None
    count = 0
    clear = sys.stdout.isatty() and not args.json
    while True:
        stats = server_stats(conn)
        rows = tube_rows(conn)
        rates = _rates(previous, stats, args.interval)
        previous = stats
        if args.json:
            write(json.dumps({"time": time.time(), "stats": stats, "rates": rates,
                              "tubes": rows}))
        else:
            write(("\x1b[H\x1b[2J" if clear else "") + _top_screen(stats, rates, rows))
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


def _top_screen(stats, rates, rows) -> str:
    head = (f"version {stats.get('version', '?')}  up {stats.get('uptime', 0)} s  "
            f"connections {stats.get('current-connections', 0)}  "
            f"workers {stats.get('current-workers', 0)}  "
            f"waiting {stats.get('current-waiting', 0)}"
            + ("  DRAINING" if stats.get("draining") is True else ""))
    jobs = "  ".join(f"{s} {stats.get('current-jobs-' + s, 0)}"
                     for s in ("ready", "reserved", "delayed", "buried", "urgent"))
    rate = "  ".join(f"{k} {v}/s" for k, v in rates.items()) or "rates after next refresh"
    human_rows = [dict(r, paused=r["paused"] or "-") for r in rows]
    return f"{head}\njobs: {jobs}\n{rate}\n\n{table(human_rows, TUBE_COLUMNS)}"


# -- flags --------------------------------------------------------------------------

def _nonnegative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return int(text)


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
                                epilog="Exit status: 0 done, 1 refused by the server, "
                                       "2 usage, 3 connection failed.")
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
    top = _subcommand(subs, "top", cmd_top, "a live view of the server and its tubes")
    top.add_argument("--interval", type=_seconds, default=1.0,
                     help="seconds between refreshes (default 1)")
    top.add_argument("--iterations", type=_nonnegative, default=0,
                     help="stop after this many refreshes (default: run until ^C)")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "peek" and (args.id is None) == (args.state is None):
        p.error("peek takes a job id or --state, not both")
    if args.command == "peek" and args.tube and args.state is None:
        p.error("peek --tube goes with --state")
    where = args.socket or f"{args.host}:{args.port}"
    try:
        conn = Connection.open(args)
    except OSError as error:
        print(f"qctl: cannot connect to {where}: {error}", file=sys.stderr)
        return EXIT_CONNECTION
    try:
        return args.func(conn, args)
    except Refused as error:
        print(f"qctl: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as error:
        print(f"qctl: connection to {where}: {error}", file=sys.stderr)
        return EXIT_CONNECTION
    except KeyboardInterrupt:
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
