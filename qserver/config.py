"""The server's settings: one read-only `Config` with beanstalkd's defaults.

Imports: stdlib only.
"""

DEFAULT_PORT = 11300
DEFAULT_MAX_JOB_SIZE = 65535          # (1 << 16) - 1, as beanstalkd
MAX_JOB_SIZE_LIMIT = 1 << 30          # -z is capped here
DEFAULT_SEGMENT_SIZE = 10 * 1024 * 1024
DEFAULT_FSYNC_MS = 50
# qserver listens on loopback unless told otherwise (protocol.md, "Differences").
DEFAULT_ADDRESS = "127.0.0.1"
# Mode of a `-l unix:PATH` socket: owner and group may connect, other local users
# may not (connecting needs write permission). Grant access by group membership.
DEFAULT_UNIX_MODE = 0o660


_DEFAULTS = {
    "address": DEFAULT_ADDRESS,
    "port": DEFAULT_PORT,
    "max_job_size": DEFAULT_MAX_JOB_SIZE,
    "binlog_dir": None,
    "fsync_ms": DEFAULT_FSYNC_MS,        # None: never fsync (-F)
    "segment_size": DEFAULT_SEGMENT_SIZE,
    "user": None,
    "verbosity": 0,
    "salvage_log": False,
    "http": None,                        # (host, port) of --http (--metrics), None: off
    "http_read_only": False,             # --http-read-only: every action refused
    "http_auth": None,                   # --http-auth's (users, token hashes), None: open
    "max_connections": None,             # None: unlimited
    "unix_mode": DEFAULT_UNIX_MODE,
    "event_window": 100_000,             # events kept for subscribe (resume, GAP)
    "store": None,                       # --store URL: jobs in a shared Redis
    "store_prefix": "qserver",           # the hash tag of this cluster's keys
    "store_wait_replicas": 0,            # WAIT for this many replicas per batch
    "store_lease": 10,                   # seconds of silence before a node is dead
}
# New settings go into _DEFAULTS above (Config is a plain class, not a dataclass).


class Config:
    """Settings, read-only once made. A plain class rather than a dataclass: the
    dataclasses import costs milliseconds of startup, and a spawned server must
    answer within 100 ms."""

    __slots__ = tuple(_DEFAULTS)

    def __init__(self, **settings):
        unknown = settings.keys() - _DEFAULTS.keys()
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        for name, default in _DEFAULTS.items():
            object.__setattr__(self, name, settings.get(name, default))

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only")

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _DEFAULTS)
        return f"Config({fields})"

    @property
    def unix_path(self) -> str | None:
        """The socket path when listening on `unix:PATH`, else None."""
        if self.address.startswith("unix:"):
            return self.address[len("unix:"):]
        return None
