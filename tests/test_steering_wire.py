"""Golden over-the-wire tests of the steering extensions (protocol.md, "put-ex",
"flush-tube", "cancel-tag", the job-info fields `key`, `tags` and `cancelled`, the
stats-ext steering counters, and the longer-lines rule of the "Extensions" intro),
against a real qserver subprocess.

Expected replies are spelled out literally, as an independent check of the server.
Waits are for events (a state seen in job-info, a reserve that gets its job), each
with a generous bound; nothing here asserts a duration.
"""

import re
import signal
import socket
import time

import pytest

from conftest import Client
from test_ext_wire import (EVENT_BOUND, EXT_KEYS, STATS_JOB_KEYS, STATS_KEYS,
                           STATS_TUBE_KEYS, configure, info, keys_of, ok_body, on_tube,
                           put, reserve, reserve_job, unquote, wait_for_state, with_body)
from test_ext_wire import small_z  # noqa: F401  (a fixture: -z 16)
from test_wire_errors import wait_draining

# The steering conformance suite: every test runs on both stores.
pytestmark = pytest.mark.usefixtures("each_store")

LONG_LINE = 4096            # put-ex, config-tube and cancel-tag lines, CRLF included
LINE = 224                  # every other line


# --------------------------------------------------------------------------- helpers

def put_ex_bytes(body: bytes = b"job", *options: bytes, pri: int = 0, delay: int = 0,
                 ttr: int = 60) -> bytes:
    line = b"put-ex %d %d %d %d" % (pri, delay, ttr, len(body))
    return b"".join([line, *(b" " + o for o in options), b"\r\n", body, b"\r\n"])


def put_ex(c: Client, body: bytes = b"job", *options: bytes, **numbers) -> bytes:
    """Send one put-ex and return its reply line."""
    c.send(put_ex_bytes(body, *options, **numbers))
    return c.read_line()


def inserted(reply: bytes) -> int:
    m = re.fullmatch(rb"INSERTED ([1-9][0-9]*)\r\n", reply)
    assert m, reply
    return int(m[1])


def put_ex_id(c: Client, body: bytes = b"job", *options: bytes, **numbers) -> int:
    return inserted(put_ex(c, body, *options, **numbers))


def flow_list(value: bytes) -> list:
    """A YAML flow list of double-quoted scalars (`["a", "b"]` or `[]`) as bytes."""
    assert value[:1] == b"[" and value[-1:] == b"]", value
    inner = value[1:-1]
    if not inner:
        return []
    items = re.findall(rb'"(?:[^"\\]|\\.)*"', inner)
    assert b", ".join(items) == inner, value
    return [unquote(item) for item in items]


def steering_fields(c: Client, job_id: int) -> tuple:
    """(key, sorted tags, cancelled) of a job-info record; key is None for `~`."""
    body = ok_body(c.cmd(b"job-info %d" % job_id))
    m = re.search(rb"\nkey: (~|\"(?:[^\"\\]|\\.)*\")\ntags: (\[.*\])\n"
                  rb"cancelled: (true|false)\n", body)
    assert m, body
    key = None if m[1] == b"~" else unquote(m[1])
    return key, sorted(flow_list(m[2])), m[3] == b"true"


def ext_counters(c: Client) -> dict:
    """stats-ext as {key: int}, checking each line is `key: N`."""
    body = ok_body(c.cmd(b"stats-ext"))
    out = {}
    for line in body.split(b"\n")[1:-1]:
        m = re.fullmatch(rb"([a-z-]+): (0|[1-9][0-9]*)", line)
        assert m, line
        out[m[1]] = int(m[2])
    return out


def assert_ext(c: Client, **values) -> None:
    """Every documented stats-ext counter has exactly the given value (0 when not
    given) and they come in the documented order; later extensions (list-jobs...)
    may add keys of their own."""
    got = ext_counters(c)
    expected = {key: values.pop(key.decode().replace("-", "_"), 0) for key in EXT_KEYS}
    assert not values, f"unknown counters {values}"
    assert {key: got.get(key) for key in expected} == expected
    assert [key for key in got if key in expected] == EXT_KEYS


def read_lines(c: Client, n: int) -> list:
    return [c.read_line() for _ in range(n)]


# --------------------------------------------------------------------------- put-ex

def test_put_ex_without_options_is_a_put(client):
    job = put_ex_id(client, b"hello")
    assert job == 1
    assert client.cmd(b"peek 1") == b"FOUND 1 5\r\nhello\r\n"
    assert steering_fields(client, job) == (None, [], False)
    assert client.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 5\r\nhello\r\n"


def test_put_ex_goes_to_the_used_tube_with_pri_delay_and_ttr(qserver):
    c = on_tube(qserver, b"emails")
    job = put_ex_id(c, b"body", b"key=k", pri=7, delay=0, ttr=33)
    stats = c.yaml(b"stats-job %d" % job)
    assert (stats["tube"], stats["state"], stats["pri"], stats["ttr"]) == \
        ("emails", "ready", "7", "33")
    later = put_ex_id(c, b"body", b"key=k2", delay=600)
    assert c.yaml(b"stats-job %d" % later)["state"] == "delayed"
    zero_ttr = put_ex_id(c, b"body", b"tag=t", ttr=0)           # ttr 0 becomes 1
    assert c.yaml(b"stats-job %d" % zero_ttr)["ttr"] == "1"
    tube = c.yaml(b"stats-tube emails")
    assert (tube["current-jobs-ready"], tube["current-jobs-delayed"],
            tube["total-jobs"]) == ("2", "1", "3")


def test_job_info_of_a_put_ex_job_golden(qserver):
    c = on_tube(qserver, b"t")
    job = put_ex_id(c, b"hello", b"key=order-17", b"tag=a", b"tag=b", pri=5, ttr=7)
    body = ok_body(c.cmd(b"job-info %d" % job))
    age = re.search(rb"\nage: ([0-9]+)\n", body)[1]
    assert body == (
        b'---\nid: %d\ntube: "t"\nstate: ready\npri: 5\nage: %s\ndelay: 0\nttr: 7\n'
        b"time-left: 0\nfile: 0\nreserves: 0\ntimeouts: 0\nreleases: 0\nburies: 0\n"
        b"kicks: 0\nattempts: 0\nmax-attempts: 0\nprogress: ~\nresult-bytes: 0\n"
        b'key: "order-17"\ntags: ["a", "b"]\ncancelled: false\nfailures: []\n'
        % (job, age))


