"""Golden over-the-wire tests: exact bytes of every error reply of the protocol.

BAD_FORMAT, UNKNOWN_COMMAND, EXPECTED_CRLF, JOB_TOO_BIG, NOT_FOUND, NOT_IGNORED,
DRAINING, DEADLINE_SOON, TIMED_OUT, plus the non-timing items of the upstream
checklist (reference: /work/shared/reference/beanstalkd.md sections 1-5, 8, 10).
Every expected reply is spelled out literally.
"""

import re
import signal
import time

import pytest

from conftest import SOON, WAIT, assert_on_time, start_qserver

# The beanstalkd conformance suite: every test runs on both stores.
pytestmark = pytest.mark.usefixtures("each_store")

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
    m = re.fullmatch(rb"OK ([1-9][0-9]*)\r\n(.*)\r\n", reply, re.S)
    assert m, reply
    assert int(m[1]) == len(m[2]), reply
    assert m[2].startswith(b"---\n") and m[2].endswith(b"\n"), reply
    return m[2]


def normalize_stats(reply: bytes) -> bytes:
    out = []
    for line in split_ok(reply).split(b"\n"):
        key, sep, value = line.partition(b": ")
        if sep and key in VOLATILE:
            assert re.fullmatch(VOLATILE[key], value), (key, value)
            line = key + sep + (b'"*"' if value.startswith(b'"') else b"*")
        out.append(line)
    return b"\n".join(out)


def stats_yaml(client, cmd=b"stats") -> dict:
    out = {}
    for line in split_ok(client.cmd(cmd)).split(b"\n")[1:-1]:
        key, sep, value = line.partition(b": ")
        assert sep, line
        out[key] = value
    return out


def put(client, body=b"hello", pri=0, delay=0, ttr=10) -> bytes:
    return client.cmd(b"put %d %d %d %d\r\n%s" % (pri, delay, ttr, len(body), body))


@pytest.fixture
def small_server():
    """A server with -z 10 (max job size 10 bytes)."""
    server = start_qserver("-z", "10")
    yield server
    server.stop()


@pytest.fixture
def small(small_server):
    c = small_server.client()
    yield c
    c.close()


# --------------------------------------------------------------------------- put BAD_FORMAT

@pytest.mark.parametrize("line", [
    b"put 0 0 10 4294967296",       # bytes: u32 overflow
    b"put 4294967296 0 10 5",       # pri: u32 overflow
    b"put 0 4294967296 10 5",       # delay: u32 overflow
    b"put 0 0 4294967296 5",        # ttr: u32 overflow
    b"put 0 0 10 99999999999999999999999",
    b"put -1 0 10 5",               # cttest_negative_priority
    b"put 512 -1 100 5",            # cttest_negative_delay
    b"put -1kkdj9djjkd9 0 100 5",   # cttest_garbage_priority
    b"put +1 0 10 5",
    b"put 0 0 10 abc",
    b"put 0 0 10",                  # missing argument
    b"put 0 0 10 ",
    b"put ",
    b"put 0x1 0 10 5",
    b"put 0 0 10 \t5",
    b"put 1.5 0 10 5",
])
def test_put_bad_format_does_not_skip_body(client, line):
    client.send(line + b"\r\nhello\r\n")
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    # the body was parsed as a command line
    assert client.read_reply() == b"UNKNOWN_COMMAND\r\n"
    # no id was used up, and the connection carries on
    assert client.cmd(b"put 0 0 10 2\r\nok") == b"INSERTED 1\r\n"
    s = stats_yaml(client)
    assert (s[b"cmd-put"], s[b"current-producers"]) == (b"1", b"1")


@pytest.mark.parametrize("line", [
    b"put 0 0 10 10b",              # cttest_job_size_invalid
    b"put 0 0 10 5 ",               # trailing space
    b"put 0 0 10 5 x",              # trailing garbage
    b"put 0 0 10 5\t",
])
def test_put_trailing_garbage_bad_format(client, line):
    """The four numbers parse, so cmd-put is counted (op_ct++ comes before the size
    and trailing-garbage checks); the body is not skipped and no producer mark."""
    client.send(line + b"\r\nhello\r\n")
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"UNKNOWN_COMMAND\r\n"
    s = stats_yaml(client)
    assert (s[b"cmd-put"], s[b"current-producers"], s[b"total-jobs"]) == (
        b"1", b"0", b"0")
    assert client.cmd(b"put 0 0 10 2\r\nok") == b"INSERTED 1\r\n"


