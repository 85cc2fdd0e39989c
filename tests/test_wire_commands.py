"""Golden over-the-wire tests: exact reply bytes for every command.

Every expected reply is spelled out literally here, as an independent check of the
server (reference: /work/shared/reference/beanstalkd.md sections 1-5, 8, 10; the
stats format follows beanstalkd 1.13, i.e. string values double-quoted).

Stats-style replies are compared byte for byte after the values of the volatile
fields (pid, version, rusage-*, uptime, id, hostname, os, platform) have been
checked against their format and replaced by a placeholder. The framing
`OK <n>\\r\\n<n bytes>\\r\\n` is always checked exactly, with n recomputed from the
bytes actually received.
"""

import re
import time

import pytest

from conftest import WAIT, assert_on_time, start_qserver

# The beanstalkd conformance suite: every test runs on both stores.
pytestmark = pytest.mark.usefixtures("each_store")

# --------------------------------------------------------------------------- helpers

# value formats of the volatile stats fields; the value is replaced by "*" (kept
# inside its quotes for the quoted ones)
VOLATILE = {
    b"pid": rb"[1-9][0-9]*",
    b"version": rb'"[^"\n]+"',
    b"rusage-utime": rb"[0-9]+\.[0-9]{6}",
    b"rusage-stime": rb"[0-9]+\.[0-9]{6}",
    b"uptime": rb"[0-9]+",
    b"id": rb"[0-9a-f]{16}",
    b"hostname": rb'"[^"\n]*"',
    b"os": rb'"[^"\n]*"',
    b"platform": rb'"[^"\n]*"',
}


def split_ok(reply: bytes) -> bytes:
    """Check the `OK <n>\\r\\n<body>\\r\\n` framing exactly and return the body."""
    m = re.fullmatch(rb"OK ([1-9][0-9]*)\r\n(.*)\r\n", reply, re.S)
    assert m, reply
    body = m[2]
    assert int(m[1]) == len(body), (m[1], len(body), reply)
    assert body.startswith(b"---\n") and body.endswith(b"\n"), reply
    return body


def normalize_stats(reply: bytes) -> bytes:
    """The stats body with volatile values format-checked and replaced."""
    body = split_ok(reply)
    out = []
    for line in body.split(b"\n"):
        key, sep, value = line.partition(b": ")
        if sep and key in VOLATILE:
            assert re.fullmatch(VOLATILE[key], value), (key, value)
            value = b'"*"' if value.startswith(b'"') else b"*"
            line = key + sep + value
        out.append(line)
    return b"\n".join(out)


def stats_yaml(client, cmd=b"stats") -> dict:
    """Parse a stats reply into a dict of bytes -> bytes (raw values, quotes kept)."""
    body = split_ok(client.cmd(cmd))
    out = {}
    for line in body.split(b"\n")[1:-1]:
        key, sep, value = line.partition(b": ")
        assert sep, line
        out[key] = value
    return out


def put(client, body=b"hello", pri=0, delay=0, ttr=10) -> bytes:
    return client.cmd(b"put %d %d %d %d\r\n%s" % (pri, delay, ttr, len(body), body))


FRESH_STATS = (
    b"---\n"
    b"current-jobs-urgent: 0\n"
    b"current-jobs-ready: 0\n"
    b"current-jobs-reserved: 0\n"
    b"current-jobs-delayed: 0\n"
    b"current-jobs-buried: 0\n"
    b"cmd-put: 0\n"
    b"cmd-peek: 0\n"
    b"cmd-peek-ready: 0\n"
    b"cmd-peek-delayed: 0\n"
    b"cmd-peek-buried: 0\n"
    b"cmd-reserve: 0\n"
    b"cmd-reserve-with-timeout: 0\n"
    b"cmd-delete: 0\n"
    b"cmd-release: 0\n"
    b"cmd-use: 0\n"
    b"cmd-watch: 0\n"
    b"cmd-ignore: 0\n"
    b"cmd-bury: 0\n"
    b"cmd-kick: 0\n"
    b"cmd-touch: 0\n"
    b"cmd-stats: 1\n"
    b"cmd-stats-job: 0\n"
    b"cmd-stats-tube: 0\n"
    b"cmd-list-tubes: 0\n"
    b"cmd-list-tube-used: 0\n"
    b"cmd-list-tubes-watched: 0\n"
    b"cmd-pause-tube: 0\n"
    b"job-timeouts: 0\n"
    b"total-jobs: 0\n"
    b"max-job-size: 65535\n"
    b"current-tubes: 1\n"
    b"current-connections: 1\n"
    b"current-producers: 0\n"
    b"current-workers: 0\n"
    b"current-waiting: 0\n"
    # the conftest start-up probe (wait_for_port) is connection number 1
    b"total-connections: 2\n"
    b"pid: *\n"
    b'version: "*"\n'
    b"rusage-utime: *\n"
    b"rusage-stime: *\n"
    b"uptime: *\n"
    b"binlog-oldest-index: 0\n"
    b"binlog-current-index: 0\n"
    b"binlog-records-migrated: 0\n"
    b"binlog-records-written: 0\n"
    b"binlog-max-size: 10485760\n"
    b"draining: false\n"
    b"id: *\n"
    b'hostname: "*"\n'
    b'os: "*"\n'
    b'platform: "*"\n'
)


# --------------------------------------------------------------------------- put

def test_put_inserted_ids_count_up(client):
    assert client.cmd(b"put 0 0 10 5\r\nhello") == b"INSERTED 1\r\n"
    assert client.cmd(b"put 0 0 10 5\r\nworld") == b"INSERTED 2\r\n"
    assert client.cmd(b"peek 2") == b"FOUND 2 5\r\nworld\r\n"


def test_put_zero_length_body(client):
    client.send(b"put 0 0 1 0\r\n\r\n")
    assert client.read_reply() == b"INSERTED 1\r\n"
    assert client.cmd(b"peek 1") == b"FOUND 1 0\r\n\r\n"


def test_put_binary_body_is_opaque(client):
    body = b"a\r\nb\x00c\r\n\xff"
    client.send(b"put 0 0 10 9\r\n" + body + b"\r\n")
    assert client.read_reply() == b"INSERTED 1\r\n"
    assert client.cmd(b"peek 1") == b"FOUND 1 9\r\na\r\nb\x00c\r\n\xff\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 9\r\na\r\nb\x00c\r\n\xff\r\n"