def test_job_info_key_and_tags_are_quoted_and_escaped(client):
    job = put_ex_id(client, b"x", b'key=a"b\\c', b'tag=q"', b"tag=\\", b"tag=~")
    body = ok_body(client.cmd(b"job-info %d" % job))
    assert b'\nkey: "a\\"b\\\\c"\n' in body, body
    tags = re.search(rb"\ntags: (.*)\n", body)[1]
    assert sorted(flow_list(tags)) == sorted([b'q"', b"\\", b"~"])
    assert steering_fields(client, job) == (b'a"b\\c', sorted([b'q"', b"\\", b"~"]), False)


def test_job_info_of_a_key_only_and_a_tag_only_job(client):
    keyed = put_ex_id(client, b"x", b"key=only")
    tagged = put_ex_id(client, b"x", b"tag=only")
    assert steering_fields(client, keyed) == (b"only", [], False)
    assert steering_fields(client, tagged) == (None, [b"only"], False)
    assert b'\ntags: ["only"]\n' in client.cmd(b"job-info %d" % tagged)


def test_eight_distinct_tags_are_fine_a_repeated_tag_counts_once(client):
    tags = [b"tag=t%d" % i for i in range(8)]
    job = put_ex_id(client, b"x", *tags, b"tag=t3", b"tag=t0")
    assert steering_fields(client, job) == (None, sorted(b"t%d" % i for i in range(8)),
                                            False)


def test_values_of_200_bytes_are_fine(client):
    key, tag = b"k" * 200, b"t" * 199 + b"~"
    job = put_ex_id(client, b"x", b"key=" + key, b"tag=" + tag)
    assert steering_fields(client, job) == (key, [tag], False)


def test_duplicate_key_in_the_same_tube_names_the_holder(client):
    client.send(put_ex_bytes(b"first", b"key=k") + put_ex_bytes(b"second", b"key=k")
                + put_ex_bytes(b"third", b"key=k", b"tag=x") + b"list-tube-used\r\n")
    assert read_lines(client, 4) == [b"INSERTED 1\r\n", b"DUPLICATE 1\r\n",
                                     b"DUPLICATE 1\r\n", b"USING default\r\n"]
    assert client.cmd(b"peek 1") == b"FOUND 1 5\r\nfirst\r\n"
    assert client.yaml(b"stats-tube default")["current-jobs-ready"] == "1"


def test_duplicate_takes_no_id(client):
    assert put_ex(client, b"a", b"key=k") == b"INSERTED 1\r\n"
    assert put_ex(client, b"b", b"key=k") == b"DUPLICATE 1\r\n"
    assert put_ex(client, b"c", b"key=k") == b"DUPLICATE 1\r\n"
    assert put_ex(client, b"d", b"key=other") == b"INSERTED 2\r\n"
    assert client.cmd(b"put 0 0 60 1\r\ne") == b"INSERTED 3\r\n"
    assert client.cmd(b"peek 2") == b"FOUND 2 1\r\nd\r\n"


def test_same_key_is_accepted_in_another_tube(qserver):
    a, b = on_tube(qserver, b"a"), on_tube(qserver, b"b")
    first = put_ex_id(a, b"x", b"key=k")
    second = put_ex_id(b, b"x", b"key=k")
    assert second == first + 1
    assert put_ex(a, b"x", b"key=k") == b"DUPLICATE %d\r\n" % first
    assert put_ex(b, b"x", b"key=k") == b"DUPLICATE %d\r\n" % second


def test_keys_are_case_sensitive_and_not_tags(client):
    job = put_ex_id(client, b"x", b"key=k", b"tag=K")
    assert put_ex_id(client, b"x", b"key=K") == job + 1
    assert put_ex_id(client, b"x", b"tag=k") == job + 2


def test_key_is_held_in_every_live_state(qserver):
    c = on_tube(qserver, b"t")
    ready = put_ex_id(c, b"x", b"key=ready")
    delayed = put_ex_id(c, b"x", b"key=delayed", delay=600)
    buried = put_ex_id(c, b"x", b"key=buried")
    reserved = put_ex_id(c, b"x", b"key=reserved")
    reserve_job(c, buried, b"x")
    assert c.cmd(b"bury %d 0" % buried) == b"BURIED\r\n"
    reserve_job(c, reserved, b"x")
    other = on_tube(qserver, b"t")
    for key, holder in ((b"ready", ready), (b"delayed", delayed), (b"buried", buried),
                        (b"reserved", reserved)):
        assert put_ex(other, b"y", b"key=" + key) == b"DUPLICATE %d\r\n" % holder, key


@pytest.mark.parametrize("how", ["delete", "flush", "cancel", "complete-no-retain",
                                 "dead-letter-delete-no-retain"])
def test_key_is_free_again_once_the_holder_is_gone(qserver, how):
    c = on_tube(qserver, b"t")
    if how == "dead-letter-delete-no-retain":
        configure(c, b"t", (b"max-attempts", b"1"), (b"dead-letter", b"delete"))
    job = put_ex_id(c, b"x", b"key=k", b"tag=g")
    if how == "delete":
        assert c.cmd(b"delete %d" % job) == b"DELETED\r\n"
    elif how == "flush":
        assert c.cmd(b"flush-tube t") == b"FLUSHED 1\r\n"
    elif how == "cancel":
        assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 0\r\n"
    elif how == "complete-no-retain":
        reserve_job(c, job, b"x")
        assert c.cmd(with_body(b"complete", job, b"r")) == b"COMPLETED\r\n"
    else:
        reserve_job(c, job, b"x")
        assert c.cmd(with_body(b"fail", job, b"r")) == b"DELETED\r\n"
    assert c.cmd(b"job-info %d" % job) == b"NOT_FOUND\r\n"
    again = put_ex_id(c, b"y", b"key=k")
    assert again == job + 1
    assert put_ex(c, b"z", b"key=k") == b"DUPLICATE %d\r\n" % again


