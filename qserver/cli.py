"""Command line: beanstalkd's flags (plus long aliases), then startup in the order
that makes a spawned server answer fast: parse, bind, then import the rest.

Under systemd socket activation the inherited sockets replace -l/-p; an optional
--http listener is bound here too (and its --http-auth file read), so that both
happen before -u drops privileges.
Imports: `config`, `logs`, `systemd`, stdlib; `server` only after the listener is bound.
"""

import argparse
import os
import signal
import socket
import stat
import sys

from qserver import __version__, compiled, logs, systemd
from qserver.config import (DEFAULT_ADDRESS, DEFAULT_FSYNC_MS, DEFAULT_MAX_JOB_SIZE,
                            DEFAULT_PORT, DEFAULT_SEGMENT_SIZE, DEFAULT_UNIX_MODE,
                            MAX_JOB_SIZE_LIMIT, Config)

EXIT_USAGE = 5          # beanstalkd's status for bad flags
EXIT_SOCKET = 111       # beanstalkd's status when it cannot listen
EXIT_USER = 32          # beanstalkd's status when -u fails
EXIT_LOG_DIR = 10       # beanstalkd's status when the log directory cannot be locked
EXIT_REPLAY = 1
EXIT_STORE = 3          # --store given and the store cannot be used

DESCRIPTION = """\
qserver: a work-queue server speaking the beanstalkd protocol.

Flags are beanstalkd's, so qserver can stand in for it (BEANSTALKD_PATH=$(which
qserver)). Unlike beanstalkd, qserver listens on 127.0.0.1 unless -l says otherwise.
"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


def _size(text: str) -> int:
    """A plain decimal byte count; suffixes such as 10k are refused, as beanstalkd does."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid size: {text!r}")
    return int(text)


