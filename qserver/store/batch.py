"""One pipeline per round trip: the store calls made while the previous batch was on
its way go together as the next one (protocol.md's group commit, for Redis).

A node serving many busy clients must not pay one Redis round trip per command
(redis-py's asyncio path reaches only ~30k requests/s that way). At most one batch is
in flight, so the calls reach Redis in the order they were made: a client's
pipelined `put` then `reserve` see each other's effects, and one client's replies
stay in order. Each call gets a future; a call that Redis refuses gets its error,
the others of the batch are not affected. Imports: stdlib.
"""

import asyncio


class Batcher:
    def __init__(self, redis):
        self.redis = redis              # a redis.asyncio.Redis
        self.pending = []               # (command args, future) not sent yet
        self.in_flight = False
        self.round_trips = 0            # batches sent (tests, stats)
        self.largest = 0                # the most calls one batch carried

    def call(self, *args) -> asyncio.Future:
        """Queue one command (e.g. "FCALL", name, 1, key, ...); its reply comes
        through the returned future."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((args, future))
        if not self.in_flight:
            self.in_flight = True
            # After this loop turn's other callbacks, so their calls join the batch.
            asyncio.get_running_loop().call_soon(self._send_next)
        return future

    def _send_next(self) -> None:
        if not self.pending:
            self.in_flight = False
            return
        batch, self.pending = self.pending, []
        asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for args, _ in batch:
                pipe.execute_command(*args)
            self.round_trips += 1
            self.largest = max(self.largest, len(batch))
            results = await pipe.execute(raise_on_error=False)
        except Exception as error:      # the connection failed: every call hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), result in zip(batch, results):
                if future.done():       # its caller gave up (cancelled)
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        self._send_next()
