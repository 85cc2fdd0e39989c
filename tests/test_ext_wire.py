"""Golden over-the-wire tests of the lifecycle extensions (protocol.md, "Extensions"):
config-tube, fail, complete, progress, job-info, peek-result, stats-ext and the policy
state machine, against a real qserver subprocess.

Expected replies are spelled out literally here, as an independent check of the
server. Waits are for events (a reserve that gets the job, a state seen in job-info),
each with a generous bound; a retry delay is checked on its contract side only (the
job is not reservable before it is due), never as a duration.
"""

import re
import socket
import time

import pytest
import yaml

from conftest import Client, start_qserver

# The lifecycle conformance suite: every test runs on both stores.
pytestmark = pytest.mark.usefixtures("each_store")

EVENT_BOUND = 60.0          # seconds: generous bound for anything we wait for

STATS_KEYS = [
    "current-jobs-urgent", "current-jobs-ready", "current-jobs-reserved",
    "current-jobs-delayed", "current-jobs-buried", "cmd-put", "cmd-peek",
    "cmd-peek-ready", "cmd-peek-delayed", "cmd-peek-buried", "cmd-reserve",
    "cmd-reserve-with-timeout", "cmd-delete", "cmd-release", "cmd-use", "cmd-watch",
    "cmd-ignore", "cmd-bury", "cmd-kick", "cmd-touch", "cmd-stats", "cmd-stats-job",
    "cmd-stats-tube", "cmd-list-tubes", "cmd-list-tube-used", "cmd-list-tubes-watched",
    "cmd-pause-tube", "job-timeouts", "total-jobs", "max-job-size", "current-tubes",
    "current-connections", "current-producers", "current-workers", "current-waiting",
    "total-connections", "pid", "version", "rusage-utime", "rusage-stime", "uptime",
    "binlog-oldest-index", "binlog-current-index", "binlog-records-migrated",
    "binlog-records-written", "binlog-max-size", "draining", "id", "hostname", "os",
    "platform",
]
STATS_TUBE_KEYS = [
    "name", "current-jobs-urgent", "current-jobs-ready", "current-jobs-reserved",
    "current-jobs-delayed", "current-jobs-buried", "total-jobs", "current-using",
    "current-watching", "current-waiting", "cmd-delete", "cmd-pause-tube", "pause",
    "pause-time-left",
]
STATS_JOB_KEYS = [
    "id", "tube", "state", "pri", "age", "delay", "ttr", "time-left", "file",
    "reserves", "timeouts", "releases", "buries", "kicks",
]
FRESH_EXTRAS = (b"attempts: 0\nmax-attempts: 0\nprogress: ~\nresult-bytes: 0\nkey: ~\n"
                b"tags: []\ncancelled: false\nfailures: []\n")


# --------------------------------------------------------------------------- helpers

def ok_body(reply: bytes) -> bytes:
    """Check `OK <n>\\r\\n<n bytes>\\r\\n` exactly and return the n bytes."""
    m = re.fullmatch(rb"OK ([1-9][0-9]*)\r\n(.*)\r\n", reply, re.S)
    assert m, reply
    assert int(m[1]) == len(m[2]), (m[1], len(m[2]), reply)
    assert m[2].startswith(b"---\n") and m[2].endswith(b"\n"), reply
    return m[2]


def keys_of(body: bytes) -> list:
    return [line.partition(b": ")[0].decode() for line in body.split(b"\n")[1:-1]]


def unquote(scalar: bytes) -> bytes:
    """The bytes of a double-quoted scalar as protocol.md, "job-info" writes them:
    printable ASCII as is, `\\\\` and `\\"` escaped, every other byte `\\xNN`."""
    assert scalar[:1] == b'"' and scalar[-1:] == b'"' and len(scalar) >= 2, scalar
    out = bytearray()
    i, end = 1, len(scalar) - 1
    while i < end:
        ch = scalar[i]
        if ch == 0x5C:
            nxt = scalar[i + 1:i + 2]
            if nxt in (b"\\", b'"'):
                out += nxt
                i += 2
            else:
                assert nxt == b"x" and re.fullmatch(rb"[0-9a-fA-F]{2}", scalar[i + 2:i + 4]), \
                    scalar
                byte = int(scalar[i + 2:i + 4], 16)
                assert not 0x20 <= byte < 0x7F, ("printable byte escaped", scalar)
                out.append(byte)
                i += 4
        else:
            assert 0x20 <= ch < 0x7F and ch != 0x22, ("raw byte in quoted scalar", scalar)
            out.append(ch)
            i += 1
    return bytes(out)


def info(c: Client, job_id: int) -> dict:
    """job-info parsed: scalar fields as bytes (quoted ones decoded to their bytes),
    and `failures` as a list of (time, reason bytes). The format is checked line by
    line on the way."""
    body = ok_body(c.cmd(b"job-info %d" % job_id))
    lines = body.split(b"\n")[1:-1]
    out = {}
    i = 0
    while i < len(lines):
        key, sep, value = lines[i].partition(b": ")
        if lines[i] == b"failures:":
            failures = []
            i += 1
            while i < len(lines):
                m1 = re.fullmatch(rb"- time: (0|[1-9][0-9]*)", lines[i])
                m2 = re.fullmatch(rb"  reason: (\".*\")", lines[i + 1])
                assert m1 and m2, lines[i:i + 2]
                failures.append((int(m1[1]), unquote(m2[1])))
                i += 2
            assert failures, body
            out["failures"] = failures
            break
        assert sep, lines[i]
        if key == b"failures":
            assert value == b"[]", body
            out["failures"] = []
        elif value.startswith(b'"'):
            out[key.decode()] = unquote(value)
        else:
            out[key.decode()] = value
        i += 1
    assert list(out) == STATS_JOB_KEYS + ["attempts", "max-attempts", "progress",
                                         "result-bytes", "key", "tags", "cancelled",
                                         "failures"], body
    return out


def put(c: Client, body: bytes = b"job", pri: int = 0, delay: int = 0, ttr: int = 60) -> int:
    reply = c.cmd(b"put %d %d %d %d\r\n%s" % (pri, delay, ttr, len(body), body))
    m = re.fullmatch(rb"INSERTED ([0-9]+)\r\n", reply)
    assert m, reply
    return int(m[1])


def wait_reply(c: Client, seconds: float) -> bytes:
    """A whole reply that may take up to `seconds` to come."""
    c.sock.settimeout(seconds)
    try:
        return c.read_reply()
    finally:
        c.sock.settimeout(5.0)


def reserve_job(c: Client, job_id: int, body: bytes = b"job") -> None:
    assert c.cmd(b"reserve-job %d" % job_id) == \
        b"RESERVED %d %d\r\n%s\r\n" % (job_id, len(body), body)


def reserve(c: Client, job_id: int, body: bytes = b"job") -> None:
    """Reserve the ready job `job_id` (it must be the one handed out)."""
    assert c.cmd(b"reserve-with-timeout 0") == \
        b"RESERVED %d %d\r\n%s\r\n" % (job_id, len(body), body)


def with_body(word: bytes, job_id: int, data: bytes) -> bytes:
    return b"%s %d %d\r\n%s\r\n" % (word, job_id, len(data), data)


