"""The shared store's function library (qserver/store/functions.lua) against a real
redis-server: each job operation as one atomic call, the (pri, id) order across
tubes, holders, delays, TTR expiry and a closed connection's jobs, with the store's
clock. Store-level (no qserver process): the server is wired to it in later steps.
"""

import asyncio
import time

import pytest

from qserver.errors import InternalError, NotFound
from qserver.store.redis import RedisStore

DELAY_BOUND = 10.0              # a due job shows up within this (polling), never early


@pytest.fixture
async def store(redis_server, request):
    # A prefix per test: the tests share one redis-server but not their keys.
    s = await RedisStore.connect(f"redis://127.0.0.1:{redis_server.port}/0",
                                 prefix=request.node.name)
    yield s
    await s.close()


async def test_put_reserve_delete(store):
    job = await store.put("t", 5, 0, 60, b"hello")
    assert await store.reserve("n:1", ["t"]) == (job, b"hello")
    assert await store.reserve("n:1", ["t"]) is None
    fields = await store.job(job)
    assert (fields["state"], fields["holder"], fields["reserves"]) == \
        (b"reserved", b"n:1", b"1")
    with pytest.raises(NotFound):               # only its holder may delete it
        await store.delete(job, "n:2")
    await store.delete(job, "n:1")
    with pytest.raises(NotFound):
        await store.job(job)
    with pytest.raises(NotFound):
        await store.delete(job, "n:1")


async def test_ids_come_from_one_counter(store):
    ids = [await store.put("t", 0, 0, 60, b"x") for _ in range(5)]
    assert ids == list(range(ids[0], ids[0] + 5))


async def test_reserve_takes_the_smallest_pri_then_id_across_tubes(store):
    made = []
    for tube, pri in [("a", 3), ("b", 1), ("a", 1), ("c", 2), ("b", 1), ("a", 0)]:
        made.append((pri, await store.put(tube, pri, 0, 60, tube.encode()), tube))
    got = []
    for _ in made:
        job_id, body = await store.reserve("n:1", ["a", "b", "c"])
        got.append(job_id)
    assert got == [job_id for _, job_id, _ in sorted(made)]
    assert await store.reserve("n:1", ["a", "b", "c"]) is None


async def test_priorities_up_to_2_32_minus_1_and_ids_up_to_2_53_are_exact(store):
    await store.redis.set(f"{store.key}:seq", 2**53 - 4)
    big = await store.put("t", 2**32 - 1, 0, 60, b"big")
    small = await store.put("t", 2**32 - 2, 0, 60, b"small")
    assert (big, small) == (2**53 - 3, 2**53 - 2)
    assert (await store.reserve("n", ["t"]))[0] == small
    assert (await store.reserve("n", ["t"]))[0] == big
    await store.put("t", 0, 0, 60, b"last")     # 2**53 - 1
    with pytest.raises(InternalError):          # never an inexact id
        await store.put("t", 0, 0, 60, b"too far")


async def test_release_bury_kick_and_touch(store):
    job = await store.put("t", 0, 0, 60, b"x")
    await store.reserve("n:1", ["t"])
    with pytest.raises(NotFound):
        await store.release(job, "n:2", 0, 0)
    await store.release(job, "n:1", 7, 0)
    assert (await store.job(job))["pri"] == b"7"
    assert await store.reserve("n:1", ["t"]) == (job, b"x")
    await store.touch(job, "n:1")
    await store.bury(job, "n:1", 9)
    assert await store.peek_list("t", "buried") == (job, b"x")
    assert await store.reserve("n:1", ["t"]) is None
    assert await store.kick("t", 10) == 1
    fields = await store.job(job)
    assert (fields["state"], fields["kicks"], fields["buries"], fields["releases"]) == \
        (b"ready", b"1", b"1", b"1")
    with pytest.raises(NotFound):
        await store.kick_job(job)               # ready: nothing to kick


async def test_a_delayed_job_is_ready_no_earlier_than_its_delay(store):
    job = await store.put("t", 0, 1, 60, b"later")
    started = time.monotonic()
    assert await store.reserve("n", ["t"]) is None
    for _ in range(int(DELAY_BOUND / 0.01)):
        got = await store.reserve("n", ["t"])
        if got is not None:
            break
        await asyncio.sleep(0.01)
    # The store's clock and ours may differ by clock reading only (same host).
    assert got == (job, b"later") and time.monotonic() - started >= 1.0 - 0.002


