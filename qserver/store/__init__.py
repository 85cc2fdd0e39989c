"""Where the queue's state lives when it is shared by several nodes (issue 12).

The default store is the in-memory engine with its own log (`engine`, `journal`):
synchronous, embedded, and untouched by anything here. `redis` keeps every job in
Redis (or Valkey) and changes it with one atomic Redis Function per operation
(`functions.lua`), so several qserver nodes can serve the same tubes. Nothing here
is imported unless a store is asked for (redis-py alone takes about 100 ms to
import). `commands` is the server's command table in store mode, with the
extensions' rooms merged in (`lifecycle`, `steering`, `events`): every command of
protocol.md (its "Several nodes" part says where a shared store differs).

This file itself is stdlib only: `parse_url` reads a --store URL, and cli.py calls it
(only when --store is given) to refuse a bad URL as a usage error.
Imports: stdlib.
"""

from urllib.parse import unquote

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
REDIS_PORT = 6379
SENTINEL_PORT = 26379


def parse_url(url: str) -> dict:
    """A store URL to settings: host, port, db, username, password, tls, and for the
    Sentinel forms `sentinels` [(host, port), ...] and `master` (the name the
    sentinels monitor). Raises ValueError with a sentence for the user.

      redis://[USER:PASSWORD@]HOST[:PORT][/DB]            (rediss:// over TLS)
      redis+sentinel://[USER:PASSWORD@]H1[:P1],H2[:P2]/MASTER[/DB]
                                                        (rediss+sentinel:// over TLS)

    The credentials are the primary's; the sentinels are asked without any."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"{url!r} is not a redis://, rediss:// or redis+sentinel:// URL")
    if "?" in rest or "#" in rest:
        raise ValueError("store URLs take no query parameters")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:                   # redis://secret@host: a password alone
            username, password = None, unquote(user) or None
    sentinel = scheme.endswith("+sentinel")
    parts = [part for part in path.split("/") if part] if path else []
    settings = {"tls": scheme.startswith("rediss"), "username": username,
                "password": password, "sentinels": None, "master": None}
    if sentinel:
        if not parts:
            raise ValueError("a Sentinel URL names the primary after the hosts: "
                             "redis+sentinel://H1:26379,H2:26379/MASTER/DB")
        settings["master"] = unquote(parts.pop(0))
        settings["sentinels"] = [_host_port(h, SENTINEL_PORT) for h in hosts.split(",")]
        settings["host"], settings["port"] = settings["sentinels"][0]
    else:
        settings["host"], settings["port"] = _host_port(hosts, REDIS_PORT)
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise ValueError(f"the database must be a number: {path!r}")
    settings["db"] = int(parts[0]) if parts else 0
    return settings


def _host_port(text: str, default: int) -> tuple:
    """`HOST`, `HOST:PORT` or `[V6ADDR]:PORT`."""
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"bad address {text!r}")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"bad port in {text!r}")
    return host, int(port) if port else default