def on_tube(server, tube: bytes) -> Client:
    """A connection that uses and watches only `tube`."""
    c = server.client()
    assert c.cmd(b"use " + tube) == b"USING " + tube + b"\r\n"
    assert c.cmd(b"watch " + tube) == b"WATCHING 2\r\n"
    assert c.cmd(b"ignore default") == b"WATCHING 1\r\n"
    return c


def configure(c: Client, tube: bytes, *pairs) -> None:
    for name, value in pairs:
        assert c.cmd(b"config-tube %s %s %s" % (tube, name, value)) == b"CONFIGURED\r\n"


def wait_for_state(c: Client, job_id: int, state: bytes, bound: float = EVENT_BOUND) -> dict:
    deadline = time.monotonic() + bound
    while True:
        record = info(c, job_id)
        if record["state"] == state:
            return record
        assert time.monotonic() < deadline, (state, record)
        time.sleep(0.05)


def policy_yaml(tube: bytes, configured: bool, max_attempts=b"0", backoff=b"none",
                dead_letter=b"bury", retain=b"0", lock_limit=b"1") -> bytes:
    body = (b'---\nname: "%s"\nconfigured: %s\nmax-attempts: %s\nbackoff: %s\n'
            b'dead-letter: "%s"\nretain: %s\nlock-limit: %s\n'
            % (tube, b"true" if configured else b"false", max_attempts, backoff,
               dead_letter, retain, lock_limit))
    return b"OK %d\r\n%s\r\n" % (len(body), body)


@pytest.fixture
def small_z():
    server = start_qserver("-z", "16")
    yield server
    server.stop()


# --------------------------------------------------------------------------- config-tube

def test_config_tube_of_unconfigured_tube_gives_defaults(client):
    assert client.cmd(b"config-tube emails") == policy_yaml(b"emails", False)
    assert client.cmd(b"config-tube default") == policy_yaml(b"default", False)


def test_config_tube_spec_example_reads_back_exactly(client):
    configure(client, b"emails", (b"max-attempts", b"3"), (b"backoff", b"exp:5:300"),
              (b"dead-letter", b"tube:emails-dead"), (b"retain", b"3600"))
    body = (b'---\nname: "emails"\nconfigured: true\nmax-attempts: 3\nbackoff: exp:5:300\n'
            b'dead-letter: "tube:emails-dead"\nretain: 3600\nlock-limit: 1\n')
    assert client.cmd(b"config-tube emails") == b"OK %d\r\n%s\r\n" % (len(body), body)


@pytest.mark.parametrize("name,value,shown", [
    (b"max-attempts", b"0", b"0"),
    (b"max-attempts", b"1", b"1"),
    (b"max-attempts", b"4294967295", b"4294967295"),
    (b"max-attempts", b"007", b"7"),
    (b"backoff", b"none", b"none"),
    (b"backoff", b"fixed:0", b"fixed:0"),
    (b"backoff", b"fixed:4294967295", b"fixed:4294967295"),
    (b"backoff", b"exp:1:1", b"exp:1:1"),
    (b"backoff", b"exp:1:4294967295", b"exp:1:4294967295"),
    (b"backoff", b"exp:4294967295:4294967295", b"exp:4294967295:4294967295"),
    (b"dead-letter", b"bury", b"bury"),
    (b"dead-letter", b"delete", b"delete"),
    (b"dead-letter", b"tube:t-dead", b"tube:t-dead"),
    # the longest name that fits the 224-byte line of `config-tube t dead-letter …`
    (b"dead-letter", b"tube:" + b"x" * 191, b"tube:" + b"x" * 191),
    (b"dead-letter", b"tube:A-Za-z0+/;.$_()", b"tube:A-Za-z0+/;.$_()"),
    (b"retain", b"0", b"0"),
    (b"retain", b"4294967295", b"4294967295"),
])
def test_config_tube_sets_each_name(client, name, value, shown):
    assert client.cmd(b"config-tube t %s %s" % (name, value)) == b"CONFIGURED\r\n"
    fields = {b"max-attempts": b"0", b"backoff": b"none", b"dead-letter": b"bury",
              b"retain": b"0"}
    fields[name] = shown
    assert client.cmd(b"config-tube t") == policy_yaml(
        b"t", True, fields[b"max-attempts"], fields[b"backoff"], fields[b"dead-letter"],
        fields[b"retain"])


def test_config_tube_last_value_wins_and_others_stay(client):
    configure(client, b"t", (b"max-attempts", b"3"), (b"retain", b"10"),
              (b"max-attempts", b"5"))
    assert client.cmd(b"config-tube t") == policy_yaml(b"t", True, b"5", retain=b"10")


def test_config_tube_setting_a_default_value_makes_the_tube_configured(client):
    configure(client, b"t", (b"max-attempts", b"0"))
    assert client.cmd(b"config-tube t") == policy_yaml(b"t", True)


@pytest.mark.parametrize("name,value", [
    (b"max-attempts", b"-1"), (b"max-attempts", b"+1"), (b"max-attempts", b"4294967296"),
    (b"max-attempts", b"99999999999999999999"), (b"max-attempts", b"x"),
    (b"max-attempts", b"1.5"), (b"max-attempts", b"3x"), (b"max-attempts", b"0x10"),
    (b"backoff", b"fixed"), (b"backoff", b"fixed:"), (b"backoff", b"fixed:-1"),
    (b"backoff", b"fixed:4294967296"), (b"backoff", b"fixed:1:2"), (b"backoff", b"fixed:x"),
    (b"backoff", b"exp"), (b"backoff", b"exp:5"), (b"backoff", b"exp:5:"),
    (b"backoff", b"exp::5"), (b"backoff", b"exp:0:5"), (b"backoff", b"exp:0:0"),
    (b"backoff", b"exp:6:5"), (b"backoff", b"exp:1:4294967296"),
    (b"backoff", b"exp:1:2:3"), (b"backoff", b"none:1"), (b"backoff", b"none:"),
    (b"backoff", b"NONE"), (b"backoff", b"linear"), (b"backoff", b"fixed:1x"),
    (b"dead-letter", b"tube:"), (b"dead-letter", b"tube:-bad"),
    (b"dead-letter", b"tube:a*b"), (b"dead-letter", b"tube:" + b"x" * 201),
    (b"dead-letter", b"tube"), (b"dead-letter", b"tubes:x"), (b"dead-letter", b"BURY"),
    (b"dead-letter", b"kick"), (b"dead-letter", b"bury:x"), (b"dead-letter", b"delete:"),
    (b"retain", b"-1"), (b"retain", b"4294967296"), (b"retain", b"abc"),
    (b"retain", b"1s"),
    (b"priority", b"1"), (b"max_attempts", b"3"), (b"Max-attempts", b"3"),
    (b"ttr", b"5"), (b"configured", b"true"), (b"name", b"t"),
])
def test_config_tube_bad_value_or_name_is_bad_format_and_changes_nothing(
        client, name, value):
    configure(client, b"t", (b"retain", b"9"))
    before = client.cmd(b"config-tube t")
    assert client.cmd(b"config-tube t %s %s" % (name, value)) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"config-tube t") == before
    # A bad value for a tube never configured leaves it unconfigured.
    assert client.cmd(b"config-tube u %s %s" % (name, value)) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"config-tube u") == policy_yaml(b"u", False)