def test_put_bad_format_sequence_like_upstream(client):
    # cttest_job_size_invalid: three bad lines, no bodies, then a valid put
    client.send(b"put 0 0 0 4294967296\r\n"
                b"put 0 0 0 10b\r\n"
                b"put 0 0 0 --!@#$%^&&**()0b\r\n"
                b"put 0 0 0 1\r\nx\r\n")
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"INSERTED 1\r\n"


def test_put_without_space_is_unknown(client):
    assert client.cmd(b"put") == b"UNKNOWN_COMMAND\r\n"
    assert client.cmd(b"put\t0 0 10 1") == b"UNKNOWN_COMMAND\r\n"
    assert client.cmd(b"PUT 0 0 10 1") == b"UNKNOWN_COMMAND\r\n"


# --------------------------------------------------------------------------- number BAD_FORMAT

U64_OVER = b"18446744073709551616"
LONG_NUM = b"9" * 40


@pytest.mark.parametrize("line", [
    # u64 overflow of ids (cttest_peek_bad_format, cttest_delete_bad_format)
    b"peek " + U64_OVER, b"delete " + U64_OVER, b"touch " + U64_OVER,
    b"kick-job " + U64_OVER, b"reserve-job " + U64_OVER, b"stats-job " + U64_OVER,
    b"release " + U64_OVER + b" 0 0", b"bury " + U64_OVER + b" 0",
    b"peek " + LONG_NUM, b"delete " + LONG_NUM,
    # u32 overflow of pri / delay / pause
    b"release 1 4294967296 0", b"release 1 0 4294967296", b"bury 1 4294967296",
    b"pause-tube default 4294967296",
    # garbage
    b"peek foo111", b"peek 111foo", b"peek -1", b"peek +1", b"peek ", b"peek 1 ",
    b"peek \t1", b"peek 1.0",
    b"delete foo111", b"delete 111foo", b"delete ", b"delete 1 2",
    b"touch a111", b"touch 111a", b"touch !@#!@#", b"touch ",
    b"kick-job a111", b"kick-job 111a", b"kick-job !@#!@#", b"kick-job ",
    b"reserve-job x", b"reserve-job 1x", b"reserve-job ",
    b"bury a 1", b"bury 1", b"bury 1 ", b"bury 1 x", b"bury 1 1 ", b"bury 1 1 1",
    b"bury 1 -1",
    b"release 1", b"release 1 1", b"release x 1 1", b"release 1 x 1",
    b"release 1 1 x", b"release 1 1 1 1", b"release 1 1 1 ", b"release 1 -1 0",
    b"stats-job 111ABC", b"stats-job 111 222", b"stats-job ", b"stats-job -1",
])
def test_number_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    # nothing is counted for a command that fails to parse
    s = stats_yaml(client)
    counted = {k: v for k, v in s.items()
               if k.startswith(b"cmd-") and k != b"cmd-stats" and v != b"0"}
    assert counted == {}


@pytest.mark.parametrize("line, reply", [
    (b"peek   1", b"FOUND 1 1\r\nx\r\n"),
    (b"peek 0001", b"FOUND 1 1\r\nx\r\n"),
    (b"stats-job  1", None),
    (b"touch  1", b"NOT_FOUND\r\n"),
    (b"kick-job   1", b"NOT_FOUND\r\n"),
    (b"release  1  0  0", b"NOT_FOUND\r\n"),
    (b"bury  1  0", b"NOT_FOUND\r\n"),
    (b"delete   18446744073709551615", b"NOT_FOUND\r\n"),
])
def test_numbers_leading_spaces_allowed(client, line, reply):
    assert put(client, b"x") == b"INSERTED 1\r\n"
    got = client.cmd(line)
    if reply is None:
        assert got.startswith(b"OK ") and b"\nid: 1\n" in split_ok(got)
    else:
        assert got == reply


# --------------------------------------------------------------------------- trailing garbage on fixed commands

@pytest.mark.parametrize("line", [
    b"reserve ", b"reservex", b"reserve 0", b"reserve-job", b"reserve-with-timeout",
    b"peek-ready ", b"peek-readyx", b"peek-delayed ", b"peek-delayedx",
    b"peek-buried ", b"peek-buriedx",
    b"stats ", b"statsx", b"stats-job", b"stats-tube", b"stats-jobx",
    b"list-tubes ", b"list-tubesx", b"list-tube-used ", b"list-tubes-watched ",
    b"list-tubes-watchedx",
])
def test_trailing_text_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


