"""The two things qserver asks of systemd, without libsystemd: sd_notify messages
(READY, STATUS, STOPPING, WATCHDOG) and sockets inherited by socket activation
(LISTEN_FDS / LISTEN_PID). Outside systemd every function here is a no-op.

Imports: stdlib only (and only modules cli.py loads anyway, so startup pays nothing).
"""

import os
import socket

LISTEN_FDS_START = 3        # sd_listen_fds(3): inherited sockets start at fd 3


def notify(*lines: str) -> bool:
    """Send `KEY=VALUE` lines to $NOTIFY_SOCKET; False when there is none or it fails
    (a missing or gone service manager must never take the server down)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address[0] == "@":                   # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(lines).encode(), address)
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC, as sd_watchdog_enabled
    advises), or None when the watchdog is off or meant for another process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


def listen_sockets() -> list:
    """Listening stream sockets passed by systemd, or [] when there are none for us.

    The variables are removed so child processes cannot take the sockets for
    their own. Raises OSError for an inherited fd that is not a listening stream
    socket (a unit file mistake worth failing loudly for).
    """
    count = os.environ.get("LISTEN_FDS", "")
    ours = os.environ.get("LISTEN_PID") == str(os.getpid())
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not ours or not count.isdigit():
        return []
    return [_adopt(fd) for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))]


def _adopt(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)          # family and type are read from the fd
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise OSError(f"inherited fd {fd} is not a listening stream socket")
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    """`HOST:PORT` or `unix:PATH`, for logs and STATUS."""
    name = sock.getsockname()
    if isinstance(name, (str, bytes)):
        if isinstance(name, bytes):          # abstract unix address
            name = "@" + name[1:].decode(errors="replace")
        return f"unix:{name}"
    host = f"[{name[0]}]" if ":" in name[0] else name[0]
    return f"{host}:{name[1]}"
