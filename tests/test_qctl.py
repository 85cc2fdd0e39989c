"""qctl against live servers: every subcommand against qserver, and the read-only
ones (plus put and peek) against beanstalkd too, since qctl must work with both;
the extension commands (job, config, stats-ext, jobs, flush, cancel, watch-events,
put --key/--tag/--lock) are qserver's, and against beanstalkd only their refusal is
checked. Most calls run qctl's main() in-process (fast); a few run it as `python -m`.
Every wait is bounded: subprocesses have timeouts, polling loops a number of turns.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import (ServerProcess, free_port, qserver_argv, start_beanstalkd,
                      start_qserver)

from qserver import qctl

TUBE_KEYS = ["tube", "ready", "reserved", "delayed", "buried", "urgent", "waiting",
             "paused"]


@pytest.fixture(params=["qserver", "beanstalkd"])
def any_server(request):
    server = start_qserver() if request.param == "qserver" else start_beanstalkd()
    yield server
    server.stop()


class Terminal(io.TextIOWrapper):
    """stdin as a terminal would be: isatty() is true."""

    def isatty(self) -> bool:
        return True


def run(capsys, server, *args, stdin: bytes = b"", tty: bool = False) -> tuple:
    """(exit status, stdout, stderr) of `qctl --port P ARGS`."""
    where = (["--socket", server.unix_path] if server.unix_path
             else ["--port", str(server.port)])
    old = sys.stdin
    sys.stdin = (Terminal if tty else io.TextIOWrapper)(io.BytesIO(stdin))
    try:
        rc = qctl.main([*where, *args])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, server, *args, stdin: bytes = b""):
    rc, out, err = run(capsys, server, *args, "--json", stdin=stdin)
    assert rc == 0, err
    return json.loads(out)


def test_stats_and_tubes(capsys, any_server):
    s = any_server
    assert run_json(capsys, s, "put", "--tube", "jobs", "--pri", "5", stdin=b"a")["id"] == 1
    run_json(capsys, s, "put", "--tube", "jobs", "--delay", "60", stdin=b"b")
    stats = run_json(capsys, s, "stats")
    assert stats["current-jobs-ready"] == 1 and stats["current-jobs-delayed"] == 1
    assert isinstance(stats["version"], str) and isinstance(stats["id"], str)
    assert isinstance(stats["draining"], bool)
    tubes = {row["tube"]: row for row in run_json(capsys, s, "tubes")}
    assert list(tubes) == ["default", "jobs"]
    assert list(tubes["jobs"]) == TUBE_KEYS
    assert tubes["jobs"] == {"tube": "jobs", "ready": 1, "reserved": 0, "delayed": 1,
                             "buried": 0, "urgent": 1, "waiting": 0, "paused": 0}
    # --json may also come before the command
    rc, out, _ = run(capsys, s, "--json", "tubes")
    assert rc == 0 and json.loads(out)[1]["tube"] == "jobs"
    rc, out, _ = run(capsys, s, "tubes")
    lines = out.splitlines()
    assert lines[0].split() == [k.upper() for k in TUBE_KEYS]
    assert lines[2].split() == ["jobs", "1", "0", "1", "0", "1", "0", "-"]
    rc, out, _ = run(capsys, s, "stats")
    assert rc == 0 and any(line.split() == ["current-jobs-ready", "1"]
                           for line in out.splitlines())


def test_peek_by_id_and_state(capsys, any_server):
    s = any_server
    run_json(capsys, s, "put", "--tube", "t", stdin=b"first")
    run_json(capsys, s, "put", "--tube", "t", "--delay", "60", stdin=b"later")
    job = run_json(capsys, s, "peek", "1")
    assert job["id"] == 1 and job["body"] == "first"
    assert job["stats"]["tube"] == "t" and job["stats"]["state"] == "ready"
    assert run_json(capsys, s, "peek", "--state", "ready", "--tube", "t")["id"] == 1
    assert run_json(capsys, s, "peek", "--state", "delayed", "--tube", "t")["id"] == 2
    rc, _, err = run(capsys, s, "peek", "--state", "buried", "--tube", "t")
    assert rc == 1 and "NOT_FOUND" in err
    rc, out, _ = run(capsys, s, "peek", "2")
    assert rc == 0 and out.rstrip().endswith("later") and "delayed" in out
    raw = run_json(capsys, s, "put", stdin=b"\xff\x00")
    assert run_json(capsys, s, "peek", str(raw["id"]))["body_base64"] == "/wA="


def test_kick_delete_pause(capsys):
    s = start_qserver()
    try:
        c = s.client()
        assert c.cmd(b"use t") == b"USING t\r\n"
        for _ in range(3):
            assert c.cmd(b"put 0 0 60 1\r\nx").startswith(b"INSERTED")
        assert c.cmd(b"watch t").startswith(b"WATCHING")
        for i in (1, 2, 3):
            assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED")
            assert c.cmd(b"bury %d 0" % i) == b"BURIED\r\n"
        assert run_json(capsys, s, "kick", "--tube", "t", "2") == {"tube": "t", "kicked": 2}
        rc, out, _ = run(capsys, s, "kick", "--tube", "t", "5")
        assert rc == 0 and out.strip() == "kicked 1 job(s) in t"
        assert run_json(capsys, s, "delete", "1") == {"deleted": 1}
        rc, _, err = run(capsys, s, "delete", "1")
        assert rc == 1 and "NOT_FOUND" in err
        assert run_json(capsys, s, "pause", "t", "30") == {"tube": "t", "paused": 30}
        row = [r for r in run_json(capsys, s, "tubes") if r["tube"] == "t"][0]
        assert 28 <= row["paused"] <= 30 and row["ready"] == 2
        c.close()
    finally:
        s.stop()


def test_top_is_bounded(capsys):
    s = start_qserver()
    try:
        rc, out, _ = run(capsys, s, "top", "--iterations", "2", "--interval", "0.05",
                         "--json")
        frames = [json.loads(line) for line in out.splitlines()]
        assert rc == 0 and len(frames) == 2
        assert frames[0]["rates"] == {} and "cmd-put" in frames[1]["rates"]
        assert frames[1]["tubes"][0]["tube"] == "default"
        rc, out, _ = run(capsys, s, "top", "--iterations", "1", "--interval", "0.05")
        assert rc == 0 and "jobs: ready 0" in out and "TUBE" in out
    finally:
        s.stop()


def test_unix_socket(capsys):
    directory = tempfile.mkdtemp(prefix="qctl", dir="/tmp")
    path = os.path.join(directory, "q.sock")
    s = ServerProcess(qserver_argv("-l", "unix:" + path), unix_path=path)
    try:
        assert run_json(capsys, s, "put", stdin=b"hi")["id"] == 1
        assert run_json(capsys, s, "stats")["current-jobs-ready"] == 1
    finally:
        s.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_errors_have_distinct_exit_status(capsys):
    assert qctl.main(["--port", str(free_port()), "stats"]) == 3
    assert "cannot connect" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        qctl.main(["peek"])
    assert exit_info.value.code == 2


def test_job_config_and_stats_ext(capsys):
    s = start_qserver()
    try:
        c = s.client()
        assert c.cmd(b"watch emails").startswith(b"WATCHING")
        assert c.cmd(b"use emails") == b"USING emails\r\n"
        policy = run_json(capsys, s, "config", "emails", "max-attempts", "2")
        keys = ["name", "configured", "max-attempts", "backoff", "dead-letter", "retain",
                "lock-limit"]
        assert list(policy)[:len(keys)] == keys     # later extensions add values
        assert {key: policy[key] for key in keys} == {
            "name": "emails", "configured": True, "max-attempts": 2, "backoff": "none",
            "dead-letter": "bury", "retain": 0, "lock-limit": 1}
        assert run_json(capsys, s, "config", "emails", "retain", "60")["retain"] == 60
        rc, out, _ = run(capsys, s, "config", "emails")
        assert rc == 0 and ["backoff", "none"] in [ln.split() for ln in out.splitlines()]
        assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED 1\r\n"
        assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED 1 ")
        assert c.cmd(b"progress 1 4\r\nhalf") == b"TOUCHED\r\n"
        assert c.cmd(b"fail 1 12\r\nboom\n  line2") == b"RETRYING 0\r\n"
        assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED 1 ")
        assert c.cmd(b"fail 1 1\r\n\xff") == b"BURIED\r\n"
        job = run_json(capsys, s, "job", "1")
        assert (job["id"], job["state"], job["attempts"], job["max-attempts"]) == (
            1, "buried", 2, 2)
        assert job["progress"] == "half" and job["result-bytes"] == 0
        assert [f.get("reason", f.get("reason_base64")) for f in job["failures"]] == [
            "boom\n  line2", "/w=="]
        assert all(isinstance(f["time"], int) for f in job["failures"])
        rc, out, _ = run(capsys, s, "job", "1")
        lines = out.splitlines()
        assert rc == 0 and ["attempts", "2"] in [line.split() for line in lines]
        assert "    boom" in lines and "      line2" in lines
        assert "    <1 bytes, not UTF-8>" in lines
        assert c.cmd(b"put 0 0 60 1\r\ny") == b"INSERTED 2\r\n"
        assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED 2 ")
        assert c.cmd(b"complete 2 4\r\ndone") == b"COMPLETED\r\n"
        job = run_json(capsys, s, "job", "2")
        assert (job["state"], job["result"], job["progress"]) == ("completed", "done", None)
        rc, out, _ = run(capsys, s, "job", "2")
        assert rc == 0 and out.rstrip().endswith("result:\ndone")
        rc, _, err = run(capsys, s, "job", "3")
        assert rc == 1 and "job-info: NOT_FOUND" in err and "beanstalkd" not in err
        rc, _, err = run(capsys, s, "config", "emails", "colour", "red")
        assert rc == 1 and "config-tube: BAD_FORMAT" in err and "beanstalkd" not in err
        ext = run_json(capsys, s, "stats-ext")
        assert (ext["job-failures"], ext["job-retries"], ext["job-dead-letters"],
                ext["job-completions"], ext["configured-tubes"]) == (2, 1, 1, 1, 1)
        frame = run_json(capsys, s, "top", "--iterations", "1", "--interval", "0.05")
        assert frame["ext"]["job-completions"] == 1
        rc, out, _ = run(capsys, s, "top", "--iterations", "1", "--interval", "0.05")
        assert "lifecycle: failures 2  retries 1  dead-letters 1  completions 1" in out
        c.close()
    finally:
        s.stop()
    with pytest.raises(SystemExit) as exit_info:
        qctl.main(["config", "emails", "retain"])
    assert exit_info.value.code == 2


JOB_KEYS = ["id", "state", "pri", "age", "delay", "time-left", "attempts", "key", "tags",
            "size"]


def test_put_with_key_and_tags(capsys, qserver):
    s = qserver
    assert run_json(capsys, s, "put", "--tube", "mail", "--key", "order-1", "--tag", "a",
                    "--tag", "b", "--pri", "3", stdin=b"x") == {"id": 1, "tube": "mail"}
    rc, out, err = run(capsys, s, "put", "--tube", "mail", "--key", "order-1", stdin=b"y")
    assert (rc, out) == (1, "")
    assert err == "qctl: put-ex: DUPLICATE 1 (job 1 has this key)\n"
    rc, out, _ = run(capsys, s, "put", "--tube", "mail", "--tag", "c", stdin=b"z")
    assert (rc, out) == (0, "inserted job 2 into mail\n")
    job = run_json(capsys, s, "job", "1")
    assert (job["key"], job["tags"], job["cancelled"], job["pri"]) == (
        "order-1", ["a", "b"], False, 3)
    rc, _, err = run(capsys, s, "put", "--key", "two words", stdin=b"x")
    assert rc == 2 and err == "qctl: not a key: 'two words'\n"
    rc, _, err = run(capsys, s, "put", *[f"--tag=t{i}" for i in range(9)], stdin=b"x")
    assert rc == 1 and err == "qctl: put-ex: BAD_FORMAT\n"
    ext = run_json(capsys, s, "stats-ext")
    assert (ext["cmd-put-ex"], ext["job-duplicates"]) == (4, 1)   # 'two words' not sent


def test_jobs_pages_and_tables(capsys, qserver):
    s = qserver
    c = s.client()
    try:
        assert c.cmd(b"use mail") == b"USING mail\r\n"
        assert c.cmd(b"put-ex 7 0 60 1 key=k1 tag=x tag=y\r\na") == b"INSERTED 1\r\n"
        assert c.cmd(b"put 3 0 60 2\r\nbb") == b"INSERTED 2\r\n"
        assert c.cmd(b"put 7 0 60 1\r\nc") == b"INSERTED 3\r\n"
        assert c.cmd(b"put 9 600 60 1\r\nd") == b"INSERTED 4\r\n"
        assert c.cmd(b"put 1 0 60 1\r\ne") == b"INSERTED 5\r\n"
        assert c.cmd(b"watch mail") == b"WATCHING 2\r\n"
        assert c.cmd(b"reserve-job 5").startswith(b"RESERVED 5 1")
        assert c.cmd(b"bury 5 4") == b"BURIED\r\n"

        data = run_json(capsys, s, "jobs", "mail")
        assert list(data) == ["tube", "state", "jobs", "next"]
        assert (data["tube"], data["state"], data["next"]) == ("mail", "all", None)
        assert [list(job) for job in data["jobs"]] == [JOB_KEYS] * 5
        assert [(j["id"], j["state"], j["pri"], j["key"], j["tags"], j["size"])
                for j in data["jobs"]] == [
            (2, "ready", 3, None, [], 2), (1, "ready", 7, "k1", ["x", "y"], 1),
            (3, "ready", 7, None, [], 1), (4, "delayed", 9, None, [], 1),
            (5, "buried", 4, None, [], 1)]
        assert data["jobs"][3]["delay"] == 600 and 0 < data["jobs"][3]["time-left"] <= 600

        page = run_json(capsys, s, "jobs", "mail", "--state", "ready", "--limit", "2")
        assert [j["id"] for j in page["jobs"]] == [2, 1] and page["next"] is not None
        rest = run_json(capsys, s, "jobs", "mail", "--state", "ready", "--limit", "2",
                        "--cursor", page["next"])
        assert [j["id"] for j in rest["jobs"]] == [3] and rest["next"] is None
        walked = run_json(capsys, s, "jobs", "mail", "--limit", "1", "--all-pages")
        assert [j["id"] for j in walked["jobs"]] == [2, 1, 3, 4, 5]
        assert walked["next"] is None
        assert run_json(capsys, s, "jobs", "nothing") == {
            "tube": "nothing", "state": "all", "jobs": [], "next": None}

        rc, out, _ = run(capsys, s, "jobs", "mail", "--state", "ready", "--limit", "2")
        lines = out.splitlines()
        assert rc == 0 and lines[0].split() == [k.upper() for k in JOB_KEYS]
        assert lines[2].split()[:3] == ["1", "ready", "7"]
        assert lines[2].split()[-3:] == ["k1", "x,y", "1"]
        assert lines[1].split()[-3:] == ["-", "-", "2"]
        assert len(lines) == 4 and lines[3] == (
            f"more: qctl jobs mail --state ready --limit 2 --cursor {page['next']}"
            "   (or --all-pages)")
        rc, out, _ = run(capsys, s, "jobs", "mail", "--state", "buried")
        assert rc == 0 and len(out.splitlines()) == 2 and "more:" not in out

        rc, _, err = run(capsys, s, "jobs", "mail", "--state", "bogus")
        assert rc == 1 and err == "qctl: list-jobs: BAD_FORMAT\n"
        for bad in (["--limit", "0"], ["--limit", "1001"],
                    ["--all-pages", "--cursor", "r:1:1"]):
            with pytest.raises(SystemExit) as exit_info:
                qctl.main(["--port", str(s.port), "jobs", "mail", *bad])
            assert exit_info.value.code == 2, bad
    finally:
        c.close()


def test_flush_asks_on_a_terminal(capsys, qserver):
    s = qserver
    c = s.client()
    try:
        assert c.cmd(b"use mail") == b"USING mail\r\n"
        for i in range(3):
            assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED %d\r\n" % (i + 1)
        assert c.cmd(b"put 0 600 60 1\r\nx") == b"INSERTED 4\r\n"
        assert c.cmd(b"watch mail") == b"WATCHING 2\r\n"
        assert c.cmd(b"reserve-job 1").startswith(b"RESERVED 1 ")
        rc, out, err = run(capsys, s, "flush", "mail", stdin=b"n\n", tty=True)
        assert (rc, out) == (1, "")
        assert err == ("flush mail: remove 2 ready, 1 delayed and 0 buried job(s) for "
                       "good? [y/N] qctl: not flushed\n")
        rc, _, _ = run(capsys, s, "flush", "mail", stdin=b"", tty=True)   # end of input
        assert rc == 1
        assert run_json(capsys, s, "tubes")[1]["ready"] == 2
        rc, out, err = run(capsys, s, "flush", "mail", stdin=b"y\n", tty=True)
        assert (rc, out) == (0, "flushed 3 job(s) from mail\n") and "[y/N]" in err
        assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED 5\r\n"
        rc, out, err = run(capsys, s, "flush", "mail", "--yes", tty=True)
        assert (rc, out, err) == (0, "flushed 1 job(s) from mail\n", "")
        assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED 6\r\n"
        # not a terminal (a script): no question
        assert run_json(capsys, s, "flush", "mail") == {"tube": "mail", "flushed": 1}
        assert run_json(capsys, s, "flush", "nothing") == {"tube": "nothing", "flushed": 0}
        rc, _, err = run(capsys, s, "flush", "nothing", stdin=b"y\n", tty=True)
        assert rc == 0 and "remove no jobs (no such tube)" in err
        stats = c.yaml(b"stats-job 1")
        assert stats["state"] == "reserved"             # reserved jobs stay
        assert run_json(capsys, s, "stats-ext")["jobs-flushed"] == 5
    finally:
        c.close()


def test_cancel(capsys, qserver):
    s = qserver
    c = s.client()
    try:
        assert c.cmd(b"use mail") == b"USING mail\r\n"
        assert c.cmd(b"put-ex 0 0 60 1 tag=batch-7\r\na") == b"INSERTED 1\r\n"
        assert c.cmd(b"put-ex 0 0 60 1 tag=batch-7\r\nb") == b"INSERTED 2\r\n"
        assert c.cmd(b"put-ex 0 0 60 1 tag=batch-8\r\nc") == b"INSERTED 3\r\n"
        assert c.cmd(b"watch mail") == b"WATCHING 2\r\n"
        assert c.cmd(b"reserve-job 1").startswith(b"RESERVED 1 ")
        assert run_json(capsys, s, "cancel", "batch-7") == {
            "tag": "batch-7", "removed": 1, "flagged": 1}
        assert c.cmd(b"touch 1") == b"CANCELLED\r\n"
        assert run_json(capsys, s, "job", "1")["cancelled"] is True
        rc, out, _ = run(capsys, s, "cancel", "batch-8")
        assert (rc, out) == (0, "cancelled tag batch-8: removed 1 job(s), flagged 0 "
                                "reserved job(s)\n")
        rc, _, err = run(capsys, s, "cancel", "two words")
        assert rc == 2 and err == "qctl: not a tag: 'two words'\n"
    finally:
        c.close()


def test_put_with_a_lock_and_lock_limit(capsys, qserver):
    s = qserver
    assert run_json(capsys, s, "config", "mail")["lock-limit"] == 1
    policy = run_json(capsys, s, "config", "mail", "lock-limit", "2")
    assert (policy["configured"], policy["lock-limit"]) == (True, 2)
    rc, out, _ = run(capsys, s, "config", "mail")
    assert rc == 0 and ["lock-limit", "2"] in [line.split() for line in out.splitlines()]
    rc, _, err = run(capsys, s, "config", "mail", "lock-limit", "0")
    assert rc == 1 and err == "qctl: config-tube: BAD_FORMAT\n"
    for n in range(3):
        assert run_json(capsys, s, "put", "--tube", "mail", "--lock", "acct-1",
                        stdin=b"x") == {"id": n + 1, "tube": "mail"}
    rc, out, _ = run(capsys, s, "put", "--tube", "mail", "--lock", "acct-2", "--key", "k",
                     "--tag", "t", stdin=b"y")
    assert (rc, out) == (0, "inserted job 4 into mail\n")
    c = s.client()
    try:
        assert c.cmd(b"watch mail") == b"WATCHING 2\r\n"
        for job in (1, 2, 4):
            assert c.cmd(b"reserve-with-timeout 0").startswith(b"RESERVED %d " % job)
        assert c.cmd(b"reserve-with-timeout 0") == b"TIMED_OUT\r\n"      # 3 is held
        held = run_json(capsys, s, "jobs", "mail", "--state", "held")
        assert [(j["id"], j["state"]) for j in held["jobs"]] == [(3, "held")]
        rc, out, _ = run(capsys, s, "jobs", "mail", "--state", "held")
        assert rc == 0 and out.splitlines()[1].split()[:2] == ["3", "held"]
        assert run_json(capsys, s, "job", "3")["state"] == "held"
        assert run_json(capsys, s, "job", "4")["key"] == "k"
    finally:
        c.close()
    rc, _, err = run(capsys, s, "put", "--lock", "a b", stdin=b"x")
    assert rc == 2 and err == "qctl: not a lock: 'a b'\n"
    assert run_json(capsys, s, "stats-ext")["cmd-put-ex"] == 4


EVENT_LINE = re.compile(r"([0-9]+) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) "
                        r"([a-z]+) id=([0-9]+) tube=(\S+) attempt=([0-9]+)")


def event_lines(out: str, base: int) -> list:
    """(n, event, id, tube, attempt) of each line, n counting from 1 at `base`."""
    rows = []
    for line in out.splitlines():
        m = EVENT_LINE.fullmatch(line)
        assert m, line
        rows.append((int(m[1]) - base + 1, m[3], int(m[4]), m[5], int(m[6])))
    return rows


def subscribed(c) -> int:
    """Subscribe (events are kept from now on); returns the first sequence number."""
    reply = c.cmd(b"subscribe * now")
    m = re.fullmatch(rb"SUBSCRIBED (\d+)\r\n", reply)
    assert m, reply
    return int(m[1])


def test_watch_events_prints_lines_and_json(capsys, qserver):
    s = qserver
    c = s.client()
    try:
        base = subscribed(c)
        c = s.client()
        assert c.cmd(b"use mail") == b"USING mail\r\n"
        assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED 1\r\n"
        assert c.cmd(b"watch mail") == b"WATCHING 2\r\n"
        assert c.cmd(b"reserve-with-timeout 0") == b"RESERVED 1 1\r\nx\r\n"
        assert c.cmd(b"fail 1 3\r\nbad") == b"BURIED\r\n"
        assert c.cmd(b"use other") == b"USING other\r\n"
        assert c.cmd(b"put 0 0 60 1\r\ny") == b"INSERTED 2\r\n"
    finally:
        c.close()
    rc, out, err = run(capsys, s, "watch-events", "--from", str(base), "--count", "4")
    assert (rc, err) == (0, "")
    assert event_lines(out, base) == [(1, "put", 1, "mail", 0), (2, "reserve", 1, "mail", 0),
                                (3, "fail", 1, "mail", 1), (4, "bury", 1, "mail", 1)]
    data = [json.loads(line) for line in
            run(capsys, s, "watch-events", "--json", "--from", str(base + 2), "--count",
                "3")[1].splitlines()]
    assert [list(d) for d in data] == [["seq", "time", "id", "tube", "event", "attempt"]] * 3
    assert [(d["seq"] - base + 1, d["event"], d["id"], d["tube"]) for d in data] == [
        (3, "fail", 1, "mail"), (4, "bury", 1, "mail"), (5, "put", 2, "other")]
    assert all(isinstance(d["time"], float) for d in data)
    times = [line.split()[1] for line in out.splitlines()]
    assert times[2] == qctl.event_time(data[0]["time"])
    rc, out, _ = run(capsys, s, "watch-events", "--tube", "other", "--from", str(base),
                     "--count", "1")
    assert rc == 0 and event_lines(out, base) == [(5, "put", 2, "other", 0)]
    assert qctl.event_time(1764626400.123) == "2025-12-01T22:00:00.123Z"
    assert qctl.event_time(1.9996) == "1970-01-01T00:00:02.000Z"
    for bad in (["--from", "x"], ["--from", "-1"], ["--count", "0"], ["--count", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            qctl.main(["--port", str(s.port), "watch-events", *bad])
        assert exit_info.value.code == 2, bad
    capsys.readouterr()
    rc, _, err = run(capsys, s, "watch-events", "--tube=-bad", "--count", "1")
    assert rc == 1 and err == "qctl: subscribe: BAD_FORMAT\n"


def test_watch_events_shows_a_gap(capsys):
    s = start_qserver("--event-window", "3")
    try:
        c = s.client()
        base = subscribed(c)
        c = s.client()
        for n in range(6):
            assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED %d\r\n" % (n + 1)
        rc, out, _ = run(capsys, s, "watch-events", "--from", str(base + 1), "--count", "2")
        lines = out.splitlines()
        assert rc == 0 and lines[0] == (
            "-- gap: the server no longer keeps the events asked for from seq "
            f"{base + 1}; going on from seq {base + 3}")
        assert event_lines("\n".join(lines[1:]), base) == [(4, "put", 4, "default", 0),
                                                           (5, "put", 5, "default", 0)]
        out = run(capsys, s, "watch-events", "--json", "--from", str(base), "--count",
                  "1")[1]
        assert [json.loads(line) for line in out.splitlines()][0] == {"gap": base + 3,
                                                                     "expected": base}
        c.close()
    finally:
        s.stop()


def test_watch_events_from_now_as_a_command(qserver):
    """`python -m qserver.qctl watch-events`: it subscribes, the events come, it
    stops after --count."""
    c = qserver.client()
    argv = [sys.executable, "-m", "qserver.qctl", "--port", str(qserver.port),
            "watch-events", "--count", "2", "--json"]
    watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(300):                        # until it has subscribed
            if c.yaml(b"stats-ext")["cmd-subscribe"] == "1":
                break
            assert watcher.poll() is None, watcher.stderr.read()
            time.sleep(0.05)
        assert c.yaml(b"stats-ext")["cmd-subscribe"] == "1"
        for n in range(3):
            assert c.cmd(b"put 0 0 60 1\r\nx") == b"INSERTED %d\r\n" % (n + 1)
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
        c.close()
    assert (watcher.returncode, err) == (0, b"")
    events = [json.loads(line) for line in out.splitlines()]
    assert [(d["seq"] - events[0]["seq"], d["event"], d["id"]) for d in events] \
        == [(0, "put", 1), (1, "put", 2)]


def test_extensions_against_beanstalkd(capsys, beanstalkd):
    for args in (("job", "1"), ("config", "emails"), ("stats-ext",), ("jobs", "default"),
                 ("flush", "default", "--yes"), ("cancel", "t"),
                 ("watch-events", "--count", "1")):
        rc, _, err = run(capsys, beanstalkd, *args)
        assert rc == 1 and "is this beanstalkd?" in err, args
    # put with a key or tags asks first, so beanstalkd never reads the body as commands
    for option in ("--key", "--lock"):
        rc, _, err = run(capsys, beanstalkd, "put", option, "k",
                         stdin=b"put 0 0 1 1\r\nx")
        assert rc == 1 and err == ("qctl: job-info: UNKNOWN_COMMAND (a qserver "
                                   "extension: is this beanstalkd?)\n")
    assert run_json(capsys, beanstalkd, "stats")["total-jobs"] == 0
    frame = run_json(capsys, beanstalkd, "top", "--iterations", "1", "--interval", "0.05")
    assert frame["ext"] is None and frame["tubes"][0]["tube"] == "default"


def test_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "qserver.qctl", "--help"],
                            capture_output=True, timeout=10)
    assert result.returncode == 0
    commands = {line.split()[0] for line in result.stdout.decode().splitlines()
                if line.startswith("    ") and not line.startswith("     ")}
    assert commands == {"stats", "tubes", "peek", "kick", "delete", "pause", "put", "top",
                        "job", "config", "stats-ext", "jobs", "flush", "cancel",
                        "watch-events"}
    put_help = subprocess.run([sys.executable, "-m", "qserver.qctl", "put", "--help"],
                              capture_output=True, timeout=10).stdout.decode()
    assert "--key KEY" in put_help and "--tag TAG" in put_help
    assert "--lock LOCK" in put_help


def test_as_a_module_with_stdin():
    s = start_qserver()
    try:
        argv = [sys.executable, "-m", "qserver.qctl", "--port", str(s.port)]
        put = subprocess.run([*argv, "put", "--tube", "x", "--json"], input=b"body",
                             capture_output=True, timeout=10)
        assert put.returncode == 0 and json.loads(put.stdout) == {"id": 1, "tube": "x"}
        tubes = subprocess.run([*argv, "tubes", "--json"], capture_output=True,
                               timeout=10)
        assert [row["tube"] for row in json.loads(tubes.stdout)] == ["default", "x"]
    finally:
        s.stop()