def test_reservex_does_not_mark_worker(client):
    assert client.cmd(b"reservex") == b"BAD_FORMAT\r\n"
    s = stats_yaml(client)
    assert (s[b"current-workers"], s[b"cmd-reserve"]) == (b"0", b"0")


# --------------------------------------------------------------------------- tube-name BAD_FORMAT

@pytest.mark.parametrize("verb", [b"use", b"watch", b"ignore", b"stats-tube"])
@pytest.mark.parametrize("name", [
    b"", b" a", b"a ", b"a b", b"-a", b"a\tb", b"a*b", b"a,b", b"a:b", b"a\xffb",
    b"a#b", b"a" * 201,
])
def test_tube_name_bad_format(client, verb, name):
    assert client.cmd(verb + b" " + name) == b"BAD_FORMAT\r\n"


def test_pause_tube_name_bad_format(client):
    assert client.cmd(b"pause-tube -a 1") == b"BAD_FORMAT\r\n"
    assert client.cmd(b"pause-tube a*b 1") == b"BAD_FORMAT\r\n"
    assert client.cmd(b"pause-tube " + b"a" * 201 + b" 1") == b"BAD_FORMAT\r\n"


# --------------------------------------------------------------------------- over-long lines

def test_line_of_500_bytes_then_valid_command(client):
    # cttest_too_long_commandline
    client.send(b"x" * 500 + b"\r\n")
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.cmd(b"put 0 0 10 5\r\nhello") == b"INSERTED 1\r\n"
    assert client.nothing_within(0.05)


def test_line_of_500_bytes_in_one_packet_with_next_command(client):
    client.send(b"put " + b"1" * 496 + b"\r\nlist-tube-used\r\n")
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"USING default\r\n"


def test_line_of_500_bytes_sent_slowly(client):
    client.send(b"y" * 230)
    # a single BAD_FORMAT only once the line ends
    assert client.nothing_within(0.1)
    client.send(b"y" * 270)
    assert client.nothing_within(0.1)
    client.send(b"\r\nlist-tube-used\r\n")
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"USING default\r\n"


def test_line_of_225_bytes_swallows_next_line(client):
    # quirk [live 1.12]: CR is byte 224, LF byte 225; the lone LF does not end the
    # skip, so the next line is swallowed too, with one BAD_FORMAT
    line = b"x" * 223 + b"\r\n"
    assert len(line) == 225
    client.send(line + b"list-tube-used\r\n")
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.nothing_within(0.1)
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


def test_line_of_224_bytes_is_a_command(client):
    line = b"x" * 222 + b"\r\n"
    assert len(line) == 224
    client.send(line)
    assert client.read_reply() == b"UNKNOWN_COMMAND\r\n"
    name = b"n" * 200
    assert client.cmd(b"use " + name) == b"USING " + name + b"\r\n"
    assert client.cmd(b"pause-tube " + name + b" 4294967295") == b"PAUSED\r\n"


# --------------------------------------------------------------------------- NUL bytes