def test_put_body_split_across_packets(client):
    client.send(b"put 0 0 10 5\r\nhe")
    assert client.nothing_within(0.1)
    client.send(b"ll")
    assert client.nothing_within(0.1)
    client.send(b"o\r")
    assert client.nothing_within(0.1)
    client.send(b"\n")
    assert client.read_reply() == b"INSERTED 1\r\n"


def test_put_line_split_across_packets(client):
    client.send(b"pu")
    assert client.nothing_within(0.05)
    client.send(b"t 0 0 10 1\r")
    assert client.nothing_within(0.05)
    client.send(b"\nx\r\n")
    assert client.read_reply() == b"INSERTED 1\r\n"


def test_put_pipelined_in_one_packet(client):
    client.send(b"put 0 0 10 1\r\na\r\nput 0 0 10 1\r\nb\r\npeek 1\r\n")
    assert client.read_reply() == b"INSERTED 1\r\n"
    assert client.read_reply() == b"INSERTED 2\r\n"
    assert client.read_reply() == b"FOUND 1 1\r\na\r\n"


def test_put_extra_spaces_and_leading_zeros(client):
    assert client.cmd(b"put  01  00  010  01\r\nx") == b"INSERTED 1\r\n"
    s = stats_yaml(client, b"stats-job 1")
    assert (s[b"pri"], s[b"delay"], s[b"ttr"]) == (b"1", b"0", b"10")


def test_put_max_priority_and_fields(client):
    assert client.cmd(b"put 4294967295 0 4294967295 1\r\nx") == b"INSERTED 1\r\n"
    s = stats_yaml(client, b"stats-job 1")
    assert s[b"pri"] == b"4294967295"
    assert s[b"ttr"] == b"4294967295"


def test_put_ttr_zero_becomes_one(client):
    assert client.cmd(b"put 0 0 0 1\r\nx") == b"INSERTED 1\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"ttr"] == b"1"


@pytest.mark.parametrize("ttr", [120, 4294, 4295, 4296, 4297, 5000, 21600])
def test_put_large_ttr_stored_exactly(client, ttr):
    assert client.cmd(b"put 0 0 %d 1\r\nx" % ttr) == b"INSERTED 1\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"ttr"] == b"%d" % ttr


def test_put_delayed_job(client):
    assert client.cmd(b"put 5 30 10 1\r\nx") == b"INSERTED 1\r\n"
    s = stats_yaml(client, b"stats-job 1")
    assert s[b"state"] == b"delayed"
    assert s[b"delay"] == b"30"
    assert s[b"time-left"] in (b"29", b"30")


def test_put_max_job_size_accepted(client):
    body = b"x" * 65535
    client.send(b"put 0 0 10 65535\r\n" + body + b"\r\n")
    assert client.read_reply() == b"INSERTED 1\r\n"
    assert client.cmd(b"peek 1") == b"FOUND 1 65535\r\n" + body + b"\r\n"


def test_put_hands_job_to_waiting_reserve(qserver):
    worker, producer = qserver.client(), qserver.client()
    try:
        worker.send(b"reserve\r\n")
        assert worker.nothing_within(0.1)
        assert put(producer, b"job") == b"INSERTED 1\r\n"
        assert worker.read_reply() == b"RESERVED 1 3\r\njob\r\n"
    finally:
        worker.close()
        producer.close()


def test_put_goes_to_used_tube(client):
    assert client.cmd(b"use foo") == b"USING foo\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"tube"] == b'"foo"'


# --------------------------------------------------------------------------- use

def test_use(client):
    assert client.cmd(b"use foo") == b"USING foo\r\n"
    assert client.cmd(b"list-tube-used") == b"USING foo\r\n"
    assert client.cmd(b"use x_y") == b"USING x_y\r\n"
    assert client.cmd(b"use default") == b"USING default\r\n"


def test_use_all_name_characters(client):
    name = b"AZaz09-+/;.$_()"
    assert client.cmd(b"use " + name) == b"USING " + name + b"\r\n"
    assert client.cmd(b"use (x)") == b"USING (x)\r\n"


def test_use_200_char_name(client):
    name = b"a" * 200
    assert client.cmd(b"use " + name) == b"USING " + name + b"\r\n"
    assert client.cmd(b"use " + name + b"b") == b"BAD_FORMAT\r\n"


@pytest.mark.parametrize("line", [
    b"use -foo", b"use  foo", b"use foo ", b"use foo bar", b"use ", b"use fo*o",
    b"use fo\to", b"use f\xe9",
])
def test_use_bad_names(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


# --------------------------------------------------------------------------- reserve

def test_reserve_returns_job(client):
    assert put(client, b"hello", ttr=10) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    s = stats_yaml(client, b"stats-job 1")
    assert s[b"state"] == b"reserved"
    assert s[b"reserves"] == b"1"
    assert s[b"time-left"] in (b"9", b"10")


def test_reserve_priority_then_id_order(client):
    assert put(client, b"a", pri=5) == b"INSERTED 1\r\n"
    assert put(client, b"b", pri=1) == b"INSERTED 2\r\n"
    assert put(client, b"c", pri=1) == b"INSERTED 3\r\n"
    assert put(client, b"d", pri=4294967295) == b"INSERTED 4\r\n"
    assert put(client, b"e", pri=0) == b"INSERTED 5\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 5 1\r\ne\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 2 1\r\nb\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 3 1\r\nc\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 1\r\na\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 4 1\r\nd\r\n"


def test_reserve_blocks_and_defers_pipelined_commands(qserver):
    worker, producer = qserver.client(), qserver.client()
    try:
        worker.send(b"reserve\r\nlist-tube-used\r\n")
        assert worker.nothing_within(0.2)
        assert put(producer, b"x") == b"INSERTED 1\r\n"
        assert worker.read_reply() == b"RESERVED 1 1\r\nx\r\n"
        assert worker.read_reply() == b"USING default\r\n"
    finally:
        worker.close()
        producer.close()


def test_reserve_ignores_unwatched_tube(client):
    assert client.cmd(b"use other") == b"USING other\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert client.cmd(b"watch other") == b"WATCHING 2\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 5\r\nhello\r\n"


def test_reserve_skips_paused_tube(client):
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"pause-tube default 60") == b"PAUSED\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert client.cmd(b"pause-tube default 0") == b"PAUSED\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 5\r\nhello\r\n"