@pytest.mark.parametrize("ending", ["complete", "dead"])
def test_key_of_a_retained_record_is_refused_until_it_expires(qserver, ending):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"1"), (b"max-attempts", b"1"),
              (b"dead-letter", b"delete"))
    job = put_ex_id(c, b"x", b"key=k")
    reserve_job(c, job, b"x")
    # The put-ex and job-info run right behind the finish, in the same write: long
    # before a 1 s retain runs out.
    finish = with_body(b"complete", job, b"r") if ending == "complete" else \
        with_body(b"fail", job, b"r")
    c.send(finish + put_ex_bytes(b"y", b"key=k") + b"job-info %d\r\n" % job)
    assert c.read_line() == (b"COMPLETED\r\n" if ending == "complete" else b"DELETED\r\n")
    assert c.read_line() == b"DUPLICATE %d\r\n" % job
    record = c.read_reply()
    assert b"\nstate: %s\n" % (b"completed" if ending == "complete" else b"dead") \
        in record, record
    deadline = time.monotonic() + EVENT_BOUND
    while c.cmd(b"job-info %d" % job) != b"NOT_FOUND\r\n":
        assert time.monotonic() < deadline, "the retained record never expired"
        time.sleep(0.05)
    assert put_ex_id(c, b"y", b"key=k") == job + 1


def test_retained_record_keeps_its_key_and_tags_in_job_info(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"3600"))
    job = put_ex_id(c, b"x", b"key=k", b"tag=a")
    reserve_job(c, job, b"x")
    assert c.cmd(with_body(b"complete", job, b"r")) == b"COMPLETED\r\n"
    assert steering_fields(c, job) == (b"k", [b"a"], False)
    assert put_ex(c, b"y", b"key=k") == b"DUPLICATE %d\r\n" % job
    # A retained record is not a live job: cancel-tag finds nothing to remove.
    assert c.cmd(b"cancel-tag a") == b"CANCELLED 0 0\r\n"
    assert c.cmd(b"peek-result %d" % job) == b"FOUND %d 1\r\nr\r\n" % job


def test_key_follows_a_job_moved_to_a_dead_letter_tube(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"1"), (b"dead-letter", b"tube:d"))
    job = put_ex_id(c, b"x", b"key=k")
    reserve_job(c, job, b"x")
    assert c.cmd(with_body(b"fail", job, b"r")) == b"MOVED d\r\n"
    assert steering_fields(c, job) == (b"k", [], False)
    d = on_tube(qserver, b"d")
    assert put_ex(d, b"y", b"key=k") == b"DUPLICATE %d\r\n" % job
    # ...and the tube it left no longer has a job with that key.
    assert put_ex_id(c, b"y", b"key=k") == job + 1


@pytest.mark.parametrize("rest", [
    b"x 0 60 3 key=a", b"0 x 60 3 key=a", b"0 0 x 3 key=a", b"0 0 60 x key=a",
    b"-1 0 60 3 key=a", b"0 0 60 -3 key=a", b"4294967296 0 60 3 key=a",
    b"0 4294967296 60 3 key=a", b"0 0 4294967296 3 key=a", b"0 0 60 4294967296 key=a",
    b"0 0 60 key=a", b"0 0 60", b"", b"\t0 0 60 3 key=a", b"+0 0 60 3 key=a",
])
def test_bad_number_is_bad_format_and_the_body_is_not_read(client, rest):
    client.send(b"put-ex " + rest + b"\r\nabc\r\nlist-tube-used\r\n")
    assert read_lines(client, 3) == [b"BAD_FORMAT\r\n", b"UNKNOWN_COMMAND\r\n",
                                     b"USING default\r\n"]
    assert client.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED 1\r\n"


def test_spaces_and_leading_zeros_before_the_numbers_are_fine(client):
    client.send(b"put-ex  00 0   060 003 key=a\r\nabc\r\n")
    assert client.read_line() == b"INSERTED 1\r\n"
    assert client.yaml(b"stats-job 1")["ttr"] == "60"
    assert steering_fields(client, 1) == (b"a", [], False)


# (lock= is left out: protocol.md refuses it "for now", until per-key concurrency.)
BAD_OPTIONS = [
    b" foo=1", b" key=a foo=b", b" locks=x", b" KEY=a", b" Tag=a", b" key", b" key=",
    b" tag=", b" =a", b" key=" + b"k" * 201, b" tag=" + b"t" * 201, b" key=a key=b",
    b" key=a key=a", b" key=a tag=b key=c",
    b"".join(b" tag=t%d" % i for i in range(9)),
    b" key=a" + b"".join(b" tag=t%d" % i for i in range(9)) + b" tag=t0",
    b"  key=a", b" key=a  tag=b", b" key=a ", b" ", b" key=a\ttag=b", b" key=a b",
    b" key=caf\xc3\xa9", b" tag=\x7f", b" key=a\x01",
]


@pytest.mark.parametrize("options", BAD_OPTIONS)
def test_bad_option_is_bad_format_after_the_body_is_read(client, options):
    client.send(b"put-ex 0 0 60 5%s\r\nhe\r\nl\r\nlist-tube-used\r\n" % options)
    assert read_lines(client, 2) == [b"BAD_FORMAT\r\n", b"USING default\r\n"]
    # Nothing was stored and no id was used up; the key and tags are not taken.
    assert client.yaml(b"stats")["current-jobs-ready"] == "0"
    assert client.cmd(b"cancel-tag t0") == b"CANCELLED 0 0\r\n"
    assert put_ex(client, b"x", b"key=a", b"tag=t0") == b"INSERTED 1\r\n"


def test_bad_option_on_a_duplicate_key_is_bad_format(client):
    job = put_ex_id(client, b"x", b"key=k")
    assert put_ex(client, b"x", b"key=k", b"foo=k") == b"BAD_FORMAT\r\n"
    assert put_ex(client, b"x", b"key=k") == b"DUPLICATE %d\r\n" % job


def test_job_too_big_reads_and_drops_the_body(small_z):
    c = small_z.client()
    c.send(put_ex_bytes(b"b" * 17, b"key=k", b"tag=g") + b"list-tube-used\r\n")
    assert read_lines(c, 2) == [b"JOB_TOO_BIG\r\n", b"USING default\r\n"]
    # The size is checked before the options, as put checks it before the rest.
    c.send(put_ex_bytes(b"b" * 17, b"foo=k") + b"list-tube-used\r\n")
    assert read_lines(c, 2) == [b"JOB_TOO_BIG\r\n", b"USING default\r\n"]
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 0\r\n"
    # No id was used, the key is free, and the largest body fits.
    assert put_ex(c, b"b" * 16, b"key=k") == b"INSERTED 1\r\n"


