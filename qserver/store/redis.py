"""The job operations on Redis: thin asyncio wrappers around the function library
in `functions.lua` (one FCALL, one atomic step, per operation).

Every key of one qserver cluster carries the hash tag `{prefix}`, so a cluster's
keys sit in one slot and several clusters can share one Redis (`prefix`). Times are
the store's (Redis TIME), the one clock all nodes share. A holder names one client
connection of one node (`node:connection`); a reserved job can be deleted,
released, buried or touched only by its holder, as in beanstalkd.
Imports: `errors`, stdlib, redis-py (this module is imported only in store mode).
"""

import logging
from importlib import resources

from redis.exceptions import ResponseError

from qserver.errors import InternalError, NotFound

log = logging.getLogger("qserver")

LIBRARY_FILE = "functions.lua"


def library_code() -> str:
    return resources.files("qserver.store").joinpath(LIBRARY_FILE).read_text()


class RedisStore:
    def __init__(self, client, prefix: str = "qserver"):
        self.redis = client                 # a redis.asyncio.Redis
        self.key = "{%s}" % prefix          # KEYS[1] of every call: the hash tag

    @classmethod
    async def connect(cls, url: str, prefix: str = "qserver") -> "RedisStore":
        """Connect to `url` (redis:// or rediss://) and (re)load the function
        library, so every node runs the functions its own version ships."""
        import redis.asyncio as aioredis
        store = cls(aioredis.from_url(url), prefix)
        await store.load_functions()
        return store

    async def load_functions(self) -> None:
        await self.redis.function_load(library_code(), replace=True)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _call(self, name: str, *args) -> list:
        """FCALL a function; NOT_FOUND and a function's error become the protocol's
        errors."""
        try:
            reply = await self.redis.fcall(name, 1, self.key, *args)
        except ResponseError as error:
            log.error("store: %s failed: %s", name, error)
            raise InternalError from None
        if reply[0] == b"NOT_FOUND":
            raise NotFound
        return reply[1:]

    # -- the job operations ---------------------------------------------------------

    async def put(self, tube: str, pri: int, delay: int, ttr: int, body: bytes) -> int:
        (job_id,) = await self._call("qs_put", tube, pri, delay, ttr, body)
        return job_id

    async def reserve(self, holder: str, tubes) -> tuple | None:
        """(id, body) of the ready job with the smallest (pri, id) in `tubes`,
        now reserved by `holder`; None when there is none."""
        reply = await self._call("qs_reserve", holder, *tubes)
        if not reply:
            return None
        return reply[0], reply[1]

    async def delete(self, job_id: int, holder: str) -> None:
        await self._call("qs_delete", job_id, holder)

    async def release(self, job_id: int, holder: str, pri: int, delay: int) -> None:
        await self._call("qs_release", job_id, holder, pri, delay)

    async def bury(self, job_id: int, holder: str, pri: int) -> None:
        await self._call("qs_bury", job_id, holder, pri)

    async def touch(self, job_id: int, holder: str) -> None:
        await self._call("qs_touch", job_id, holder)

    async def kick(self, tube: str, bound: int) -> int:
        (count,) = await self._call("qs_kick", tube, bound)
        return count

    async def kick_job(self, job_id: int) -> None:
        await self._call("qs_kick_job", job_id)

    async def peek(self, job_id: int) -> tuple:
        found_id, body = await self._call("qs_peek", job_id)
        return found_id, body

    async def peek_list(self, tube: str, state: str) -> tuple:
        """The next job of a tube's ready, delayed or buried list: (id, body)."""
        found_id, body = await self._call("qs_peek_list", tube, state)
        return found_id, body

    async def expire(self, limit: int = 100) -> int:
        """Put reserved jobs past their TTR back to ready (any node may call it)."""
        (count,) = await self._call("qs_expire", limit)
        return count

    async def release_holder(self, holder: str) -> int:
        """A connection closed: its reserved jobs are ready again at once."""
        (count,) = await self._call("qs_release_holder", holder)
        return count

    async def job(self, job_id: int) -> dict:
        """The job's fields as stored (for stats-job and tests)."""
        fields = await self.redis.hgetall(f"{self.key}:j:{job_id}")
        if not fields:
            raise NotFound
        return {name.decode(): value for name, value in fields.items()}