def test_reserve_global_order_across_watched_tubes(client):
    # cttest_multi_tube
    assert client.cmd(b"use abc") == b"USING abc\r\n"
    assert put(client, b"x", pri=999999) == b"INSERTED 1\r\n"
    assert client.cmd(b"use def") == b"USING def\r\n"
    assert put(client, b"y", pri=99) == b"INSERTED 2\r\n"
    assert client.cmd(b"use ghi") == b"USING ghi\r\n"
    assert put(client, b"z", pri=99) == b"INSERTED 3\r\n"
    assert client.cmd(b"watch abc") == b"WATCHING 2\r\n"
    assert client.cmd(b"watch ghi") == b"WATCHING 3\r\n"
    assert client.cmd(b"watch def") == b"WATCHING 4\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 2 1\r\ny\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 3 1\r\nz\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 1\r\nx\r\n"


def test_unpause_wakes_waiting_reserve(qserver):
    worker, admin = qserver.client(), qserver.client()
    try:
        assert put(admin) == b"INSERTED 1\r\n"
        assert admin.cmd(b"pause-tube default 86400") == b"PAUSED\r\n"
        worker.send(b"reserve\r\n")
        assert worker.nothing_within(0.2)
        assert admin.cmd(b"pause-tube default 0") == b"PAUSED\r\n"
        assert worker.read_reply() == b"RESERVED 1 5\r\nhello\r\n"
    finally:
        worker.close()
        admin.close()


# --------------------------------------------------------------------------- reserve-with-timeout

def test_reserve_with_timeout_zero(client):
    assert client.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 5\r\nhello\r\n"


def test_reserve_with_timeout_leading_spaces_and_zeros(client):
    assert client.cmd(b"reserve-with-timeout   00") == b"TIMED_OUT\r\n"


def test_reserve_with_timeout_one_second(client):
    t0 = time.monotonic()
    assert client.cmd(b"reserve-with-timeout 1") == b"TIMED_OUT\r\n"
    assert_on_time(time.monotonic() - t0, 1.0, "reserve-with-timeout 1")


def test_reserve_with_timeout_gets_job_put_meanwhile(qserver):
    worker, producer = qserver.client(), qserver.client()
    try:
        worker.send(b"reserve-with-timeout 5\r\n")
        assert worker.nothing_within(0.1)
        assert put(producer, b"late") == b"INSERTED 1\r\n"
        assert worker.read_reply() == b"RESERVED 1 4\r\nlate\r\n"
    finally:
        worker.close()
        producer.close()


def test_reserve_with_timeout_int_max(client):
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve-with-timeout 2147483647") == b"RESERVED 1 5\r\nhello\r\n"


@pytest.mark.parametrize("line", [
    b"reserve-with-timeout -1",         # 1.13: must start with a digit
    b"reserve-with-timeout ",           # 1.13: empty is not 0
    b"reserve-with-timeout +1",
    b"reserve-with-timeout x",
    b"reserve-with-timeout 2147483648",  # > INT_MAX
    b"reserve-with-timeout 4294967296",  # u32 overflow
    b"reserve-with-timeout 99999999999999999999999",
    b"reserve-with-timeout",            # matches the `reserve` prefix, wrong length
])
def test_reserve_with_timeout_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert stats_yaml(client)[b"cmd-reserve-with-timeout"] == b"0"


def test_reserve_with_timeout_trailing_text(client):
    """Text after the timeout is ignored, in 1.12 (strtol) and, per the reference study
    (beanstalkd.md section 0), in 1.13 too; protocol.md "reserve-with-timeout"."""
    assert client.cmd(b"reserve-with-timeout 0 x") == b"TIMED_OUT\r\n"
    assert client.cmd(b"reserve-with-timeout 0 ") == b"TIMED_OUT\r\n"
    assert client.cmd(b"reserve-with-timeout 0x") == b"TIMED_OUT\r\n"


# --------------------------------------------------------------------------- reserve-job

def test_reserve_job_ready(client):
    assert put(client, b"a") == b"INSERTED 1\r\n"
    assert put(client, b"b") == b"INSERTED 2\r\n"
    assert client.cmd(b"reserve-job 2") == b"RESERVED 2 1\r\nb\r\n"
    assert client.cmd(b"reserve-job 3") == b"NOT_FOUND\r\n"
    assert client.cmd(b"release 1 0 0") == b"NOT_FOUND\r\n"
    assert client.cmd(b"release 2 0 0") == b"RELEASED\r\n"


def test_reserve_job_already_reserved(client):
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve-job 1") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"reserve-job 1") == b"NOT_FOUND\r\n"


def test_reserve_job_delayed_any_tube_paused(client):
    assert client.cmd(b"use elsewhere") == b"USING elsewhere\r\n"
    assert put(client, b"d", delay=100) == b"INSERTED 1\r\n"
    assert client.cmd(b"pause-tube elsewhere 100") == b"PAUSED\r\n"
    assert client.cmd(b"reserve-job 1") == b"RESERVED 1 1\r\nd\r\n"
    assert client.cmd(b"release 1 0 0") == b"RELEASED\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"state"] == b"ready"


def test_reserve_job_buried(client):
    assert put(client, b"a") == b"INSERTED 1\r\n"
    assert put(client, b"b") == b"INSERTED 2\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 1\r\na\r\n"
    assert client.cmd(b"bury 1 0") == b"BURIED\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 2 1\r\nb\r\n"
    assert client.cmd(b"bury 2 0") == b"BURIED\r\n"
    assert client.cmd(b"reserve-job 2") == b"RESERVED 2 1\r\nb\r\n"
    assert client.cmd(b"reserve-job 1") == b"RESERVED 1 1\r\na\r\n"
    assert client.cmd(b"release 1 0 0") == b"RELEASED\r\n"
    assert client.cmd(b"release 2 0 0") == b"RELEASED\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"state"] == b"ready"
    assert stats_yaml(client, b"stats-job 2")[b"state"] == b"ready"