def test_body_without_crlf_is_expected_crlf(client):
    client.send(b"put-ex 0 0 60 3 key=k tag=g\r\nabcXYlist-tube-used\r\n")
    assert read_lines(client, 2) == [b"EXPECTED_CRLF\r\n", b"USING default\r\n"]
    assert client.yaml(b"stats")["current-jobs-ready"] == "0"
    assert client.cmd(b"cancel-tag g") == b"CANCELLED 0 0\r\n"
    job = put_ex_id(client, b"abc", b"key=k")
    assert client.cmd(b"peek %d" % job) == b"FOUND %d 3\r\nabc\r\n" % job


def test_draining_put_ex_is_refused_and_the_rest_works(qserver):
    c = on_tube(qserver, b"t")
    kept = put_ex_id(c, b"kept", b"key=kept", b"tag=g")
    held = put_ex_id(c, b"held", b"tag=g")
    reserve_job(c, held, b"held")
    qserver.signal(signal.SIGUSR1)
    wait_draining(c)
    c.send(put_ex_bytes(b"new", b"key=new", b"tag=g") + b"list-tube-used\r\n")
    assert read_lines(c, 2) == [b"DRAINING\r\n", b"USING t\r\n"]
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 1\r\n"
    assert c.cmd(b"job-info %d" % kept) == b"NOT_FOUND\r\n"
    assert c.cmd(b"flush-tube t") == b"FLUSHED 0\r\n"
    assert c.cmd(b"touch %d" % held) == b"CANCELLED\r\n"
    assert c.cmd(b"delete %d" % held) == b"DELETED\r\n"
    assert c.yaml(b"stats")["current-jobs-ready"] == "0"


def test_body_split_across_several_writes(client):
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b"split\r\nbody\x00"
    data = put_ex_bytes(body, b"key=k", b"tag=g")
    line_end = data.index(b"\r\n") + 2
    pieces = [data[:4], data[4:line_end - 1], data[line_end - 1:line_end + 3],
              data[line_end + 3:-2], data[-2:-1], data[-1:]]
    for piece in pieces[:-1]:
        client.send(piece)
        assert client.nothing_within(0.1), piece
    client.send(pieces[-1])
    assert client.read_line() == b"INSERTED 1\r\n"
    assert client.cmd(b"peek 1") == b"FOUND 1 %d\r\n%s\r\n" % (len(body), body)
    assert steering_fields(client, 1) == (b"k", [b"g"], False)


# --------------------------------------------------------------------------- long lines

def padded_put_ex_line(total: int) -> bytes:
    """A valid put-ex line of exactly `total` bytes with its CRLF: a key, then one
    tag repeated (a repeated tag counts once) and a last tag sized to fit."""
    line = b"put-ex 0 0 60 3 key=long tag=pad"
    last = total - 2 - len(line) - len(b" tag=")
    while last > 200:
        line += b" tag=pad"
        last = total - 2 - len(line) - len(b" tag=")
    assert last >= 1
    line += b" tag=" + b"z" * last + b"\r\n"
    assert len(line) == total
    return line


@pytest.mark.parametrize("total", [LINE + 1, LINE + 2, 300, 2000, LONG_LINE - 1,
                                   LONG_LINE])
def test_put_ex_line_may_be_up_to_4096_bytes(client, total):
    client.send(padded_put_ex_line(total) + b"abc\r\nlist-tube-used\r\n")
    assert read_lines(client, 2) == [b"INSERTED 1\r\n", b"USING default\r\n"]
    key, tags, cancelled = steering_fields(client, 1)
    assert key == b"long" and len(tags) == 2 and b"pad" in tags