def test_config_tube_dead_letter_to_the_tube_itself_is_refused(client):
    assert client.cmd(b"config-tube t dead-letter tube:t") == b"BAD_FORMAT\r\n"
    assert client.cmd(b"config-tube t") == policy_yaml(b"t", False)
    # A name differing only in case is another tube.
    assert client.cmd(b"config-tube t dead-letter tube:T") == b"CONFIGURED\r\n"


@pytest.mark.parametrize("line", [
    b"config-tube -bad", b"config-tube -bad max-attempts 1", b"config-tube a*b",
    b"config-tube a*b retain 1", b"config-tube " + b"x" * 201,
    b"config-tube caf\xc3\xa9 retain 1", b"config-tube t\x01 retain 1",
])
def test_config_tube_bad_tube_name_is_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"


def test_config_tube_200_byte_tube_name_is_fine(client):
    name = b"n" * 200
    assert client.cmd(b"config-tube " + name) == policy_yaml(name, False)


@pytest.mark.parametrize("line", [
    b"config-tube ", b"config-tube t max-attempts", b"config-tube t max-attempts ",
    b"config-tube t retain", b"config-tube t backoff ",
])
def test_config_tube_missing_part_is_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"config-tube t") == policy_yaml(b"t", False)


@pytest.mark.parametrize("line", [
    b"config-tube  t", b"config-tube t ", b"config-tube  t retain 1",
    b"config-tube t  retain 1", b"config-tube t retain 1 ", b"config-tube t retain 1 2",
    b"config-tube t retain 1 x", b"config-tube t backoff  none",
    b"config-tube t backoff none ", b"config-tube t dead-letter  bury",
    b"config-tube t\tretain 1",
])
def test_config_tube_extra_spaces_or_parts_are_bad_format(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"config-tube t") == policy_yaml(b"t", False)


def test_config_tube_does_not_create_the_tube(client):
    configure(client, b"ghost", (b"max-attempts", b"2"))
    assert client.cmd(b"stats-tube ghost") == b"NOT_FOUND\r\n"
    assert b"- ghost\n" not in client.cmd(b"list-tubes")


def test_policy_stays_with_the_name_while_the_tube_is_gone(qserver):
    c = qserver.client()
    configure(c, b"gone", (b"max-attempts", b"2"), (b"backoff", b"fixed:0"))
    assert c.cmd(b"use gone") == b"USING gone\r\n"
    assert b"- gone\n" in c.cmd(b"list-tubes")
    assert c.cmd(b"use default") == b"USING default\r\n"
    assert b"- gone\n" not in c.cmd(b"list-tubes")
    assert c.cmd(b"stats-tube gone") == b"NOT_FOUND\r\n"
    assert c.cmd(b"config-tube gone") == policy_yaml(b"gone", True, b"2", b"fixed:0")
    # The tube comes back and is governed by its policy again.
    w = on_tube(qserver, b"gone")
    job = put(w)
    assert b"- gone\n" in c.cmd(b"list-tubes")
    reserve(w, job)
    assert w.cmd(with_body(b"fail", job, b"once")) == b"RETRYING 0\r\n"
    reserve(w, job)
    assert w.cmd(with_body(b"fail", job, b"twice")) == b"BURIED\r\n"
    assert info(c, job)["max-attempts"] == b"2"


def test_config_tube_lines_may_be_longer_than_224_bytes(client):
    """Two 200-byte tube names do not fit beanstalkd's 224-byte line: config-tube
    lines may be up to 4096 bytes (protocol.md, "Extensions")."""
    name = b"n" * 200
    long_line = b"config-tube %s dead-letter tube:%s" % (name, b"m" * 200)
    assert client.cmd(long_line) == b"CONFIGURED\r\n"
    assert client.cmd(b"config-tube %s retain 1" % name) == b"CONFIGURED\r\n"
    too_long = b"config-tube %s retain %s" % (name, b"1" * 4000)          # > 4096 bytes
    assert client.cmd(too_long) == b"BAD_FORMAT\r\n"
    assert client.cmd(b"config-tube " + name) == policy_yaml(
        name, True, retain=b"1", dead_letter=b"tube:" + b"m" * 200)


# --------------------------------------------------------------------------- fail

def test_fail_without_policy_buries_and_keeps_the_reason(client):
    job = put(client, pri=7)
    reserve(client, job)
    before = int(time.time())
    assert client.cmd(with_body(b"fail", job, b"disk full")) == b"BURIED\r\n"
    after = int(time.time())
    record = info(client, job)
    assert (record["state"], record["pri"], record["attempts"], record["max-attempts"]) == \
        (b"buried", b"7", b"1", b"0")
    [(when, reason)] = record["failures"]
    assert before <= when <= after
    assert reason == b"disk full"
    assert client.cmd(b"peek-buried") == b"FOUND %d 3\r\njob\r\n" % job


def test_fail_with_empty_reason(client):
    job = put(client)
    reserve(client, job)
    assert client.cmd(b"fail %d 0\r\n\r\n" % job) == b"BURIED\r\n"
    assert info(client, job)["failures"][0][1] == b""


def test_fail_with_backoff_none_is_ready_again_at_once(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"none"))
    job = put(c, b"body")
    reserve(c, job, b"body")
    assert c.cmd(with_body(b"fail", job, b"r")) == b"RETRYING 0\r\n"
    assert info(c, job)["state"] == b"ready"
    reserve(c, job, b"body")


def test_fail_with_fixed_backoff_is_not_reservable_before_the_delay(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"fixed:3"))
    job = put(c, b"body")
    reserve(c, job, b"body")
    assert c.cmd(with_body(b"fail", job, b"r")) == b"RETRYING 3\r\n"
    record = info(c, job)
    assert record["state"] == b"delayed" and int(record["time-left"]) <= 3
    # Contract side: not reservable within the first second of a 3 s delay...
    assert c.cmd(b"reserve-with-timeout 1") == b"TIMED_OUT\r\n"
    # ...and reserved once due (the bound is 20 times the delay).
    c.send(b"reserve-with-timeout 60\r\n")
    assert wait_reply(c, 70) == b"RESERVED %d 4\r\nbody\r\n" % job


def test_fail_with_fixed_backoff_zero_retries_at_once(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"fixed:0"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"r")) == b"RETRYING 0\r\n"
    reserve(c, job)


def _exp_delays(c, job, attempts):
    """Fail `job` `attempts` times in a row (kick-job brings each retry back at
    once, without counting) and return the delays the server chose."""
    delays = []
    for _ in range(attempts):
        reserve(c, job)
        reply = c.cmd(with_body(b"fail", job, b"r"))
        m = re.fullmatch(rb"RETRYING (0|[1-9][0-9]*)\r\n", reply)
        assert m, reply
        delays.append(int(m[1]))
        assert info(c, job)["state"] == b"delayed"
        assert c.cmd(b"kick-job %d" % job) == b"KICKED\r\n"
    return delays


def test_fail_with_exp_backoff_delay_is_in_the_jittered_range(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"exp:3:10"))
    ranges = [(2, 3), (3, 6), (5, 10), (5, 10), (5, 10)]    # D = 3, 6, 10 (cap), 10, 10
    for _ in range(6):
        job = put(c)
        delays = _exp_delays(c, job, len(ranges))
        for attempt, (delay, (low, high)) in enumerate(zip(delays, ranges), 1):
            assert low <= delay <= high, (attempt, delays)
        assert c.cmd(b"delete %d" % job) == b"DELETED\r\n"