def test_reserve_job_reserved_by_other(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
        assert b.cmd(b"reserve-job 1") == b"NOT_FOUND\r\n"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- delete

def test_delete_own_reserved(client):
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"delete 1") == b"DELETED\r\n"
    assert client.cmd(b"delete 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"peek 1") == b"NOT_FOUND\r\n"


def test_delete_ready_buried_delayed(client):
    client.send(b"put 0 0 1 0\r\n\r\n")
    assert client.read_reply() == b"INSERTED 1\r\n"
    assert client.cmd(b"delete 1") == b"DELETED\r\n"
    assert put(client, delay=100) == b"INSERTED 2\r\n"
    assert client.cmd(b"delete 2") == b"DELETED\r\n"
    assert put(client) == b"INSERTED 3\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 3 5\r\nhello\r\n"
    assert client.cmd(b"bury 3 1") == b"BURIED\r\n"
    assert client.cmd(b"delete 3") == b"DELETED\r\n"
    assert client.cmd(b"delete 4") == b"NOT_FOUND\r\n"
    assert client.cmd(b"delete 18446744073709551615") == b"NOT_FOUND\r\n"


def test_delete_in_other_tube(client):
    assert client.cmd(b"use t1") == b"USING t1\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"use default") == b"USING default\r\n"
    assert client.cmd(b"delete 1") == b"DELETED\r\n"


def test_delete_reserved_by_other(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
        assert b.cmd(b"delete 1") == b"NOT_FOUND\r\n"
        assert a.cmd(b"delete 1") == b"DELETED\r\n"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- release

def test_release_to_ready_with_new_pri(client):
    assert put(client, pri=10) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"release 1 2000 0") == b"RELEASED\r\n"
    s = stats_yaml(client, b"stats-job 1")
    assert (s[b"state"], s[b"pri"], s[b"releases"], s[b"delay"]) == (
        b"ready", b"2000", b"1", b"0")
    assert client.cmd(b"release 1 0 0") == b"NOT_FOUND\r\n"


def test_release_with_delay(client):
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"release 1 5 60") == b"RELEASED\r\n"
    s = stats_yaml(client, b"stats-job 1")
    assert (s[b"state"], s[b"pri"], s[b"delay"]) == (b"delayed", b"5", b"60")
    assert s[b"time-left"] in (b"59", b"60")
    assert client.cmd(b"peek-delayed") == b"FOUND 1 5\r\nhello\r\n"


def test_release_not_found(client):
    assert client.cmd(b"release 1 1 1") == b"NOT_FOUND\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"release 1 1 1") == b"NOT_FOUND\r\n"


def test_release_reserved_by_other(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
        assert b.cmd(b"release 1 0 0") == b"NOT_FOUND\r\n"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- bury

def test_bury(client):
    assert put(client, pri=3) == b"INSERTED 1\r\n"
    assert client.cmd(b"bury 1 0") == b"NOT_FOUND\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"bury 1 77") == b"BURIED\r\n"
    s = stats_yaml(client, b"stats-job 1")
    assert (s[b"state"], s[b"pri"], s[b"buries"]) == (b"buried", b"77", b"1")
    assert client.cmd(b"bury 1 77") == b"NOT_FOUND\r\n"
    assert client.cmd(b"bury 2 0") == b"NOT_FOUND\r\n"


# --------------------------------------------------------------------------- touch

def test_touch(client):
    assert client.cmd(b"touch 1") == b"NOT_FOUND\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"touch 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"touch 1") == b"TOUCHED\r\n"
    assert client.cmd(b"touch 01") == b"TOUCHED\r\n"