@pytest.mark.parametrize("line", [
    b"\x00", b"stats\x00", b"peek \x001", b"peek 1\x00", b"use a\x00", b"use a\x00b",
    b"\x00stats", b"put 0 0 10 1\x00",
])
def test_nul_byte_in_line(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


def test_nul_bytes_allowed_in_body(client):
    client.send(b"put 0 0 10 3\r\n\x00\x00\x00\r\n")
    assert client.read_reply() == b"INSERTED 1\r\n"
    assert client.cmd(b"peek 1") == b"FOUND 1 3\r\n\x00\x00\x00\r\n"


# --------------------------------------------------------------------------- UNKNOWN_COMMAND

@pytest.mark.parametrize("line", [
    b"nont10knowncommand",          # cttest_unknown_command
    b"",                            # empty line
    b" stats",                      # leading space
    b" put 0 0 10 1",
    b"STATS", b"Stats", b"Use foo", b"RESERVE", b"QUIT",
    b"kick", b"peek", b"delete", b"touch", b"bury", b"release", b"use", b"watch",
    b"ignore", b"kick-job", b"list", b"list-tube", b"\t", b"x",
    b"kick\t1",
])
def test_unknown_command(client, line):
    assert client.cmd(line) == b"UNKNOWN_COMMAND\r\n"
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


def test_unknown_command_not_counted(client):
    assert client.cmd(b"bogus") == b"UNKNOWN_COMMAND\r\n"
    s = stats_yaml(client)
    assert [k for k, v in s.items() if k.startswith(b"cmd-") and v != b"0"] == [
        b"cmd-stats"]


def test_prefix_quirks(client):
    # pause-tube has no trailing space in its prefix
    assert client.cmd(b"pause-tubedefault 0") == b"PAUSED\r\n"
    assert client.cmd(b"pause-tubex 1") == b"NOT_FOUND\r\n"


@pytest.mark.parametrize("line", [b"quitx", b"quit ", b"quit now", b"quit"])
def test_quit_prefix_closes(client, line):
    client.send(line + b"\r\n")
    assert client.expect_closed()


# --------------------------------------------------------------------------- EXPECTED_CRLF

def test_expected_crlf_and_ids_used_up(client):
    assert client.cmd(b"put 0 0 10 1\r\na") == b"INSERTED 1\r\n"
    client.send(b"put 0 0 10 5\r\nhelloXY")
    assert client.read_reply() == b"EXPECTED_CRLF\r\n"
    # exactly bytes+2 were consumed; the id was used up
    assert client.cmd(b"put 0 0 10 1\r\nc") == b"INSERTED 3\r\n"
    assert client.cmd(b"peek 2") == b"NOT_FOUND\r\n"
    s = stats_yaml(client)
    assert (s[b"cmd-put"], s[b"total-jobs"], s[b"current-jobs-ready"]) == (
        b"3", b"2", b"2")


@pytest.mark.parametrize("trailer", [b"\n\r", b"\r\r", b"\n\n", b"ab", b"\rX", b"X\n"])
def test_expected_crlf_trailers(client, trailer):
    client.send(b"put 0 0 10 3\r\nabc" + trailer)
    assert client.read_reply() == b"EXPECTED_CRLF\r\n"
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


def test_expected_crlf_body_longer_than_declared(client):
    client.send(b"put 0 0 10 3\r\nhello\r\n")
    assert client.read_reply() == b"EXPECTED_CRLF\r\n"
    # "hel" is the body, "lo" the bad trailer; the final CRLF is an empty line
    assert client.read_reply() == b"UNKNOWN_COMMAND\r\n"


def test_expected_crlf_zero_length(client):
    client.send(b"put 0 0 10 0\r\nXY")
    assert client.read_reply() == b"EXPECTED_CRLF\r\n"
    client.send(b"put 0 0 10 0\r\n\r\n")
    assert client.read_reply() == b"INSERTED 2\r\n"


# --------------------------------------------------------------------------- JOB_TOO_BIG

def test_job_too_big_swallows_body(small):
    # cttest_too_big: the 13-byte "body" `delete 9999\r\n` is swallowed
    assert small.cmd(b"put 0 0 0 11\r\ndelete 9999") == b"JOB_TOO_BIG\r\n"
    assert small.cmd(b"put 0 0 0 1\r\nx") == b"INSERTED 1\r\n"
    assert small.nothing_within(0.05)


def test_job_too_big_replies_after_body(small):
    small.send(b"put 0 0 10 11\r\n")
    assert small.nothing_within(0.15)
    small.send(b"0123456789a")
    assert small.nothing_within(0.1)
    small.send(b"\r")
    assert small.nothing_within(0.1)
    small.send(b"\nlist-tube-used\r\n")
    assert small.read_reply() == b"JOB_TOO_BIG\r\n"
    assert small.read_reply() == b"USING default\r\n"


def test_job_too_big_discards_exactly_bytes_plus_2(small):
    # the two bytes after the body need not be CRLF: they are discarded blindly
    small.send(b"put 0 0 10 12\r\n0123456789abXYlist-tube-used\r\n")
    assert small.read_reply() == b"JOB_TOO_BIG\r\n"
    assert small.read_reply() == b"USING default\r\n"


def test_job_too_big_before_trailing_garbage_check(small):
    small.send(b"put 0 0 1 20 junk\r\n" + b"z" * 20 + b"\r\nlist-tube-used\r\n")
    assert small.read_reply() == b"JOB_TOO_BIG\r\n"
    assert small.read_reply() == b"USING default\r\n"


def test_job_size_limit_boundary(small):
    assert small.cmd(b"put 0 0 10 10\r\n0123456789") == b"INSERTED 1\r\n"
    assert small.cmd(b"put 0 0 10 11\r\n0123456789a") == b"JOB_TOO_BIG\r\n"
    small.send(b"put 0 0 10 0\r\n\r\n")
    assert small.read_reply() == b"INSERTED 2\r\n"


def test_job_too_big_counters(small_server):
    c = small_server.client()
    try:
        assert c.cmd(b"put 0 0 10 11\r\n0123456789a") == b"JOB_TOO_BIG\r\n"
        s = stats_yaml(c)
        # counted in cmd-put, but no id, no job, and not a producer
        assert (s[b"cmd-put"], s[b"total-jobs"], s[b"current-producers"]) == (
            b"1", b"0", b"0")
        assert c.cmd(b"put 0 0 10 1\r\nx") == b"INSERTED 1\r\n"
    finally:
        c.close()


def test_job_too_big_default_limit(client):
    body = b"x" * 65536
    client.send(b"put 0 0 10 65536\r\n" + body + b"\r\n")
    assert client.read_reply() == b"JOB_TOO_BIG\r\n"
    assert client.cmd(b"put 0 0 10 1\r\nx") == b"INSERTED 1\r\n"


# --------------------------------------------------------------------------- NOT_FOUND

@pytest.mark.parametrize("line", [
    b"peek 1", b"peek 0", b"peek 18446744073709551615", b"delete 1", b"release 1 0 0",
    b"bury 1 0", b"touch 1", b"kick-job 1", b"reserve-job 1", b"stats-job 1",
    b"stats-tube nope", b"pause-tube nope 0", b"peek-ready", b"peek-delayed",
    b"peek-buried",
])
def test_not_found(client, line):
    assert client.cmd(line) == b"NOT_FOUND\r\n"


def test_not_found_for_wrong_state(client):
    assert put(client, b"r") == b"INSERTED 1\r\n"
    # ready job: only own-reserved jobs can be released / buried / touched
    assert client.cmd(b"release 1 0 0") == b"NOT_FOUND\r\n"
    assert client.cmd(b"bury 1 0") == b"NOT_FOUND\r\n"
    assert client.cmd(b"touch 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"kick-job 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"peek-delayed") == b"NOT_FOUND\r\n"
    assert client.cmd(b"peek-buried") == b"NOT_FOUND\r\n"


# --------------------------------------------------------------------------- NOT_IGNORED

def test_not_ignored(client):
    assert client.cmd(b"ignore default") == b"NOT_IGNORED\r\n"
    assert client.cmd(b"watch a") == b"WATCHING 2\r\n"
    assert client.cmd(b"ignore default") == b"WATCHING 1\r\n"
    assert client.cmd(b"ignore a") == b"NOT_IGNORED\r\n"
    assert client.cmd(b"ignore default") == b"WATCHING 1\r\n"
    assert stats_yaml(client)[b"cmd-ignore"] == b"4"


# --------------------------------------------------------------------------- DRAINING

def wait_draining(client):
    deadline = time.monotonic() + WAIT
    while stats_yaml(client)[b"draining"] != b"true":
        assert time.monotonic() < deadline, "server never entered drain mode"
        time.sleep(0.02)


def test_draining_after_sigusr1(qserver):
    c = qserver.client()
    try:
        assert put(c, b"before") == b"INSERTED 1\r\n"
        qserver.signal(signal.SIGUSR1)
        wait_draining(c)
        assert c.cmd(b"put 0 0 10 5\r\nhello") == b"DRAINING\r\n"
        # the body was read: the next command works
        assert c.cmd(b"list-tube-used") == b"USING default\r\n"
        # other commands carry on
        assert c.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 6\r\nbefore\r\n"
        assert c.cmd(b"delete 1") == b"DELETED\r\n"
        assert c.cmd(b"peek 2") == b"NOT_FOUND\r\n"
        s = stats_yaml(c)
        assert (s[b"cmd-put"], s[b"total-jobs"], s[b"current-jobs-ready"]) == (
            b"2", b"1", b"0")
        body = normalize_stats(c.cmd(b"stats"))
        assert b"\ndraining: true\n" in body
    finally:
        c.close()


def test_sigusr1_right_after_startup_drains():
    """SIGUSR1 sent as soon as the port accepts connections must drain, not kill:
    beanstalkd installs its handlers before it listens."""
    server = start_qserver()
    try:
        server.signal(signal.SIGUSR1)
        c = server.client()
        try:
            wait_draining(c)
            assert c.cmd(b"put 0 0 10 1\r\nx") == b"DRAINING\r\n"
        finally:
            c.close()
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_draining_body_in_pieces(qserver):
    c = qserver.client()
    try:
        assert c.cmd(b"list-tube-used") == b"USING default\r\n"
        qserver.signal(signal.SIGUSR1)
        wait_draining(c)
        c.send(b"put 0 0 10 5\r\nhel")
        assert c.nothing_within(0.1)
        c.send(b"lo\r\nlist-tube-used\r\n")
        assert c.read_reply() == b"DRAINING\r\n"
        assert c.read_reply() == b"USING default\r\n"
    finally:
        c.close()


def test_draining_bad_put_still_bad_format(qserver):
    c = qserver.client()
    try:
        assert c.cmd(b"list-tube-used") == b"USING default\r\n"
        qserver.signal(signal.SIGUSR1)
        wait_draining(c)
        c.send(b"put 0 0 10 x\r\nhello\r\n")
        assert c.read_reply() == b"BAD_FORMAT\r\n"
        assert c.read_reply() == b"UNKNOWN_COMMAND\r\n"
        c.send(b"put 0 0 10 5\r\nhelloXY")
        assert c.read_reply() == b"EXPECTED_CRLF\r\n"
    finally:
        c.close()


# --------------------------------------------------------------------------- DEADLINE_SOON / TIMED_OUT

def test_deadline_soon_on_reserve_with_timeout(client):
    assert put(client, ttr=1) == b"INSERTED 1\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    t0 = time.monotonic()
    assert client.cmd(b"reserve-with-timeout 5") == b"DEADLINE_SOON\r\n"
    assert time.monotonic() - t0 < SOON       # at once: no wait for a timer
    assert client.cmd(b"reserve") == b"DEADLINE_SOON\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"DEADLINE_SOON\r\n"
    # still reserved by us
    assert client.cmd(b"release 1 0 0") == b"RELEASED\r\n"
    s = stats_yaml(client)
    assert (s[b"cmd-reserve"], s[b"cmd-reserve-with-timeout"]) == (b"2", b"2")


def test_deadline_soon_not_when_a_job_is_ready(client):
    assert put(client, b"a", ttr=1) == b"INSERTED 1\r\n"
    assert put(client, b"b") == b"INSERTED 2\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 1\r\na\r\n"
    assert client.cmd(b"reserve-with-timeout 5") == b"RESERVED 2 1\r\nb\r\n"
    assert client.cmd(b"reserve-with-timeout 5") == b"DEADLINE_SOON\r\n"


def test_deadline_soon_never_for_reserve_job(client):
    assert put(client, b"a", ttr=1) == b"INSERTED 1\r\n"
    assert client.cmd(b"use other") == b"USING other\r\n"
    assert put(client, b"b") == b"INSERTED 2\r\n"
    assert client.cmd(b"reserve") == b"RESERVED 1 1\r\na\r\n"
    assert client.cmd(b"reserve-with-timeout 0") == b"DEADLINE_SOON\r\n"
    assert client.cmd(b"reserve-job 2") == b"RESERVED 2 1\r\nb\r\n"


def test_deadline_soon_marks_worker(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a, ttr=1) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve-job 1") == b"RESERVED 1 5\r\nhello\r\n"
        assert a.cmd(b"reserve-with-timeout 0") == b"DEADLINE_SOON\r\n"
        s = stats_yaml(b)
        assert (s[b"current-workers"], s[b"cmd-reserve-with-timeout"]) == (b"1", b"1")
    finally:
        a.close()
        b.close()


def test_deadline_soon_while_waiting(client):
    assert put(client, ttr=2) == b"INSERTED 1\r\n"
    t0 = time.monotonic()                   # before the reserve sets the deadline
    assert client.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
    assert client.cmd(b"reserve-with-timeout 10") == b"DEADLINE_SOON\r\n"
    assert_on_time(time.monotonic() - t0, 1.0, "DEADLINE_SOON for a TTR 2 job")
    assert stats_yaml(client, b"stats-job 1")[b"state"] == b"reserved"


def test_timed_out(client):
    assert client.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
    s = stats_yaml(client)
    assert (s[b"current-workers"], s[b"cmd-reserve-with-timeout"],
            s[b"current-waiting"]) == (b"1", b"1", b"0")


def test_timed_out_then_pipelined_command(client):
    client.send(b"reserve-with-timeout 0\r\nlist-tube-used\r\n")
    assert client.read_reply() == b"TIMED_OUT\r\n"
    assert client.read_reply() == b"USING default\r\n"


# --------------------------------------------------------------------------- counters

def test_cmd_counters_counting_rules(qserver):
    c, other = qserver.client(), qserver.client()
    try:
        assert other.cmd(b"list-tube-used") == b"USING default\r\n"
        assert put(c, b"a") == b"INSERTED 1\r\n"
        c.send(b"put 0 0 10 1\r\nbXY")
        assert c.read_reply() == b"EXPECTED_CRLF\r\n"           # counted
        c.send(b"put x 0 10 1\r\n")
        assert c.read_reply() == b"BAD_FORMAT\r\n"               # not counted
        assert c.cmd(b"peek 1") == b"FOUND 1 1\r\na\r\n"
        assert c.cmd(b"peek 99") == b"NOT_FOUND\r\n"             # counted
        assert c.cmd(b"peek x") == b"BAD_FORMAT\r\n"             # not counted
        assert c.cmd(b"peek-ready") == b"FOUND 1 1\r\na\r\n"
        assert c.cmd(b"peek-delayed") == b"NOT_FOUND\r\n"
        assert c.cmd(b"peek-buried") == b"NOT_FOUND\r\n"
        assert c.cmd(b"peek-buried ") == b"BAD_FORMAT\r\n"
        assert c.cmd(b"reserve-job 1") == b"RESERVED 1 1\r\na\r\n"  # no counter
        assert c.cmd(b"release 1 0 0") == b"RELEASED\r\n"
        assert c.cmd(b"release 1 0 0") == b"NOT_FOUND\r\n"      # counted
        assert c.cmd(b"reserve") == b"RESERVED 1 1\r\na\r\n"
        assert c.cmd(b"touch 1") == b"TOUCHED\r\n"
        assert c.cmd(b"touch 2") == b"NOT_FOUND\r\n"
        assert c.cmd(b"bury 1 5") == b"BURIED\r\n"
        assert c.cmd(b"bury 1 5") == b"NOT_FOUND\r\n"
        assert c.cmd(b"kick-job 1") == b"KICKED\r\n"              # no counter
        assert c.cmd(b"kick 5") == b"KICKED 0\r\n"
        assert c.cmd(b"kick x") == b"BAD_FORMAT\r\n"
        assert c.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 1\r\na\r\n"
        assert c.cmd(b"delete 1") == b"DELETED\r\n"
        assert c.cmd(b"delete 1") == b"NOT_FOUND\r\n"            # global only
        assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"
        assert c.cmd(b"use t") == b"USING t\r\n"
        assert c.cmd(b"use -t") == b"BAD_FORMAT\r\n"
        assert c.cmd(b"watch t") == b"WATCHING 2\r\n"
        assert c.cmd(b"watch t") == b"WATCHING 2\r\n"
        assert c.cmd(b"ignore t") == b"WATCHING 1\r\n"
        assert c.cmd(b"ignore default") == b"NOT_IGNORED\r\n"   # counted
        assert c.cmd(b"stats-job 1") == b"NOT_FOUND\r\n"
        assert c.cmd(b"stats-tube nope") == b"NOT_FOUND\r\n"
        assert c.cmd(b"stats-tube t")[:3] == b"OK "
        assert c.cmd(b"list-tubes")[:3] == b"OK "
        assert c.cmd(b"list-tube-used") == b"USING t\r\n"
        assert c.cmd(b"list-tubes-watched") == b"OK 14\r\n---\n- default\n\r\n"
        assert c.cmd(b"pause-tube t 0") == b"PAUSED\r\n"
        assert c.cmd(b"pause-tube nope 0") == b"NOT_FOUND\r\n"   # counted
        assert c.cmd(b"stats")[:3] == b"OK "
        reply = c.cmd(b"stats")
        tube_reply = c.cmd(b"stats-tube default")
    finally:
        c.close()
        other.close()
    expected = (
        b"---\n"
        b"current-jobs-urgent: 0\n"
        b"current-jobs-ready: 0\n"
        b"current-jobs-reserved: 0\n"
        b"current-jobs-delayed: 0\n"
        b"current-jobs-buried: 0\n"
        b"cmd-put: 2\n"
        b"cmd-peek: 2\n"
        b"cmd-peek-ready: 1\n"
        b"cmd-peek-delayed: 1\n"
        b"cmd-peek-buried: 1\n"
        b"cmd-reserve: 1\n"
        b"cmd-reserve-with-timeout: 2\n"
        b"cmd-delete: 2\n"
        b"cmd-release: 2\n"
        b"cmd-use: 1\n"
        b"cmd-watch: 2\n"
        b"cmd-ignore: 2\n"
        b"cmd-bury: 2\n"
        b"cmd-kick: 1\n"
        b"cmd-touch: 2\n"
        b"cmd-stats: 2\n"
        b"cmd-stats-job: 1\n"
        b"cmd-stats-tube: 2\n"
        b"cmd-list-tubes: 1\n"
        b"cmd-list-tube-used: 2\n"
        b"cmd-list-tubes-watched: 1\n"
        b"cmd-pause-tube: 2\n"
        b"job-timeouts: 0\n"
        b"total-jobs: 1\n"
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
    expected_tube = (
        b"---\n"
        b'name: "default"\n'
        b"current-jobs-urgent: 0\n"
        b"current-jobs-ready: 0\n"
        b"current-jobs-reserved: 0\n"
        b"current-jobs-delayed: 0\n"
        b"current-jobs-buried: 0\n"
        b"total-jobs: 1\n"
        b"current-using: 1\n"
        b"current-watching: 2\n"
        b"current-waiting: 0\n"
        b"cmd-delete: 1\n"
        b"cmd-pause-tube: 0\n"
        b"pause: 0\n"
        b"pause-time-left: 0\n"
    )
    assert tube_reply == b"OK 267\r\n" + expected_tube + b"\r\n"


def test_stats_counts_itself(client):
    assert stats_yaml(client)[b"cmd-stats"] == b"1"
    assert stats_yaml(client)[b"cmd-stats"] == b"2"


def test_producer_worker_flags_sticky(qserver):
    a, b = qserver.client(), qserver.client()
    try:
        assert put(a) == b"INSERTED 1\r\n"
        assert a.cmd(b"reserve") == b"RESERVED 1 5\r\nhello\r\n"
        assert a.cmd(b"delete 1") == b"DELETED\r\n"
        s = stats_yaml(b)
        assert (s[b"current-producers"], s[b"current-workers"]) == (b"1", b"1")
        assert b.cmd(b"reserve-job 1") == b"NOT_FOUND\r\n"  # no worker mark
        assert stats_yaml(b)[b"current-workers"] == b"1"
        a.close()
        deadline = time.monotonic() + WAIT
        while stats_yaml(b)[b"current-connections"] != b"1":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        s = stats_yaml(b)
        assert (s[b"current-producers"], s[b"current-workers"]) == (b"0", b"0")
    finally:
        b.close()


# --------------------------------------------------------------------------- error replies never break the connection

def test_error_replies_pipelined_in_one_packet(client):
    client.send(b"bogus\r\n"
                b"peek x\r\n"
                b"peek 1\r\n"
                b"ignore default\r\n"
                b"reserve-with-timeout 0\r\n"
                b"put 0 0 10 2\r\nokXX"
                b"put 0 0 10 2\r\nok\r\n"
                b"\r\n"
                b"stats \r\n"
                b"list-tube-used\r\n")
    assert client.read_reply() == b"UNKNOWN_COMMAND\r\n"
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"NOT_FOUND\r\n"
    assert client.read_reply() == b"NOT_IGNORED\r\n"
    assert client.read_reply() == b"TIMED_OUT\r\n"
    assert client.read_reply() == b"EXPECTED_CRLF\r\n"
    assert client.read_reply() == b"INSERTED 2\r\n"
    assert client.read_reply() == b"UNKNOWN_COMMAND\r\n"
    assert client.read_reply() == b"BAD_FORMAT\r\n"
    assert client.read_reply() == b"USING default\r\n"
    assert client.nothing_within(0.05)