def test_kick_of_a_retrying_job_counts_no_attempt(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"exp:3:10"))
    job = put(c)
    _exp_delays(c, job, 5)
    record = info(c, job)
    assert (record["attempts"], record["kicks"], record["reserves"]) == (b"5", b"5", b"5")


def test_fail_with_exp_backoff_base_equal_cap_one_is_always_one(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"exp:1:1"))
    job = put(c)
    assert _exp_delays(c, job, 4) == [1, 1, 1, 1]


def test_fail_with_exp_backoff_at_the_u32_limit(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"exp:4294967295:4294967295"))
    job = put(c)
    [delay] = _exp_delays(c, job, 1)
    assert 2147483648 <= delay <= 4294967295


def test_fail_with_exp_backoff_never_exceeds_the_cap_after_many_attempts(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"exp:1:7"))
    job = put(c)
    delays = _exp_delays(c, job, 40)
    assert all(4 <= d <= 7 for d in delays[3:]), delays      # D = 7 from attempt 4 on
    assert delays[:3][0] == 1 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 4, delays


def test_fail_exhausting_attempts_with_dead_letter_bury(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"2"))
    job = put(c, pri=9)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"one")) == b"RETRYING 0\r\n"
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"two")) == b"BURIED\r\n"
    record = info(c, job)
    assert (record["state"], record["pri"], record["attempts"], record["max-attempts"]) == \
        (b"buried", b"9", b"2", b"2")
    assert [r for _, r in record["failures"]] == [b"one", b"two"]


def test_kicked_dead_letter_gets_one_more_attempt(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"1"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"one")) == b"BURIED\r\n"
    assert c.cmd(b"kick 1") == b"KICKED 1\r\n"
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"two")) == b"BURIED\r\n"
    assert info(c, job)["attempts"] == b"2"


def test_fail_exhausting_attempts_moves_to_dead_letter_tube(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"1"), (b"dead-letter", b"tube:t-dead"))
    job = put(c, b"payload", pri=5, ttr=33)
    reserve(c, job, b"payload")
    assert c.cmd(with_body(b"fail", job, b"bad input")) == b"MOVED t-dead\r\n"
    record = info(c, job)
    assert (record["tube"], record["state"], record["pri"], record["ttr"]) == \
        (b"t-dead", b"ready", b"5", b"33")
    assert record["attempts"] == b"0"                       # reset in the new tube
    assert [r for _, r in record["failures"]] == [b"bad input"]
    assert c.cmd(b"peek %d" % job) == b"FOUND %d 7\r\npayload\r\n" % job
    assert b"- t-dead\n" in c.cmd(b"list-tubes")
    assert c.cmd(b"peek-ready") == b"NOT_FOUND\r\n"          # not in t any more


def test_moved_job_is_governed_by_the_dead_letter_tubes_policy(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"1"), (b"dead-letter", b"tube:t2"))
    configure(c, b"t2", (b"max-attempts", b"1"), (b"dead-letter", b"delete"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"a")) == b"MOVED t2\r\n"
    w = on_tube(qserver, b"t2")
    reserve(w, job)
    assert info(w, job)["max-attempts"] == b"1"
    assert w.cmd(with_body(b"fail", job, b"b")) == b"DELETED\r\n"
    assert w.cmd(b"peek %d" % job) == b"NOT_FOUND\r\n"


def test_fail_exhausting_attempts_with_dead_letter_delete_and_no_retain(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"1"), (b"dead-letter", b"delete"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"x")) == b"DELETED\r\n"
    for command in (b"peek %d", b"stats-job %d", b"job-info %d", b"peek-result %d"):
        assert c.cmd(command % job) == b"NOT_FOUND\r\n", command


def test_dead_job_record_is_retained_but_has_no_result(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"1"), (b"dead-letter", b"delete"),
              (b"retain", b"3600"))
    job = put(c, pri=4, ttr=20)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"fatal")) == b"DELETED\r\n"
    record = info(c, job)
    assert (record["state"], record["tube"], record["pri"], record["ttr"],
            record["reserves"], record["attempts"], record["result-bytes"]) == \
        (b"dead", b"t", b"4", b"20", b"1", b"1", b"0")
    assert 3590 <= int(record["time-left"]) <= 3600
    assert [r for _, r in record["failures"]] == [b"fatal"]
    for command in (b"peek %d", b"stats-job %d", b"peek-result %d", b"delete %d",
                    b"kick-job %d", b"reserve-job %d"):
        assert c.cmd(command % job) == b"NOT_FOUND\r\n", command


def test_policy_change_applies_from_the_next_failure(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"5"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"1")) == b"RETRYING 0\r\n"
    configure(c, b"t", (b"max-attempts", b"2"))
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"2")) == b"BURIED\r\n"


def test_attempts_survive_release_bury_and_kick(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"3"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"1")) == b"RETRYING 0\r\n"
    reserve(c, job)
    assert c.cmd(b"release %d 0 0" % job) == b"RELEASED\r\n"
    reserve(c, job)
    assert c.cmd(b"bury %d 0" % job) == b"BURIED\r\n"
    assert c.cmd(b"kick-job %d" % job) == b"KICKED\r\n"
    reserve(c, job)
    assert c.cmd(b"touch %d" % job) == b"TOUCHED\r\n"
    assert info(c, job)["attempts"] == b"1"
    assert c.cmd(with_body(b"fail", job, b"2")) == b"RETRYING 0\r\n"
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"3")) == b"BURIED\r\n"
    assert info(c, job)["attempts"] == b"3"


def test_fail_not_found_for_unknown_or_unreserved_job(client):
    job = put(client)
    for target in (job, job + 1000, 18446744073709551615):
        assert client.cmd(with_body(b"fail", target, b"why")) == b"NOT_FOUND\r\n"
    # The body was consumed: the stream is in step, and nothing changed.
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"
    record = info(client, job)
    assert (record["state"], record["attempts"], record["failures"]) == (b"ready", b"0", [])


def test_fail_not_found_for_job_reserved_by_another_connection(qserver):
    holder, other = qserver.client(), qserver.client()
    job = put(holder)
    reserve(holder, job)
    for word in (b"fail", b"complete", b"progress"):
        assert other.cmd(with_body(word, job, b"mine")) == b"NOT_FOUND\r\n", word
    record = info(other, job)
    assert (record["state"], record["attempts"], record["progress"]) == \
        (b"reserved", b"0", b"~")
    assert holder.cmd(with_body(b"fail", job, b"real")) == b"BURIED\r\n"


def test_fail_not_found_after_the_job_was_released(client):
    job = put(client)
    reserve(client, job)
    assert client.cmd(b"release %d 0 0" % job) == b"RELEASED\r\n"
    assert client.cmd(with_body(b"fail", job, b"late")) == b"NOT_FOUND\r\n"


@pytest.mark.parametrize("word", [b"fail", b"complete", b"progress"])
def test_body_over_max_job_size_is_job_too_big_and_skipped(small_z, word):
    c = small_z.client()
    job = put(c)
    reserve(c, job)
    c.send(b"%s %d 17\r\n%s\r\nlist-tube-used\r\n" % (word, job, b"r" * 17))
    assert c.read_line() == b"JOB_TOO_BIG\r\n"
    assert c.read_line() == b"USING default\r\n"
    record = info(c, job)
    assert (record["state"], record["attempts"], record["progress"]) == \
        (b"reserved", b"0", b"~")
    # The largest allowed body is taken.
    assert c.cmd(with_body(b"progress", job, b"p" * 16)) == b"TOUCHED\r\n"