async def test_kick_job_of_a_delayed_job(store):
    job = await store.put("t", 0, 3600, 60, b"d")
    assert await store.peek_list("t", "delayed") == (job, b"d")
    await store.kick_job(job)
    assert await store.reserve("n", ["t"]) == (job, b"d")


async def test_the_reaper_puts_a_job_back_at_its_ttr_and_not_before(store):
    job = await store.put("t", 0, 0, 1, b"slow")
    await store.reserve("n:1", ["t"])
    reserved_at = time.monotonic()
    assert await store.expire() == 0
    for _ in range(int(DELAY_BOUND / 0.01)):
        fields = await store.job(job)
        if fields["state"] != b"reserved":
            break
        await asyncio.sleep(0.01)
    assert time.monotonic() - reserved_at >= 1.0 - 0.002
    assert (fields["state"], fields["timeouts"]) == (b"ready", b"1")
    with pytest.raises(NotFound):               # no longer the holder's
        await store.release(job, "n:1", 0, 0)
    assert await store.reserve("n:2", ["t"]) == (job, b"slow")


async def test_a_closed_connection_releases_its_jobs_at_once(store):
    first = await store.put("t", 0, 0, 60, b"1")
    second = await store.put("t", 0, 0, 60, b"2")
    await store.reserve("n:1", ["t"])
    await store.reserve("n:1", ["t"])
    other = await store.put("t", 0, 0, 60, b"3")
    assert await store.reserve("n:2", ["t"]) == (other, b"3")
    assert await store.release_holder("n:1") == 2
    assert await store.reserve("n:3", ["t"]) == (first, b"1")
    assert await store.reserve("n:3", ["t"]) == (second, b"2")
    assert (await store.job(other))["holder"] == b"n:2"


async def test_peek_by_id_and_peek_lists(store):
    job = await store.put("t", 0, 0, 60, b"p")
    assert await store.peek(job) == (job, b"p")
    assert await store.peek_list("t", "ready") == (job, b"p")
    with pytest.raises(NotFound):
        await store.peek_list("t", "buried")
    with pytest.raises(NotFound):
        await store.peek(job + 1000)


async def test_one_step_per_operation_under_many_clients(store, redis_server):
    """Ten stores (as ten nodes) reserve and delete concurrently: every job is
    reserved exactly once and none is lost."""
    nodes = [await RedisStore.connect(f"redis://127.0.0.1:{redis_server.port}/0",
                                      prefix=store.key[1:-1]) for _ in range(10)]
    ids = [await store.put("t", i % 3, 0, 60, b"x") for i in range(300)]
    seen = []

    async def work(n, node):
        for _ in range(1000):
            got = await node.reserve(f"n:{n}", ["t"])
            if got is None:
                return
            seen.append(got[0])
            await node.delete(got[0], f"n:{n}")
    await asyncio.gather(*(work(n, node) for n, node in enumerate(nodes)))
    for node in nodes:
        await node.close()
    assert sorted(seen) == ids


# ---------------------------------------------------------------- waiting, batches

async def test_a_waiting_reserve_on_one_node_wakes_when_another_puts(store, redis_server):
    other = await RedisStore.connect(f"redis://127.0.0.1:{redis_server.port}/0",
                                     prefix=store.key[1:-1])
    try:
        waiting = asyncio.create_task(store.reserve_wait("a:1", ["x", "t"], DELAY_BOUND))
        await asyncio.sleep(0)              # it looks once and waits
        job = await other.put("t", 0, 0, 60, b"from b")
        assert await asyncio.wait_for(waiting, DELAY_BOUND) == (job, b"from b")
    finally:
        await other.close()


async def test_a_waiting_reserve_gets_a_delayed_job_when_it_is_due(store):
    job = await store.put("t", 0, 1, 60, b"later")
    started = time.monotonic()
    got = await store.reserve_wait("a:1", ["t"], DELAY_BOUND)
    assert got == (job, b"later") and time.monotonic() - started >= 1.0 - 0.002


