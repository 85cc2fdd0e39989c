"""The server's settings: one frozen `Config` with beanstalkd's defaults.

Imports: stdlib only.
"""

from dataclasses import dataclass

DEFAULT_PORT = 11300
DEFAULT_MAX_JOB_SIZE = 65535          # (1 << 16) - 1, as beanstalkd
MAX_JOB_SIZE_LIMIT = 1 << 30          # -z is capped here
DEFAULT_SEGMENT_SIZE = 10 * 1024 * 1024
DEFAULT_FSYNC_MS = 50
# qserver listens on loopback unless told otherwise (protocol.md, "Differences").
DEFAULT_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Config:
    address: str = DEFAULT_ADDRESS
    port: int = DEFAULT_PORT
    max_job_size: int = DEFAULT_MAX_JOB_SIZE
    binlog_dir: str | None = None
    fsync_ms: int | None = DEFAULT_FSYNC_MS   # None: never fsync (-F)
    segment_size: int = DEFAULT_SEGMENT_SIZE
    user: str | None = None
    verbosity: int = 0
    salvage_log: bool = False

    @property
    def unix_path(self) -> str | None:
        """The socket path when listening on `unix:PATH`, else None."""
        if self.address.startswith("unix:"):
            return self.address[len("unix:"):]
        return None