@pytest.mark.parametrize("word", [b"fail", b"complete", b"progress"])
def test_body_over_max_job_size_is_job_too_big_even_for_unknown_job(small_z, word):
    c = small_z.client()
    c.send(b"%s 99 20\r\n%s\r\nlist-tube-used\r\n" % (word, b"z" * 20))
    assert c.read_line() == b"JOB_TOO_BIG\r\n"
    assert c.read_line() == b"USING default\r\n"


@pytest.mark.parametrize("word", [b"fail", b"complete", b"progress"])
def test_body_without_crlf_is_expected_crlf(client, word):
    job = put(client)
    reserve(client, job)
    client.send(b"%s %d 3\r\nabcXYlist-tube-used\r\n" % (word, job))
    assert client.read_line() == b"EXPECTED_CRLF\r\n"
    assert client.read_line() == b"USING default\r\n"
    record = info(client, job)
    assert (record["state"], record["attempts"], record["progress"]) == \
        (b"reserved", b"0", b"~")


def test_fail_body_split_across_several_writes(qserver):
    c = qserver.client()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    job = put(c)
    reserve(c, job)
    reason = b"split\r\nreason\x00"
    line = b"fail %d %d\r\n" % (job, len(reason))
    pieces = [line[:3], line[3:], reason[:4], reason[4:7], reason[7:], b"\r", b"\n"]
    for piece in pieces[:-1]:
        c.send(piece)
        assert c.nothing_within(0.1), piece
    c.send(pieces[-1])
    assert c.read_line() == b"BURIED\r\n"
    assert info(c, job)["failures"][0][1] == reason


@pytest.mark.parametrize("line", [
    b"fail", b"fail ", b"fail 1", b"fail 1 ", b"fail x 1", b"fail 1 x", b"fail -1 1",
    b"fail 1 -1", b"fail 1 4294967296", b"fail 18446744073709551616 1",
    b"fail 1 1 x", b"fail 1 1 ",
])
def test_fail_bad_line_is_bad_format(client, line):
    reply = client.cmd(line)
    assert reply in (b"BAD_FORMAT\r\n", b"UNKNOWN_COMMAND\r\n"), reply
    if line.startswith(b"fail "):
        assert reply == b"BAD_FORMAT\r\n"
    assert client.cmd(b"list-tube-used") == b"USING default\r\n"


def test_fail_extra_spaces_before_numbers_are_allowed(client):
    job = put(client)
    reserve(client, job)
    assert client.cmd(b"fail  %d  00002\r\nok" % job) == b"BURIED\r\n"


def test_fail_leading_zeros_are_allowed(client):
    job = put(client)
    reserve(client, job)
    assert client.cmd(b"fail 000%d 002\r\nok" % job) == b"BURIED\r\n"


# --------------------------------------------------------------------------- complete

def test_complete_without_retain_removes_the_job_and_keeps_nothing(client):
    job = put(client)
    reserve(client, job)
    assert client.cmd(with_body(b"complete", job, b"done")) == b"COMPLETED\r\n"
    for command in (b"peek %d", b"stats-job %d", b"job-info %d", b"peek-result %d",
                    b"delete %d"):
        assert client.cmd(command % job) == b"NOT_FOUND\r\n", command


def test_complete_counts_as_a_delete_in_stats_tube(qserver):
    c = on_tube(qserver, b"t")
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"complete", job, b"")) == b"COMPLETED\r\n"
    stats = c.yaml(b"stats-tube t")
    assert (stats["cmd-delete"], stats["current-jobs-reserved"]) == ("1", "0")


def test_completed_result_is_readable_while_retained(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"3600"))
    job = put(c, b"work", pri=3, ttr=40)
    reserve(c, job, b"work")
    assert c.cmd(with_body(b"progress", job, b"half")) == b"TOUCHED\r\n"
    result = b"line1\r\nline2\x00\xff"
    assert c.cmd(with_body(b"complete", job, result)) == b"COMPLETED\r\n"
    assert c.cmd(b"peek-result %d" % job) == b"FOUND %d %d\r\n%s\r\n" % (
        job, len(result), result)
    record = info(c, job)
    assert (record["state"], record["tube"], record["pri"], record["ttr"],
            record["reserves"], record["attempts"], record["progress"],
            record["result-bytes"], record["failures"]) == \
        (b"completed", b"t", b"3", b"40", b"1", b"0", b"half", b"%d" % len(result), [])
    assert 3590 <= int(record["time-left"]) <= 3600
    # It is a finished record, not a job: beanstalkd's commands do not see it.
    for command in (b"peek %d", b"stats-job %d", b"delete %d", b"kick-job %d",
                    b"reserve-job %d"):
        assert c.cmd(command % job) == b"NOT_FOUND\r\n", command
    assert c.cmd(b"peek-result %d" % job).startswith(b"FOUND")


def test_completed_empty_result_is_found_empty(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"60"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(b"complete %d 0\r\n\r\n" % job) == b"COMPLETED\r\n"
    assert c.cmd(b"peek-result %d" % job) == b"FOUND %d 0\r\n\r\n" % job
    assert info(c, job)["result-bytes"] == b"0"


def test_completed_record_keeps_failures_of_earlier_attempts(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"60"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"fail", job, b"flaky")) == b"RETRYING 0\r\n"
    reserve(c, job)
    assert c.cmd(with_body(b"complete", job, b"ok")) == b"COMPLETED\r\n"
    record = info(c, job)
    assert (record["state"], record["attempts"], record["reserves"]) == \
        (b"completed", b"1", b"2")
    assert [r for _, r in record["failures"]] == [b"flaky"]


def test_retained_record_expires(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"1"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"complete", job, b"r")) == b"COMPLETED\r\n"
    deadline = time.monotonic() + EVENT_BOUND
    while c.cmd(b"job-info %d" % job) != b"NOT_FOUND\r\n":
        assert time.monotonic() < deadline, "the retained record never expired"
        time.sleep(0.05)
    assert c.cmd(b"peek-result %d" % job) == b"NOT_FOUND\r\n"
    assert c.yaml(b"stats-ext")["current-retained"] == "0"


def test_complete_not_found_for_unreserved_job(client):
    job = put(client)
    assert client.cmd(with_body(b"complete", job, b"r")) == b"NOT_FOUND\r\n"
    assert client.cmd(with_body(b"complete", job + 1, b"r")) == b"NOT_FOUND\r\n"
    assert client.cmd(b"peek %d" % job) == b"FOUND %d 3\r\njob\r\n" % job


def test_complete_twice_is_not_found(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"60"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"complete", job, b"1")) == b"COMPLETED\r\n"
    assert c.cmd(with_body(b"complete", job, b"2")) == b"NOT_FOUND\r\n"
    assert c.cmd(b"peek-result %d" % job) == b"FOUND %d 1\r\n1\r\n" % job