def test_touch_reserved_by_other(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
        assert b.cmd(b"touch 1") == b"NOT_FOUND\r\n"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- watch / ignore

def test_watch_and_ignore(client):
    assert client.cmd(b"watch foo") == b"WATCHING 2\r\n"
    assert client.cmd(b"watch foo") == b"WATCHING 2\r\n"
    assert client.cmd(b"watch bar") == b"WATCHING 3\r\n"
    assert client.cmd(b"ignore foo") == b"WATCHING 2\r\n"
    assert client.cmd(b"ignore default") == b"WATCHING 1\r\n"
    assert client.cmd(b"ignore bar") == b"NOT_IGNORED\r\n"
    assert client.cmd(b"list-tubes-watched") == b"OK 10\r\n---\n- bar\n\r\n"


def test_ignore_unwatched_tube_not_created(client):
    assert client.cmd(b"ignore nothere") == b"WATCHING 1\r\n"
    assert client.cmd(b"list-tubes") == b"OK 14\r\n---\n- default\n\r\n"
    assert client.cmd(b"stats-tube nothere") == b"NOT_FOUND\r\n"


def test_ignore_last_tube(client):
    assert client.cmd(b"ignore default") == b"NOT_IGNORED\r\n"
    assert client.cmd(b"list-tubes-watched") == b"OK 14\r\n---\n- default\n\r\n"


@pytest.mark.parametrize("verb", [b"watch", b"ignore"])
@pytest.mark.parametrize("arg", [b" foo", b"foo ", b"foo bar", b"", b"-foo", b"a" * 201])
def test_watch_ignore_bad_names(client, verb, arg):
    assert client.cmd(verb + b" " + arg) == b"BAD_FORMAT\r\n"


def test_watch_200_char_name(client):
    assert client.cmd(b"watch " + b"w" * 200) == b"WATCHING 2\r\n"
    assert client.cmd(b"ignore " + b"w" * 200) == b"WATCHING 1\r\n"


# --------------------------------------------------------------------------- peek

def test_peek(client):
    assert put(client, b"x") == b"INSERTED 1\r\n"
    assert client.cmd(b"peek 1") == b"FOUND 1 1\r\nx\r\n"
    assert client.cmd(b"peek 01") == b"FOUND 1 1\r\nx\r\n"
    assert client.cmd(b"peek  1") == b"FOUND 1 1\r\nx\r\n"
    assert client.cmd(b"peek 2") == b"NOT_FOUND\r\n"
    assert client.cmd(b"peek 0") == b"NOT_FOUND\r\n"
    assert client.cmd(b"peek 18446744073709551615") == b"NOT_FOUND\r\n"


def test_peek_any_state_any_tube(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert a.cmd(b"use other") == b"USING other\r\n"
        assert a.cmd(b"watch other") == b"WATCHING 2\r\n"
        assert put(a, b"r") == b"INSERTED 1\r\n"
        assert put(a, b"d", delay=100) == b"INSERTED 2\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 1\r\nr\r\n"
        assert b.cmd(b"peek 1") == b"FOUND 1 1\r\nr\r\n"
        assert b.cmd(b"peek 2") == b"FOUND 2 1\r\nd\r\n"
    finally:
        a.close()
        b.close()


def test_peek_ready_used_tube_smallest_pri_id(client):
    assert client.cmd(b"peek-ready") == b"NOT_FOUND\r\n"
    assert put(client, b"a", pri=5) == b"INSERTED 1\r\n"
    assert put(client, b"b", pri=2) == b"INSERTED 2\r\n"
    assert put(client, b"c", pri=2) == b"INSERTED 3\r\n"
    assert client.cmd(b"peek-ready") == b"FOUND 2 1\r\nb\r\n"
    # used tube, not watched tubes
    assert client.cmd(b"use other") == b"USING other\r\n"
    assert client.cmd(b"peek-ready") == b"NOT_FOUND\r\n"
    assert put(client, b"o", pri=9) == b"INSERTED 4\r\n"
    assert client.cmd(b"peek-ready") == b"FOUND 4 1\r\no\r\n"


def test_peek_delayed_soonest_first(client):
    # cttest_peek_delayed
    assert client.cmd(b"peek-delayed") == b"NOT_FOUND\r\n"
    assert put(client, b"a", delay=100) == b"INSERTED 1\r\n"
    assert put(client, b"b", delay=50) == b"INSERTED 2\r\n"
    assert put(client, b"c", delay=50) == b"INSERTED 3\r\n"
    assert put(client, b"r") == b"INSERTED 4\r\n"
    assert client.cmd(b"peek-delayed") == b"FOUND 2 1\r\nb\r\n"
    assert client.cmd(b"delete 2") == b"DELETED\r\n"
    assert client.cmd(b"peek-delayed") == b"FOUND 3 1\r\nc\r\n"
    assert client.cmd(b"delete 3") == b"DELETED\r\n"
    assert client.cmd(b"peek-delayed") == b"FOUND 1 1\r\na\r\n"
    assert client.cmd(b"delete 1") == b"DELETED\r\n"
    assert client.cmd(b"peek-delayed") == b"NOT_FOUND\r\n"
    assert client.cmd(b"use other") == b"USING other\r\n"
    assert client.cmd(b"peek-delayed") == b"NOT_FOUND\r\n"


def test_peek_buried_fifo_head(client):
    assert client.cmd(b"peek-buried") == b"NOT_FOUND\r\n"
    assert put(client, b"a", pri=1) == b"INSERTED 1\r\n"
    assert put(client, b"b", pri=0) == b"INSERTED 2\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 2 1\r\nb\r\n"
    assert client.cmd(b"bury 2 9") == b"BURIED\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 1\r\na\r\n"
    assert client.cmd(b"bury 1 0") == b"BURIED\r\n"
    # FIFO: the first buried, whatever its priority
    assert client.cmd(b"peek-buried") == b"FOUND 2 1\r\nb\r\n"
    assert client.cmd(b"use other") == b"USING other\r\n"
    assert client.cmd(b"peek-buried") == b"NOT_FOUND\r\n"


# --------------------------------------------------------------------------- kick

def test_kick_buried_then_peek_ready(client):
    # cttest_peek_buried_kick
    assert put(client, b"a") == b"INSERTED 1\r\n"
    assert client.cmd(b"bury 1 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 1\r\na\r\n"
    assert client.cmd(b"bury 1 1") == b"BURIED\r\n"
    assert client.cmd(b"peek-buried") == b"FOUND 1 1\r\na\r\n"
    assert client.cmd(b"kick 1") == b"KICKED 1\r\n"
    assert client.cmd(b"peek-ready") == b"FOUND 1 1\r\na\r\n"
    assert client.cmd(b"kick 1") == b"KICKED 0\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"kicks"] == b"1"


def test_kick_buried_before_delayed(client):
    assert put(client, b"d1", delay=100) == b"INSERTED 1\r\n"
    assert put(client, b"d2", delay=50) == b"INSERTED 2\r\n"
    assert put(client, b"b3") == b"INSERTED 3\r\n"
    assert put(client, b"b4") == b"INSERTED 4\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 3 2\r\nb3\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 4 2\r\nb4\r\n"
    assert client.cmd(b"bury 4 0") == b"BURIED\r\n"
    assert client.cmd(b"bury 3 0") == b"BURIED\r\n"
    # only buried ones while any exist, oldest buried first, bound respected
    assert client.cmd(b"kick 1") == b"KICKED 1\r\n"
    assert stats_yaml(client, b"stats-job 4")[b"state"] == b"ready"
    assert stats_yaml(client, b"stats-job 3")[b"state"] == b"buried"
    assert client.cmd(b"kick 10") == b"KICKED 1\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"state"] == b"delayed"
    # then delayed ones, soonest first
    assert client.cmd(b"kick 1") == b"KICKED 1\r\n"
    assert stats_yaml(client, b"stats-job 2")[b"state"] == b"ready"
    assert stats_yaml(client, b"stats-job 1")[b"state"] == b"delayed"
    assert client.cmd(b"kick 10") == b"KICKED 1\r\n"
    assert client.cmd(b"kick 10") == b"KICKED 0\r\n"


def test_kick_used_tube_only(client):
    assert put(client, b"d", delay=100) == b"INSERTED 1\r\n"
    assert client.cmd(b"use other") == b"USING other\r\n"
    assert client.cmd(b"kick 10") == b"KICKED 0\r\n"
    assert client.cmd(b"use default") == b"USING default\r\n"
    assert client.cmd(b"kick 10") == b"KICKED 1\r\n"


def test_kick_strtoul_parsing(client):
    for i in range(3):
        assert put(client, b"d", delay=100) == b"INSERTED %d\r\n" % (i + 1)
    assert client.cmd(b"kick 0") == b"KICKED 0\r\n"
    assert client.cmd(b"kick 1abc") == b"KICKED 1\r\n"
    assert client.cmd(b"kick   1") == b"KICKED 1\r\n"
    # -1 wraps to a huge bound
    assert client.cmd(b"kick -1") == b"KICKED 1\r\n"
    assert client.cmd(b"kick -1") == b"KICKED 0\r\n"


@pytest.mark.parametrize("line", [b"kick ", b"kick abc", b"kick 99999999999999999999"])
def test_kick_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"


# --------------------------------------------------------------------------- kick-job

def test_kick_job_buried(client):
    assert client.cmd(b"kick-job 1") == b"NOT_FOUND\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"kick-job 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"bury 1 0") == b"BURIED\r\n"
    assert client.cmd(b"kick-job 1") == b"KICKED\r\n"
    assert client.cmd(b"kick-job 1") == b"NOT_FOUND\r\n"
    assert stats_yaml(client, b"stats-job 1")[b"state"] == b"ready"


def test_kick_job_delayed_other_tube(client):
    assert put(client, b"r") == b"INSERTED 1\r\n"
    assert client.cmd(b"kick-job 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"use other") == b"USING other\r\n"
    assert put(client, b"d", delay=100) == b"INSERTED 2\r\n"
    assert client.cmd(b"use default") == b"USING default\r\n"
    assert client.cmd(b"kick-job 2") == b"KICKED\r\n"
    assert client.cmd(b"kick-job 2") == b"NOT_FOUND\r\n"
    s = stats_yaml(client, b"stats-job 2")
    assert (s[b"state"], s[b"kicks"]) == (b"ready", b"1")


# --------------------------------------------------------------------------- stats

def test_stats_fresh_server_exact(client):
    reply = client.cmd(b"stats")
    assert normalize_stats(reply) == FRESH_STATS
    assert client.buf == b""


def test_stats_quoting_of_string_values(client):
    body = split_ok(client.cmd(b"stats"))
    for key in (b"version", b"hostname", b"os", b"platform"):
        assert re.search(rb"\n" + key + rb': "[^"\n]*"\n', body), key
    assert b"\ndraining: false\n" in body


def test_stats_after_activity_exact(qserver):
    c, other = qserver.client(), qserver.client()
    try:
        assert other.cmd(b"list-tube-used") == b"USING default\r\n"  # accepted
        assert put(c, b"u", pri=1) == b"INSERTED 1\r\n"          # urgent ready
        assert put(c, b"n", pri=2000) == b"INSERTED 2\r\n"       # ready
        assert put(c, b"d", delay=100) == b"INSERTED 3\r\n"      # delayed
        assert put(c, b"b", pri=1500) == b"INSERTED 4\r\n"
        assert c.cmd(b"reserve-job 4") == b"RESERVED 4 1\r\nb\r\n"
        assert c.cmd(b"bury 4 1500") == b"BURIED\r\n"            # buried
        assert c.cmd(b"use t2") == b"USING t2\r\n"
        assert put(c, b"r", pri=3000) == b"INSERTED 5\r\n"
        assert c.cmd(b"watch t2") == b"WATCHING 2\r\n"
        assert c.cmd(b"reserve-job 5") == b"RESERVED 5 1\r\nr\r\n"  # reserved
        reply = c.cmd(b"stats")
    finally:
        other.close()
        c.close()
    expected = (
        b"---\n"
        b"current-jobs-urgent: 1\n"
        b"current-jobs-ready: 2\n"
        b"current-jobs-reserved: 1\n"
        b"current-jobs-delayed: 1\n"
        b"current-jobs-buried: 1\n"
        b"cmd-put: 5\n"
        b"cmd-peek: 0\n"
        b"cmd-peek-ready: 0\n"
        b"cmd-peek-delayed: 0\n"
        b"cmd-peek-buried: 0\n"
        b"cmd-reserve: 0\n"
        b"cmd-reserve-with-timeout: 0\n"
        b"cmd-delete: 0\n"
        b"cmd-release: 0\n"
        b"cmd-use: 1\n"
        b"cmd-watch: 1\n"
        b"cmd-ignore: 0\n"
        b"cmd-bury: 1\n"
        b"cmd-kick: 0\n"
        b"cmd-touch: 0\n"
        b"cmd-stats: 1\n"
        b"cmd-stats-job: 0\n"
        b"cmd-stats-tube: 0\n"
        b"cmd-list-tubes: 0\n"
        b"cmd-list-tube-used: 1\n"
        b"cmd-list-tubes-watched: 0\n"
        b"cmd-pause-tube: 0\n"
        b"job-timeouts: 0\n"
        b"total-jobs: 5\n"
        b"max-job-size: 65535\n"
        b"current-tubes: 2\n"
        b"current-connections: 2\n"
        b"current-producers: 1\n"
        b"current-workers: 1\n"
        b"current-waiting: 0\n"
        b"total-connections: 3\n"
        b"pid: *\n"
        b'version: "*"\n'
        b"rusage-utime: *\n"
        b"rusage-stime: *\n"
        b"uptime: *\n"
        b"binlog-oldest-index: 0\n"
        b"binlog-current-index: 0\n"
        b"binlog-records-migrated: 0\n"
        b"binlog-records-written: 0\n"
        b"binlog-max-size: 10485760\n"
        b"draining: false\n"
        b"id: *\n"
        b'hostname: "*"\n'
        b'os: "*"\n'
        b'platform: "*"\n'
    )
    assert normalize_stats(reply) == expected


def test_stats_max_job_size_flag():
    server = start_qserver("-z", "10")
    try:
        c = server.client()
        assert stats_yaml(c)[b"max-job-size"] == b"10"
        c.close()
    finally:
        server.stop()


def test_stats_current_waiting_and_workers(qserver):
    w, c = qserver.client(), qserver.client()
    try:
        w.send(b"reserve\r\n")
        assert w.nothing_within(0.1)
        s = stats_yaml(c)
        assert (s[b"current-waiting"], s[b"current-workers"], s[b"cmd-reserve"]) == (
            b"1", b"1", b"1")
        assert stats_yaml(c, b"stats-tube default")[b"current-waiting"] == b"1"
        assert put(c) == b"INSERTED 1\r\n"
        assert w.read_reply() == b"RESERVED 1 5\r\nhello\r\n"
        s = stats_yaml(c)
        assert (s[b"current-waiting"], s[b"current-workers"],
                s[b"current-producers"]) == (b"0", b"1", b"1")
    finally:
        w.close()
        c.close()


def test_stats_trailing_text_is_bad_format(client):
    assert client.cmd(b"stats ") == b"BAD_FORMAT\r\n"
    assert client.cmd(b"statsx") == b"BAD_FORMAT\r\n"


# --------------------------------------------------------------------------- stats-job

def test_stats_job_exact(client):
    assert client.cmd(b"use jobs") == b"USING jobs\r\n"
    assert put(client, b"x", pri=7, ttr=30) == b"INSERTED 1\r\n"
    reply = client.cmd(b"stats-job 1")
    expected_body = (
        b"---\n"
        b"id: 1\n"
        b'tube: "jobs"\n'
        b"state: ready\n"
        b"pri: 7\n"
        b"age: 0\n"
        b"delay: 0\n"
        b"ttr: 30\n"
        b"time-left: 0\n"
        b"file: 0\n"
        b"reserves: 0\n"
        b"timeouts: 0\n"
        b"releases: 0\n"
        b"buries: 0\n"
        b"kicks: 0\n"
    )
    assert len(expected_body) == 143
    assert reply == b"OK 143\r\n" + expected_body + b"\r\n"


def test_stats_job_reserved_exact(client):
    assert put(client, b"x", pri=1024, ttr=100) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 1\r\nx\r\n"
    reply = client.cmd(b"stats-job 1")
    assert reply in (
        b"OK 154\r\n---\nid: 1\ntube: \"default\"\nstate: reserved\npri: 1024\nage: 0\n"
        b"delay: 0\nttr: 100\ntime-left: 99\nfile: 0\nreserves: 1\ntimeouts: 0\n"
        b"releases: 0\nburies: 0\nkicks: 0\n\r\n",
        b"OK 155\r\n---\nid: 1\ntube: \"default\"\nstate: reserved\npri: 1024\nage: 0\n"
        b"delay: 0\nttr: 100\ntime-left: 100\nfile: 0\nreserves: 1\ntimeouts: 0\n"
        b"releases: 0\nburies: 0\nkicks: 0\n\r\n",
    ), reply


def test_stats_job_not_found(client):
    assert client.cmd(b"stats-job 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"stats-job 18446744073709551615") == b"NOT_FOUND\r\n"


def test_stats_job_of_deleted_job(client):
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"delete 1") == b"DELETED\r\n"
    assert client.cmd(b"stats-job 1") == b"NOT_FOUND\r\n"


# --------------------------------------------------------------------------- stats-tube

def test_stats_tube_default_fresh_exact(client):
    expected_body = (
        b"---\n"
        b'name: "default"\n'
        b"current-jobs-urgent: 0\n"
        b"current-jobs-ready: 0\n"
        b"current-jobs-reserved: 0\n"
        b"current-jobs-delayed: 0\n"
        b"current-jobs-buried: 0\n"
        b"total-jobs: 0\n"
        b"current-using: 1\n"
        b"current-watching: 1\n"
        b"current-waiting: 0\n"
        b"cmd-delete: 0\n"
        b"cmd-pause-tube: 0\n"
        b"pause: 0\n"
        b"pause-time-left: 0\n"
    )
    assert len(expected_body) == 267
    assert client.cmd(b"stats-tube default") == b"OK 267\r\n" + expected_body + b"\r\n"


def test_stats_tube_field_values(client):
    # cttest_stats_tube
    assert client.cmd(b"use tubea") == b"USING tubea\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"delete 1") == b"DELETED\r\n"
    assert client.cmd(b"delete 1") == b"NOT_FOUND\r\n"
    expected_a = (
        b"---\n"
        b'name: "tubea"\n'
        b"current-jobs-urgent: 0\n"
        b"current-jobs-ready: 0\n"
        b"current-jobs-reserved: 0\n"
        b"current-jobs-delayed: 0\n"
        b"current-jobs-buried: 0\n"
        b"total-jobs: 1\n"
        b"current-using: 1\n"
        b"current-watching: 0\n"
        b"current-waiting: 0\n"
        b"cmd-delete: 1\n"
        b"cmd-pause-tube: 0\n"
        b"pause: 0\n"
        b"pause-time-left: 0\n"
    )
    assert client.cmd(b"stats-tube tubea") == b"OK 265\r\n" + expected_a + b"\r\n"
    assert len(expected_a) == 265
    expected_default = (
        b"---\n"
        b'name: "default"\n'
        b"current-jobs-urgent: 0\n"
        b"current-jobs-ready: 0\n"
        b"current-jobs-reserved: 0\n"
        b"current-jobs-delayed: 0\n"
        b"current-jobs-buried: 0\n"
        b"total-jobs: 0\n"
        b"current-using: 0\n"
        b"current-watching: 1\n"
        b"current-waiting: 0\n"
        b"cmd-delete: 0\n"
        b"cmd-pause-tube: 0\n"
        b"pause: 0\n"
        b"pause-time-left: 0\n"
    )
    assert client.cmd(b"stats-tube default") == b"OK 267\r\n" + expected_default + b"\r\n"


def test_stats_tube_job_counts(client):
    assert put(client, b"u", pri=1023) == b"INSERTED 1\r\n"
    assert put(client, b"n", pri=1024) == b"INSERTED 2\r\n"
    assert put(client, b"d", delay=100) == b"INSERTED 3\r\n"
    assert put(client, b"r", pri=0) == b"INSERTED 4\r\n"
    assert put(client, b"b", pri=5000) == b"INSERTED 5\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 4 1\r\nr\r\n"
    assert client.cmd(b"reserve-job 5") == b"RESERVED 5 1\r\nb\r\n"
    assert client.cmd(b"bury 5 5000") == b"BURIED\r\n"
    s = stats_yaml(client, b"stats-tube default")
    assert [s[k] for k in (b"current-jobs-urgent", b"current-jobs-ready",
                           b"current-jobs-reserved", b"current-jobs-delayed",
                           b"current-jobs-buried", b"total-jobs")] == [
        b"1", b"2", b"1", b"1", b"1", b"5"]


def test_stats_tube_paused_exact(client):
    assert client.cmd(b"pause-tube default 10") == b"PAUSED\r\n"
    reply = client.cmd(b"stats-tube default")
    head = (
        b"---\n"
        b'name: "default"\n'
        b"current-jobs-urgent: 0\n"
        b"current-jobs-ready: 0\n"
        b"current-jobs-reserved: 0\n"
        b"current-jobs-delayed: 0\n"
        b"current-jobs-buried: 0\n"
        b"total-jobs: 0\n"
        b"current-using: 1\n"
        b"current-watching: 1\n"
        b"current-waiting: 0\n"
        b"cmd-delete: 0\n"
        b"cmd-pause-tube: 1\n"
        b"pause: 10\n"
    )
    assert reply in (
        b"OK 268\r\n" + head + b"pause-time-left: 9\n\r\n",
        b"OK 269\r\n" + head + b"pause-time-left: 10\n\r\n",
    ), reply


def test_stats_tube_not_found_not_created(client):
    assert client.cmd(b"stats-tube nope") == b"NOT_FOUND\r\n"
    assert client.cmd(b"list-tubes") == b"OK 14\r\n---\n- default\n\r\n"


@pytest.mark.parametrize("line", [
    b"stats-tube ", b"stats-tube  default", b"stats-tube default ", b"stats-tube -x",
    b"stats-tube " + b"a" * 201,
])
def test_stats_tube_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"


# --------------------------------------------------------------------------- list-*

def test_list_tubes_exact(client):
    # cttest_list_tube
    assert client.cmd(b"watch w") == b"WATCHING 2\r\n"
    assert client.cmd(b"use u") == b"USING u\r\n"
    reply = client.cmd(b"list-tubes")
    m = re.fullmatch(rb"OK 22\r\n---\n((?:- [a-z]+\n){3})\r\n", reply)
    assert m, reply
    assert sorted(m[1].split(b"\n")[:-1]) == [b"- default", b"- u", b"- w"]
    reply = client.cmd(b"list-tubes-watched")
    assert reply in (b"OK 18\r\n---\n- default\n- w\n\r\n",
                     b"OK 18\r\n---\n- w\n- default\n\r\n")
    assert client.cmd(b"list-tube-used") == b"USING u\r\n"
    assert client.cmd(b"ignore default") == b"WATCHING 1\r\n"
    assert client.cmd(b"list-tubes-watched") == b"OK 8\r\n---\n- w\n\r\n"
    assert client.cmd(b"ignore w") == b"NOT_IGNORED\r\n"


def test_list_tubes_fresh(client):
    assert client.cmd(b"list-tubes") == b"OK 14\r\n---\n- default\n\r\n"
    assert client.cmd(b"list-tubes-watched") == b"OK 14\r\n---\n- default\n\r\n"
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


@pytest.mark.parametrize("line", [
    b"list-tubes ", b"list-tubesx", b"list-tube-used ", b"list-tube-usedx",
    b"list-tubes-watched ", b"list-tubes-watchedx",
])
def test_list_trailing_text(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"


# --------------------------------------------------------------------------- pause-tube

def test_pause_tube(client):
    assert client.cmd(b"pause-tube default 0") == b"PAUSED\r\n"
    assert client.cmd(b"pause-tube default 4294967295") == b"PAUSED\r\n"
    assert client.cmd(b"pause-tube nope 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"list-tubes") == b"OK 14\r\n---\n- default\n\r\n"


def test_pause_tube_quirky_spacing(client):
    assert client.cmd(b"pause-tubedefault 0") == b"PAUSED\r\n"
    assert client.cmd(b"pause-tube   default   0") == b"PAUSED\r\n"


def test_pause_tube_longest_command(client):
    name = b"p" * 200
    assert client.cmd(b"use " + name) == b"USING " + name + b"\r\n"
    line = b"pause-tube " + name + b" 4294967295\r\n"
    assert len(line) == 224
    assert client.cmd(line) == b"PAUSED\r\n"


@pytest.mark.parametrize("line", [
    b"pause-tube default", b"pause-tube default ", b"pause-tube default x",
    b"pause-tube default -1", b"pause-tube default 4294967296", b"pause-tube default 1 ",
    b"pause-tube default 1 2", b"pause-tube default 1x", b"pause-tube  0",
    b"pause-tube ", b"pause-tube",
])
def test_pause_tube_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert stats_yaml(client)[b"cmd-pause-tube"] == b"0"


# --------------------------------------------------------------------------- quit

def test_quit_closes_without_reply(client):
    client.send(b"quit\r\n")
    assert client.expect_closed()


def test_quit_with_trailing_text_closes(client):
    client.send(b"quitx\r\n")
    assert client.expect_closed()


def test_quit_releases_reserved_job_at_once(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a, ttr=100) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
        a.send(b"quit\r\n")
        assert a.expect_closed()
        assert b.cmd(b"reserve-with-timeout 1") == b"RESERVED 1 5\r\nhello\r\n"
    finally:
        a.close()
        b.close()


def test_close_releases_reserved_job_at_once(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a, ttr=100) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
        a.close()
        assert b.cmd(b"reserve-with-timeout 1") == b"RESERVED 1 5\r\nhello\r\n"
    finally:
        b.close()


def test_quit_after_pipelined_commands(client):
    client.send(b"use a\r\nquit\r\nuse b\r\n")
    assert client.read_reply() == b"USING a\r\n"
    assert client.expect_closed()


# --------------------------------------------------------------------------- checklist items

def test_two_commands_in_one_packet(client):
    client.send(b"use a\r\nuse b\r\n")
    assert client.read_reply() == b"USING a\r\n"
    assert client.read_reply() == b"USING b\r\n"


def test_tube_lifetime_gc(client):
    assert client.cmd(b"use gc9") == b"USING gc9\r\n"
    assert client.cmd(b"use default") == b"USING default\r\n"
    assert client.cmd(b"pause-tube gc9 10") == b"NOT_FOUND\r\n"
    assert client.cmd(b"list-tubes") == b"OK 14\r\n---\n- default\n\r\n"


def test_tube_lifetime_jobs_keep_tube(client):
    assert client.cmd(b"use keep") == b"USING keep\r\n"
    assert put(client) == b"INSERTED 1\r\n"
    assert client.cmd(b"use default") == b"USING default\r\n"
    assert client.cmd(b"pause-tube keep 0") == b"PAUSED\r\n"
    assert client.cmd(b"delete 1") == b"DELETED\r\n"
    assert client.cmd(b"stats-tube keep") == b"NOT_FOUND\r\n"


def test_tube_lifetime_watchers_keep_tube(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert a.cmd(b"watch w1") == b"WATCHING 2\r\n"
        assert b.cmd(b"pause-tube w1 0") == b"PAUSED\r\n"
        a.close()
        # the server notices the close asynchronously: bounded poll
        deadline = time.monotonic() + WAIT
        while b.cmd(b"stats-tube w1") != b"NOT_FOUND\r\n":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        b.close()


def test_current_connections_counts(qserver):
    a = qserver.client()
    b = qserver.client()
    try:
        assert b.cmd(b"list-tube-used") == b"USING default\r\n"  # b is accepted
        s = stats_yaml(a)
        assert (s[b"current-connections"], s[b"total-connections"]) == (b"2", b"3")
    finally:
        a.close()
        b.close()