async def test_reserve_wait_times_out_and_zero_means_one_look(store):
    started = time.monotonic()
    assert await store.reserve_wait("a:1", ["t"], 0.2) is None
    assert time.monotonic() - started >= 0.2 - 0.002
    assert await store.reserve_wait("a:1", ["t"], 0) is None
    job = await store.put("t", 0, 0, 60, b"now")
    assert await store.reserve_wait("a:1", ["t"], 0) == (job, b"now")


async def test_the_calls_of_one_loop_turn_go_in_one_round_trip_in_order(store):
    before = store.batcher.round_trips
    ids = await asyncio.gather(*(store.put("t", 0, 0, 60, b"%d" % n) for n in range(100)))
    # One batch (more only if the TTR reaper's or the lease's call was on its way
    # when they were made).
    assert store.batcher.round_trips - before <= 3 and store.batcher.largest >= 100
    assert list(ids) == list(range(ids[0], ids[0] + 100))      # in the order made
    # A put and a reserve made in one turn: the reserve sees the put.
    put, got = await asyncio.gather(store.put("u", 0, 0, 60, b"p"),
                                    store.reserve("a:1", ["u"]))
    assert got == (put, b"p")


async def test_a_batch_waits_while_another_prepares_a_new_connection(redis_server):
    """Batches overlap on one connection (their replies are read in the order they
    were written), but none is written while the first prepares its connection:
    its replies would be read by the preparation."""
    from qserver.store import parse_url
    from qserver.store.batch import Batcher
    preparing, go_on = asyncio.Event(), asyncio.Event()
    prepared = []

    async def prepare(connection):
        preparing.set()
        await asyncio.wait_for(go_on.wait(), 10)
        prepared.append(await connection.call("ECHO", "prepared"))

    batcher = Batcher(parse_url(f"redis://127.0.0.1:{redis_server.port}/0"), prepare)
    try:
        first = batcher.call("ECHO", "one")
        await asyncio.wait_for(preparing.wait(), 10)
        second = batcher.call("ECHO", "two")        # comes while the first prepares
        await asyncio.sleep(0)
        go_on.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [b"one", b"two"]
        assert prepared == [b"prepared"]
    finally:
        batcher.close()


async def test_one_failing_call_does_not_fail_its_batch(store):
    good, bad = await asyncio.gather(store.put("t", 0, 0, 60, b"x"),
                                     store.batcher.call("FCALL", "no_such_function", 0),
                                     return_exceptions=True)
    assert isinstance(good, int) and isinstance(bad, Exception)
    assert await store.peek(good) == (good, b"x")


async def test_a_big_kick_goes_in_chunks_from_the_list_it_started_on(store):
    """kick takes at most 1000 jobs per function call; a kick of more keeps to the
    buried list it began with, as beanstalkd's does (never the delayed ones too)."""
    ids = [await store.put("t", 0, 0, 60, b"x") for _ in range(1500)]
    for job in ids:
        await store.reserve("n", ["t"])
        await store.bury(job, "n", 0)
    delayed = await store.put("t", 0, 3600, 60, b"d")
    assert await store.kick("t", 5000) == 1500
    assert (await store.job(delayed))["state"] == b"delayed"
    assert await store.kick("t", 0) == 0
    assert await store.kick("t", 5) == 1                # now the delayed one


async def test_a_failed_put_uses_up_an_id(store):
    first = await store.put("t", 0, 0, 60, b"x")
    store.skip_id()
    assert await store.put("t", 0, 0, 60, b"y") == first + 2


def test_failed_calls_are_logged_at_most_once_a_second_with_a_count(caplog):
    from qserver.store.commands import FailureLog
    now = [100.0]
    failures = FailureLog(clock=lambda: now[0])
    with caplog.at_level("ERROR", logger="qserver"):
        for step in (0.0, 0.2, 0.5, 0.9, 1.0, 1.1):
            now[0] = 100.0 + step
            failures.log(ConnectionError("away"))
    assert [r.getMessage() for r in caplog.records] == [
        "store call failed: away",
        "store call failed: away (and 3 more since the last one logged)"]