def test_delete_keeps_no_record_even_with_retain(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"60"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(b"delete %d" % job) == b"DELETED\r\n"
    assert c.cmd(b"job-info %d" % job) == b"NOT_FOUND\r\n"
    assert c.cmd(b"peek-result %d" % job) == b"NOT_FOUND\r\n"


# --------------------------------------------------------------------------- peek-result

def test_peek_result_not_found_for_live_jobs_in_every_state(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"retain", b"60"))
    ready, delayed, buried, reserved = put(c), put(c, delay=600), put(c), put(c)
    reserve_job(c, buried)
    assert c.cmd(b"bury %d 0" % buried) == b"BURIED\r\n"
    reserve_job(c, reserved)
    for job in (ready, delayed, buried, reserved, reserved + 1):
        assert c.cmd(b"peek-result %d" % job) == b"NOT_FOUND\r\n", job


@pytest.mark.parametrize("line", [b"peek-result", b"peek-result ", b"peek-result x",
                                  b"peek-result 1 ", b"peek-result 1 2",
                                  b"peek-result 18446744073709551616"])
def test_peek_result_bad_line(client, line):
    reply = client.cmd(line)
    assert reply in (b"BAD_FORMAT\r\n", b"UNKNOWN_COMMAND\r\n"), reply
    if line.startswith(b"peek-result "):
        assert reply == b"BAD_FORMAT\r\n"


# --------------------------------------------------------------------------- progress

def test_progress_is_touched_and_shows_in_job_info(client):
    job = put(client)
    reserve(client, job)
    assert client.cmd(with_body(b"progress", job, b"10%")) == b"TOUCHED\r\n"
    assert info(client, job)["progress"] == b"10%"
    assert client.cmd(with_body(b"progress", job, b"20%")) == b"TOUCHED\r\n"
    assert info(client, job)["progress"] == b"20%"
    assert client.cmd(with_body(b"progress", job, b"")) == b"TOUCHED\r\n"
    assert info(client, job)["progress"] == b""
    assert client.cmd(b"job-info %d" % job).count(b'progress: ""\n') == 1


def test_progress_does_not_count_an_attempt_and_survives_a_retry(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"3"))
    job = put(c)
    reserve(c, job)
    assert c.cmd(with_body(b"progress", job, b"step 4")) == b"TOUCHED\r\n"
    assert c.cmd(with_body(b"fail", job, b"x")) == b"RETRYING 0\r\n"
    reserve(c, job)
    assert c.cmd(b"release %d 0 0" % job) == b"RELEASED\r\n"
    record = info(c, job)
    assert (record["attempts"], record["progress"]) == (b"1", b"step 4")


def test_progress_restarts_the_ttr(client):
    job = put(client, ttr=10)
    reserve(client, job)
    deadline = time.monotonic() + EVENT_BOUND
    while True:
        left = int(client.yaml(b"stats-job %d" % job)["time-left"])
        if left <= 7:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # progress and stats-job in one write: they run back to back.
    client.send(with_body(b"progress", job, b"alive") + b"stats-job %d\r\n" % job)
    assert client.read_reply() == b"TOUCHED\r\n"
    stats = {}
    for line in ok_body(client.read_reply()).split(b"\n")[1:-1]:
        key, _, value = line.partition(b": ")
        stats[key] = value
    assert stats[b"state"] == b"reserved"
    assert int(stats[b"time-left"]) > left
    assert int(stats[b"time-left"]) <= 10


def test_progress_not_found_for_unreserved_job(client):
    job = put(client)
    assert client.cmd(with_body(b"progress", job, b"p")) == b"NOT_FOUND\r\n"
    assert info(client, job)["progress"] == b"~"


# --------------------------------------------------------------------------- job-info

def test_job_info_of_a_fresh_job_is_stats_job_plus_the_extension_fields(client):
    job = put(client, b"hello", pri=5, ttr=7)
    client.send(b"stats-job %d\r\njob-info %d\r\n" % (job, job))
    stats = ok_body(client.read_reply())
    extended = ok_body(client.read_reply())
    age = re.search(rb"\nage: ([0-9]+)\n", extended)[1]
    expected = (b'---\nid: %d\ntube: "default"\nstate: ready\npri: 5\nage: %s\ndelay: 0\n'
                b"ttr: 7\ntime-left: 0\nfile: 0\nreserves: 0\ntimeouts: 0\nreleases: 0\n"
                b"buries: 0\nkicks: 0\n" % (job, age)) + FRESH_EXTRAS
    assert extended == expected
    stats = re.sub(rb"\nage: [0-9]+\n", b"\nage: %s\n" % age, stats)
    assert extended == stats + FRESH_EXTRAS


def test_job_info_follows_stats_job_for_each_state(qserver):
    c = on_tube(qserver, b"t")
    ready, delayed, buried, reserved = put(c), put(c, delay=600), put(c), put(c)
    reserve_job(c, buried)
    assert c.cmd(b"bury %d 3" % buried) == b"BURIED\r\n"
    reserve_job(c, reserved)
    for job, state in ((ready, b"ready"), (delayed, b"delayed"), (buried, b"buried"),
                       (reserved, b"reserved")):
        c.send(b"stats-job %d\r\njob-info %d\r\n" % (job, job))
        stats = ok_body(c.read_reply())
        extended = ok_body(c.read_reply())
        assert b"\nstate: %s\n" % state in extended
        # age and time-left may tick between the two replies.
        assert _untimed(extended) == _untimed(stats) + FRESH_EXTRAS


def _untimed(body: bytes) -> bytes:
    return re.sub(rb"\n(age|time-left): [0-9]+\n", rb"\n\1: *\n", body)


def test_job_info_shows_the_tubes_max_attempts(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"4294967295"))
    job = put(c)
    assert info(c, job)["max-attempts"] == b"4294967295"


def test_job_info_failures_list_format(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"none"))
    job = put(c)
    before = int(time.time())
    for reason in (b"first", b'say "hi"'):
        reserve(c, job)
        assert c.cmd(with_body(b"fail", job, reason)) == b"RETRYING 0\r\n"
    after = int(time.time())
    body = ok_body(c.cmd(b"job-info %d" % job))
    m = re.search(rb"\nfailures:\n- time: ([0-9]+)\n  reason: \"first\"\n"
                  rb"- time: ([0-9]+)\n  reason: \"say \\\"hi\\\"\"\n\Z", body)
    assert m, body
    assert before <= int(m[1]) <= int(m[2]) <= after
    parsed = yaml.safe_load(body)
    assert parsed["failures"] == [{"time": int(m[1]), "reason": "first"},
                                  {"time": int(m[2]), "reason": 'say "hi"'}]


def test_job_info_escapes_binary_reasons_and_progress(client):
    job = put(client)
    reserve(client, job)
    data = bytes(range(256))
    assert client.cmd(with_body(b"progress", job, data)) == b"TOUCHED\r\n"
    assert client.cmd(with_body(b"fail", job, data)) == b"BURIED\r\n"
    body = ok_body(client.cmd(b"job-info %d" % job))
    assert all(0x20 <= b < 0x7F or b == 0x0A for b in body), "raw byte in the YAML"
    progress = re.search(rb"\nprogress: (\".*\")\n", body)[1]
    reason = re.search(rb"\n  reason: (\".*\")\n", body)[1]
    expected = b'"' + b"".join(
        b"\\\\" if b == 0x5C else b'\\"' if b == 0x22 else
        bytes([b]) if 0x20 <= b < 0x7F else b"\\x%02x" % b for b in data) + b'"'
    lower_hex = lambda s: re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: b"\\x" + m[1].lower(), s)
    assert lower_hex(progress) == expected
    assert lower_hex(reason) == expected
    assert unquote(progress) == unquote(reason) == data
    # A YAML parser gives one character per byte.
    parsed = yaml.safe_load(body)
    assert parsed["progress"].encode("latin-1") == data
    assert parsed["failures"][0]["reason"].encode("latin-1") == data