def test_long_put_ex_line_with_a_200_byte_key_and_8_200_byte_tags(client):
    options = [b"key=" + b"k" * 200] + [b"tag=%d" % i + b"t" * 199 for i in range(8)]
    line = b"put-ex 0 0 60 3 " + b" ".join(options)
    line += b"".join(b" tag=0" + b"t" * 199 for _ in range((LONG_LINE - 2 - len(line)) // 210))
    assert len(line) + 2 <= LONG_LINE
    client.send(line + b"\r\nabc\r\n")
    assert client.read_line() == b"INSERTED 1\r\n"
    key, tags, _ = steering_fields(client, 1)
    assert key == b"k" * 200 and tags == sorted(b"%d" % i + b"t" * 199 for i in range(8))


@pytest.mark.parametrize("total", [LONG_LINE + 1, LONG_LINE + 2, 5000, 20000])
def test_longer_put_ex_line_is_one_bad_format_and_the_stream_goes_on(client, total):
    line = padded_put_ex_line(LONG_LINE)
    line = line[:-2] + b"y" * (total - LONG_LINE) + b"\r\n"
    assert len(line) == total
    client.send(line + b"list-tube-used\r\n")
    assert read_lines(client, 2) == [b"BAD_FORMAT\r\n", b"USING default\r\n"]
    assert client.yaml(b"stats")["current-jobs-ready"] == "0"
    assert client.cmd(b"cancel-tag pad") == b"CANCELLED 0 0\r\n"


def test_long_put_ex_line_split_across_writes(client):
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = padded_put_ex_line(3000) + b"abc\r\n"
    pieces = [data[start:start + 700] for start in range(0, len(data), 700)]
    for piece in pieces[:-1]:
        client.send(piece)
        assert client.nothing_within(0.1)
    client.send(pieces[-1])
    assert client.read_line() == b"INSERTED 1\r\n"
    assert steering_fields(client, 1)[0] == b"long"


def test_config_tube_line_of_exactly_4096_bytes(client):
    head = b"config-tube t retain "
    digits = LONG_LINE - 2 - len(head)
    assert client.cmd(head + b"0" * (digits - 2) + b"42") == b"CONFIGURED\r\n"
    assert b"\nretain: 42\n" in client.cmd(b"config-tube t")
    client.send(head + b"0" * (digits - 1) + b"43\r\nlist-tube-used\r\n")
    assert read_lines(client, 2) == [b"BAD_FORMAT\r\n", b"USING default\r\n"]
    assert b"\nretain: 42\n" in client.cmd(b"config-tube t")


@pytest.mark.parametrize("total", [LINE + 1, 300, LONG_LINE, LONG_LINE + 1, 9000])
def test_cancel_tag_line_longer_than_a_tag_is_one_bad_format(client, total):
    job = put_ex_id(client, b"x", b"tag=" + b"g" * 200)
    line = b"cancel-tag " + b"g" * (total - 2 - len(b"cancel-tag ")) + b"\r\n"
    client.send(line + b"list-tube-used\r\n")
    assert read_lines(client, 2) == [b"BAD_FORMAT\r\n", b"USING default\r\n"]
    assert client.cmd(b"cancel-tag " + b"g" * 200) == b"CANCELLED 1 0\r\n"
    assert client.cmd(b"peek %d" % job) == b"NOT_FOUND\r\n"


# The 224-byte rule for every other line, beanstalkd's included: a line of 223
# content bytes has its CR at the last byte of the window, so the next line is
# swallowed with it (protocol.md, "Lines"); the same line as put-ex is fine.
EDGE = LINE + 1


def _edge_line(word: bytes, filler: bytes = b"0") -> bytes:
    line = word + filler * (EDGE - 2 - len(word))
    assert len(line) + 2 == EDGE
    return line + b"\r\n"


@pytest.mark.parametrize("word", [b"peek ", b"job-info ", b"flush-tube ", b"stats-ext",
                                  b"put 0 0 60 "])
def test_other_commands_keep_the_224_byte_rule(client, word):
    client.send(_edge_line(word) + b"list-tube-used\r\nlist-tube-used\r\n")
    assert read_lines(client, 2) == [b"BAD_FORMAT\r\n", b"USING default\r\n"]


def test_long_beanstalkd_lines_behave_as_in_beanstalkd(qserver, beanstalkd):
    """The same bytes to both servers get the same replies."""
    stream = (b"put 0 0 60 3" + b" " * 290 + b"\r\nabc\r\n"          # 300-byte put
              + b"use " + b"u" * 296 + b"\r\n"
              + _edge_line(b"put 0 0 60 ") + b"list-tube-used\r\n"
              + b"put 0 0 60 3\r\n" + b"abc" + b"\r\n"
              + b"list-tube-used\r\n")
    replies = []
    for server in (qserver, beanstalkd):
        c = server.client()
        c.send(stream)
        replies.append(read_lines(c, 6))
        c.close()
    assert replies[0] == replies[1]
    assert replies[0] == [b"BAD_FORMAT\r\n", b"UNKNOWN_COMMAND\r\n", b"BAD_FORMAT\r\n",
                          b"BAD_FORMAT\r\n", b"INSERTED 1\r\n", b"USING default\r\n"]


# --------------------------------------------------------------------------- flush-tube

def _fill_tube(c: Client, tube: bytes) -> dict:
    """Two ready (one urgent), two delayed, two buried and one reserved job."""
    jobs = {
        "ready": [put(c, pri=5), put(c, pri=1)],
        "delayed": [put(c, delay=600), put(c, delay=3600)],
        "buried": [put(c), put(c)],
        "reserved": [put(c)],
    }
    for job in jobs["buried"]:
        reserve_job(c, job)
        assert c.cmd(b"bury %d 0" % job) == b"BURIED\r\n"
    reserve_job(c, jobs["reserved"][0])
    return jobs


def test_flush_removes_ready_delayed_and_buried_but_not_reserved(qserver):
    c = on_tube(qserver, b"t")
    jobs = _fill_tube(c, b"t")
    other = on_tube(qserver, b"other")
    bystander = put(other)
    assert c.cmd(b"flush-tube t") == b"FLUSHED 6\r\n"
    for state in ("ready", "delayed", "buried"):
        for job in jobs[state]:
            for command in (b"peek %d", b"stats-job %d", b"job-info %d"):
                assert c.cmd(command % job) == b"NOT_FOUND\r\n", (state, command)
    [held] = jobs["reserved"]
    assert c.yaml(b"stats-job %d" % held)["state"] == "reserved"
    tube = c.yaml(b"stats-tube t")
    assert (tube["current-jobs-urgent"], tube["current-jobs-ready"],
            tube["current-jobs-reserved"], tube["current-jobs-delayed"],
            tube["current-jobs-buried"], tube["total-jobs"]) == \
        ("0", "0", "1", "0", "0", "7")
    stats = c.yaml(b"stats")
    assert (stats["current-jobs-urgent"], stats["current-jobs-ready"],
            stats["current-jobs-reserved"], stats["current-jobs-delayed"],
            stats["current-jobs-buried"]) == ("1", "1", "1", "0", "0")   # the bystander
    for command in (b"peek-ready", b"peek-delayed", b"peek-buried"):
        assert c.cmd(command) == b"NOT_FOUND\r\n", command
    assert c.cmd(b"kick 10") == b"KICKED 0\r\n"
    assert other.cmd(b"peek-ready") == b"FOUND %d 3\r\njob\r\n" % bystander


def test_reserved_job_survives_a_flush_and_can_be_released_or_deleted(qserver):
    c = on_tube(qserver, b"t")
    first, second = put(c), put(c)
    reserve_job(c, first)
    reserve_job(c, second)
    assert c.cmd(b"flush-tube t") == b"FLUSHED 0\r\n"
    assert c.cmd(b"release %d 3 0" % first) == b"RELEASED\r\n"
    assert c.cmd(b"delete %d" % second) == b"DELETED\r\n"
    assert c.cmd(b"peek-ready") == b"FOUND %d 3\r\njob\r\n" % first
    # A released job is ready like any other: the next flush takes it.
    assert c.cmd(b"flush-tube t") == b"FLUSHED 1\r\n"
    assert c.cmd(b"peek %d" % first) == b"NOT_FOUND\r\n"


def test_reserved_job_survives_a_flush_and_can_be_buried_then_flushed(qserver):
    c = on_tube(qserver, b"t")
    job = put(c)
    reserve_job(c, job)
    assert c.cmd(b"flush-tube t") == b"FLUSHED 0\r\n"
    assert c.cmd(b"touch %d" % job) == b"TOUCHED\r\n"
    assert c.cmd(b"bury %d 0" % job) == b"BURIED\r\n"
    assert c.cmd(b"flush-tube t") == b"FLUSHED 1\r\n"


def test_flushed_delayed_job_never_comes_back(qserver):
    c = on_tube(qserver, b"t")
    gone = put(c, b"gone", delay=1)
    assert c.cmd(b"flush-tube t") == b"FLUSHED 1\r\n"
    later = put(c, b"later", delay=2)           # due after the flushed one
    c.send(b"reserve-with-timeout 60\r\n")
    c.sock.settimeout(EVENT_BOUND)
    assert c.read_reply() == b"RESERVED %d 5\r\nlater\r\n" % later
    c.sock.settimeout(5.0)
    assert c.cmd(b"peek %d" % gone) == b"NOT_FOUND\r\n"


def test_flush_of_a_tube_that_does_not_exist_is_flushed_0(client):
    assert client.cmd(b"flush-tube nobody") == b"FLUSHED 0\r\n"
    assert client.cmd(b"stats-tube nobody") == b"NOT_FOUND\r\n"
    assert b"- nobody\n" not in client.cmd(b"list-tubes")
    assert client.cmd(b"flush-tube " + b"n" * 200) == b"FLUSHED 0\r\n"


def test_flush_of_an_empty_tube_and_of_default(qserver):
    c = qserver.client()
    assert c.cmd(b"flush-tube default") == b"FLUSHED 0\r\n"
    job = put(c)
    t = on_tube(qserver, b"t")
    kept = put(t)
    assert c.cmd(b"flush-tube default") == b"FLUSHED 1\r\n"
    assert c.cmd(b"peek %d" % job) == b"NOT_FOUND\r\n"
    assert c.cmd(b"peek %d" % kept) == b"FOUND %d 3\r\njob\r\n" % kept
    assert b"- default\n" in c.cmd(b"list-tubes")


def test_flushed_tube_that_nobody_uses_goes_away(qserver):
    c = qserver.client()
    t = on_tube(qserver, b"t")
    put(t)
    t.close()
    # Wait until the server saw the close (the tube still has its job meanwhile).
    deadline = time.monotonic() + EVENT_BOUND
    while c.yaml(b"stats-tube t")["current-using"] != "0":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert c.cmd(b"flush-tube t") == b"FLUSHED 1\r\n"
    assert c.cmd(b"stats-tube t") == b"NOT_FOUND\r\n"
    assert c.cmd(b"flush-tube t") == b"FLUSHED 0\r\n"


def test_flush_frees_keys_and_tags(qserver):
    c = on_tube(qserver, b"t")
    ids = [put_ex_id(c, b"x", b"key=k%d" % i, b"tag=g") for i in range(5)]
    reserve_job(c, ids[0], b"x")
    assert c.cmd(b"flush-tube t") == b"FLUSHED 4\r\n"
    assert put_ex(c, b"y", b"key=k0") == b"DUPLICATE %d\r\n" % ids[0]
    for i in range(1, 5):
        assert put_ex(c, b"y", b"key=k%d" % i) == b"INSERTED %d\r\n" % (ids[-1] + i)
    # Only the reserved one and the new ones have the tag now.
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 1\r\n"


def test_flush_with_a_waiting_reserve_on_the_tube(qserver):
    waiter = on_tube(qserver, b"t")
    waiter.send(b"reserve-with-timeout 60\r\n")
    c = on_tube(qserver, b"t")
    deadline = time.monotonic() + EVENT_BOUND
    while c.yaml(b"stats-tube t")["current-waiting"] != "1":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert c.cmd(b"flush-tube t") == b"FLUSHED 0\r\n"
    job = put(c)
    waiter.sock.settimeout(EVENT_BOUND)
    assert waiter.read_reply() == b"RESERVED %d 3\r\njob\r\n" % job


@pytest.mark.parametrize("line", [
    b"flush-tube ", b"flush-tube -bad", b"flush-tube a*b", b"flush-tube " + b"x" * 201,
    b"flush-tube  t", b"flush-tube t ", b"flush-tube t x", b"flush-tube t\t",
    b"flush-tube caf\xc3\xa9",
])
def test_flush_bad_tube_name_is_bad_format(qserver, line):
    c = on_tube(qserver, b"t")
    job = put(c)
    assert c.cmd(line) == b"BAD_FORMAT\r\n"
    assert c.cmd(b"peek %d" % job) == b"FOUND %d 3\r\njob\r\n" % job


def test_flush_tube_names_are_read_as_use_reads_them(client):
    for name in (b"A-Za-z0+/;.$_()", b"n" * 200):
        assert client.cmd(b"use " + name) == b"USING " + name + b"\r\n"
        put(client)
        assert client.cmd(b"flush-tube " + name) == b"FLUSHED 1\r\n"


@pytest.mark.parametrize("line", [b"flush-tube", b"cancel-tag"])
def test_words_without_their_argument(client, line):
    assert client.cmd(line) in (b"BAD_FORMAT\r\n", b"UNKNOWN_COMMAND\r\n")
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


# --------------------------------------------------------------------------- cancel-tag

def test_cancel_tag_removes_unreserved_and_flags_reserved(qserver):
    c = on_tube(qserver, b"t")
    ready = put_ex_id(c, b"r", b"tag=g")
    delayed = put_ex_id(c, b"d", b"tag=g", delay=600)
    buried = put_ex_id(c, b"b", b"tag=g", b"tag=h")
    held = put_ex_id(c, b"h", b"tag=g", b"key=k")
    untagged = put_ex_id(c, b"u", b"tag=other")
    plain = put(c)
    reserve_job(c, buried, b"b")
    assert c.cmd(b"bury %d 0" % buried) == b"BURIED\r\n"
    reserve_job(c, held, b"h")
    elsewhere = on_tube(qserver, b"elsewhere")
    far = put_ex_id(elsewhere, b"f", b"tag=g")              # tags are not per tube
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 4 1\r\n"
    for job in (ready, delayed, buried, far):
        for command in (b"peek %d", b"stats-job %d", b"job-info %d"):
            assert c.cmd(command % job) == b"NOT_FOUND\r\n", (job, command)
    assert steering_fields(c, held) == (b"k", [b"g"], True)
    assert c.yaml(b"stats-job %d" % held)["state"] == "reserved"
    for job in (untagged, plain):
        assert c.cmd(b"peek %d" % job).startswith(b"FOUND %d " % job)
    # The buried job's other tag went with it.
    assert c.cmd(b"cancel-tag h") == b"CANCELLED 0 0\r\n"
    tube = c.yaml(b"stats-tube t")
    assert (tube["current-jobs-ready"], tube["current-jobs-delayed"],
            tube["current-jobs-buried"], tube["current-jobs-reserved"]) == \
        ("2", "0", "0", "1")


def test_cancel_of_an_unknown_tag(client):
    assert client.cmd(b"cancel-tag nobody") == b"CANCELLED 0 0\r\n"
    put(client)
    assert client.cmd(b"cancel-tag nobody") == b"CANCELLED 0 0\r\n"
    assert client.yaml(b"stats")["current-jobs-ready"] == "1"


def test_cancel_tag_twice_removes_nothing_more(client):
    put_ex_id(client, b"x", b"tag=g")
    put_ex_id(client, b"x", b"tag=g")
    assert client.cmd(b"cancel-tag g") == b"CANCELLED 2 0\r\n"
    assert client.cmd(b"cancel-tag g") == b"CANCELLED 0 0\r\n"


def test_job_info_of_a_flagged_job_golden(qserver):
    c = on_tube(qserver, b"t")
    job = put_ex_id(c, b"hello", b"key=k", b"tag=g", pri=3, ttr=50)
    reserve_job(c, job, b"hello")
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 1\r\n"
    body = ok_body(c.cmd(b"job-info %d" % job))
    age = re.search(rb"\nage: ([0-9]+)\n", body)[1]
    left = re.search(rb"\ntime-left: ([0-9]+)\n", body)[1]
    assert body == (
        b'---\nid: %d\ntube: "t"\nstate: reserved\npri: 3\nage: %s\ndelay: 0\nttr: 50\n'
        b"time-left: %s\nfile: 0\nreserves: 1\ntimeouts: 0\nreleases: 0\nburies: 0\n"
        b"kicks: 0\nattempts: 0\nmax-attempts: 0\nprogress: ~\nresult-bytes: 0\n"
        b'key: "k"\ntags: ["g"]\ncancelled: true\nfailures: []\n' % (job, age, left))
    assert 0 <= int(left) <= 50


def _flagged(qserver, tube=b"t"):
    c = on_tube(qserver, tube)
    job = put_ex_id(c, b"work", b"tag=g", b"key=k")
    reserve_job(c, job, b"work")
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 1\r\n"
    return c, job


def test_flagged_job_answers_cancelled_to_touch_progress_and_complete(qserver):
    c, job = _flagged(qserver)
    configure(c, b"t", (b"retain", b"3600"))
    c.send(b"touch %d\r\n" % job + with_body(b"progress", job, b"50%")
           + with_body(b"complete", job, b"done\r\n") + b"list-tube-used\r\n")
    assert read_lines(c, 4) == [b"CANCELLED\r\n", b"CANCELLED\r\n", b"CANCELLED\r\n",
                                b"USING t\r\n"]
    record = info(c, job)
    assert (record["state"], record["progress"], record["result-bytes"],
            record["cancelled"]) == (b"reserved", b"~", b"0", b"true")
    assert c.cmd(b"peek-result %d" % job) == b"NOT_FOUND\r\n"
    # The key is still held by the live (flagged) job.
    assert put_ex(c, b"x", b"key=k") == b"DUPLICATE %d\r\n" % job


def test_other_connections_still_get_not_found_for_a_flagged_job(qserver):
    c, job = _flagged(qserver)
    other = on_tube(qserver, b"t")
    for command in (b"touch %d\r\n" % job, with_body(b"progress", job, b"p"),
                    with_body(b"complete", job, b"r"), b"delete %d\r\n" % job):
        assert other.cmd(command) == b"NOT_FOUND\r\n", command


def test_flagged_job_can_be_deleted(qserver):
    c, job = _flagged(qserver)
    assert c.cmd(b"delete %d" % job) == b"DELETED\r\n"
    assert c.cmd(b"job-info %d" % job) == b"NOT_FOUND\r\n"
    assert put_ex_id(c, b"x", b"key=k", b"tag=g") == job + 1


def test_flagged_job_can_be_released_and_stays_flagged(qserver):
    c, job = _flagged(qserver)
    assert c.cmd(b"release %d 0 0" % job) == b"RELEASED\r\n"
    assert steering_fields(c, job) == (b"k", [b"g"], True)
    assert c.yaml(b"stats-job %d" % job)["state"] == "ready"
    reserve(c, job, b"work")
    assert c.cmd(with_body(b"progress", job, b"p")) == b"CANCELLED\r\n"
    assert c.cmd(b"release %d 0 0" % job) == b"RELEASED\r\n"
    # No longer reserved: the next cancel-tag removes it.
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 0\r\n"
    assert c.cmd(b"peek %d" % job) == b"NOT_FOUND\r\n"


def test_flagged_job_answers_touch_cancelled_after_a_new_reservation(qserver):
    c, job = _flagged(qserver)
    assert c.cmd(b"release %d 0 0" % job) == b"RELEASED\r\n"
    reserve(c, job, b"work")
    assert c.cmd(b"touch %d" % job) == b"CANCELLED\r\n"


def test_flagged_job_can_be_buried_then_is_removed_by_the_next_cancel(qserver):
    c, job = _flagged(qserver)
    assert c.cmd(b"bury %d 0" % job) == b"BURIED\r\n"
    assert steering_fields(c, job) == (b"k", [b"g"], True)
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 0\r\n"
    assert c.cmd(b"peek %d" % job) == b"NOT_FOUND\r\n"


def test_flagged_job_can_fail(qserver):
    c, job = _flagged(qserver)
    assert c.cmd(with_body(b"fail", job, b"stopped")) == b"BURIED\r\n"
    record = info(c, job)
    assert (record["state"], record["attempts"], record["cancelled"]) == \
        (b"buried", b"1", b"true")
    assert [r for _, r in record["failures"]] == [b"stopped"]


def test_flagged_job_fail_with_a_policy_retries(qserver):
    c, job = _flagged(qserver)
    configure(c, b"t", (b"max-attempts", b"3"))
    assert c.cmd(with_body(b"fail", job, b"x")) == b"RETRYING 0\r\n"
    assert steering_fields(c, job) == (b"k", [b"g"], True)


def test_flagged_job_timing_out_stays_flagged(qserver):
    c = on_tube(qserver, b"t")
    job = put_ex_id(c, b"work", b"tag=g", ttr=1)
    w = on_tube(qserver, b"t")
    # The cancel runs right behind the reserve, long before a 1 s TTR runs out.
    w.send(b"reserve-job %d\r\ncancel-tag g\r\n" % job)
    assert w.read_reply() == b"RESERVED %d 4\r\nwork\r\n" % job
    assert w.read_line() == b"CANCELLED 0 1\r\n"
    record = wait_for_state(c, job, b"ready")
    assert (record["timeouts"], record["cancelled"]) == (b"1", b"true")
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 0\r\n"


def test_closed_holder_leaves_the_flagged_job_ready_and_flagged(qserver):
    c = on_tube(qserver, b"t")
    job = put_ex_id(c, b"work", b"tag=g")
    w = on_tube(qserver, b"t")
    reserve_job(w, job, b"work")
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 0 1\r\n"
    w.close()
    record = wait_for_state(c, job, b"ready")
    assert record["cancelled"] == b"true"


@pytest.mark.parametrize("line", [
    b"cancel-tag ", b"cancel-tag  g", b"cancel-tag g ", b"cancel-tag g h",
    b"cancel-tag g\th", b"cancel-tag " + b"g" * 201, b"cancel-tag caf\xc3\xa9",
    b"cancel-tag \x7f", b"cancel-tag a\x01",
])
def test_cancel_tag_bad_tag_is_bad_format(client, line):
    job = put_ex_id(client, b"x", b"tag=g")
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"peek %d" % job) == b"FOUND %d 1\r\nx\r\n" % job


def test_cancel_tag_takes_any_tag_put_ex_takes(client):
    for tag in (b"~", b'"', b"\\", b"a=b", b"t" * 200, b"!#$%&'()*+,-./:;<>?@[]^_`{|}"):
        put_ex_id(client, b"x", b"tag=" + tag)
        assert client.cmd(b"cancel-tag " + tag) == b"CANCELLED 1 0\r\n", tag


def test_plain_put_jobs_have_no_tags(client):
    put(client)
    assert client.cmd(b"cancel-tag job") == b"CANCELLED 0 0\r\n"


# --------------------------------------------------------------------------- stats-ext

def test_stats_ext_steering_counters(qserver):
    c = on_tube(qserver, b"t")
    assert_ext(c, cmd_stats_ext=1)
    a = put_ex_id(c, b"x", b"key=a", b"tag=g")
    assert put_ex(c, b"x", b"key=a") == b"DUPLICATE %d\r\n" % a
    assert put_ex(c, b"x", b"key=a", b"tag=h") == b"DUPLICATE %d\r\n" % a
    put_ex_id(c, b"x", b"tag=g")
    held = put_ex_id(c, b"x", b"tag=g")
    reserve_job(c, held, b"x")
    put_ex_id(c, b"x")                                   # no options
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 2 1\r\n"
    assert c.cmd(b"cancel-tag nobody") == b"CANCELLED 0 0\r\n"
    put(c), put(c, delay=60)
    assert c.cmd(b"flush-tube t") == b"FLUSHED 3\r\n"
    assert c.cmd(b"flush-tube nobody") == b"FLUSHED 0\r\n"
    assert c.cmd(b"touch %d" % held) == b"CANCELLED\r\n"
    assert_ext(c, cmd_stats_ext=2, cmd_put_ex=6, cmd_flush_tube=2, cmd_cancel_tag=2,
               job_duplicates=2, jobs_flushed=3, jobs_cancelled=2,
               jobs_cancel_flagged=1)
    # Flushing and cancelling are not deletes of the lifecycle: nothing else moved.
    counters = ext_counters(c)
    assert (counters[b"job-completions"], counters[b"current-retained"]) == (0, 0)


def test_stats_ext_counts_a_duplicate_of_a_retained_record(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"3600"))
    job = put_ex_id(c, b"x", b"key=a")
    reserve_job(c, job, b"x")
    assert c.cmd(with_body(b"complete", job, b"r")) == b"COMPLETED\r\n"
    assert put_ex(c, b"x", b"key=a") == b"DUPLICATE %d\r\n" % job
    assert_ext(c, cmd_config_tube=1, cmd_complete=1, cmd_stats_ext=1, cmd_put_ex=2,
               job_duplicates=1, job_completions=1, current_retained=1,
               configured_tubes=1)