def _lease(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3600:
        raise argparse.ArgumentTypeError(f"invalid lease (1 to 3600 seconds): {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}")
    return int(text)


def _host_port(text: str) -> tuple:
    """`ADDR:PORT`, `[V6ADDR]:PORT` or `:PORT` (every interface) for --http."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"invalid address (want ADDR:PORT): {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _mode(text: str) -> int:
    """An octal permission mode such as 660, 0660 or 0o660."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"invalid mode: {text!r}")
    return mode


class _FsyncAction(argparse.Action):
    """-f MS and -F share one setting; the last one given wins (beanstalkd's order)."""

    def __call__(self, parser, namespace, values, option_string=None):
        never = option_string in ("-F", "--no-fsync")
        setattr(namespace, "fsync_ms", None if never else values)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qserver", description=DESCRIPTION, add_help=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    # -l and -p default to None so that main() can tell they were given when
    # systemd passes sockets and they are ignored.
    p.add_argument("-l", "--listen", metavar="ADDR",
                   help=f"listen on ADDR, or unix:PATH for a unix socket "
                        f"(default {DEFAULT_ADDRESS})")
    p.add_argument("-p", "--port", metavar="PORT", type=_port,
                   help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("-b", "--binlog-dir", metavar="DIR",
                   help="keep a write-ahead log in DIR and replay it at start")
    p.add_argument("-f", "--fsync-ms", metavar="MS", type=_size, action=_FsyncAction,
                   default=DEFAULT_FSYNC_MS,
                   help=f"fsync the log at most every MS ms; 0 means before every "
                        f"reply (default {DEFAULT_FSYNC_MS})")
    p.add_argument("-F", "--no-fsync", dest="fsync_ms", action=_FsyncAction, nargs=0,
                   help="never fsync the log")
    p.add_argument("-s", "--binlog-size", metavar="BYTES", type=_size,
                   default=DEFAULT_SEGMENT_SIZE,
                   help=f"size of each log file (default {DEFAULT_SEGMENT_SIZE})")
    p.add_argument("-z", "--max-job-size", metavar="BYTES", type=_size,
                   default=DEFAULT_MAX_JOB_SIZE,
                   help=f"largest job body accepted (default {DEFAULT_MAX_JOB_SIZE}, "
                        f"at most {MAX_JOB_SIZE_LIMIT})")
    p.add_argument("--max-connections", metavar="N", type=_size, default=0,
                   help="serve at most N clients at once; further connections are "
                        "accepted and closed at once (default 0: unlimited)")
    p.add_argument("--unix-mode", metavar="MODE", type=_mode, default=DEFAULT_UNIX_MODE,
                   help=f"permissions of a unix:PATH socket, in octal "
                        f"(default {DEFAULT_UNIX_MODE:o}: owner and group)")
    p.add_argument("--event-window", metavar="N", type=_size, default=100_000,
                   help="events kept for subscribers to resume from; older ones are "
                        "reported as a GAP (default 100000)")
    p.add_argument("--store", metavar="URL", type=_store_url,
                   help="keep the jobs in a shared store instead of this process, so "
                        "several qserver nodes serve the same tubes: "
                        "redis://[USER:PASSWORD@]HOST:PORT/DB, rediss://... (TLS), "
                        "or redis+sentinel://[USER:PASSWORD@]H1:PORT,H2:PORT/MASTER/DB "
                        "to follow the primary that Sentinel names through "
                        "failovers (experimental: see protocol.md, \"Several "
                        "nodes\"; not with -b)")
    p.add_argument("--store-prefix", metavar="NAME", default="qserver",
                   help="name of this cluster's keys in the store, so several "
                        "clusters can share one Redis (default qserver)")
    p.add_argument("--store-wait-replicas", metavar="N", type=_size, default=0,
                   help="answer a store command only once N replicas have it "
                        "(Redis WAIT, 1 s timeout; fewer in time: INTERNAL_ERROR, "
                        "outcome unknown), so a failover cannot lose it "
                        "(default 0: asynchronous replication, a failover may lose "
                        "the last acknowledged changes)")
    p.add_argument("--store-lease", metavar="SECONDS", type=_lease, default=10,
                   help="a node silent this long (killed, or cut off from the store) "
                        "is taken for dead: its clients' reserved jobs are ready "
                        "again and the tubes only it used are forgotten; each node "
                        "renews its lease every second (1 to 3600, default 10)")
    p.add_argument("--salvage-log", action="store_true",
                   help="start even if the log is corrupt in the middle, skipping "
                        "and reporting the damaged records")
    p.add_argument("--http", metavar="ADDR:PORT", type=_host_port,
                   help="serve the web dashboard at /, its JSON API at /api/, "
                        "Prometheus metrics at /metrics and a health check at /health "
                        "over HTTP on ADDR:PORT (default off; use 127.0.0.1:PORT for "
                        "loopback only, :PORT for every interface)")
    p.add_argument("--metrics", metavar="ADDR:PORT", type=_host_port,
                   help="the same as --http (kept for older setups)")
    p.add_argument("--http-read-only", action="store_true",
                   help="the dashboard and API only read: every action (kick, delete, "
                        "pause, flush, retry, policy) is refused with 403")
    p.add_argument("--http-auth", metavar="FILE",
                   help="require HTTP Basic credentials or a bearer token from FILE "
                        "for everything but /health (make its lines with "
                        "`python -m qserver.http.auth user NAME` or `... token`)")
    p.add_argument("-u", "--user", metavar="USER",
                   help="become USER after binding the listener")
    p.add_argument("-V", "--verbose", action="count", default=0,
                   help="log more; repeat for more detail")
    p.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    p.add_argument("-h", "--help", action="store_true", help="print this help and exit")
    p.add_argument("-c", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-n", action="store_true", help=argparse.SUPPRESS)
    return p


def _store_url(text: str) -> str:
    from qserver.store import parse_url     # stdlib only; loaded with --store alone
    try:
        parse_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def parse_config(argv) -> Config:
    """Flags to a Config; prints and raises SystemExit for -h, -v and bad flags."""
    return _parse(argv)[0]


def _parse(argv) -> tuple:
    """(Config, whether -l or -p was given)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"qserver: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if args.help:
        parser.print_help()
        raise SystemExit(0)
    if args.version:
        print(f"qserver {__version__}")
        raise SystemExit(0)
    if args.c or args.n:
        print("qserver: -c and -n are obsolete and ignored (as in beanstalkd)",
              file=sys.stderr)
    max_job_size = args.max_job_size
    if max_job_size > MAX_JOB_SIZE_LIMIT:
        print(f"qserver: -z {max_job_size} is over the limit; using {MAX_JOB_SIZE_LIMIT}",
              file=sys.stderr)
        max_job_size = MAX_JOB_SIZE_LIMIT
    if args.store and args.binlog_dir:
        parser.print_usage(sys.stderr)
        print("qserver: -b and --store cannot be used together: with --store the "
              "jobs live in the store, which keeps its own log", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    listen_given = args.listen is not None or args.port is not None
    config = Config(address=DEFAULT_ADDRESS if args.listen is None else args.listen,
                    port=DEFAULT_PORT if args.port is None else args.port,
                    max_job_size=max_job_size,
                    binlog_dir=args.binlog_dir, fsync_ms=args.fsync_ms,
                    segment_size=args.binlog_size, user=args.user,
                    verbosity=args.verbose, salvage_log=args.salvage_log,
                    http=_http_address(parser, args), http_read_only=args.http_read_only,
                    http_auth=_http_auth(parser, args.http_auth),
                    max_connections=args.max_connections or None,
                    unix_mode=args.unix_mode, event_window=max(1, args.event_window),
                    store=args.store, store_prefix=args.store_prefix,
                    store_wait_replicas=args.store_wait_replicas,
                    store_lease=args.store_lease)
    return config, listen_given


def open_listener(config: Config) -> socket.socket:
    """Bind and listen; an old unix socket file at the path is replaced."""
    path = config.unix_path
    if path is not None:
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind() creates the file with 0o777 & ~umask: set the umask so that it is
        # born with --unix-mode (never wider), then chmod to be exact.
        old_umask = os.umask(0o777 & ~config.unix_mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, config.unix_mode)
    else:
        sock = _tcp_socket(config.address, config.port)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _tcp_socket(address: str, port: int) -> socket.socket:
    """A bound TCP socket; '' means the first wildcard address the resolver gives."""
    host = address or None
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host is None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(addr)
    return sock


def _http_address(parser, args):
    """--http, or its alias --metrics; both at once must agree."""
    if args.http and args.metrics and args.http != args.metrics:
        _usage_exit(parser, "--http and --metrics name one listener: give one of them")
    if (args.http_read_only or args.http_auth) and not (args.http or args.metrics):
        _usage_exit(parser, "--http-read-only and --http-auth need --http ADDR:PORT")
    return args.http or args.metrics


def _http_auth(parser, path):
    """--http-auth's credentials, read now (before -u drops privileges)."""
    if path is None:
        return None
    from qserver.http.auth import AuthFileError, load    # stdlib only
    try:
        return load(path)
    except AuthFileError as error:
        _usage_exit(parser, f"--http-auth: {error}")


def _usage_exit(parser, message: str):
    parser.print_usage(sys.stderr)
    print(f"qserver: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def open_http_listener(config: Config) -> socket.socket | None:
    """The --http socket, bound and listening (None when --http is off)."""
    if config.http is None:
        return None
    sock = _tcp_socket(*config.http)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _listeners(config: Config, inherited: list, listen_given: bool, log) -> list:
    """Sockets from systemd if it passed any, else the one -l/-p describe."""
    if not inherited:
        return [open_listener(config)]
    if listen_given:
        log.warning("-l/-p ignored: listening on the %d socket(s) passed by systemd",
                    len(inherited))
    return inherited


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    os.unlink(path)


def raise_open_files_limit(log) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: every client is a descriptor,
    and the usual soft limit of 1024 is far below what the server can hold."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.warning("cannot raise the open files limit from %d to %d: %s",
                    soft, target, error)
        return
    log.info("open files limit raised from %d to %d", soft, target)


def drop_privileges(user: str) -> None:
    import pwd
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _new_loop():
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        import asyncio
        return asyncio.new_event_loop()


def _catch_early_signals() -> list:
    """Remember signals that arrive after the listener exists but before the event
    loop handles them, instead of dying of SIGUSR1's default action."""
    early = []
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: early.append(signum))
    return early


def main(argv=None) -> int:
    config, listen_given = _parse(sys.argv[1:] if argv is None else argv)
    log = logs.setup(config.verbosity)
    log.debug("hot modules: %s", compiled.state)
    early_signals = _catch_early_signals()
    raise_open_files_limit(log)
    try:
        inherited = systemd.listen_sockets()
    except OSError as error:
        log.error("socket activation: %s", error)
        return EXIT_SOCKET
    try:
        listeners = _listeners(config, inherited, listen_given, log)
    except OSError as error:
        log.error("cannot listen on %s port %s: %s", config.address, config.port, error)
        return EXIT_SOCKET
    try:
        http_listener = open_http_listener(config)
    except OSError as error:
        log.error("cannot listen for --http on %s port %s: %s", *config.http, error)
        return EXIT_SOCKET
    if config.user:
        try:
            drop_privileges(config.user)
        except (KeyError, OSError) as error:
            log.error("cannot become user %s: %s", config.user, error)
            return EXIT_USER
    for listener in listeners:
        log.info("listening on %s", systemd.describe(listener))
    import asyncio
    from qserver import server
    from qserver.journal import CorruptLog, LogDirError
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(server.run(config, listeners, early_signals,
                                         http_listener))
    except LogDirError as error:
        log.error("%s", error)
        return EXIT_LOG_DIR
    except CorruptLog as error:
        log.error("cannot replay the log: %s", error)
        return EXIT_REPLAY
    except server.StoreError as error:
        log.error("%s", error)
        return EXIT_STORE