def test_job_info_golden_escape(client):
    job = put(client)
    reserve(client, job)
    reason = b'a\\b"c\x00\r\n\t\x7f\x80\xff ~'
    assert client.cmd(with_body(b"fail", job, reason)) == b"BURIED\r\n"
    body = ok_body(client.cmd(b"job-info %d" % job))
    line = re.search(rb"\n  reason: (.*)\n", body)[1]
    assert line.lower() == rb'"a\\b\"c\x00\x0d\x0a\x09\x7f\x80\xff ~"'.lower()


def test_job_info_keeps_the_last_five_failures(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"none"))
    job = put(c)
    for k in range(1, 8):
        reserve(c, job)
        assert c.cmd(with_body(b"fail", job, b"reason %d" % k)) == b"RETRYING 0\r\n"
    record = info(c, job)
    assert record["attempts"] == b"7"
    assert [r for _, r in record["failures"]] == [b"reason %d" % k for k in range(3, 8)]
    times = [t for t, _ in record["failures"]]
    assert times == sorted(times)


def test_job_info_cuts_each_reason_to_4096_bytes(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"none"))
    job = put(c)
    exact = bytes(b"abcdefghij"[i % 10] for i in range(4096))
    longer = bytes(b"0123456789"[i % 10] for i in range(60000))
    for reason in (exact, longer):
        reserve(c, job)
        assert c.cmd(with_body(b"fail", job, reason)) == b"RETRYING 0\r\n"
    record = info(c, job)
    assert [r for _, r in record["failures"]] == [exact, longer[:4096]]


def test_job_info_not_found_and_bad_format(client):
    assert client.cmd(b"job-info 1") == b"NOT_FOUND\r\n"
    assert client.cmd(b"job-info 18446744073709551615") == b"NOT_FOUND\r\n"
    for line in (b"job-info x", b"job-info 1 ", b"job-info 1 2", b"job-info -1",
                 b"job-info 18446744073709551616", b"job-info "):
        assert client.cmd(line) == b"BAD_FORMAT\r\n", line


def test_job_info_allows_spaces_and_zeros_before_the_id(client):
    job = put(client)
    assert client.cmd(b"job-info   00%d" % job).startswith(b"OK ")


# --------------------------------------------------------------------------- stats-ext

EXT_KEYS = [b"cmd-config-tube", b"cmd-fail", b"cmd-complete", b"cmd-progress",
            b"cmd-job-info", b"cmd-peek-result", b"cmd-stats-ext", b"job-failures",
            b"job-retries", b"job-dead-letters", b"job-completions", b"current-retained",
            b"configured-tubes", b"cmd-put-ex", b"cmd-flush-tube", b"cmd-cancel-tag",
            b"cmd-list-jobs", b"cmd-subscribe",
            b"job-duplicates", b"jobs-flushed", b"jobs-cancelled", b"jobs-cancel-flagged"]


def ext_yaml(**values) -> bytes:
    body = b"---\n" + b"".join(
        b"%s: %d\n" % (key, values.get(key.decode().replace("-", "_"), 0))
        for key in EXT_KEYS)
    return b"OK %d\r\n%s\r\n" % (len(body), body)


def test_stats_ext_of_a_fresh_server(client):
    assert client.cmd(b"stats-ext") == ext_yaml(cmd_stats_ext=1)
    assert client.cmd(b"stats-ext") == ext_yaml(cmd_stats_ext=2)


@pytest.mark.parametrize("line", [b"stats-ext ", b"stats-ext x", b"stats-ext 1"])
def test_stats_ext_takes_no_argument(client, line):
    assert client.cmd(line) == b"BAD_FORMAT\r\n"


def test_stats_ext_counts_each_event(qserver):
    c = on_tube(qserver, b"r")
    configure(c, b"r", (b"max-attempts", b"2"), (b"retain", b"60"))
    assert c.cmd(b"config-tube r").startswith(b"OK ")
    first, second = put(c), put(c)
    reserve(c, first)
    assert c.cmd(with_body(b"progress", first, b"p")) == b"TOUCHED\r\n"
    assert c.cmd(with_body(b"fail", first, b"1")) == b"RETRYING 0\r\n"      # retry
    reserve(c, first)
    assert c.cmd(with_body(b"fail", first, b"2")) == b"BURIED\r\n"          # dead letter
    reserve(c, second)
    assert c.cmd(with_body(b"complete", second, b"ok")) == b"COMPLETED\r\n"  # retained
    assert c.cmd(b"job-info %d" % second).startswith(b"OK ")
    assert c.cmd(b"peek-result %d" % second).startswith(b"FOUND ")
    assert c.cmd(with_body(b"fail", second, b"gone")) == b"NOT_FOUND\r\n"
    d = qserver.client()
    plain = put(d)
    reserve(d, plain)
    assert d.cmd(with_body(b"fail", plain, b"3")) == b"BURIED\r\n"          # no policy
    assert c.cmd(b"stats-ext") == ext_yaml(
        cmd_config_tube=3, cmd_fail=4, cmd_complete=1, cmd_progress=1, cmd_job_info=1,
        cmd_peek_result=1, cmd_stats_ext=1, job_failures=3, job_retries=1,
        job_dead_letters=1, job_completions=1, current_retained=1, configured_tubes=1)


# --------------------------------------------------------------------------- #189

def _deliveries_until_buried(server, tube: bytes, job: int, leave) -> list:
    """Workers that each take the job once and never answer (`leave(worker)` says
    how they go away). Returns the workers that got it, stopping once job-info
    shows it buried."""
    watcher = server.client()
    workers = []
    for _ in range(10):                     # bounded: 3 are expected
        w = on_tube(server, tube)
        w.send(b"reserve-with-timeout 60\r\n")
        # Either the job comes, or it is buried (and the reserve waits on).
        deadline = time.monotonic() + EVENT_BOUND
        got = False
        while time.monotonic() < deadline:
            if not w.nothing_within(0.05):
                assert wait_reply(w, 5) == b"RESERVED %d 3\r\njob\r\n" % job
                got = True
                break
            if info(watcher, job)["state"] == b"buried":
                break
        if not got:
            w.close()
            break
        workers.append(w)
        leave(w)
    return workers


def _assert_dead_after_three(record, reason: bytes, timeouts: bytes):
    assert (record["state"], record["reserves"], record["timeouts"], record["buries"],
            record["attempts"], record["max-attempts"]) == \
        (b"buried", b"3", timeouts, b"1", b"3", b"3")
    assert [r for _, r in record["failures"]] == [reason] * 3