# --------------------------------------------------------------------------- plain clients

def test_plain_client_sees_no_change(qserver):
    """A beanstalkd client next to steering traffic: the same replies and keys."""
    c = on_tube(qserver, b"t")
    removed = put_ex_id(c, b"gone", b"key=k", b"tag=g")
    flagged = put_ex_id(c, b"busy", b"tag=g")
    reserve_job(c, flagged, b"busy")
    assert c.cmd(b"cancel-tag g") == b"CANCELLED 1 1\r\n"
    assert c.cmd(b"peek %d" % removed) == b"NOT_FOUND\r\n"
    keyed = put_ex_id(c, b"hello", b"key=k", b"tag=h", pri=9, ttr=11)
    assert c.cmd(b"flush-tube nobody") == b"FLUSHED 0\r\n"
    plain = qserver.client()
    assert plain.cmd(b"watch t") == b"WATCHING 2\r\n"
    assert keys_of(ok_body(plain.cmd(b"stats"))) == STATS_KEYS
    assert keys_of(ok_body(plain.cmd(b"stats-tube t"))) == STATS_TUBE_KEYS
    body = ok_body(plain.cmd(b"stats-job %d" % keyed))
    assert keys_of(body) == STATS_JOB_KEYS
    age = re.search(rb"\nage: ([0-9]+)\n", body)[1]
    assert body == (b'---\nid: %d\ntube: "t"\nstate: ready\npri: 9\nage: %s\ndelay: 0\n'
                    b"ttr: 11\ntime-left: 0\nfile: 0\nreserves: 0\ntimeouts: 0\n"
                    b"releases: 0\nburies: 0\nkicks: 0\n" % (keyed, age))
    assert plain.cmd(b"peek %d" % keyed) == b"FOUND %d 5\r\nhello\r\n" % keyed
    assert plain.cmd(b"reserve-with-timeout 0") == b"RESERVED %d 5\r\nhello\r\n" % keyed
    assert plain.cmd(b"touch %d" % keyed) == b"TOUCHED\r\n"
    assert plain.cmd(b"release %d 1 0" % keyed) == b"RELEASED\r\n"
    assert plain.cmd(b"reserve-with-timeout 0") == b"RESERVED %d 5\r\nhello\r\n" % keyed
    assert plain.cmd(b"delete %d" % keyed) == b"DELETED\r\n"
    stats = plain.yaml(b"stats")
    assert (stats["current-jobs-ready"], stats["current-jobs-reserved"],
            stats["total-jobs"]) == ("0", "1", "3")