def test_189_job_whose_worker_never_answers_is_delivered_3_times_then_buried(qserver):
    c = on_tube(qserver, b"t189")
    configure(c, b"t189", (b"max-attempts", b"3"))
    job = put(c, ttr=1)
    workers = _deliveries_until_buried(qserver, b"t189", job, leave=lambda w: None)
    assert len(workers) == 3
    record = wait_for_state(c, job, b"buried")
    _assert_dead_after_three(record, b"TTR expired", b"3")
    assert c.cmd(b"peek-buried") == b"FOUND %d 3\r\njob\r\n" % job
    ext = c.yaml(b"stats-ext")
    assert (ext["job-failures"], ext["job-retries"], ext["job-dead-letters"]) == \
        ("3", "2", "1")
    for w in workers:
        w.close()


def test_189_job_whose_worker_closes_is_delivered_3_times_then_buried(qserver):
    c = on_tube(qserver, b"t189")
    configure(c, b"t189", (b"max-attempts", b"3"))
    job = put(c, ttr=600)
    workers = _deliveries_until_buried(qserver, b"t189", job, leave=lambda w: w.close())
    assert len(workers) == 3
    record = wait_for_state(c, job, b"buried")
    _assert_dead_after_three(record, b"connection closed", b"0")


def test_189_reasons_mix_in_order(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"3"))
    job = put(c, ttr=1)
    w = on_tube(qserver, b"t")
    # Each reserve is pipelined with what follows, so a 1 s TTR cannot run out
    # in between.
    w.send(b"reserve-with-timeout 0\r\n" + with_body(b"fail", job, b"explicit"))
    assert w.read_reply() == b"RESERVED %d 3\r\njob\r\n" % job
    assert w.read_reply() == b"RETRYING 0\r\n"
    w.send(b"reserve-with-timeout 0\r\nquit\r\n")       # connection closed
    assert w.read_reply() == b"RESERVED %d 3\r\njob\r\n" % job
    assert w.expect_closed()
    v = on_tube(qserver, b"t")
    v.send(b"reserve-with-timeout 60\r\n")
    assert wait_reply(v, 70) == b"RESERVED %d 3\r\njob\r\n" % job
    record = wait_for_state(c, job, b"buried")               # TTR expired
    assert [r for _, r in record["failures"]] == [b"explicit", b"connection closed",
                                                   b"TTR expired"]


def _wait_until_not_reserved(c: Client, job: int) -> dict:
    deadline = time.monotonic() + EVENT_BOUND
    while True:
        record = info(c, job)
        if record["state"] != b"reserved":
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)


def test_ttr_expiry_in_a_configured_tube_waits_out_the_backoff(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"fixed:600"))
    job = put(c, ttr=1)
    w = on_tube(qserver, b"t")
    reserve(w, job)
    record = _wait_until_not_reserved(c, job)
    assert (record["state"], record["attempts"], record["timeouts"]) == \
        (b"delayed", b"1", b"1")
    assert [r for _, r in record["failures"]] == [b"TTR expired"]
    assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"


def test_closed_connection_in_a_configured_tube_waits_out_the_backoff(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"backoff", b"fixed:600"))
    job = put(c)
    w = on_tube(qserver, b"t")
    reserve(w, job)
    w.close()
    record = _wait_until_not_reserved(c, job)
    assert (record["state"], record["attempts"], record["timeouts"]) == \
        (b"delayed", b"1", b"0")
    assert [r for _, r in record["failures"]] == [b"connection closed"]
    assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"


def test_tube_without_policy_ttr_expiry_is_ready_at_once_and_never_counted(qserver):
    c = on_tube(qserver, b"plain")
    configure(c, b"other", (b"max-attempts", b"1"))   # a policy elsewhere changes nothing
    job = put(c, ttr=1)
    workers = []
    for delivery in range(1, 5):                       # more than any max-attempts here
        w = on_tube(qserver, b"plain")
        w.send(b"reserve-with-timeout 60\r\n")
        assert wait_reply(w, 70) == b"RESERVED %d 3\r\njob\r\n" % job, delivery
        workers.append(w)
    # The last worker asks right behind its reserve (before that 1 s TTR runs out).
    w = on_tube(qserver, b"plain")
    w.send(b"reserve-with-timeout 60\r\njob-info %d\r\n" % job)
    assert wait_reply(w, 70) == b"RESERVED %d 3\r\njob\r\n" % job
    workers.append(w)
    record = info(w, job)
    assert (record["state"], record["reserves"], record["timeouts"], record["attempts"],
            record["buries"], record["failures"]) == \
        (b"reserved", b"5", b"4", b"0", b"0", [])
    assert c.yaml(b"stats-ext")["job-failures"] == "0"
    for w in workers:
        w.close()


def test_tube_without_policy_close_returns_the_job_uncounted(qserver):
    c = on_tube(qserver, b"plain")
    job = put(c)
    for _ in range(4):
        w = on_tube(qserver, b"plain")
        w.send(b"reserve-with-timeout 60\r\n")
        assert wait_reply(w, 70) == b"RESERVED %d 3\r\njob\r\n" % job
        w.close()
    w = on_tube(qserver, b"plain")
    w.send(b"reserve-with-timeout 60\r\n")
    assert wait_reply(w, 70) == b"RESERVED %d 3\r\njob\r\n" % job
    record = info(c, job)
    assert (record["reserves"], record["timeouts"], record["attempts"],
            record["failures"]) == (b"5", b"0", b"0", [])


# --------------------------------------------------------------------------- beanstalkd replies

def test_stats_keys_are_beanstalkds_after_extension_traffic(qserver):
    c = on_tube(qserver, b"t")
    configure(c, b"t", (b"max-attempts", b"1"), (b"retain", b"60"))
    done, dead = put(c), put(c)
    reserve(c, done)
    assert c.cmd(with_body(b"progress", done, b"p")) == b"TOUCHED\r\n"
    assert c.cmd(with_body(b"complete", done, b"r")) == b"COMPLETED\r\n"
    reserve(c, dead)
    assert c.cmd(with_body(b"fail", dead, b"x")) == b"BURIED\r\n"
    assert c.cmd(b"stats-ext").startswith(b"OK ")
    assert keys_of(ok_body(c.cmd(b"stats"))) == STATS_KEYS
    assert keys_of(ok_body(c.cmd(b"stats-tube t"))) == STATS_TUBE_KEYS
    assert keys_of(ok_body(c.cmd(b"stats-job %d" % dead))) == STATS_JOB_KEYS
    stats = c.yaml(b"stats")
    assert (stats["current-jobs-buried"], stats["current-jobs-reserved"],
            stats["cmd-bury"], stats["cmd-delete"]) == ("1", "0", "0", "0")


def test_stats_job_of_a_failed_job_is_unchanged_in_form(client):
    job = put(client, pri=2, ttr=9)
    reserve(client, job)
    assert client.cmd(with_body(b"progress", job, b"p")) == b"TOUCHED\r\n"
    assert client.cmd(with_body(b"fail", job, b"x")) == b"BURIED\r\n"
    body = ok_body(client.cmd(b"stats-job %d" % job))
    age = re.search(rb"\nage: ([0-9]+)\n", body)[1]
    assert body == (b'---\nid: %d\ntube: "default"\nstate: buried\npri: 2\nage: %s\n'
                    b"delay: 0\nttr: 9\ntime-left: 0\nfile: 0\nreserves: 1\ntimeouts: 0\n"
                    b"releases: 0\nburies: 1\nkicks: 0\n" % (job, age))
